"""Kernels, apart from the layers that call them (the decoder in `mixjax.model`).

registry: the attention implementations, stated once (names, backends, what 'auto' picks), no JAX.
attention: resolving a name for the traced backend, and `packed_attention`, the one entry to
    blockwise (pure JAX flash attention), pallas (flash_gqa_gpu, our Triton kernel; splash on TPU)
    and cudnn (jax.nn.dot_product_attention); reference_attention, the textbook form for tests.
plain: the decoder's 'plain' attention (causal query blocks), cpu: the CPU custom VJPs (matmul,
    attention core) whose dots XLA CPU runs fast; platform: the backend and mesh being traced for.
"""
