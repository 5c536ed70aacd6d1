"""The training loop end to end on a small prepared data set: result.json, per-domain losses,
callbacks that change the mixture, exact resume after a kill, best checkpoint, --init, errors."""

import json
import math

import numpy as np
import pytest

from mixjax.cli import main
from mixjax.errors import MixjaxError
from mixjax.train import Callback, TrainConfig, run_training
from mixjax.train.metrics import read_metrics
from mixjax.train.optim import learning_rate
from tests.data_fixtures import prepared_letters

# One model/batch shape for every test here, so the compiled step is shared (a process-wide cache).
SHAPE = dict(model="tiny", batch_size=8, seq_len=64, progress=False,
             model_overrides={"n_layers": 1, "dim": 64, "hidden_dim": 128})
BATCH = 8 * 64


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return prepared_letters(tmp_path_factory.mktemp("train_data"), 200)


@pytest.fixture(scope="module")
def data(data_dir):
    from mixjax.data.prepared import PreparedData
    return PreparedData(data_dir)


def test_cli_train_writes_result(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--data", str(data_dir), "--weights", "a=0.25,b=0.25,c=0.5", "--budget-tokens", str(6 * BATCH),
               "--out", str(out), "--batch-size", "8", "--seq-len", "64", "--quiet", "--model", "tiny",
               "--eval-every", "3"])
    assert rc == 0
    res = json.loads((out / "result.json").read_text())
    assert res["steps"] == 6 and sum(res["tokens"].values()) == 6 * BATCH
    # tokens follow the weights exactly (the sampler allocates cumulative targets)
    assert res["tokens"]["c"] == 3 * BATCH and res["tokens"]["a"] == res["tokens"]["b"] == 1.5 * BATCH
    assert set(res["val_loss"]) == {"a", "b", "c"} and all(0 < v < 10 for v in res["val_loss"].values())
    assert [h["step"] for h in res["val_history"]] == [3, 6]
    assert res["config"]["batch_size"] == 8 and res["timings"]["total_s"] > 0
    lines = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in lines if "loss" in r] == list(range(1, 7))


def test_cli_train_takes_the_weights_of_its_budget_and_says_so(data_dir, tmp_path, capsys):
    """A weights file of several budgets (`mixjax optimize --budget A --budget B`) gives train the
    result of --budget-tokens, printed and recorded; a budget it lacks is a one-line refusal."""
    weights = tmp_path / "weights.json"
    results = [{"budget": 4 * BATCH, "weights": {"a": 0.5, "b": 0.25, "c": 0.25}},
               {"budget": 2 * BATCH, "weights": {"a": 0.125, "b": 0.125, "c": 0.75}}]
    weights.write_text(json.dumps({"law": "li2025", "domains": ["a", "b", "c"], "results": results}))
    common = ["--batch-size", "8", "--seq-len", "64", "--quiet", "--model", "tiny", "--eval-max-batches", "1"]
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(["train", "--data", str(data_dir), "--weights", str(weights), "--budget-tokens", str(2 * BATCH),
                 "--out", str(out), *common]) == 0
    printed = capsys.readouterr().out
    assert f"weights: a=0.1250, b=0.1250, c=0.7500 (from {weights}, optimised for 1,024 tokens)" in printed
    assert "model: tiny from random weights (no --init); to fine-tune a pre-trained model pass --init" in printed
    res = json.loads((out / "result.json").read_text())
    assert res["weights"] == results[1]["weights"] and res["tokens"]["c"] == 1.5 * BATCH
    assert res["weights_from"] == {"file": str(weights), "budget": 2 * BATCH}

    assert main(["train", "--data", str(data_dir), "--weights", str(weights), "--budget-tokens", str(3 * BATCH),
                 "--out", str(tmp_path / "other"), *common]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"mixjax train: error: --weights: {weights}: no result for 1,536 tokens; it has budgets "
                   f"2,048, 1,024 (train at one of them, or pick one as FILE@BUDGET)")
    assert not (tmp_path / "other").exists()


