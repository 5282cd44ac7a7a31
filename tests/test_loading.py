"""load_checkpoint: configs of each architecture, weights equal to transformers', GGUF round trips, bad inputs."""
from __future__ import annotations

import json
import shutil
import weakref
from pathlib import Path

import pytest
import torch
from modelfactory import hf_state_dict, make_gguf_model, make_hf_model

from minillama.config import ModelConfig
from minillama.errors import ModelLoadError, UnsupportedModelError
from minillama.loading import expected_shapes, load_checkpoint, open_weights
from minillama.loading.gguf import GGUFFile, config_from_gguf, permute_rope_rows, unpermute_rope_rows
from minillama.loading.safetensors import SafetensorsFolder

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 2048}


def load(source, **kwargs):
    return load_checkpoint(source, dtype=kwargs.pop("dtype", torch.float32), with_tokenizer=False, **kwargs)


def hf_oracle_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).state_dict()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """One of each kind of folder, built once for the module."""
    root = tmp_path_factory.mktemp("models")
    return {
        "llama": make_hf_model(root, name="llama"),
        "llama_tied": make_hf_model(root, name="llama_tied", tie=True, seed=1),
        "mistral_sharded": make_hf_model(root, arch="mistral", name="mistral_sharded", max_shard_size="30KB"),
        "qwen2": make_hf_model(root, arch="qwen2", name="qwen2", tie=True, seed=2),
        "llama_bias": make_hf_model(root, name="llama_bias", attention_bias=True, n_kv_heads=4, seed=3),
    }


# ---- configs -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, expected", [
    (dict(), dict(arch="llama", n_heads=4, n_kv_heads=2, head_dim=16, tie_embeddings=False, qkv_bias=False)),
    (dict(tie=True, n_kv_heads=4), dict(n_kv_heads=4, tie_embeddings=True)),
    (dict(head_dim=32), dict(head_dim=32, dim=64)),
    (dict(arch="mistral"), dict(arch="mistral", qkv_bias=False)),
    (dict(arch="qwen2"), dict(arch="qwen2", qkv_bias=True, o_bias=False)),
    (dict(attention_bias=True), dict(qkv_bias=True, o_bias=True)),
    (dict(rope_scaling=LLAMA3_ROPE), dict(rope_scaling=LLAMA3_ROPE)),
    (dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), dict(rope_scaling={"rope_type": "linear", "factor": 2.0})),
    (dict(rope_scaling={"rope_type": "dynamic", "factor": 2.0}), dict(rope_scaling={"rope_type": "dynamic", "factor": 2.0})),
])
def test_hf_config_of_each_variant(tmp_path, kwargs, expected):
    config = load(make_hf_model(tmp_path, **kwargs)).config
    for field, value in expected.items():
        actual = getattr(config, field)
        if field == "rope_scaling":  # transformers adds rope_theta to the dict; compare the scaling parameters
            actual = {k: v for k, v in actual.items() if k in value}
        assert actual == value, field


def test_hf_config_with_head_dim_loads_shapes_of_that_head_dim(tmp_path):
    ckpt = load(make_hf_model(tmp_path, head_dim=32, n_heads=4, n_kv_heads=2))
    shapes = {name: tuple(t.shape) for name, t in ckpt.tensors}
    assert shapes["model.layers.0.self_attn.q_proj.weight"] == (128, 64)
    assert shapes["model.layers.0.self_attn.k_proj.weight"] == (64, 64)
    assert shapes["model.layers.0.self_attn.o_proj.weight"] == (64, 128)


@pytest.mark.parametrize("kind", ["yarn", "longrope"])
def test_hf_unsupported_rope_type_is_named(tmp_path, kind):
    folder = make_hf_model(tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["rope_scaling"] = {"rope_type": kind, "factor": 4.0}
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match=kind) as err:
        load(folder)
    assert str(folder / "config.json") in str(err.value)


def test_hf_unsupported_architecture_is_named(tmp_path):
    folder = make_hf_model(tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["architectures"], cfg["model_type"] = ["GemmaForCausalLM"], "gemma"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match="GemmaForCausalLM") as err:
        load(folder)
    assert str(folder) in str(err.value)


