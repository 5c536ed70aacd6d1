"""Mesh and shardings, train/eval steps, per-domain losses, optimizer, checkpoints, the loop."""

from mixjax.train.config import FINAL_CHECKPOINT_ONLY, TrainConfig
from mixjax.train.loop import Callback, RunContext, StepInfo, export_hf, run_training

__all__ = ["FINAL_CHECKPOINT_ONLY", "Callback", "RunContext", "StepInfo", "TrainConfig", "export_hf",
           "run_training"]