def test_weights_file_at_budget_and_a_single_result_of_another_budget():
    from mixjax.mixture import result_for_budget, weights_and_source

    obj = {"results": [{"budget": 5_000_000, "weights": {"a": 0.3, "b": 0.7}},
                       {"budget": 20_000_000, "weights": {"a": 0.6, "b": 0.4}}]}
    warnings = []
    assert result_for_budget(obj, 20_000_000, "w.json", warn=warnings.append) == ({"a": 0.6, "b": 0.4}, 20_000_000)
    one = {"results": obj["results"][:1]}
    assert result_for_budget(one, 8000, "w.json", warn=warnings.append) == ({"a": 0.3, "b": 0.7}, 5_000_000)
    assert warnings == ["warning: w.json: weights optimised for 5,000,000 tokens, training 8,000"]
    with pytest.raises(MixjaxError, match=r"^w.json: holds results for budgets 5,000,000, 20,000,000; name one \(--budget-tokens"):
        result_for_budget(obj, None, "w.json")
    with pytest.raises(MixjaxError, match=r"^w.json: no result for 8,000 tokens; it has budgets 5,000,000 "):
        result_for_budget(one, 8000, "w.json", exact=True)
    assert result_for_budget({"a": 0.5, "b": 0.5}, 8000, "w.json") == ({"a": 0.5, "b": 0.5}, None)


def test_weights_file_at_budget_on_the_command_line(tmp_path):
    from mixjax.mixture import weights_and_source

    path = tmp_path / "weights.json"
    path.write_text(json.dumps({"results": [{"budget": 5_000_000, "weights": {"a": 0.3, "b": 0.7}},
                                            {"budget": 20_000_000, "weights": {"a": 0.6, "b": 0.4}}]}))
    assert weights_and_source(f"{path}@20M", budget=8000) == (
        {"a": 0.6, "b": 0.4}, {"file": str(path), "budget": 20_000_000})
    with pytest.raises(MixjaxError, match=r"no result for 7,000,000 tokens; it has budgets 5,000,000, 20,000,000"):
        weights_and_source(f"{path}@7M", budget=5_000_000)


def test_training_reduces_validation_loss_and_reports_domain_losses(data):
    seen = []

    class Record(Callback):
        def on_step(self, ctx, info):
            seen.append(info)

    cfg = TrainConfig(**SHAPE, lr=3e-3, eval_every=1000)
    res = run_training(cfg, data, {"a": 0.5, "b": 0.5, "c": 0.0}, 12 * BATCH, callbacks=[Record()])
    first, last = seen[0], seen[-1]
    assert np.isnan(first.train_loss["c"]) and first.loss_counts["c"] == 0
    for info in seen:  # the batch loss is the token-weighted mean of the domain losses
        n = sum(info.loss_counts[d] for d in "ab")
        mean = sum(info.train_loss[d] * info.loss_counts[d] for d in "ab") / n
        assert abs(mean - info.loss) < 1e-4
    assert last.loss < first.loss - 1.0
    assert res["val_loss"]["a"] < 4 and res["tokens"]["c"] == 0


def test_callback_changes_the_mixture(data):
    class SwitchToC(Callback):
        def on_step(self, ctx, info):
            if info.steps_done == 2:
                ctx.sampler.set_weights({"c": 1.0})

    cfg = TrainConfig(**SHAPE)
    res = run_training(cfg, data, {"a": 1.0}, 5 * BATCH, callbacks=[SwitchToC()])
    assert res["tokens"] == {"a": 2 * BATCH, "b": 0, "c": 3 * BATCH}
    assert res["final_weights"]["c"] == 1.0 and res["weights"]["a"] == 1.0


class Reweight(Callback):
    """Sets new weights after some steps only, so the trainer's batch drawn ahead is sometimes kept
    and sometimes voided; records every batch trained on."""

    def __init__(self, changes, kill_at=None):
        self.changes, self.kill_at, self.tokens = changes, kill_at, {}

    def on_step(self, ctx, info):
        self.tokens[info.steps_done] = np.asarray(info.batch["tokens"])
        if info.steps_done == self.kill_at:
            raise KeyboardInterrupt("killed")
        if info.steps_done in self.changes:
            ctx.sampler.set_weights(self.changes[info.steps_done])


