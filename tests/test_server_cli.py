"""`python -m minillama serve` as a user runs it: a subprocess on a free 127.0.0.1 port, and the message when the
optional `serve` extra is missing."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minillama.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_serve_subprocess_answers_an_openai_client(stories_dir):
    openai = pytest.importorskip("openai")
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    env = {**os.environ, "PYTHONPATH": str(REPO), "MINILLAMA_API_KEY": "secret"}
    proc = subprocess.Popen([sys.executable, "-m", "minillama", "serve", "--model", str(stories_dir), "--port", "0",
                             "--max-batch", "4"], stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        url = None
        while url is None:
            assert time.monotonic() < deadline, "the server did not start"
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "the server exited before listening"
            found = re.search(r"running on (http://127\.0\.0\.1:\d+)", line)
            url = found and found.group(1)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="secret", max_retries=0, timeout=60)
        assert [m.id for m in client.models.list().data] == [str(stories_dir)]
        reply = client.chat.completions.create(model="any", messages=[{"role": "user", "content": "Hi"}],
                                               max_tokens=8, seed=1)
        assert reply.choices[0].message.content and reply.usage.completion_tokens <= 8
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
        proc.stderr.close()
    assert code == 0


def test_serve_without_the_extra_says_how_to_install(monkeypatch, capsys, stories_dir):
    monkeypatch.setitem(sys.modules, "uvicorn", None)       # makes `import uvicorn` fail as if not installed
    assert main(["serve", "--model", str(stories_dir)]) == 1
    assert "pip install 'minillama[serve]'" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value", [("--max-batch", "0"), ("--max-queue", "-1"), ("--port", "70000")])
def test_serve_rejects_bad_flags(capsys, stories_dir, flag, value):
    pytest.importorskip("uvicorn")
    pytest.importorskip("starlette")
    assert main(["serve", "--model", str(stories_dir), flag, value]) == 1
    assert flag in capsys.readouterr().err
