"""Mesh and shardings, train/eval steps, per-domain losses, optimizer, checkpoints, the loop."""

from mixjax.train.loop import Callback, RunContext, StepInfo, TrainConfig, export_hf, run_training

__all__ = ["Callback", "RunContext", "StepInfo", "TrainConfig", "export_hf", "run_training"]