def test_batches_are_those_drawn_after_the_callbacks(data, tmp_path):
    """Drawing the next batch during the step must not change which batches a run trains on: they
    equal a sampler replayed with the weights set after each step, also across a kill and resume
    from a checkpoint taken while a batch drawn ahead was held."""
    from mixjax.data.sampler import MixtureSampler

    start, changes, steps = {"a": 0.6, "b": 0.4}, {2: {"c": 1.0}, 5: {"a": 0.2, "b": 0.3, "c": 0.5}}, 8
    replay = MixtureSampler(data, start, batch_size=8, seq_len=64, num_steps=steps, seed=0)
    expected = {}
    for step in range(1, steps + 1):
        expected[step] = replay.next_batch().tokens_BxL
        if step in changes:
            replay.set_weights(changes[step])

    cfg = TrainConfig(**SHAPE, checkpoint_every=4)
    whole = Reweight(changes)
    ref = run_training(cfg, data, start, steps * BATCH, callbacks=[whole], out_dir=tmp_path / "whole")
    assert sorted(whole.tokens) == list(range(1, steps + 1))
    for step in whole.tokens:
        np.testing.assert_array_equal(whole.tokens[step], expected[step], err_msg=f"step {step}")

    with pytest.raises(KeyboardInterrupt):  # the checkpoint of step 4 holds a batch drawn ahead
        run_training(cfg, data, start, steps * BATCH, callbacks=[Reweight(changes, kill_at=6)], out_dir=tmp_path / "cut")
    resumed = Reweight(changes)
    res = run_training(cfg, data, start, steps * BATCH, callbacks=[resumed], out_dir=tmp_path / "cut")
    assert sorted(resumed.tokens) == list(range(5, steps + 1))
    for step in resumed.tokens:
        np.testing.assert_array_equal(resumed.tokens[step], expected[step], err_msg=f"resumed, step {step}")
    assert res["tokens"] == ref["tokens"] and res["val_loss"] == ref["val_loss"]


class Online(Callback):
    """A stand-in online method: reweights by the training losses; its state is checkpointed."""

    def __init__(self, kill_at=None):
        self.kill_at, self.history = kill_at, []

    def on_step(self, ctx, info):
        if info.steps_done == self.kill_at:
            raise KeyboardInterrupt("killed")
        losses = np.array([info.train_loss[d] if np.isfinite(info.train_loss[d]) else 1.0 for d in ctx.domains])
        self.history.append(float(losses.sum()))
        w = np.exp(losses + 0.01 * len(self.history))
        ctx.sampler.set_weights(w / w.sum())

    def state_dict(self):
        return {"history": self.history}

    def load_state_dict(self, state):
        self.history = list(state["history"])


@pytest.mark.slow
def test_killed_run_resumes_exactly(data, tmp_path):
    cfg = TrainConfig(**SHAPE, lr=3e-3, eval_every=4, checkpoint_every=3, keep_best=True)
    budget = 10 * BATCH
    ref = run_training(cfg, data, {"a": 0.4, "b": 0.3, "c": 0.3}, budget, out_dir=tmp_path / "ref",
                       callbacks=[Online()])
    kill = int(np.random.default_rng().integers(2, 11))
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, data, {"a": 0.4, "b": 0.3, "c": 0.3}, budget, out_dir=tmp_path / "cut",
                     callbacks=[Online(kill_at=kill)])
    cb = Online()
    res = run_training(cfg, data, {"a": 0.4, "b": 0.3, "c": 0.3}, budget, out_dir=tmp_path / "cut", callbacks=[cb])
    assert read_metrics(tmp_path / "cut" / "metrics.jsonl") == read_metrics(tmp_path / "ref" / "metrics.jsonl"), kill
    assert res["val_loss"] == ref["val_loss"] and res["tokens"] == ref["tokens"]
    assert res["final_weights"] == ref["final_weights"] and len(cb.history) == 10
    assert res["val_loss_step"] == ref["val_loss_step"] and (tmp_path / "cut" / "best").is_dir()


