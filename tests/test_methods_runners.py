"""The runners of DoReMi, DoGE and Skill-It end to end through `run_mix` on a tiny model (what
weights.json counts, the trajectory, the final run), each against an independent computation of
what it measures; resume of a killed mix; the one-line errors; li2025's extra runs when its fit
would be under-determined (in simulation)."""

import json
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from mixjax.cli import main
from mixjax.errors import MixjaxError
from mixjax.runners.mix import run_mix
from mixjax.methods.online_rules import skillit_graph
from mixjax.train import Callback, TrainConfig, run_training
from mixjax.train.metrics import read_metrics
from tests.data_fixtures import prepared_domains

BUDGET = 6 * 8 * 16                                      # 6 steps of 8 x 16 tokens (8 fake devices)
CONFIG = TrainConfig(model="tiny", batch_size=8, seq_len=16, progress=False,
                     model_overrides={"n_layers": 1, "dim": 64, "hidden_dim": 128})
CLI_TRAIN = ["--model", "tiny", "--batch-size", "8", "--seq-len", "16", "--quiet"]
QUIET = dict(log=lambda message: None)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return prepared_domains(tmp_path_factory.mktemp("runners"), "abc")


@pytest.fixture(scope="module")
def data(data_dir):
    from mixjax.data.prepared import PreparedData
    return PreparedData(data_dir)


