"""Hugging Face model folders: config.json + model.safetensors, or model.safetensors.index.json + shards.

A safetensors file is an 8-byte little-endian header length, a JSON header (name -> dtype, shape, byte offsets into
the data that follows) and the raw tensor bytes. Opening a folder parses the headers only. `read` maps one tensor's
bytes, copy-on-write, and the map goes when that tensor is freed. Mapped pages that have been read count in the
process's RSS for as long as their map lives: `safetensors.safe_open` maps whole files for as long as the handle is
open, so loading through it peaked at the file's size on top of the model's. Mapping rather than reading into fresh
memory also halves the page faults a load takes (file pages come from the page cache; fresh ones must be zeroed),
and those faults, not the copying, are most of a load's time.
"""
from __future__ import annotations

import json
import math
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import ModelConfig
from ..errors import ModelLoadError, UnsupportedModelError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

# The safetensors format's own limit on the JSON header, so a corrupt length fails here, not in a huge read.
MAX_HEADER_BYTES = 100 << 20

# The stored dtypes a float model can come in; integer tensors would be quantized weights this reader cannot decode.
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


@dataclass(frozen=True)
class _Entry:
    """Where one tensor lives: its file, stored dtype name, shape and absolute byte range."""
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


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
        self._headers: dict[Path, dict[str, _Entry]] = {}
        self._entries: dict[str, _Entry] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        for name, file in self._weight_map(folder).items():
            entries = self._header(file)
            if name not in entries:
                raise ModelLoadError(f"{file}: tensor {name} is listed in {INDEX_FILE} but missing from this shard")
            self._entries[name] = entries[name]
            self.shapes[name] = entries[name].shape

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
        return {name: file for file in files for name in self._header(file)}

    def _header(self, file: Path) -> dict[str, _Entry]:
        if file not in self._headers:
            try:
                self._headers[file] = _parse_header(file)
            except (ValueError, OSError) as e:
                raise ModelLoadError(
                    f"{file}: not a readable safetensors file, it may be truncated or corrupt ({e})") from None
        return self._headers[file]

    def read(self, name: str) -> torch.Tensor:
        """One tensor, on the CPU, in the dtype it is stored in: a private copy-on-write map of its bytes in the file
        (writing to it never changes the file), unmapped when the tensor is freed. Python's mmap holds a duplicate
        file descriptor per map, so a caller that keeps every tensor of a model holds one per tensor."""
        entry = self._entries[name]
        if entry.dtype not in DTYPES:
            raise ModelLoadError(f"{entry.file}: tensor {name} is stored as {entry.dtype}; minillama reads "
                                 f"{', '.join(DTYPES)} weights (integer tensors would be a quantization it "
                                 f"does not decode)")
        dtype = DTYPES[entry.dtype]
        if entry.start == entry.end:
            return torch.empty(entry.shape, dtype=dtype)  # nothing to map
        try:
            with open(entry.file, "rb") as f:
                # a read from a map of a file that has since shrunk would crash the process (SIGBUS), not raise
                size = os.fstat(f.fileno()).st_size
                if size < entry.end:
                    raise OSError(f"the file is now {size} bytes but the tensor ends at byte {entry.end}")
                first = entry.start - entry.start % mmap.ALLOCATIONGRANULARITY  # maps start at a page boundary
                block = mmap.mmap(f.fileno(), entry.end - first, access=mmap.ACCESS_COPY, offset=first)
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"{entry.file}: tensor {name} is unreadable ({e})") from None
        # the tensor holds `block`, so the map lives exactly as long as the tensor (or a view of it) does
        flat = torch.frombuffer(block, dtype=dtype, offset=entry.start - first, count=math.prod(entry.shape))
        return flat.view(entry.shape)


def _parse_header(file: Path) -> dict[str, _Entry]:
    """Every tensor's entry in one safetensors file, checked against the format and the file's size.
    Raises ValueError (or OSError) saying what is wrong."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ValueError(f"the file is {size} bytes, too short for a header")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
            raise ValueError(f"the header claims {header_len} bytes but the file has {size}")
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"the header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    data_start = 8 + header_len
    entries: dict[str, _Entry] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape = str(info["dtype"]), tuple(int(n) for n in info["shape"])
            begin, end = (int(n) for n in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"tensor {name} has no valid dtype, shape and data_offsets") from None
        if min(shape, default=0) < 0 or not 0 <= begin <= end:
            raise ValueError(f"tensor {name} has shape {list(shape)} and data_offsets {[begin, end]}")
        if dtype in DTYPES and end - begin != DTYPES[dtype].itemsize * math.prod(shape):
            raise ValueError(f"tensor {name}: {end - begin} bytes for shape {list(shape)} of {dtype}")
        if data_start + end > size:
            raise ValueError(f"tensor {name} ends at byte {data_start + end} but the file has only {size}")
        entries[name] = _Entry(file, dtype, shape, data_start + begin, data_start + end)
    return entries
