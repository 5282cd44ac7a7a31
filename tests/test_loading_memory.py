"""Peak memory of loading: a fresh process that loads a model must stay within 1.2x the weights' size."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import json, sys, torch
from minillama.loading import load_checkpoint
from minillama.model import build_model

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

folder, dtype = sys.argv[1], getattr(torch, sys.argv[2])
ckpt = load_checkpoint(folder, dtype=None, with_tokenizer=False)   # as Engine.from_pretrained does
before = hwm()
model = build_model(ckpt.config, ckpt.tensors, dtype=dtype, device=torch.device("cpu"))
weights = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps({"peak": hwm() - before, "weights": weights}))
"""


@pytest.fixture(scope="module")
def big_folder(tmp_path_factory):
    """~280 MB of float32 weights in 16 layers, so the process's fixed ~10 MiB (allocator, threads) and the one tensor
    in flight are small beside them, as in real models. Loading float32 into bfloat16 converts each tensor as it is
    copied into the model, so none is ever held in both dtypes."""
    from modelfactory import make_hf_model
    return make_hf_model(tmp_path_factory.mktemp("big"), dim=512, n_layers=16, n_heads=8, n_kv_heads=2,
                         ffn_dim=2048, vocab_size=16384, tie=True)


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads VmHWM from /proc")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_loading_peaks_within_1_2x_the_weights(big_folder, dtype):
    done = subprocess.run([sys.executable, "-c", PROBE, str(big_folder), dtype], capture_output=True, text=True,
                          check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["peak"] <= 1.2 * result["weights"], result
