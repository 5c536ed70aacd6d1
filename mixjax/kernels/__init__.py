"""Accelerator kernels, apart from the layers that call them (`mixjax.model.attention` picks one)."""
