"""HF interop: logits parity with transformers (PyTorch CPU), packed-segment parity, round trips."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mixjax.errors import MixjaxError
from mixjax.model import ModelConfig, init_model, load_hf, load_hf_config, save_hf

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _hf_model(arch: str, tie: bool, scaling: bool = False):
    torch.manual_seed(0)
    common = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  rms_norm_eps=1e-6, tie_word_embeddings=tie, attn_implementation="eager")
    if arch == "llama":
        rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16, "rope_theta": 500000.0} if scaling else \
            {"rope_type": "default", "rope_theta": 10000.0}
        cfg = transformers.LlamaConfig(**common, rope_parameters=rope)
        model = transformers.LlamaForCausalLM(cfg)
    else:
        cfg = transformers.Qwen2Config(**common, rope_parameters={"rope_type": "default", "rope_theta": 1e6})
        model = transformers.Qwen2ForCausalLM(cfg)
    with torch.no_grad():  # random biases and norm weights, so they are really exercised
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.float().eval()


def _hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(tokens, dtype=torch.long)).logits.numpy()


@pytest.mark.parametrize("arch,tie,scaling", [("llama", False, False), ("llama", True, True),
                                              ("qwen2", True, False), ("qwen2", False, False)])
def test_logits_parity_with_transformers(tmp_path, arch, tie, scaling):
    hf = _hf_model(arch, tie, scaling)
    hf.save_pretrained(tmp_path / "hf")
    cfg = load_hf_config(tmp_path / "hf")
    assert cfg.arch == arch and cfg.tie_embeddings == tie and cfg.qkv_bias == (arch == "qwen2")
    model = load_hf(tmp_path / "hf")
    tokens = np.random.default_rng(0).integers(0, 97, size=(2, 40))
    ours = np.asarray(model(jnp.asarray(tokens, jnp.int32)))
    ref = _hf_logits(hf, tokens)
    assert np.max(np.abs(ours - ref)) < 1e-4


@pytest.mark.slow
def test_packed_segments_match_separate_sequences(tmp_path):
    hf = _hf_model("qwen2", True)
    hf.save_pretrained(tmp_path / "hf")
    model = load_hf(tmp_path / "hf")
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 97, size=13), rng.integers(0, 97, size=9)
    row = np.concatenate([a, b, np.zeros(10, int)])[None]
    seg = np.array([[1] * 13 + [2] * 9 + [0] * 10])
    pos = np.array([list(range(13)) + list(range(9)) + list(range(10))])
    ours = np.asarray(model(jnp.asarray(row, jnp.int32), jnp.asarray(pos, jnp.int32), jnp.asarray(seg, jnp.int32)))
    assert np.max(np.abs(ours[0, :13] - _hf_logits(hf, a[None])[0])) < 1e-4
    assert np.max(np.abs(ours[0, 13:22] - _hf_logits(hf, b[None])[0])) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_export_import_identity_and_transformers_reads_export(tmp_path, arch):
    cfg = ModelConfig(vocab_size=50, dim=32, n_layers=2, n_heads=4, n_kv_heads=1, hidden_dim=48,
                      arch=arch, qkv_bias=arch == "qwen2", tie_embeddings=arch == "llama",
                      rope_theta=5e5)
    model = init_model(cfg, seed=3)
    if cfg.qkv_bias:  # non-zero biases
        bias = model.layers.attn.q_bias_HxE  # [n_layers, H, E]
        bias[...] = jax.random.normal(jax.random.key(1), bias.shape)
    save_hf(model, tmp_path / "out")
    again = load_hf(tmp_path / "out")
    assert again.cfg == cfg
    a = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    b = nnx.to_pure_dict(nnx.state(again, nnx.Param))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager").float().eval()
    tokens = np.random.default_rng(2).integers(0, 50, size=(1, 17))
    ours = np.asarray(model(jnp.asarray(tokens, jnp.int32)))
    assert np.max(np.abs(ours - _hf_logits(hf, tokens))) < 1e-4


def test_bad_hf_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(MixjaxError, match="unsupported architecture"):
        load_hf_config(tmp_path)
    cfg = ModelConfig(vocab_size=50, dim=32, n_layers=1, n_heads=4, n_kv_heads=2, hidden_dim=48)
    save_hf(init_model(cfg), tmp_path / "m")
    with pytest.raises(MixjaxError, match="does not match"):
        load_hf(tmp_path / "m", expect=cfg.replace(n_layers=2))
