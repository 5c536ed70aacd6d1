"""Hugging Face interop: a local directory with config.json + *.safetensors (LlamaForCausalLM,
Qwen2ForCausalLM) to a `Decoder` and back. No torch or transformers needed."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from mixjax.errors import MixjaxError
from mixjax.model.config import ModelConfig
from mixjax.model.decoder import Decoder

ARCHS = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}


def is_hf_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / "config.json").is_file()


def config_from_hf(hf: dict[str, Any], where: str = "config.json") -> ModelConfig:
    archs = hf.get("architectures") or []
    arch = next((ARCHS[a] for a in archs if a in ARCHS), None)
    if arch is None:
        arch = {"llama": "llama", "qwen2": "qwen2"}.get(hf.get("model_type", ""))
    if arch is None:
        raise MixjaxError(f"{where}: unsupported architecture {archs or hf.get('model_type')} "
                          f"(supported: {', '.join(ARCHS)})")
    if hf.get("hidden_act", "silu") != "silu":
        raise MixjaxError(f"{where}: hidden_act {hf['hidden_act']!r} is not supported (silu)")
    if hf.get("mlp_bias"):
        raise MixjaxError(f"{where}: mlp_bias is not supported")
    if arch == "llama" and hf.get("attention_bias"):
        raise MixjaxError(f"{where}: attention_bias is not supported for llama")
    if arch == "qwen2" and hf.get("use_sliding_window"):
        raise MixjaxError(f"{where}: use_sliding_window is not supported")
    rope = dict(hf.get("rope_parameters") or {})
    theta = hf.get("rope_theta", rope.get("rope_theta", 10000.0))
    scaling = hf.get("rope_scaling") or {k: v for k, v in rope.items() if k != "rope_theta"}
    rtype = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if rtype not in ("default", "llama3"):
        raise MixjaxError(f"{where}: rope scaling {rtype!r} is not supported (default, llama3)")
    if rtype == "llama3":
        scaling = {k: scaling[k] for k in ("rope_type", "factor", "low_freq_factor", "high_freq_factor",
                                           "original_max_position_embeddings")} | {"rope_type": "llama3"}
    else:
        scaling = None
    heads = int(hf["num_attention_heads"])
    try:
        return ModelConfig(
            vocab_size=int(hf["vocab_size"]), dim=int(hf["hidden_size"]),
            n_layers=int(hf["num_hidden_layers"]), n_heads=heads,
            n_kv_heads=int(hf.get("num_key_value_heads") or heads),
            hidden_dim=int(hf["intermediate_size"]),
            head_dim=int(hf.get("head_dim") or hf["hidden_size"] // heads),
            arch=arch, rope_theta=float(theta), rope_scaling=scaling,
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)), qkv_bias=(arch == "qwen2"),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            max_seq_len=int(hf.get("max_position_embeddings", 4096)))
    except KeyError as e:
        raise MixjaxError(f"{where}: missing field {e.args[0]!r}") from None


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[cfg.arch]
    d = {
        "architectures": [arch], "model_type": cfg.arch, "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim, "intermediate_size": cfg.hidden_dim,
        "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim, "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta, "rope_scaling": cfg.rope_scaling_dict,
        "tie_word_embeddings": cfg.tie_embeddings, "initializer_range": cfg.init_std,
        "torch_dtype": "float32", "use_cache": True,
    }
    if cfg.arch == "llama":
        d.update(attention_bias=False, mlp_bias=False)
    else:
        d.update(use_sliding_window=False)
    return d


def _read_tensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise MixjaxError(f"{path}: no *.safetensors files")
    out = {}
    for f in files:
        with safe_open(str(f), framework="flax") as fh:
            for name in fh.keys():
                out[name] = np.asarray(fh.get_tensor(name).astype(jnp.float32))
    return out


def _hf_names(cfg: ModelConfig) -> dict[tuple, tuple[str, str]]:
    """(path in the nnx state, layer index or None) -> (HF tensor name, how to convert). Layer
    parameters are stacked [n_layers, ...] in the state; HF keeps one tensor per layer."""
    m: dict[tuple, tuple[str, str]] = {(("embed_VxD",), None): ("model.embed_tokens.weight", "id"),
                                       (("norm", "weight"), None): ("model.norm.weight", "id")}
    if not cfg.tie_embeddings:
        m[(("lm_head_DxV",), None)] = ("lm_head.weight", "T")
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        m[(("layers", "attn_norm", "weight"), i)] = (p + "input_layernorm.weight", "id")
        m[(("layers", "mlp_norm", "weight"), i)] = (p + "post_attention_layernorm.weight", "id")
        for n in "qkv":
            m[(("layers", "attn", f"{n}_Dx{'H' if n == 'q' else 'K'}xE"), i)] = (p + f"self_attn.{n}_proj.weight", "in_heads")
            if cfg.qkv_bias:
                m[(("layers", "attn", f"{n}_bias_{'H' if n == 'q' else 'K'}xE"), i)] = (p + f"self_attn.{n}_proj.bias", "heads")
        m[(("layers", "attn", "o_HxExD"), i)] = (p + "self_attn.o_proj.weight", "out_heads")
        m[(("layers", "mlp", "gate_DxF"), i)] = (p + "mlp.gate_proj.weight", "T")
        m[(("layers", "mlp", "up_DxF"), i)] = (p + "mlp.up_proj.weight", "T")
        m[(("layers", "mlp", "down_FxD"), i)] = (p + "mlp.down_proj.weight", "T")
    return m


def _from_hf(w: np.ndarray, how: str, shape: tuple) -> np.ndarray:
    if how == "id":
        return w.reshape(shape)
    if how == "T":
        return w.T
    if how == "in_heads":  # [N*E, D] -> [D, N, E]
        return w.T.reshape(shape)
    if how == "heads":  # [N*E] -> [N, E]
        return w.reshape(shape)
    if how == "out_heads":  # [D, H*E] -> [H, E, D]
        return w.T.reshape(shape)
    raise AssertionError(how)


def _to_hf(a: np.ndarray, how: str) -> np.ndarray:
    if how in ("id", "heads"):
        return a.reshape(-1) if how == "heads" or a.ndim == 1 else a
    if how == "T":
        return a.T
    if how == "in_heads":  # [D, N, E] -> [N*E, D]
        return a.reshape(a.shape[0], -1).T
    if how == "out_heads":  # [H, E, D] -> [D, H*E]
        return a.reshape(-1, a.shape[-1]).T
    raise AssertionError(how)


def _get(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def _set(tree, path, value):
    for k in path[:-1]:
        tree = tree[k]
    tree[path[-1]] = value


def load_hf_config(path: str | os.PathLike) -> ModelConfig:
    path = Path(path)
    try:
        hf = json.loads((path / "config.json").read_text())
    except FileNotFoundError:
        raise MixjaxError(f"{path}: no config.json (not a Hugging Face model directory)") from None
    except json.JSONDecodeError as e:
        raise MixjaxError(f"{path / 'config.json'}: not valid JSON ({e})") from None
    return config_from_hf(hf, str(path / "config.json"))


def load_hf(path: str | os.PathLike, expect: ModelConfig | None = None) -> Decoder:
    """A `Decoder` (float32 parameters) from a local HF directory.

    With `expect`, the directory's configuration must have the same shapes (else MixjaxError).
    """
    path = Path(path)
    cfg = load_hf_config(path)
    if expect is not None:
        diff = [k for k in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim",
                            "head_dim", "arch", "qkv_bias", "tie_embeddings")
                if getattr(cfg, k) != getattr(expect, k)]
        if diff:
            raise MixjaxError(f"{path}/config.json does not match the model: "
                              + ", ".join(f"{k}={getattr(cfg, k)} (expected {getattr(expect, k)})" for k in diff))
        cfg = expect
    tensors = _read_tensors(path)
    model = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
    state = nnx.state(model, nnx.Param)
    pure = nnx.to_pure_dict(state)
    stacked: dict[tuple, np.ndarray] = {}
    for (spath, layer), (name, how) in _hf_names(cfg).items():
        if name not in tensors:
            raise MixjaxError(f"{path}: tensor {name!r} missing from the safetensors files")
        shape = _get(pure, spath).shape
        shape = shape if layer is None else shape[1:]
        hf_shape = tensors[name].shape
        try:
            w = _from_hf(tensors.pop(name), how, shape)
        except ValueError:  # a reshape to the config's shape failed
            w = None
        if w is None or w.shape != tuple(shape):
            raise MixjaxError(f"{path}: tensor {name!r} has shape {hf_shape}, config implies {shape}")
        if layer is None:
            _set(pure, spath, jnp.asarray(w, jnp.float32))
        else:
            stacked.setdefault(spath, np.zeros(_get(pure, spath).shape, np.float32))[layer] = w
    for spath, a in stacked.items():
        _set(pure, spath, jnp.asarray(a))
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(model, state)
    return model


def save_hf(model: Decoder, path: str | os.PathLike, dtype: str = "float32") -> Path:
    """Write config.json + model.safetensors (atomically: a temporary directory, then renamed)."""
    from safetensors.flax import save_file

    path = Path(path)
    cfg = model.cfg
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    tensors = {}
    for (spath, layer), (name, how) in _hf_names(cfg).items():
        a = np.asarray(_get(pure, spath), np.float32)
        a = a if layer is None else a[layer]
        tensors[name] = jnp.asarray(np.ascontiguousarray(_to_hf(a, how)), dtype)
    hfcfg = config_to_hf(cfg)
    hfcfg["torch_dtype"] = dtype
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".tmp", dir=path.parent))
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(hfcfg, indent=2) + "\n")
    if path.exists():
        old = path.with_name(path.name + ".old")
        os.replace(path, old)
        os.replace(tmp, path)
        import shutil
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)
    return path
