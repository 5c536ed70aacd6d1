"""The 'cudnn' implementation: `jax.nn.dot_product_attention(implementation="cudnn")`.

is_causal and the segment equality as one boolean [B, 1, L, S] mask shared by all heads (the public
API has no segment ids). cuDNN turns the mask into a [B, 1, L, S] bias and its backward writes a
dense dbias of that shape, so this path holds O(B L^2) (not per head), the dbias transiently in each
layer's backward. bfloat16/float16 only (cuDNN's flash attention takes nothing else).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mixjax.kernels.padding import pad_to, round_up


def cudnn_status() -> str | None:
    """None when cuDNN flash attention can run here, else why not (a few words)."""
    try:
        dev = jax.devices("gpu")[0]
    except RuntimeError:
        return "no GPU"
    cc = getattr(dev, "compute_capability", None)
    try:
        major_minor = tuple(int(x) for x in str(cc).split("."))
    except ValueError:
        return "not a CUDA GPU"
    if major_minor < (8, 0):
        return f"compute capability {cc} < 8.0"
    try:
        from jax._src.lib import cuda_versions
        version = cuda_versions.cudnn_get_version() if cuda_versions is not None else None
    except Exception:  # noqa: BLE001  (private module; any failure means no cuDNN we can use)
        version = None
    return None if version else "cuDNN not found"


def cudnn_attention(q_BxLxHxE, k_BxSxKxE, v_BxSxKxE, segment_ids_BxL, scale, implementation):
    """jax.nn.dot_product_attention with is_causal and the segment equality as one [B, 1, L, S]
    boolean mask (every head and layer shares it). cuDNN wants even lengths when it has a bias
    (the mask becomes one): an odd length gets one padding position (segment -1, after every
    real query, so unseen)."""
    l = q_BxLxHxE.shape[1]
    lp = round_up(l, 2)
    seg_BxL = pad_to(segment_ids_BxL.astype(jnp.int32), lp, -1)
    same_Bx1xLxS = (seg_BxL[:, :, None] == seg_BxL[:, None, :])[:, None]
    o = jax.nn.dot_product_attention(pad_to(q_BxLxHxE, lp), pad_to(k_BxSxKxE, lp), pad_to(v_BxSxKxE, lp),
                                     mask=same_Bx1xLxS, scale=scale, is_causal=True,
                                     implementation=implementation)
    return o[:, :l]