@pytest.mark.slow
def test_init_from_checkpoint_and_hf_export(data, tmp_path):
    cfg = TrainConfig(**SHAPE, lr=3e-3, checkpoint_every=100)
    first = run_training(cfg, data, {"a": 1.0}, 6 * BATCH, out_dir=tmp_path / "first")
    # lr ~ 0: a run started from the checkpoint evaluates to the same losses
    again = run_training(TrainConfig(**{**SHAPE, "model": None}, init=str(tmp_path / "first"), lr=1e-12,
                                     warmup=0), data, {"a": 1.0}, BATCH)
    for d in "abc":
        assert abs(again["val_loss"][d] - first["val_loss"][d]) < 1e-5
    from mixjax.train import export_hf
    export_hf(tmp_path / "first", tmp_path / "hf")
    from_hf = run_training(TrainConfig(**{**SHAPE, "model": str(tmp_path / "hf")}, lr=1e-12, warmup=0),
                           data, {"a": 1.0}, BATCH)
    for d in "abc":
        assert abs(from_hf["val_loss"][d] - first["val_loss"][d]) < 1e-5


@pytest.mark.slow
def test_old_per_layer_checkpoint_is_a_one_line_error(data, tmp_path):
    """A checkpoint without the stacked-layer marker (mixjax before scanned layers) is refused by
    name, for --init and for resume, instead of an orbax tree-mismatch traceback. Another --remat
    or --attention resumes: they do not change the parameters."""
    from mixjax.errors import MixjaxError

    class KillAtStep3(Callback):
        def on_step(self, ctx, info):
            if info.steps_done == 3:
                raise KeyboardInterrupt

    cfg = TrainConfig(**SHAPE, checkpoint_every=2)
    with pytest.raises(KeyboardInterrupt):  # leaves the checkpoint of step 2
        run_training(cfg, data, {"a": 1.0}, 4 * BATCH, out_dir=tmp_path / "run", callbacks=[KillAtStep3()])
    other = TrainConfig(**{**SHAPE, "model_overrides": {**SHAPE["model_overrides"], "remat": "full"}},
                        checkpoint_every=2)
    res = run_training(other, data, {"a": 1.0}, 4 * BATCH, out_dir=tmp_path / "run")
    assert res["steps"] == 4
    meta = next((tmp_path / "run" / "checkpoints").glob("*/meta/metadata"))
    meta.write_text(json.dumps({k: v for k, v in json.loads(meta.read_text()).items() if k != "param_layout"}))
    with pytest.raises(MixjaxError, match="per-layer parameter layout of an older mixjax"):
        run_training(TrainConfig(**{**SHAPE, "model": None}, init=str(tmp_path / "run")), data, {"a": 1.0}, BATCH)
    with pytest.raises(MixjaxError, match="per-layer parameter layout of an older mixjax"):
        run_training(cfg, data, {"a": 1.0}, 4 * BATCH, out_dir=tmp_path / "run")


@pytest.mark.slow
def test_bf16_and_grad_accum_run(data):
    cfg = TrainConfig(**{**SHAPE, "compute_dtype": "bfloat16", "grad_accum": 2})
    import jax
    res = run_training(cfg, data, {"b": 1.0}, 2 * BATCH, devices=jax.devices()[:2])
    assert np.isfinite(res["val_loss"]["b"]) and res["devices"]["count"] == 2


