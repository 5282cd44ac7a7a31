"""`python -m minillama chat|generate` on stories260K: output, slash commands, JSON, errors and exit codes.

Most tests call minillama.cli.main in-process with a fake stdin (no interpreter start-up per test); two run the real
program in a subprocess for what only a real process shows: a closed pipe, Ctrl-C (SIGINT) and streaming.
"""
from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from minillama.cli import main

REPO = Path(__file__).resolve().parents[1]
GREEDY_STORY = ", there was a little girl named Lily"     # llama2.c's documented greedy stories260K text


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch, tmp_path):
    monkeypatch.setenv("MINILLAMA_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _chat(monkeypatch, capsys, args: list[str], lines: list[str]) -> tuple[int, str, str, io.StringIO]:
    stdin = io.StringIO("".join(line + "\n" for line in lines))
    monkeypatch.setattr(sys, "stdin", stdin)
    code = main(["chat", *args])
    out, err = capsys.readouterr()
    return code, out, err, stdin


# ---- errors ---------------------------------------------------------------------------------------------------

def test_unknown_model_lists_presets(capsys):
    assert main(["generate", "-m", "no-such-model", "-p", "x"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unknown model 'no-such-model'") and "smollm2-135m" in err and "stories260K" in err


def test_missing_folder_names_the_download_command(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights").mkdir()
    assert main(["chat", "-m", "weights/SmolLM2-135M-Instruct"]) == 1
    assert "python scripts/download_weights.py smollm2-135m" in capsys.readouterr().err
    (tmp_path / "weights" / "SmolLM2-135M-Instruct").mkdir()            # there, but empty
    assert main(["chat", "-m", "weights/SmolLM2-135M-Instruct"]) == 1
    assert "python scripts/download_weights.py smollm2-135m" in capsys.readouterr().err


def test_bad_arguments_are_usage_errors(capsys, stories_dir):
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "-m", str(stories_dir)])                  # no --prompt
    assert exit_.value.code == 2
    assert main(["generate", "-m", str(stories_dir), "-p", "x", "--top-p", "2"]) == 1
    assert "top_p" in capsys.readouterr().err


# ---- generate -------------------------------------------------------------------------------------------------

def test_generate_prints_the_completion(capsys, stories_dir):
    code = main(["generate", "-m", str(stories_dir), "-p", "Once upon a time", "--greedy", "--max-new-tokens", "12"])
    out, err = capsys.readouterr()
    assert code == 0 and out.startswith(GREEDY_STORY) and err == ""


def test_generate_json(capsys, stories_dir):
    code = main(["generate", "-m", str(stories_dir), "-p", "Once upon a time", "-n", "3", "--max-new-tokens", "12",
                 "--seed", "7", "--stop", ".", "--json", "--dose-theta", "0.2", "--drug-sites", "K"])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out)
    assert set(result) == {"model", "source", "prompt", "seed", "sampler", "drugs", "choices", "stats"}
    assert result["prompt"] == "Once upon a time" and result["seed"] == 7 and result["model"] == str(stories_dir)
    assert result["sampler"]["kind"] == "chain" and result["sampler"]["params"]["top_k"] == 40   # llama.cpp defaults
    assert result["drugs"]["dose_theta"] == 0.2
    assert len(result["choices"]) == 3
    for choice in result["choices"]:
        assert set(choice) == {"text", "tokens", "finish_reason"}
        assert choice["finish_reason"] in ("eos", "stop", "length") and "." not in choice["text"]
        assert all(isinstance(t, int) for t in choice["tokens"])
    assert {"prompt_tokens", "new_tokens", "prefill_s", "decode_s", "prefill_tps", "decode_tps"} <= set(result["stats"])
    # the seed is reported so a run can be repeated exactly
    main(["generate", "-m", str(stories_dir), "-p", "Once upon a time", "-n", "3", "--max-new-tokens", "12",
          "--seed", "7", "--stop", ".", "--json", "--dose-theta", "0.2", "--drug-sites", "K"])
    assert json.loads(capsys.readouterr().out)["choices"] == result["choices"]


def test_generate_reads_the_prompt_from_stdin(capsys, stories_dir, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("Once upon a time"))
    assert main(["generate", "-m", str(stories_dir), "-p", "-", "--temp", "0", "--max-new-tokens", "12",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["choices"][0]["text"].startswith(GREEDY_STORY)


# ---- chat -----------------------------------------------------------------------------------------------------

def test_chat_session_with_commands(monkeypatch, capsys, stories_dir, tmp_path):
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    code, out, err, stdin = _chat(monkeypatch, capsys, ["-m", str(stories_dir), "--max-new-tokens", "8", "--stats",
                                                        "--seed", "1"], [
        "/help",
        "Once upon a time",
        "/sampler",
        "/sampler top_k=20 temp=0.5",
        "/sampler top_k=oops",                 # a bad value: says why, changes nothing
        "/bogus",                              # an unknown command: says so
        "/drugs theta=0.3 sites=K,V",
        "/drugs sites=Q,nope",
        "/drugs",
        "",                                    # blank lines are skipped
        "The little dog",
        f"/save {first}",
        "/reset",
        "/system Tell a story.",
        "/sampler alpha lookahead=false",
        "Hi",
        "/stats",
        f"/save {second}",
        "/quit",
        "Never read",
    ])
    assert code == 0, err
    assert stdin.read() == "Never read\n"                                # /quit stopped reading
    assert "/sampler key=value" in err                                  # /help
    assert "sampler: top-k(40) -> top-p(0.95) -> min-p(0.05) -> temp(0.8) -> dist" in err   # llama.cpp defaults
    assert "sampler: top-k(20) -> top-p(0.95) -> min-p(0.05) -> temp(0.5) -> dist" in err
    assert "error: " in err and "top_k" in err
    assert "unknown command /bogus" in err
    assert "drugs: DRµGS" in err and "K, V" in err
    assert "sampler regimes:" in err                                    # AlphaSampler's per-step states
    assert len(re.findall(r"prompt eval time", err)) >= 3 + 1           # --stats after each answer, and /stats

    saved = json.loads(first.read_text())
    assert set(saved) == {"model", "source", "sampler", "drugs", "messages"}
    assert [m["role"] for m in saved["messages"]] == ["user", "assistant", "user", "assistant"]
    assert [m["content"] for m in saved["messages"][::2]] == ["Once upon a time", "The little dog"]
    assert saved["messages"][1]["content"] and saved["messages"][1]["content"] in out
    assert saved["sampler"]["params"]["top_k"] == 20 and saved["sampler"]["params"]["temp"] == 0.5
    assert saved["drugs"]["dose_theta"] == 0.3

    after_reset = json.loads(second.read_text())
    assert [m["role"] for m in after_reset["messages"]] == ["system", "user", "assistant"]
    assert after_reset["messages"][0]["content"] == "Tell a story."
    assert after_reset["sampler"]["kind"] == "alpha"


def test_chat_keeps_the_cache_across_turns(monkeypatch, capsys, stories_dir):
    code, out, err, _ = _chat(monkeypatch, capsys, ["-m", str(stories_dir), "--max-new-tokens", "8", "--stats",
                                                    "--temp", "0"], ["Once upon a time", "The dog ran"])
    assert code == 0 and out
    prompts = [int(n) for n in re.findall(r"prompt eval time = .*?/\s*(\d+) tokens", err)]
    answers = [int(n) for n in re.findall(r"^\s+eval time = .*?/\s*(\d+) tokens", err, re.M)]
    (first_prompt, second_prompt), first_new = prompts, answers[0]
    # the second turn prefills only what is new, not the whole conversation again
    assert second_prompt < first_prompt + first_new


def test_cold_shower(monkeypatch, capsys, stories_dir):
    """Noise at H reaches the cache; /shower recomputes it; --cold-shower does it before each new message."""
    drugged = ["-m", str(stories_dir), "--max-new-tokens", "6", "--dose-theta", "0.3", "--drug-sites", "H"]
    _, _, err, _ = _chat(monkeypatch, capsys, drugged, ["Once upon a time", "/shower", "/shower"])
    counts = [int(n) for n in re.findall(r"recomputed (\d+) positions", err)]
    assert counts[0] > 0 and counts[1] == 0
    _, _, err, _ = _chat(monkeypatch, capsys, drugged + ["--cold-shower"], ["Once upon a time", "/shower"])
    assert re.findall(r"recomputed (\d+) positions", err) == ["0"]


# ---- the real program -----------------------------------------------------------------------------------------

def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), MINILLAMA_WEIGHTS=str(tmp_path / "weights"), HF_HUB_OFFLINE="1")
    env.pop("PYTHONUNBUFFERED", None)       # the program must flush its stream itself
    return env


def test_closed_stdout_exits_quietly(stories_dir, tmp_path):
    """`minillama generate ... | head -c 10`: the reader leaves early; no traceback, exit 141 like SIGPIPE."""
    process = subprocess.Popen([sys.executable, "-m", "minillama", "generate", "-m", str(stories_dir), "-p",
                                "Once upon a time", "--max-new-tokens", "50"], cwd=tmp_path, env=_env(tmp_path),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141
    assert err == ""


def test_streaming_and_ctrl_c(stories_dir, tmp_path):
    """An answer streams while the program runs; Ctrl-C stops it (kept, marked) and chat goes on; Ctrl-C at the
    prompt leaves with 130."""
    saved = tmp_path / "conversation.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "minillama", "chat", "-m", str(stories_dir), "--max-new-tokens", "5000",
         "--context-shift", "--logit-bias", "2-inf"],          # no EOS: the answer runs until interrupted
        cwd=tmp_path, env=_env(tmp_path), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        process.stdin.write("Once upon a time\n")
        process.stdin.flush()
        assert process.stdout.read(1)                  # the first piece arrives while the answer is going on
        process.send_signal(signal.SIGINT)
        assert process.stderr.readline().strip() == "[interrupted]"
        process.stdin.write(f"/save {saved}\n")
        process.stdin.flush()
        assert process.stderr.readline().startswith("saved 2 messages")
        process.send_signal(signal.SIGINT)             # waiting for input: leave
        assert process.wait(timeout=120) == 130
        assert "Traceback" not in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
    messages = json.loads(saved.read_text())["messages"]
    assert messages[0] == {"role": "user", "content": "Once upon a time"}
    assert messages[1]["role"] == "assistant" and messages[1]["interrupted"] is True and messages[1]["content"]