def test_stories260k_folder(stories_dir):
    ckpt = load(stories_dir)
    assert (ckpt.config.dim, ckpt.config.n_layers, ckpt.config.n_heads, ckpt.config.n_kv_heads) == (64, 5, 8, 4)
    assert ckpt.config.tie_embeddings and ckpt.config.vocab_size == 512
    stored = hf_state_dict(stories_dir)
    for name, tensor in ckpt.tensors:
        assert torch.equal(tensor, stored[name]), name


# ---- HF tensors ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["llama", "llama_tied", "mistral_sharded", "qwen2", "llama_bias"])
def test_tensors_equal_transformers_state_dict(models, which):
    folder = models[which]
    ckpt = load(folder)
    reference = hf_oracle_state_dict(folder)
    yielded = dict(ckpt.tensors)
    assert list(yielded) == ckpt.tensor_names
    assert set(yielded) == set(expected_shapes(ckpt.config))
    # transformers lists the tied head too; we leave it out because it *is* the embedding
    assert set(reference) - set(yielded) == ({"lm_head.weight"} if ckpt.config.tie_embeddings else set())
    for name, tensor in yielded.items():
        assert torch.equal(tensor, reference[name]), name


def test_sharded_folder_really_is_sharded(models):
    folder = models["mistral_sharded"]
    assert (folder / "model.safetensors.index.json").is_file()
    assert len(list(folder.glob("*.safetensors"))) > 2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_tensors_come_in_the_requested_dtype(models, dtype):
    stored = hf_state_dict(models["qwen2"])
    for name, tensor in load(models["qwen2"], dtype=dtype).tensors:
        assert tensor.dtype == dtype and tensor.device.type == "cpu"
        assert torch.equal(tensor, stored[name].to(dtype)), name


def test_loading_reads_nothing_before_iteration_and_keeps_nothing_after(models, monkeypatch):
    """Peak memory ~ one copy of the weights: tensors are read lazily, one at a time, and the loader keeps no
    reference to a tensor once yielded (so a consumer that copies and drops it never holds two copies)."""
    reads = []
    original = SafetensorsFolder.read
    monkeypatch.setattr(SafetensorsFolder, "read", lambda self, name: reads.append(name) or original(self, name))
    ckpt = load(models["mistral_sharded"], dtype=torch.bfloat16)
    assert reads == []
    previous = None
    for i, (name, tensor) in enumerate(ckpt.tensors):
        assert len(reads) == i + 1  # exactly one tensor read per step
        if previous is not None:
            assert previous() is None, "the loader still holds the previous tensor"
        previous = weakref.ref(tensor)
        del tensor
    assert reads == ckpt.tensor_names


def test_gguf_loading_is_lazy_too(tmp_path, monkeypatch):
    path = make_gguf_model(tmp_path, qtype="Q8_0")
    reads = []
    original = GGUFFile.read
    monkeypatch.setattr(GGUFFile, "read", lambda self, name: reads.append(name) or original(self, name))
    ckpt = load(path)
    assert reads == []
    previous = None
    for i, (name, tensor) in enumerate(ckpt.tensors):
        assert len(reads) == i + 1
        if previous is not None:
            assert previous() is None
        previous = weakref.ref(tensor)
        del tensor


def test_safetensors_tensor_maps_go_with_their_tensors(tmp_path, models):
    """Each tensor read is a copy-on-write map of its own bytes, unmapped when the tensor is freed: mapped pages that
    have been read count in RSS while their map lives, and whole-file maps made loading peak at the file's size on
    top of the model's."""
    import gc

    folder = tmp_path / "private"                   # a copy no other test (or safetensors' own reader) has opened
    shutil.copytree(models["mistral_sharded"], folder)
    weights = open_weights(folder)
    assert isinstance(weights, SafetensorsFolder)

    def mapped_files() -> list[str]:
        maps = Path("/proc/self/maps").read_text()
        return [f.name for f in folder.glob("*.safetensors") if str(f) in maps]

    tensors = {name: weights.read(name) for name in weights.shapes}
    stored = hf_state_dict(models["mistral_sharded"])
    for name, tensor in tensors.items():
        assert torch.equal(tensor, stored[name]), name
    norm = tensors["model.norm.weight"].add_(1)     # writable, and the file keeps what it had
    assert torch.equal(weights.read("model.norm.weight"), stored["model.norm.weight"])
    assert not torch.equal(norm, stored["model.norm.weight"])
    if Path("/proc/self/maps").is_file():
        assert mapped_files()
        del tensors, tensor, norm
        gc.collect()
        assert mapped_files() == []


