"""Flax NNX decoder of the Llama/Qwen2 family, presets, and HF safetensors import/export."""

from mixjax.model.config import PRESETS, ModelConfig, get_config
from mixjax.model.decoder import Decoder, init_model
from mixjax.model.hf import is_hf_dir, load_hf, load_hf_config, save_hf

__all__ = ["PRESETS", "ModelConfig", "get_config", "Decoder", "init_model", "is_hf_dir", "load_hf",
           "load_hf_config", "save_hf"]