def test_select_best_records_the_lowest_evaluation_without_a_checkpoint(data, tmp_path):
    """select_best: val_loss is the evaluation of lowest mean validation loss (li2025's perturbation
    runs keep their best checkpoint) and no RUN_DIR/best is written; without it, the final one."""
    weights, budget = {"a": 0.4, "b": 0.3, "c": 0.3}, 6 * BATCH
    # lr 0.1: the last step overshoots, so the best evaluation (step 5) is not the final one
    cfg = TrainConfig(**SHAPE, lr=0.1, eval_every=1, select_best=True)
    res = run_training(cfg, data, weights, budget, out_dir=tmp_path / "best")
    written = json.loads((tmp_path / "best" / "result.json").read_text())
    history = written["val_history"]
    assert [h["step"] for h in history] == [1, 2, 3, 4, 5, 6]
    means = [np.mean([h["val_loss"][d] for d in "abc"]) for h in history]  # not the loop's val_loss_mean
    best = int(np.argmin(means))
    assert best != len(history) - 1, means                 # else this test could not tell best from final
    assert written["val_loss"] == history[best]["val_loss"] and written["val_loss_step"] == history[best]["step"]
    assert written["final_val_loss"] == history[-1]["val_loss"] and res["val_loss"] == history[best]["val_loss"]
    assert written["config"]["select_best"] is True
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == ["metrics.jsonl", "result.json"]  # no best/

    plain = run_training(TrainConfig(**SHAPE, lr=0.1, eval_every=1), data, weights, budget)
    assert plain["val_history"] == history                  # the same run, deterministic
    assert plain["val_loss"] == history[-1]["val_loss"] and plain["val_loss_step"] == 6


def test_selection_on_a_subset_reports_the_picked_parameters_on_the_whole_split(data, tmp_path):
    """select_max_batches: every evaluation during the run is on the first batch of each domain (the
    same one each time), and the reported val_loss is the picked step's parameters evaluated once on
    the whole split: what a run stopped at that step reports (constant rate: its steps are the
    same), not the subset's numbers."""
    weights, budget = {"a": 0.4, "b": 0.3, "c": 0.3}, 5 * BATCH
    steady = dict(SHAPE, lr=0.3, schedule="constant", warmup=0)  # overshoots after step 2
    cfg = TrainConfig(**steady, eval_every=1, select_best=True, select_max_batches=1)
    res = run_training(cfg, data, weights, budget, out_dir=tmp_path / "picked")
    on_subset = run_training(TrainConfig(**steady, eval_every=1, eval_max_batches=1), data, weights, budget)
    assert res["val_history"] == on_subset["val_history"]                     # the selection's evaluations
    means = [np.mean(list(h["val_loss"].values())) for h in on_subset["val_history"]]
    step = int(np.argmin(means)) + 1
    assert step != 5, means                                                     # best is not the final step
    stopped = run_training(TrainConfig(**steady), data, weights, step * BATCH)  # the whole split, at that step
    assert res["val_loss_step"] == step and res["val_loss"] == pytest.approx(stopped["val_loss"], rel=1e-6)
    assert res["val_loss"] != on_subset["val_history"][step - 1]["val_loss"]    # the subset differs from the split
    assert res["selection"] == {"max_batches": 1, "val_loss": on_subset["val_history"][step - 1]["val_loss"]}
    assert res["val_loss_batches"] is None and res["timings"]["report_eval_s"] > 0
    written = json.loads((tmp_path / "picked" / "result.json").read_text())
    assert written["val_loss"] == pytest.approx(res["val_loss"], rel=1e-12)
    assert read_metrics(tmp_path / "picked" / "metrics.jsonl")[-1]["selected"] is True


def test_weight_decay_skips_norms_and_biases_of_the_stacked_layers():
    """The layers' parameters carry a leading layer axis: a norm weight [n_layers, dim] or a bias
    [n_layers, heads, head_dim] is still not a matrix to decay."""
    import jax

    from mixjax.model import get_config
    from mixjax.model.decoder import init_params
    from mixjax.train.optim import decay_mask

    cfg = get_config("tiny", 259).replace(qkv_bias=True, n_layers=3)
    flat = jax.tree_util.tree_flatten_with_path(decay_mask(jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))))[0]
    decayed = {jax.tree_util.keystr(path): v for path, v in flat}
    assert {k for k, v in decayed.items() if not v} == {
        "['layers']['attn_norm']['weight']", "['layers']['mlp_norm']['weight']", "['norm']['weight']",
        "['layers']['attn']['q_bias_HxE']", "['layers']['attn']['k_bias_KxE']", "['layers']['attn']['v_bias_KxE']"}
    assert decayed["['layers']['mlp']['up_DxF']"] and decayed["['embed_VxD']"]


