"""Runs an online method inside `mixjax.train.run_training` as a trainer callback.

Before the first step it asks the method for the weights of step 0; after every step it passes
the per-domain training losses, evaluates when the method asks (on at most `eval_max_batches`
validation batches per domain, since online methods evaluate often), and sets the sampler's
weights for the next step. The method's state and the weight trajectory go into checkpoints, and
at the end into result.json's "online" entry (with the weights the method recommends), so a
finished proxy run can be reused without its callback.
"""

from __future__ import annotations

import numpy as np

from mixjax.errors import MixjaxError

from mixjax.train.loop import Callback


class OnlineMethodCallback(Callback):
    def __init__(self, method, eval_max_batches: int | None = 4, log=print):
        self.method, self.log = method, log
        self.eval_max_batches = eval_max_batches
        self.trajectory: list[tuple[int, list[float]]] = []
        self.evaluations = 0

    def _evaluate(self, ctx) -> np.ndarray:
        self.evaluations += 1
        val = ctx.evaluate(max_batches=self.eval_max_batches)
        undefined = [d for d in ctx.domains if not np.isfinite(val[d])]
        if undefined:  # a NaN would silently stop the method from learning anything
            raise MixjaxError(f"validation loss of {', '.join(undefined)} is undefined: the "
                              f"{self.eval_max_batches} validation batch(es) per domain the method evaluates "
                              "hold no loss tokens; evaluate more batches (eval_max_batches)")
        return np.array([val[d] for d in ctx.domains], np.float64)

    def _record(self, step: int, weights: np.ndarray) -> None:
        """A trajectory point where the method's weights change. A method that probes other
        mixtures (`probing`, Aioli's LearnParams) records its own weights, the probe beside them,
        so the trajectory's weights end at the weights it reports."""
        probe = None
        if self.method.probing(step):
            probe, weights = weights.tolist(), np.asarray(self.method.current_weights(), np.float64)
        point = (step, weights.tolist()) if probe is None else (step, weights.tolist(), probe)
        last = self.trajectory[-1] if self.trajectory else None
        if last is None or len(last) != len(point) or any(
                not np.allclose(old, new, rtol=0, atol=1e-12) for old, new in zip(last[1:], point[1:])):
            self.trajectory.append(point)

    def _set_weights(self, ctx, step: int) -> None:
        """The method's weights for batch `step`: the sampler's, or, for a method that samples at
        other proportions (`sampling_weights`, the reweighted proxies), the trainer's loss weights."""
        weights = np.asarray(self.method.weights(step), np.float64)
        self._record(step, weights)
        sampling = self.method.sampling_weights(step)
        if sampling is None:
            ctx.sampler.set_weights(weights / weights.sum())
        else:
            ctx.sampler.set_weights(np.asarray(sampling, np.float64) / np.sum(sampling))
            ctx.loss_weights = weights / weights.sum()

    def on_train_start(self, ctx) -> None:
        self.domains, self.num_steps = list(ctx.domains), int(ctx.num_steps)
        self.method.begin(self.domains, self.num_steps)
        if self.method.note:
            self.log(self.method.note)
        if self.method.eval_due(0):
            self.method.observe_eval(0, self._evaluate(ctx))
        self._set_weights(ctx, 0)

    def on_step(self, ctx, info) -> None:
        done = info.steps_done  # also the (0-based) step the next batch is drawn for
        self.method.observe_train(done - 1, np.array([info.train_loss[d] for d in ctx.domains], np.float64))
        if self.method.eval_due(done):
            self.method.observe_eval(done, self._evaluate(ctx))
        if done < ctx.num_steps:
            self._set_weights(ctx, done)

    def recommended_weights(self) -> np.ndarray:
        """The method's `final_weights()` (the last, or an average over the run)."""
        return np.asarray(self.method.final_weights(), np.float64)

    def on_train_end(self, ctx, result: dict) -> dict:
        return {"online": {"method": self.method.name, "evaluations": self.evaluations,
                           "weights": dict(zip(self.domains, self.recommended_weights().tolist())),
                           "state": self.method.state_dict(),
                           "trajectory": [self._point(*p) for p in self.trajectory]}}

    def _point(self, step: int, weights: list[float], probe: list[float] | None = None) -> dict:
        point = {"step": step, "weights": dict(zip(self.domains, weights))}
        if probe is not None:
            point["learnparams"] = dict(zip(self.domains, probe))  # the mixture this step sampled
        return point

    def state_dict(self) -> dict:
        return {"domains": self.domains, "num_steps": self.num_steps, "method": self.method.state_dict(),
                "trajectory": self.trajectory, "evaluations": self.evaluations}

    def load_state_dict(self, state: dict) -> None:
        self.domains, self.num_steps = state["domains"], state["num_steps"]
        self.method.begin(self.domains, self.num_steps)
        self.method.load_state_dict(state["method"])
        self.trajectory = [(p[0], list(p[1]), *(list(x) for x in p[2:])) for p in state["trajectory"]]
        self.evaluations = state["evaluations"]