def test_safetensors_reads_every_float_dtype_and_odd_shapes(tmp_path, models):
    from safetensors.torch import save_file

    folder = tmp_path / "dtypes"
    shutil.copytree(models["llama"], folder)
    tensors = hf_state_dict(folder)
    extras = {"extra.bf16": torch.randn(3, 5).bfloat16(), "extra.f16": torch.randn(7).half(),
              "extra.f64": torch.randn(2, 2, 2, dtype=torch.float64), "extra.scalar": torch.tensor(3.5),
              "extra.empty": torch.empty(0, 4)}
    save_file({**tensors, **extras}, folder / "model.safetensors", metadata={"format": "pt"})
    weights = open_weights(folder)
    for name, tensor in extras.items():
        got = weights.read(name)
        assert got.dtype == tensor.dtype and got.shape == tensor.shape and torch.equal(got, tensor), name
    assert torch.equal(weights.read("model.embed_tokens.weight"), tensors["model.embed_tokens.weight"])


def test_integer_safetensors_weight_is_named_with_its_dtype(tmp_path, models):
    from safetensors.torch import save_file

    folder = tmp_path / "int8"
    shutil.copytree(models["llama"], folder)
    tensors = hf_state_dict(folder)
    tensors["model.layers.0.mlp.up_proj.weight"] = tensors["model.layers.0.mlp.up_proj.weight"].to(torch.int8)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"model\.layers\.0\.mlp\.up_proj\.weight is stored as I8") as err:
        list(load(folder).tensors)
    assert str(folder / "model.safetensors") in str(err.value)


@pytest.mark.parametrize("damage, reason", [
    (lambda data: data[:5], "too short for a header"),
    (lambda data: (10**9).to_bytes(8, "little") + data[8:], "header claims"),
    (lambda data: data[:8] + b"{not json" + data[17:], "not JSON"),
    (lambda data: data.replace(b'"data_offsets":[0,', b'"data_offsets":[9,', 1), "bytes for shape"),
])
def test_corrupt_safetensors_header_names_the_file_and_the_fault(tmp_path, models, damage, reason):
    folder = tmp_path / "corrupt"
    shutil.copytree(models["llama"], folder)
    file = folder / "model.safetensors"
    file.write_bytes(damage(file.read_bytes()))
    with pytest.raises(ModelLoadError, match="truncated or corrupt") as err:
        load(folder)
    assert str(file) in str(err.value) and reason in str(err.value)


def test_file_shrunk_after_opening_names_the_tensor(tmp_path, models):
    folder = tmp_path / "shrunk"
    shutil.copytree(models["llama"], folder)
    ckpt = load(folder)
    file = folder / "model.safetensors"
    file.write_bytes(file.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="tensor model.embed_tokens.weight is unreadable") as err:
        list(ckpt.tensors)
    assert str(file) in str(err.value)


# ---- GGUF ----------------------------------------------------------------------------------------------------------

def test_rope_row_permutation_round_trips():
    w = torch.arange(4 * 8 * 3, dtype=torch.float32).reshape(32, 3)
    assert torch.equal(unpermute_rope_rows(permute_rope_rows(w, 4), 4), w)
    assert not torch.equal(permute_rope_rows(w, 4), w)
    # within a head, interleaved pairs (x0, x_half, x1, x_half+1, ...) go back to halves
    head = torch.arange(8.0)
    assert unpermute_rope_rows(torch.tensor([0.0, 4, 1, 5, 2, 6, 3, 7]), 1).tolist() == head.tolist()


@pytest.mark.parametrize("arch, tie, bias", [("llama", False, False), ("llama", True, True), ("qwen2", True, False),
                                             ("mistral", False, False)])