@pytest.fixture(scope="module")
def doremi_mix(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("doremi") / "mix"
    return out, run_mix("doremi", {}, data, BUDGET, out, CONFIG, **QUIET)


def _trajectory(out):
    return json.loads((out / "trajectory.json").read_text())["trajectory"]


def _time_average(trajectory, num_steps, domains):
    """Weights averaged over the steps, each entry used from its step to the next one's."""
    steps = [t["step"] for t in trajectory] + [num_steps]
    w = np.array([[t["weights"][d] for d in domains] for t in trajectory])
    return (np.diff(steps)[:, None] * w).sum(axis=0) / num_steps


# -- DoReMi -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_doremi_mix_end_to_end(doremi_mix):
    out, summary = doremi_mix
    assert summary["extra_runs"] == 2 and summary["extra_tokens"] == 2 * BUDGET   # reference + proxy
    assert json.loads((out / "weights.json").read_text()) == json.loads(json.dumps(summary))
    assert (out / "prereq" / "reference" / "checkpoints").is_dir()                # kept for the proxy
    trajectory = _trajectory(out)
    assert [t["step"] for t in trajectory] == list(range(6))                      # an update every step
    weights = summary["results"][0]["weights"]
    np.testing.assert_allclose([weights[d] for d in "abc"], _time_average(trajectory, 6, "abc"), atol=1e-12)
    assert len({tuple(t["weights"].values()) for t in trajectory}) == 6           # the weights moved
    # reweighted proxy: sampled stratified, each step's loss weighted by the weights of that step
    proxy_steps = [r for r in read_metrics(out / "proxy" / "metrics.jsonl") if "loss" in r]
    assert all(r["weights"] == pytest.approx([1 / 3] * 3) for r in proxy_steps)
    for r, t in zip(proxy_steps, trajectory):
        assert r["loss_weights"] == pytest.approx([t["weights"][d] for d in "abc"], rel=1e-12)
        seen = [(w, r["train_loss"][d]) for w, d in zip(r["loss_weights"], "abc") if r["train_loss"][d] is not None]
        assert r["loss"] == pytest.approx(sum(w * v for w, v in seen), rel=1e-5)
    final = json.loads((out / "final" / "result.json").read_text())
    assert sum(final["tokens"].values()) == BUDGET and final["weights"] == pytest.approx(weights)
    assert summary["results"][0]["val_loss"] == final["val_loss"]


@pytest.mark.slow
def test_doremi_reference_loss_is_the_reference_models_loss_on_the_same_batch(doremi_mix, data, tmp_path):
    """The callback's reference losses equal an independent eval_step of the restored reference
    parameters on the batch the proxy just trained on; its proxy losses are the step's own."""
    from mixjax.methods.doremi import DoReMi
    from mixjax.train.checkpoint import restore_params

    method = DoReMi()
    method.reference_dir = doremi_mix[0] / "prereq" / "reference"
    seen = []
    observe = method.observe_losses
    method.observe_losses = lambda step, proxy, ref: (seen.append((step, proxy, ref)), observe(step, proxy, ref))

    class Independent(Callback):
        def __init__(self):
            self.expected = []

        def on_step(self, ctx, info):
            if not hasattr(self, "params"):
                self.params, _ = restore_params(method.reference_dir, ctx.stepper.abstract_params,
                                                ctx.stepper.param_shardings)
            m = jax.device_get(ctx.stepper.eval_step(self.params, info.batch))
            counts = np.asarray(m["domain_count"], np.float64)
            self.expected.append((np.asarray(m["domain_loss_sum"], np.float64) / counts,
                                  [info.train_loss[d] for d in ctx.domains]))

    independent = Independent()
    run_training(CONFIG, data, {d: 1 / 3 for d in "abc"}, BUDGET, out_dir=tmp_path / "proxy",
                 callbacks=[method.make_callback(4), independent])
    assert [s for s, _, _ in seen] == list(range(6))
    for (_, proxy, ref), (ref_expected, proxy_expected) in zip(seen, independent.expected):
        np.testing.assert_allclose(ref, ref_expected, rtol=1e-6)
        np.testing.assert_allclose(proxy, proxy_expected, rtol=0)
    assert not np.allclose(seen[0][1], seen[0][2])        # two different models


# -- DoGE ---------------------------------------------------------------------------------------
@pytest.mark.slow  # ~10 s of compilation on one core
def test_domain_gradient_alignment_matches_per_domain_grads():
    """The jitted K x K matrix equals numpy dot products of separately computed, flattened
    per-domain gradients (validation batch i of domain i; training batch mixing all domains)."""
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    from mixjax.model import get_config
    from mixjax.train.mesh import make_mesh
    from mixjax.train.step import StepConfig, Stepper

    model = get_config("tiny", 259).replace(n_layers=1, dim=32, hidden_dim=64, n_heads=2, n_kv_heads=1)
    stepper = Stepper(StepConfig(model, 8, 16, 3), make_mesh(None))
    params = stepper.init_params(0)
    rng = np.random.default_rng(0)

    def batch(domain_ids):
        return {"tokens": rng.integers(0, 259, (8, 16)).astype(np.int32),
                "segment_ids": np.ones((8, 16), np.int32), "positions": np.tile(np.arange(16, dtype=np.int32), (8, 1)),
                "loss_mask": rng.random((8, 16)) < 0.8, "domain_ids": domain_ids}

    train = batch(rng.integers(0, 3, (8, 16)).astype(np.int32))
    val = [batch(np.full((8, 16), i, np.int32)) for i in range(3)]
    from mixjax.methods.doge import compiled_alignment

    out = jax.device_get(compiled_alignment(stepper)(params, stepper.put_batch(train), stepper.put_stacked_batches(val)))
    host = jax.device_get(params)

    grad = jax.jit(jax.grad(lambda p, b, i: stepper.domain_means(p, b)[i]))   # one compile

    def flat_grad(b, i):
        g = grad(host, {k: jnp.asarray(v) for k, v in b.items()}, jnp.int32(i))
        return np.asarray(ravel_pytree(g)[0], np.float64)

    val_grads = np.stack([flat_grad(val[i], i) for i in range(3)])
    train_grads = np.stack([flat_grad(train, j) for j in range(3)])
    expected = val_grads @ train_grads.T
    np.testing.assert_allclose(out["alignment"], expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    np.testing.assert_allclose(out["train_grad_norm"], np.linalg.norm(train_grads, axis=1), rtol=1e-5)
    gram = val_grads @ val_grads.T
    np.testing.assert_allclose(out["val_gram"], gram, rtol=1e-4, atol=1e-5 * np.abs(gram).max())


@pytest.mark.slow
def test_doge_mix_end_to_end(data, tmp_path):
    out = tmp_path / "doge"
    summary = run_mix("doge", {"update_every": 2}, data, BUDGET, out, CONFIG, **QUIET)
    assert summary["extra_runs"] == 1 and summary["extra_tokens"] == BUDGET    # the proxy run
    trajectory = _trajectory(out)
    assert [t["step"] for t in trajectory] == [0, 2, 4]
    proxy = json.loads((out / "proxy" / "result.json").read_text())
    state = proxy["online"]["state"]
    alignments, scores = state["alignment"], state["scores"]
    assert [s for s, _ in alignments] == [s for s, _ in scores] == [2, 4, 6]
    assert np.asarray(alignments[0][1]).shape == (3, 3) and state["eta"] == 100.0   # 1 / mu, mu 0.01
    # each update: log w += 2 (steps per update) x eta x the step's clipped scores
    ws = [np.array([t["weights"][d] for d in "abc"]) for t in trajectory]
    for before, after, (_, s) in zip(ws, ws[1:], scores):
        assert 0 <= min(s) and max(s) <= 5 * 1e-3 + 1e-12                         # clipped to [0, 5 lr]
        expected = before * np.exp(2 * 100.0 * np.asarray(s))
        np.testing.assert_allclose(after, expected / expected.sum(), rtol=1e-9)
    # the proxy sampled stratified (equal tokens) and weighted the loss instead
    assert len(set(proxy["tokens"].values())) == 1
    weights = summary["results"][0]["weights"]
    np.testing.assert_allclose([weights[d] for d in "abc"], _time_average(trajectory, 6, "abc"), atol=1e-12)
    final = json.loads((out / "final" / "result.json").read_text())
    assert final["weights"] == pytest.approx(weights) and sum(final["tokens"].values()) == BUDGET


def test_doge_refuses_a_proxy_run_too_short_for_one_update():
    from mixjax.methods.doge import DoGE

    with pytest.raises(MixjaxError, match="update_every 100 exceeds the proxy run's 6 steps"):
        DoGE().begin(["a", "b"], 6)


def test_doge_eta_is_one_over_the_released_mu_per_number_of_domains():
    from mixjax.methods.doge import DoGE

    assert [DoGE.released_eta(k) for k in (2, 3, 7)] == [100.0, 100.0, 10.0]
    with pytest.raises(MixjaxError, match=r"^sampling 'mixed': must be reweight or resample$"):
        DoGE(sampling="mixed")


# -- Skill-It -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def skillit_mix(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("skillit") / "mix"
    return out, run_mix("skillit", {"update_steps": 2, "evaluations": 6}, data, BUDGET, out, CONFIG, **QUIET)


@pytest.mark.slow
def test_skillit_mix_end_to_end(skillit_mix):
    out, summary = skillit_mix
    assert summary["extra_runs"] == 3 and summary["extra_tokens"] == 3 * (BUDGET // 3)   # K runs, 1/K each
    assert summary["evaluations"] == 4                       # every step (6 // 6) before the last update
    singles = {d: json.loads((out / "prereq" / f"single-{d}" / "result.json").read_text()) for d in "abc"}
    for d, result in singles.items():
        assert result["tokens"] == {o: (BUDGET // 3 if o == d else 0) for o in "abc"}
    final = json.loads((out / "final" / "result.json").read_text())                 # the online run
    state = final["online"]["state"]
    loss_after = [[singles[j]["val_loss"][i] for i in "abc"] for j in "abc"]
    assert state["loss_after"] == loss_after
    np.testing.assert_allclose(state["graph"], skillit_graph(state["loss_before"], loss_after), rtol=0)
    # as released: first exp(eta * colsum(A)), then at each update (steps 2, 4) the graph scaled by
    # the sum of the last 3 evaluations taken before it (steps 0-1, then 1-3)
    assert state["loss_steps"] == [0, 1, 2, 3]
    trajectory = _trajectory(out)
    assert [t["step"] for t in trajectory] == [0, 2, 4]
    a, losses = np.array(state["graph"]), np.array(state["losses"])
    for t, signal in zip(trajectory, [a.sum(axis=0), a.T @ losses[0:2].sum(axis=0), a.T @ losses[1:4].sum(axis=0)]):
        expected = np.exp(0.2 * signal)
        np.testing.assert_allclose(list(t["weights"].values()), expected / expected.sum(), rtol=1e-12)
    # the evaluations are the run's: the one at step 0 is the initial model's (loss_before; the tiny
    # validation sets fit in the 4 batches an online evaluation takes)
    np.testing.assert_allclose(losses[0], state["loss_before"], rtol=1e-6)
    assert not np.allclose(losses[3], losses[0])
    assert summary["results"][0]["weights"] == trajectory[-1]["weights"]
    assert sum(final["tokens"].values()) == BUDGET


@pytest.mark.slow
def test_skillit_initial_loss_is_the_initial_models(skillit_mix, data):
    """loss_before is the validation loss of the model every run starts from (same seed)."""
    state = json.loads((skillit_mix[0] / "final" / "result.json").read_text())["online"]["state"]

    class Initial(Callback):
        def on_train_start(self, ctx):
            self.loss = [ctx.evaluate()[d] for d in ctx.domains]

    initial = Initial()
    run_training(CONFIG, data, {d: 1 / 3 for d in "abc"}, 8 * 16, callbacks=[initial])
    np.testing.assert_allclose(state["loss_before"], initial.loss, rtol=1e-6)


def test_killed_mix_resumes_without_retraining_prerequisites(data, tmp_path):
    out = tmp_path / "skillit"
    run_mix("skillit", {"update_steps": 2}, data, BUDGET, out, CONFIG, **QUIET)
    before = json.loads((out / "weights.json").read_text())
    kept = (out / "prereq" / "single-a" / "result.json").stat().st_mtime_ns
    import shutil
    shutil.rmtree(out / "prereq" / "single-b")            # killed while training single-b ...
    shutil.rmtree(out / "final")                          # ... before the online run
    logged = []
    run_mix("skillit", {"update_steps": 2}, data, BUDGET, out, CONFIG, log=logged.append)
    assert "[prerequisite 1/3] single-a: done already" in logged
    assert any(line.startswith("[prerequisite 2/3] single-b: 256 tokens") for line in logged)
    assert (out / "prereq" / "single-a" / "result.json").stat().st_mtime_ns == kept
    assert json.loads((out / "weights.json").read_text()) == before     # deterministic: the same answer
    logged.clear()
    run_mix("skillit", {"update_steps": 2}, data, BUDGET, out, CONFIG, log=logged.append)
    assert f"skillit: online run done already ({out / 'final'})" in logged  # nothing retrained


# -- errors -------------------------------------------------------------------------------------
def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    return err


@pytest.mark.slow
def test_one_line_errors(data_dir, doremi_mix, tmp_path, tmp_path_factory, capsys):
    one = prepared_domains(tmp_path_factory.mktemp("one_domain"), "a")
    base = ["mix", "--budget-tokens", str(BUDGET), *CLI_TRAIN]
    err = _one_line_error(capsys, [*base, "--method", "doremi", "--data", str(one), "--out", str(tmp_path / "x")])
    assert "--method doremi needs at least 2 domains (the data has 1)" in err
    assert not (tmp_path / "x").exists()                                   # refused before any file
    err = _one_line_error(capsys, [*base, "--method", "doremi", "--window", "3", "--data", str(data_dir),
                                   "--out", str(tmp_path / "x")])
    assert "--window does not apply to --method doremi (only skillit)" in err
    err = _one_line_error(capsys, [*base, "--method", "doremi", "--reference", str(tmp_path / "none"),
                                   "--data", str(data_dir), "--out", str(tmp_path / "x")])
    assert f"--reference: {tmp_path / 'none'} holds no mixjax checkpoint" in err
    with pytest.raises(MixjaxError, match=r"^method doge: unknown option 'window'$"):
        run_mix("doge", {"window": 3}, SimpleNamespace(domains=["a", "b"]), BUDGET, tmp_path / "x", CONFIG, **QUIET)
    with pytest.raises(SystemExit):                                        # sweep: offline methods only
        main(["sweep", "--method", "doremi", "--data", str(data_dir), "--budget-tokens", "1", "--out", "x"])
    capsys.readouterr()


@pytest.mark.slow
def test_broken_prerequisite_is_a_one_line_error(data, doremi_mix, tmp_path):
    import shutil
    out = tmp_path / "mix"
    shutil.copytree(doremi_mix[0], out)
    reference = out / "prereq" / "reference"
    shutil.rmtree(reference / "checkpoints")
    with pytest.raises(MixjaxError, match=r"reference: finished but its checkpoint is missing; delete .* to retrain"):
        run_mix("doremi", {}, data, BUDGET, out, CONFIG, **QUIET)
    (reference / "result.json").write_text("{not json")
    with pytest.raises(MixjaxError, match=r"result.json: unreadable .*; delete .* to retrain it$"):
        run_mix("doremi", {}, data, BUDGET, out, CONFIG, **QUIET)
    with pytest.raises(MixjaxError, match=r"holds a mix of another configuration \(options differ\)"):
        run_mix("doremi", {"eta": 0.5}, data, BUDGET, out, CONFIG, **QUIET)


# -- li2025: extra runs when under-determined -----------------------------------------------------
def _simulated(truth, runs, drop=()):
    from mixjax.testing import simulate

    tokens = np.array([[r.weights[d] * r.budget_tokens for d in truth.domains] for r in runs])
    obs = simulate(truth, [r.name for r in runs], tokens)
    for r, d in drop:
        obs.losses[r, truth.domains.index(d)] = np.nan
    return obs


def test_li2025_extra_runs_exactly_when_the_fit_is_under_determined():
    from mixjax import laws
    from mixjax.fit import FitOptions, fit
    from mixjax.methods.offline import Li2025
    from tests.law_fixtures import paper_like_law

    truth, budget = paper_like_law(), 20_000_000
    method = Li2025(base_fraction=0.1, factors=(0.5, 2.0), fit_options=FitOptions(n_bootstrap=0, leave_one_out=False))
    runs = method.propose(truth.domains, budget)
    assert len(runs) == 7 and method.extra_runs(_simulated(truth, runs), truth.domains, budget) == []
    short = _simulated(truth, runs, drop=[(1, "math"), (2, "math")])      # 5 losses of math: flagged
    assert fit(laws.get("li2025"), short, options=method.fit_options).diagnostics["under_determined"]
    extra = method.extra_runs(short, truth.domains, budget)
    assert [r.name for r in extra] == ["if-rest-x2", "math-rest-x2", "code-rest-x2"]
    n = int(0.1 * budget / 3)
    tokens = {d: extra[1].weights[d] * extra[1].budget_tokens for d in truth.domains}
    assert tokens == pytest.approx({"if": 2 * n, "math": n, "code": 2 * n})
    assert Li2025(factors=(0.5, 2.0), add_runs=False).extra_runs(short, truth.domains, budget) == []
    # li2025-repeat fits 6 parameters a domain, 5 with R* fixed: 6 losses of math are enough only then
    six = _simulated(truth, runs, drop=[(1, "math")])
    available = {d: float(budget) for d in truth.domains}
    repeat = Li2025(base_fraction=0.1, factors=(0.5, 2.0), law="li2025-repeat", available=available)
    assert [r.name for r in repeat.extra_runs(six, truth.domains, budget)] == ["if-rest-x2", "math-rest-x2",
                                                                               "code-rest-x2"]
    fixed = Li2025(base_fraction=0.1, factors=(0.5, 2.0), law="li2025-repeat", r_star=15.0, available=available)
    assert fixed.extra_runs(six, truth.domains, budget) == []


def test_li2025_mix_adds_runs_and_refits_in_simulation(tmp_path, monkeypatch):
    """With one factor (4 runs for 5 parameters per domain) run_mix trains K extra runs once,
    refits on all 7 and finds the true optimum; a rerun trains nothing again."""
    import functools

    import mixjax.fit
    import mixjax.train
    from mixjax.fit import FitOptions
    from mixjax.optimize import optimize
    from tests.law_fixtures import paper_like_law, simulated_training

    truth, budget = paper_like_law(), 20_000_000
    fake_run_training, trained = simulated_training(truth)
    monkeypatch.setattr(mixjax.train, "run_training", fake_run_training)
    monkeypatch.setattr(mixjax.fit, "FitOptions", functools.partial(FitOptions, n_bootstrap=0, leave_one_out=False))
    data = SimpleNamespace(domains=truth.domains, manifest={})
    options = {"factors": [2.0], "base_fraction": 0.1}
    summary = run_mix("li2025", options, data, budget, tmp_path, TrainConfig(), **QUIET)
    assert trained == ["base", "if-x2", "math-x2", "code-x2", "if-rest-x2", "math-rest-x2", "code-rest-x2", "final"]
    assert summary["extra_runs"] == 7 and summary["under_determined"] is False
    n = int(0.1 * budget / 3)
    whole = lambda tokens: tokens // (16 * 256) * (16 * 256)  # as trained: whole steps of the default batch
    assert summary["extra_tokens"] == whole(3 * n) + 3 * whole(4 * n) + 3 * whole(5 * n)
    law = json.loads((tmp_path / "law.json").read_text())
    assert law["diagnostics"]["n_runs"] == 7 and not law["diagnostics"]["under_determined"]
    got = summary["results"][0]["weights"]
    np.testing.assert_allclose([got[d] for d in truth.domains], optimize(truth, [budget]).weights[0], atol=2e-3)
    trained.clear()
    assert run_mix("li2025", options, data, budget, tmp_path, TrainConfig(), **QUIET)["results"] == summary["results"]
    assert trained == []


def test_static_mix_trains_only_its_final_run_and_states_no_design(tmp_path, monkeypatch):
    """Stratified proposes no runs: run_mix trains the final run alone, says nothing about an
    extrapolation (there are no runs to extrapolate from) and records no design."""
    import mixjax.train
    from tests.law_fixtures import paper_like_law, simulated_training

    truth = paper_like_law()
    fake_run_training, trained = simulated_training(truth)
    monkeypatch.setattr(mixjax.train, "run_training", fake_run_training)
    logged = []
    data = SimpleNamespace(domains=truth.domains, manifest={})
    summary = run_mix("stratified", {}, data, 1_000_000, tmp_path, TrainConfig(), log=logged.append)
    assert trained == ["final"]
    assert summary["results"][0]["weights"] == pytest.approx({d: 1 / 3 for d in truth.domains})
    assert "design" not in summary and not any("extrapolat" in line for line in logged)
