"""Decoder configuration and named presets (tiny CPU models up to real Llama/Qwen2 shapes)."""

from __future__ import annotations

import dataclasses
from typing import Any

from mixjax.errors import MixjaxError
from mixjax.kernels import registry

REMAT_POLICIES = ("none", "dots", "full")
EXECUTION_FIELDS = ("attention", "remat", "scan_layers", "shard_activations", "attn_blocks")
SCAN_ABOVE_LAYERS = 4  # scan_layers=None: unroll up to this many layers (compiles fast, runs faster)


def check_execution(attention: str | None = None, remat: str | None = None) -> None:
    """One-line errors for an unknown `attention` or `remat` (None: not given)."""
    if attention is not None:
        registry.check_name(attention)
    if remat is not None and remat not in REMAT_POLICIES:
        raise MixjaxError(f"`remat` {remat!r}: expected one of {', '.join(REMAT_POLICIES)}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape of a Llama/Qwen2-family decoder.

    `arch` is "llama" or "qwen2" (Qwen2 = Llama with biases on q/k/v). `rope_scaling` is None or
    the HF "llama3" dict (factor, low_freq_factor, high_freq_factor, original_max_position_embeddings).
    `embed_impl`: how token ids become vectors - "take" (gather; scatter-add gradient) or "onehot"
    (a one-hot matmul, whose gradient is a matmul too: much faster on CPU for small vocabularies);
    "auto" picks one-hot when vocab_size <= 4096.
    """

    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    hidden_dim: int
    head_dim: int | None = None
    arch: str = "llama"
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] | None = None  # a dict is accepted and frozen
    norm_eps: float = 1e-5
    qkv_bias: bool = False
    tie_embeddings: bool = True
    max_seq_len: int = 4096
    init_std: float = 0.02
    embed_impl: str = "auto"
    attn_blocks: int = 0  # causal query blocks in the plain CPU attention; 0 = auto (sequence length / 64, at most 8)
    # How the step computes, not what the model is (any value gives the same function):
    attention: str = "auto"   # see mixjax.kernels.registry; auto picks per backend
    remat: str = "none"       # none | dots | full: what the backward recomputes (jax.checkpoint policy)
    # layers under one scan (compile time flat in depth) or unrolled; None = scan deeper models
    # than SCAN_ABOVE_LAYERS (scanning all put tiny and small at 0.92x and 0.81x on the CPU, README)
    scan_layers: bool | None = None
    # split activations over the batch axes at layer boundaries (see decoder.shard_over_batch):
    # at 4096 tokens per device a must (llama-3.1-8b, remat dots: 164 -> 45 GiB per device), at
    # 32 it costs 4x (qwen2.5-0.5b, fsdp 8: 0.5 -> 1.8 GiB of temporaries per device)
    shard_activations: bool = True

    def __post_init__(self):
        if isinstance(self.rope_scaling, dict):
            object.__setattr__(self, "rope_scaling", tuple(sorted(self.rope_scaling.items())))
        elif self.rope_scaling is not None:
            object.__setattr__(self, "rope_scaling", tuple(tuple(kv) for kv in self.rope_scaling))
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)
        if self.n_heads % self.n_kv_heads:
            raise MixjaxError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.arch not in ("llama", "qwen2"):
            raise MixjaxError(f"unknown architecture {self.arch!r} (llama or qwen2)")
        check_execution(self.attention, self.remat)
        if self.embed_impl not in ("auto", "take", "onehot"):
            raise MixjaxError(f"unknown embed_impl {self.embed_impl!r} (auto, take or onehot)")

    @property
    def scanned(self) -> bool:
        """Whether the decoder scans its layers (`scan_layers`, or by depth when None)."""
        return self.n_layers > SCAN_ABOVE_LAYERS if self.scan_layers is None else bool(self.scan_layers)

    @property
    def use_onehot_embed(self) -> bool:
        return self.embed_impl == "onehot" or (self.embed_impl == "auto" and self.vocab_size <= 4096)

    def shape_dict(self) -> dict[str, Any]:
        """`to_dict` without the fields that only change how the step computes (attention,
        remat, scanning): two configs with equal shape_dicts have interchangeable parameters."""
        return {k: v for k, v in self.to_dict().items() if k not in EXECUTION_FIELDS}

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)

    @property
    def rope_scaling_dict(self) -> dict[str, Any] | None:
        return dict(self.rope_scaling) if self.rope_scaling else None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["rope_scaling"] = self.rope_scaling_dict
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def num_params(self) -> int:
        d, hd = self.dim, self.head_dim
        attn = d * hd * (self.n_heads * 2 + self.n_kv_heads * 2)
        if self.qkv_bias:
            attn += hd * (self.n_heads + 2 * self.n_kv_heads)
        layer = attn + 3 * d * self.hidden_dim + 2 * d
        emb = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return self.n_layers * layer + emb + d

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (6N for matmul weights, embedding lookup excluded, + attention)."""
        d, hd = self.dim, self.head_dim
        n_mat = self.n_layers * (d * hd * (self.n_heads * 2 + self.n_kv_heads * 2) + 3 * d * self.hidden_dim)
        n_mat += self.vocab_size * d  # lm head
        attn = self.n_layers * 2 * 2 * self.n_heads * hd * seq_len / 2  # causal half, qk + pv
        return 6 * n_mat + 3 * attn


_LLAMA3_SCALING = {"rope_type": "llama3", "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192}

# vocab_size None = taken from the data (byte tokenizer etc.).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(vocab_size=None, dim=128, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=512,
                 max_seq_len=2048),
    "small": dict(vocab_size=None, dim=256, n_layers=4, n_heads=8, n_kv_heads=4, hidden_dim=768,
                  max_seq_len=2048),
    "base": dict(vocab_size=None, dim=512, n_layers=8, n_heads=8, n_kv_heads=4, hidden_dim=1536,
                 max_seq_len=4096),
    "1b": dict(vocab_size=None, dim=2048, n_layers=16, n_heads=16, n_kv_heads=8, hidden_dim=5632,
               max_seq_len=4096, rope_theta=500000.0),
    "qwen2.5-0.5b": dict(vocab_size=151936, dim=896, n_layers=24, n_heads=14, n_kv_heads=2,
                         hidden_dim=4864, arch="qwen2", qkv_bias=True, rope_theta=1000000.0,
                         norm_eps=1e-6, tie_embeddings=True, max_seq_len=32768),
    "qwen2.5-1.5b": dict(vocab_size=151936, dim=1536, n_layers=28, n_heads=12, n_kv_heads=2,
                         hidden_dim=8960, arch="qwen2", qkv_bias=True, rope_theta=1000000.0,
                         norm_eps=1e-6, tie_embeddings=True, max_seq_len=32768),
    "llama-3.2-3b": dict(vocab_size=128256, dim=3072, n_layers=28, n_heads=24, n_kv_heads=8,
                         hidden_dim=8192, rope_theta=500000.0, norm_eps=1e-5, tie_embeddings=True,
                         rope_scaling={**_LLAMA3_SCALING, "factor": 32.0}, max_seq_len=131072),
    "llama-3.1-8b": dict(vocab_size=128256, dim=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                         hidden_dim=14336, rope_theta=500000.0, norm_eps=1e-5, tie_embeddings=False,
                         rope_scaling={**_LLAMA3_SCALING, "factor": 8.0}, max_seq_len=131072),
}


def get_config(name: str, vocab_size: int | None = None, **overrides) -> ModelConfig:
    """A preset by name. Presets without a vocabulary take `vocab_size` (the data's)."""
    if name not in PRESETS:
        raise MixjaxError(f"unknown model preset {name!r} (known: {', '.join(PRESETS)}; or a HF directory)")
    kw = dict(PRESETS[name])
    if kw["vocab_size"] is None:
        if vocab_size is None:
            raise MixjaxError(f"preset {name!r} needs a vocab_size (taken from the prepared data)")
        kw["vocab_size"] = int(vocab_size)
    elif vocab_size is not None and vocab_size > kw["vocab_size"]:
        raise MixjaxError(f"preset {name!r} has vocab_size {kw['vocab_size']} < the data's {vocab_size}")
    kw.update(overrides)
    return ModelConfig(**kw)