def test_f32_gguf_round_trips_exactly(tmp_path, arch, tie, bias):
    """The GGUF writer permutes llama q/k rows like convert_hf_to_gguf.py; loading must give back HF's tensors."""
    hf_dir = make_hf_model(tmp_path, arch=arch, tie=tie, attention_bias=bias, n_kv_heads=2 if not bias else 4)
    ckpt = load(make_gguf_model(tmp_path, hf_dir=hf_dir, qtype="F32"))
    source = hf_state_dict(hf_dir)
    hf_config = load(hf_dir).config
    assert ckpt.config.arch == ("qwen2" if arch == "qwen2" else "llama")
    for field in ("dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "ffn_dim", "vocab_size", "norm_eps",
                  "rope_theta", "max_seq_len", "tie_embeddings", "qkv_bias", "o_bias"):
        assert getattr(ckpt.config, field) == getattr(hf_config, field), field
    names = []
    for name, tensor in ckpt.tensors:
        names.append(name)
        assert torch.equal(tensor, source[name]), name
    assert names == ckpt.tensor_names == list(expected_shapes(hf_config))


@pytest.mark.parametrize("qtype, tolerance", [("F16", 1e-3), ("BF16", 1e-2), ("Q8_0", 1e-2), ("Q4_0", 0.2)])
def test_quantized_gguf_is_close_to_the_source(tmp_path, qtype, tolerance):
    hf_dir = make_hf_model(tmp_path)
    source = hf_state_dict(hf_dir)
    path = make_gguf_model(tmp_path, hf_dir=hf_dir, qtype=qtype)
    for name, tensor in load(path).tensors:
        assert tensor.dtype == torch.float32
        assert (tensor - source[name]).abs().max() < tolerance, name
    for name, tensor in load(path, dtype=torch.float16).tensors:
        assert tensor.dtype == torch.float16, name


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_gguf_tensors_equal_transformers_gguf_loader(tmp_path, arch):
    """transformers' own GGUF reader (which undoes the llama permutation itself) is the independent oracle."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    path = make_gguf_model(tmp_path, arch=arch, qtype="Q8_0")
    config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    reference = load_gguf_checkpoint(path, return_tensors=True, model_to_load=skeleton)["tensors"]
    ckpt = load(path)
    assert set(reference) == set(ckpt.tensor_names)
    for name, tensor in ckpt.tensors:
        assert torch.equal(tensor, torch.as_tensor(reference[name])), name


def test_gguf_llama3_rope_scaling_is_recovered_from_rope_freqs(tmp_path):
    ckpt = load(make_gguf_model(tmp_path, rope_scaling=LLAMA3_ROPE))
    assert ckpt.config.rope_scaling["rope_type"] == "llama3"
    for key in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
        assert ckpt.config.rope_scaling[key] == pytest.approx(LLAMA3_ROPE[key], rel=1e-4), key
    assert "rope_freqs.weight" not in ckpt.tensor_names


def test_gguf_linear_rope_scaling(tmp_path):
    ckpt = load(make_gguf_model(tmp_path, rope_scaling={"rope_type": "linear", "factor": 4.0}))
    assert ckpt.config.rope_scaling == {"rope_type": "linear", "factor": 4.0}


def test_gguf_yarn_is_refused_by_name(tmp_path):
    path = make_gguf_model(tmp_path, rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                                   "original_max_position_embeddings": 64})
    with pytest.raises(UnsupportedModelError, match="yarn") as err:
        load(path)
    assert str(path) in str(err.value)


def test_gguf_metadata_is_plain_values(tmp_path):
    ckpt = load(make_gguf_model(tmp_path, tokenizer="bpe", vocab_size=300))
    meta = ckpt.metadata
    assert meta["general.architecture"] == "llama"
    assert meta["llama.block_count"] == 2 and isinstance(meta["llama.block_count"], int)
    assert isinstance(meta["llama.rope.freq_base"], float)
    assert isinstance(meta["tokenizer.ggml.tokens"], list) and len(meta["tokenizer.ggml.tokens"]) == 300
    assert all(isinstance(t, str) for t in meta["tokenizer.ggml.tokens"])
    assert all(isinstance(t, int) for t in meta["tokenizer.ggml.token_type"])
    assert meta["tokenizer.ggml.add_bos_token"] is False
    assert "<|im_start|>" in meta["tokenizer.chat_template"]
    assert ckpt.config.bos_token_id == 0 and ckpt.config.eos_token_ids == (2,)


@pytest.mark.parametrize("tokenizer", ["bpe", "sentencepiece"])
def test_gguf_header_parser_agrees_with_gguf_reader(tmp_path, tokenizer):
    """We parse the header ourselves (GGUFReader is slow on big vocabularies); the gguf package is the oracle."""
    import gguf

    path = make_gguf_model(tmp_path, qtype="Q8_0", tokenizer=tokenizer, vocab_size=300,
                           rope_scaling={"rope_type": "linear", "factor": 2.0})
    ours = GGUFFile(path)
    reader = gguf.GGUFReader(path)
    theirs = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert ours.metadata.keys() == theirs.keys()
    for key, value in theirs.items():
        assert ours.metadata[key] == (pytest.approx(value) if isinstance(value, (float, list)) and key.endswith(
            ("scores", "epsilon", "freq_base", "factor")) else value), key
    infos = {t.name: t for t in ours.infos.values()}
    for t in reader.tensors:
        if t.name in infos:
            assert (infos[t.name].offset, infos[t.name].n_bytes) == (t.data_offset, t.n_bytes), t.name
            assert infos[t.name].dims == tuple(int(d) for d in t.shape), t.name


def test_empty_gguf_file(tmp_path):
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty.gguf"):
        load(tmp_path / "empty.gguf")


def test_config_from_gguf_refuses_other_architectures():
    with pytest.raises(UnsupportedModelError, match="gemma"):
        config_from_gguf({"general.architecture": "gemma", "gemma.block_count": 2})


def test_config_from_gguf_refuses_partial_rotary():
    meta = {"general.architecture": "llama", "llama.embedding_length": 64, "llama.block_count": 1,
            "llama.attention.head_count": 4, "llama.feed_forward_length": 128, "llama.rope.dimension_count": 8,
            "tokenizer.ggml.tokens": ["a"] * 10}
    with pytest.raises(UnsupportedModelError, match="partial rotary"):
        config_from_gguf(meta)
    del meta["llama.rope.dimension_count"]
    config = config_from_gguf(meta)
    assert (config.head_dim, config.n_kv_heads, config.vocab_size) == (16, 4, 10)


def test_config_from_gguf_names_a_missing_key():
    with pytest.raises(ModelLoadError, match="llama.block_count"):
        config_from_gguf({"general.architecture": "llama", "llama.embedding_length": 64,
                          "llama.attention.head_count": 4, "tokenizer.ggml.tokens": ["a", "b"]})


def test_folder_with_a_single_gguf_loads_it(tmp_path):
    path = make_gguf_model(tmp_path)  # tmp_path holds it and its HF twin's folder, but no config.json
    assert load(tmp_path).path == path


# ---- tokenizers (the tokenizer package parses them; here we only check they are attached) ------------------------

def test_tokenizer_is_attached_for_folders_and_gguf(tmp_path):
    folder = make_hf_model(tmp_path, tokenizer="sentencepiece", vocab_size=256)
    ckpt = load_checkpoint(folder, dtype=torch.float32)
    assert ckpt.tokenizer is not None and ckpt.tokenizer.encode("the cat", bos=True)[0] == 1
    gguf_ckpt = load_checkpoint(make_gguf_model(tmp_path, hf_dir=folder, tokenizer="sentencepiece"),
                                dtype=torch.float32)
    assert gguf_ckpt.tokenizer.encode("the cat", bos=True) == ckpt.tokenizer.encode("the cat", bos=True)
    assert load(folder).tokenizer is None


# ---- bad input -----------------------------------------------------------------------------------------------------

def test_missing_path_says_how_to_download(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist") as err:
        load(tmp_path / "nope")
    assert "nope" in str(err.value) and "download_weights.py" in str(err.value)


def test_folder_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json") as err:
        load(tmp_path / "empty")
    assert "empty" in str(err.value)


def test_folder_without_weights(tmp_path, models):
    folder = tmp_path / "noweights"
    folder.mkdir()
    shutil.copy(models["llama"] / "config.json", folder)
    with pytest.raises(ModelLoadError, match="no model.safetensors"):
        load(folder)
    (folder / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="only .safetensors"):
        load(folder)


def test_not_a_model_file(tmp_path):
    (tmp_path / "weights.txt").write_text("hello")
    with pytest.raises(ModelLoadError, match="weights.txt"):
        load(tmp_path / "weights.txt")


def test_several_ggufs_in_a_folder_must_be_chosen(tmp_path):
    make_gguf_model(tmp_path, name="a.gguf")
    shutil.copy(tmp_path / "a.gguf", tmp_path / "b.gguf")
    with pytest.raises(ModelLoadError, match="a.gguf, b.gguf"):
        load(tmp_path)


def test_truncated_safetensors_names_the_file(tmp_path, models):
    folder = tmp_path / "trunc"
    shutil.copytree(models["llama"], folder)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated") as err:
        load(folder)
    assert str(folder / "model.safetensors") in str(err.value)


@pytest.mark.parametrize("keep", [0.5, 0.01])
def test_truncated_gguf_names_the_file(tmp_path, keep):
    path = make_gguf_model(tmp_path, qtype="Q8_0")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ModelLoadError, match="truncated") as err:
        load(path)
    assert str(path) in str(err.value)


def test_foreign_file_with_gguf_suffix(tmp_path):
    (tmp_path / "fake.gguf").write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ModelLoadError, match="fake.gguf"):
        load(tmp_path / "fake.gguf")


def test_shard_missing_from_disk(tmp_path, models):
    folder = tmp_path / "sharded"
    shutil.copytree(models["mistral_sharded"], folder)
    victim = sorted(folder.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(ModelLoadError, match=f"shard {victim.name} is listed but missing"):
        load(folder)


def test_tensor_listed_in_index_but_not_in_its_shard(tmp_path, models):
    folder = tmp_path / "sharded"
    shutil.copytree(models["mistral_sharded"], folder)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    first_shard = sorted(set(index["weight_map"].values()))[0]
    index["weight_map"]["model.norm.weight"] = first_shard
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="model.norm.weight") as err:
        load(folder)
    assert first_shard in str(err.value)


def test_missing_tensor_is_named(tmp_path, models):
    from safetensors.torch import save_file

    folder = tmp_path / "missing"
    shutil.copytree(models["llama"], folder)
    tensors = hf_state_dict(folder)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"missing tensor model\.layers\.1\.mlp\.up_proj\.weight") as err:
        load(folder)
    assert str(folder) in str(err.value)


def test_untied_config_without_lm_head_is_a_missing_tensor(tmp_path, models):
    folder = tmp_path / "untied"
    shutil.copytree(models["llama_tied"], folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["tie_word_embeddings"] = False
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="missing tensor lm_head.weight"):
        load(folder)


def test_shape_mismatch_names_tensor_and_both_shapes(tmp_path, models):
    folder = tmp_path / "wrongshape"
    shutil.copytree(models["llama"], folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match=r"model\.layers\.0\.mlp\.gate_proj\.weight has shape \[128, 64\], "
                                             r"expected \[96, 64\]"):
        load(folder)


def test_gguf_missing_tensor_is_named(tmp_path):
    path = make_gguf_model(tmp_path, drop=("blk.1.ffn_up.weight",))
    with pytest.raises(ModelLoadError, match=r"missing tensor model\.layers\.1\.mlp\.up_proj\.weight") as err:
        load(path)
    assert str(path) in str(err.value)


def test_gguf_unsupported_architecture_names_it_and_the_file(tmp_path):
    path = make_gguf_model(tmp_path, gguf_arch="gemma")
    with pytest.raises(UnsupportedModelError, match="'gemma'") as err:
        load(path)
    assert str(path) in str(err.value)


def test_bad_dtype_and_device(models):
    with pytest.raises(ModelLoadError, match="dtype"):
        load(models["llama"], dtype=torch.int8)
    with pytest.raises(ModelLoadError, match="device"):
        load(models["llama"], device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="CUDA is not available"):
            load(models["llama"], device="cuda")


def test_expected_shapes_follow_the_config():
    config = ModelConfig(arch="qwen2", dim=64, n_layers=1, n_heads=4, n_kv_heads=2, head_dim=16, ffn_dim=96,
                         vocab_size=100, qkv_bias=True, tie_embeddings=True)
    shapes = expected_shapes(config)
    assert shapes["model.layers.0.self_attn.k_proj.bias"] == (32,)
    assert shapes["model.layers.0.mlp.down_proj.weight"] == (64, 96)
    assert "lm_head.weight" not in shapes and len(shapes) == 2 + 12 + 0