def _closed_form_lr(step, num_steps, peak, schedule, warmup, final_ratio):
    """The schedules written out: linear warm-up (k + 1) / warmup, then cosine or linear decay."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant":
        return peak
    t = min(max(step - warmup, 0) / max(num_steps - warmup, 1), 1.0)
    end = final_ratio * peak
    if schedule == "cosine":
        return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * t))
    return peak + (end - peak) * t


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
@pytest.mark.parametrize("num_steps,warmup", [(100, 10), (100, 0), (7, 1), (61, 3), (1, 0), (5, 5)])
def test_schedules_are_the_closed_forms(schedule, num_steps, warmup):
    from mixjax.train.optim import learning_rates

    expected = [_closed_form_lr(s, num_steps, 3e-4, schedule, warmup, 0.1) for s in range(num_steps)]
    np.testing.assert_allclose(learning_rates(num_steps, 3e-4, schedule, warmup, 0.1), expected, rtol=1e-12)
    assert learning_rate(num_steps - 1, num_steps, 3e-4, schedule, warmup, 0.1) == pytest.approx(expected[-1], rel=1e-12)


@pytest.mark.parametrize("argv,message", [
    (["--model", "gpt9"], "unknown model preset"),
    (["--weights", "a=1,zz=1"], "unknown domain"),
    (["--budget-tokens", "100"], "smaller than one batch"),
    (["--weights", "a=x"], "--weights"),
    (["--weights", "a=0.5,b=0.4"], "--weights: weights sum to 0.9, not 1"),
    (["--weights", "a=-0.5,b=1.5"], "--weights: negative weight for a"),
    (["--data", "/nonexistent"], "not a prepared data directory"),
    (["--model", "llama-3.2-3b", "--init", "{hf}"], "does not match"),
    (["--model", "qwen2.5-0.5b"], "--model qwen2.5-0.5b: its vocabulary has 151,936 tokens but the data was "
                                  "prepared with the byte-level tokenizer of 259; prepare the data with the "
                                  "model's tokenizer (mixjax prepare --tokenizer HF_DIR)"),
    (["--seq-len", "4096", "--budget-tokens", "7e4"], "--seq-len 4096 exceeds the model's max_seq_len 2048"),
    (["--attention", "flash"], "--attention 'flash': expected one of auto, plain, blockwise, cudnn, pallas"),
    (["--attention", "cudnn"], "--attention cudnn is not available on the cpu backend"),
    (["--remat", "some"], "--remat 'some': expected one of none, dots, full"),
])
def test_bad_input_is_one_line_error(data_dir, tmp_path, capsys, argv, message):
    hf = tmp_path / "hf"
    if "{hf}" in argv:
        from mixjax.model import ModelConfig, init_model, save_hf
        save_hf(init_model(ModelConfig(vocab_size=259, dim=16, n_layers=1, n_heads=2, n_kv_heads=1,
                                       hidden_dim=32)), hf)
    base = {"--data": str(data_dir), "--budget-tokens": "1e4", "--out": str(tmp_path / "o"), "--weights": "a=1"}
    it = iter(argv)
    for k in it:
        base[k] = next(it).replace("{hf}", str(hf))
    args = ["train", "--quiet"] + [x for kv in base.items() for x in kv]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_random_start_note_only_without_pretrained_weights(tmp_path):
    from mixjax.report import random_start_note

    assert random_start_note(TrainConfig(model="small")).startswith("model: small from random weights")
    assert random_start_note(TrainConfig(init=str(tmp_path))) is None          # a run or HF directory
    assert random_start_note(TrainConfig(model=str(tmp_path))) is None         # --model HF_DIR loads its weights
