"""Mesh and shardings, train/eval steps, per-domain losses, optimizer, checkpoints, the loop."""

from mixjax.train.loop import (FINAL_CHECKPOINT_ONLY, Callback, RunContext, StepInfo, TrainConfig, export_hf,
                               run_training)

__all__ = ["FINAL_CHECKPOINT_ONLY", "Callback", "RunContext", "StepInfo", "TrainConfig", "export_hf",
           "run_training"]
