"""Hugging Face model folders: config.json + model.safetensors, or model.safetensors.index.json + shards.

Every shard is opened with `safetensors.safe_open`, which memory-maps it: listing names and shapes reads only the
headers, and `read` copies one tensor out of the page cache when asked.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..config import ModelConfig
from ..errors import ModelLoadError, UnsupportedModelError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class SafetensorsFolder:
    """An open HF folder: `config`, `metadata` (the parsed config.json), `shapes` (name -> shape) and `read`."""

    def __init__(self, folder: Path) -> None:
        config_path = folder / "config.json"
        try:
            self.config = ModelConfig.from_hf_file(config_path)
        except UnsupportedModelError as e:
            if str(config_path) in str(e):
                raise
            raise UnsupportedModelError(f"{config_path}: {e}") from None  # ModelConfig's checks do not know the file
        self.metadata: dict[str, Any] = json.loads(config_path.read_text())
        self.path = folder
        self._handles: dict[Path, Any] = {}
        self._keys: dict[Path, set[str]] = {}
        self._file_of: dict[str, Path] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        for name, file in self._weight_map(folder).items():
            handle = self._open(file)
            if name not in self._keys[file]:
                raise ModelLoadError(f"{file}: tensor {name} is listed in {INDEX_FILE} but missing from this shard")
            self._file_of[name] = file
            self.shapes[name] = tuple(handle.get_slice(name).get_shape())

    def _weight_map(self, folder: Path) -> dict[str, Path]:
        index = folder / INDEX_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ModelLoadError(f"{index}: not a valid safetensors index ({e!r})") from None
            for shard in sorted(set(weight_map.values())):
                if not (folder / shard).is_file():
                    raise ModelLoadError(f"{index}: shard {shard} is listed but missing from {folder}")
            return {name: folder / shard for name, shard in weight_map.items()}
        files = [folder / SINGLE_FILE] if (folder / SINGLE_FILE).is_file() else sorted(folder.glob("*.safetensors"))
        if not files:
            found = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt*"))
            hint = f" (found {', '.join(found)}: only .safetensors weights are supported)" if found else ""
            raise ModelLoadError(f"{folder}: no {SINGLE_FILE} or {INDEX_FILE} in the model folder{hint}")
        return {name: file for file in files for name in self._open(file).keys()}

    def _open(self, file: Path) -> Any:
        if file not in self._handles:
            from safetensors import SafetensorError, safe_open  # the library, not this module

            try:
                self._handles[file] = safe_open(file, framework="pt", device="cpu")
            except (SafetensorError, OSError) as e:
                raise ModelLoadError(
                    f"{file}: not a readable safetensors file, it may be truncated or corrupt ({e})") from None
            self._keys[file] = set(self._handles[file].keys())
        return self._handles[file]

    def read(self, name: str) -> torch.Tensor:
        """One tensor, on the CPU, in the dtype it is stored in."""
        file = self._file_of[name]
        try:
            return self._handles[file].get_tensor(name)
        except Exception as e:  # safetensors raises its own error type for bad data offsets
            raise ModelLoadError(f"{file}: tensor {name} is unreadable ({e})") from None
