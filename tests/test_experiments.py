"""experiments/li2025_grid.py and aioli_compare.py at their --quick scale: the tables they write
agree with the runs' own result.json files, recomputed here independently."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
sys.path.insert(0, str(EXPERIMENTS))


def _result(path: Path) -> dict:
    return json.loads((path / "result.json").read_text())


@pytest.mark.slow
def test_li2025_grid_quick_tables_match_the_runs(tmp_path):
    import li2025_grid

    work, results = tmp_path / "work", tmp_path / "results"
    assert li2025_grid.main(["--quick", "--quiet", "--methods", "stratified,natural,li2025",
                             "--work", str(work), "--results", str(results)]) == 0
    payload = json.loads((results / "li2025_grid_quick.json").read_text())
    assert "li2025_grid.py" in payload["command"] and "--quick" in payload["command"]
    assert (results / "li2025_grid_quick.md").read_text().count("| li2025 |") == 1
    assert (results / "li2025_grid_quick_simplex.png").is_file() and (results / "li2025_grid_quick_regret.png").is_file()
    domains = payload["domains"]
    grid_runs = sorted((work / "seed0" / "grid" / "sweep" / "runs").iterdir())
    grid_weights = sorted(tuple(_result(r)["weights"][d] for d in domains) for r in grid_runs)
    assert np.allclose(grid_weights, [(0.25, 0.25, 0.5), (0.25, 0.5, 0.25), (0.5, 0.25, 0.25)])  # QUICK's 1/4 grid
    grid = [_result(r)["val_loss"] for r in grid_runs]
    best = {d: min(g[d] for g in grid) for d in domains}
    best_total = min(sum(g.values()) for g in grid)
    for method, run_dir in (("stratified", work / "seed0" / "stratified" / "final"),
                            ("li2025", work / "seed0" / "li2025" / "final")):
        loss = _result(run_dir)["val_loss"]
        row = payload["rows"][method]
        expected = 100 * np.mean([(loss[d] - best[d]) / best[d] for d in domains])
        assert row["metric_pct"][0] == pytest.approx(expected, abs=1e-9)
        assert row["regret"][0] == pytest.approx(sum(loss.values()) - best_total, abs=1e-9)
    assert payload["rows"]["grid"]["regret"][0] == pytest.approx(0.0, abs=1e-12)
    assert payload["rows"]["li2025"]["runs"] == 1 + 4 * 3 + 1  # Algorithm 1's runs, then the final one

    # Natural proportions: each domain's share of the prepared training tokens (from the manifest).
    manifest = json.loads((work / "data" / "manifest.json").read_text())
    natural = _result(work / "seed0" / "natural" / "final")["weights"]
    counts = {d: manifest["domains"][d]["train"]["tokens"] for d in domains}
    assert natural == pytest.approx({d: counts[d] / sum(counts.values()) for d in domains}, abs=1e-9)
    strat_regret = payload["rows"]["stratified"]["regret"][0]
    for method in ("natural", "li2025"):
        share = payload["rows"][method]["gap_recovered"]["per_seed"][0]
        if strat_regret > 0:
            assert share == pytest.approx(1 - payload["rows"][method]["regret"][0] / strat_regret, rel=1e-9)
        else:  # stratified ties or beats the grid's best on this seed: no gap to recover
            assert share is None or math.isnan(share)

    # A rerun trains nothing: every method's summary is cached.
    before = {p: p.stat().st_mtime_ns for p in work.rglob("result.json")}
    assert li2025_grid.main(["--quick", "--quiet", "--methods", "stratified,natural,li2025",
                             "--work", str(work), "--results", str(results)]) == 0
    assert {p: p.stat().st_mtime_ns for p in work.rglob("result.json")} == before


@pytest.mark.slow
def test_aioli_compare_quick_differences_are_perplexities_of_the_runs(tmp_path):
    import aioli_compare

    work, results = tmp_path / "work", tmp_path / "results"
    assert aioli_compare.main(["--quick", "--quiet", "--methods", "stratified,regmix",
                               "--work", str(work), "--results", str(results)]) == 0
    payload = json.loads((results / "aioli_compare_quick.json").read_text())
    assert list(payload["table"]) == ["dialogue+math", "dialogue+code", "math+code", "dialogue+math+code"]
    for setting, rows in payload["table"].items():
        base = work / setting / "seed0" if setting.count("+") == 1 else work / "seed0"
        ppl = {m: float(np.mean([math.exp(v) for v in _result(base / m / "final")["val_loss"].values()]))
               for m in ("stratified", "regmix")}
        assert len(_result(base / "regmix" / "final")["val_loss"]) == setting.count("+") + 1
        assert rows["regmix"]["diff"][0] == pytest.approx(ppl["regmix"] - ppl["stratified"], abs=1e-9)
        assert rows["regmix"]["beats"] == (ppl["regmix"] < ppl["stratified"])
    assert "| regmix |" in (results / "aioli_compare_quick.md").read_text()


def test_a_cached_result_of_another_budget_is_refused(tmp_path):
    import common

    from mixjax.errors import MixjaxError
    from mixjax.train import TrainConfig

    out = tmp_path / "m"
    out.mkdir()
    (out / "summary.json").write_text(json.dumps({"budget": 100, "seed": 0}))
    with pytest.raises(MixjaxError, match="another budget or seed"):
        common.method_result("stratified", None, 200, TrainConfig(seed=0), out)


def test_an_unknown_method_stops_before_anything_trains(tmp_path, capsys):
    import li2025_grid

    assert li2025_grid.main(["--quick", "--methods", "li2025,nosuch", "--work", str(tmp_path / "w"),
                             "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("li2025_grid.py: error: --methods: unknown nosuch; known: stratified,") and "\n" not in err
    assert not (tmp_path / "w").exists()


def test_paired_compare_pairs_the_committed_reruns_and_refuses_other_bases(tmp_path, capsys):
    """experiments/paired_compare.py on the two committed online reruns gives the README's paired
    differences (computed here independently from the per-seed losses); results whose stratified
    runs differ (another base model) are refused."""
    import paired_compare

    root = Path(__file__).resolve().parents[1] / "results"
    a_path, b_path = root / "online_before_released" / "aioli_compare.json", root / "online_as_released" / "aioli_compare.json"
    assert paired_compare.main([str(a_path), str(b_path), "--labels", "before,released"]) == 0
    out = capsys.readouterr().out
    a, b = json.loads(a_path.read_text()), json.loads(b_path.read_text())

    def ppl(doc, s, seed, m):
        return float(np.mean(np.exp(list(doc["results"][s][seed][m]["val_loss"].values()))))

    diffs = [ppl(b, s, seed, "doremi") - ppl(a, s, seed, "doremi") for s in a["results"] for seed in a["results"][s]]
    assert f"doremi: mean {np.mean(diffs):+.3f}, worse in {sum(d > 0 for d in diffs)} of {len(diffs)}" in out
    first = next(iter(b["results"]))
    b["results"][first]["0"]["stratified"]["val_loss"] = {"x": 1.0}
    other = tmp_path / "other.json"
    other.write_text(json.dumps(b))
    assert paired_compare.main([str(a_path), str(other)]) == 2
    assert f"stratified differs in {first} seed 0" in capsys.readouterr().err


def test_adaptive_real_gap_recovered_is_paired_by_seed():
    """The share of stratified's regret each arm recovers, per seed against that seed's grid and
    stratified, then mean and standard error."""
    import adaptive_real

    def arm(losses, runs=1, tokens=100):
        return {"val_loss": dict(zip("xy", losses)), "runs": runs, "tokens": tokens}

    per_seed = {}
    for seed, (best, strat, fixed, adaptive) in enumerate([((1.0, 1.0), (1.2, 1.0), (1.05, 1.0), (1.1, 1.0)),
                                                           ((2.0, 1.0), (2.0, 1.4), (2.0, 1.1), (2.0, 1.0))]):
        per_seed[seed] = {"grid": {**arm(best, 7, 700), "grid": [{"val_loss": dict(zip("xy", best))},
                                                                {"val_loss": {"x": 9.0, "y": 9.0}}]},
                          "stratified": arm(strat), "li2025 fixed": arm(fixed, 14, 470),
                          "li2025 adaptive": arm(adaptive, 8, 310)}
    rows = adaptive_real.gap_table(per_seed, ["x", "y"])
    fixed_shares, adaptive_shares = [1 - 0.05 / 0.2, 1 - 0.1 / 0.4], [1 - 0.1 / 0.2, 1.0]
    for arm_name, shares in (("li2025 fixed", fixed_shares), ("li2025 adaptive", adaptive_shares)):
        mean, se = rows[arm_name]["gap_recovered"]
        assert mean == pytest.approx(np.mean(shares)) and se == pytest.approx(np.std(shares, ddof=1) / math.sqrt(2))
    assert rows["stratified"]["gap_recovered"] == pytest.approx((0.0, 0.0))
    assert rows["grid best"]["gap_recovered"] == pytest.approx((1.0, 0.0))
    assert rows["li2025 adaptive"]["runs"] == 8 and rows["stratified"]["regret"][0] == pytest.approx(0.3)


def test_any_prepared_data_and_init_replace_the_bundled_setting(tmp_path):
    """--data and --init: the experiment's data is the user's prepared directory (read as is, never
    re-prepared) and its runs fine-tune the given model; nothing is trained to set them up."""
    import common

    from tests.data_fixtures import prepared_letters

    data_dir = prepared_letters(tmp_path / "letters", 40)
    model = tmp_path / "hf"
    model.mkdir()
    (model / "config.json").write_text("{}")
    work = tmp_path / "work"
    data, config = common.setup(work, common.QUICK, data_dir=data_dir, init=model)
    assert data.directory == data_dir and data.domains == ["a", "b", "c"] and config.init == str(model)
    assert config.batch_size == common.QUICK.batch_size and not work.exists()


def test_experiments_refuse_unusable_data_and_init_before_training(tmp_path, capsys):
    import common
    import li2025_grid

    from mixjax.cli import main as mixjax_main
    from tests.data_fixtures import letter_domain, prepared_letters

    data = prepared_letters(tmp_path / "letters", 40)
    letter_domain(tmp_path / "one.jsonl", "a", 20)
    assert mixjax_main(["prepare", "--out", str(tmp_path / "one"), "--quiet", "--domain",
                        f"a={tmp_path / 'one.jsonl'}"]) == 0
    tokens_a = json.loads((data / "manifest.json").read_text())["domains"]["a"]["train"]["tokens"]
    cases = [
        (["--data", str(tmp_path / "one")], "has 1 domain(s); the experiments need 2 to 8"),
        (["--data", str(data), "--budget", "10000000"],
         f"domain a has {tokens_a:,} training tokens; the grid's largest weight 0.75 at 10,000,000 tokens needs "
         f"7,500,000, {7_500_000 / tokens_a:.1f} repetitions (at most 10)"),
        (["--init", str(tmp_path / "letters")], "holds no mixjax checkpoint"),
        (["--init", str(tmp_path / "nowhere")], "--init: " + str(tmp_path / "nowhere") + " does not exist"),
    ]
    for extra, message in cases:
        work = tmp_path / "work"
        assert li2025_grid.main(["--quick", "--quiet", "--work", str(work), "--results", str(tmp_path / "r"),
                                 *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert not (work / "base").exists() and not (work / "seed0").exists()
    # the default --work of another --data is not the bundled setting's
    args = common.common_arguments("x", "li2025_grid").parse_args(["--data", str(data)])
    common.scale_from(args)
    assert Path(args.work).name.startswith("li2025_grid-data-") and Path(args.work).name != "li2025_grid"


def test_law_fidelity_of_the_true_law_is_perfect_and_of_a_wrong_one_is_measured():
    """law_fidelity.fidelity on a simulated grid: the law that made the losses predicts them exactly
    (RMSE 0, Spearman 1, regret 0); a law with another E misses by exactly that shift."""
    import copy

    import law_fidelity

    from mixjax.laws import FittedLaw
    from mixjax.methods.static import simplex_grid
    from mixjax.testing import simulate
    from tests.law_fixtures import PAPER_LIKE, paper_like_law

    truth = paper_like_law()
    mixtures = np.array(simplex_grid(3, 0.125, False))
    grid = simulate(truth, [f"g{i}" for i in range(len(mixtures))], mixtures * 5e6)
    exact = law_fidelity.fidelity(truth, grid)
    assert exact["rmse"]["total"] == pytest.approx(0.0, abs=1e-9) and exact["spearman"] == pytest.approx(1.0)
    assert exact["regret"] == 0.0
    shifted = copy.deepcopy(PAPER_LIKE)
    shifted["params"]["E"] = [e + 0.1 for e in shifted["params"]["E"]]
    off = law_fidelity.fidelity(FittedLaw.from_json(shifted), grid)
    assert off["rmse"]["total"] == pytest.approx(0.3, abs=1e-6)  # 0.1 on each of 3 domains
    assert all(off["rmse"][d] == pytest.approx(0.1, abs=1e-6) for d in truth.domains) and off["regret"] == 0.0


def test_gap_recovered_is_paired_by_seed():
    import common

    g = common.gap_recovered([0.01, 0.0, 0.03, 0.01], [0.02, 0.04, 0.02, -0.01])
    assert g["per_seed"][:3] == pytest.approx([0.5, 1.0, -0.5]) and np.isnan(g["per_seed"][3])
    assert g["n"] == 3 and g["mean"] == pytest.approx(1 / 3)  # the seed with no gap is left out
    assert g["se"] == pytest.approx(np.std([0.5, 1.0, -0.5], ddof=1) / np.sqrt(3))
    assert g["of_mean_gap"] == pytest.approx(1 - 0.05 / 0.07)
@pytest.mark.slow
def test_aioli_long_quick_pairs_aioli_with_stratified_and_reads_its_rounds(tmp_path):
    import aioli_long

    work, results = tmp_path / "work", tmp_path / "results"
    assert aioli_long.main(["--quick", "--quiet", "--settings", "dialogue+math", "--arms", "aioli",
                            "--work", str(work), "--results", str(results)]) == 0
    payload = json.loads((results / "aioli_long_quick.json").read_text())
    runs = work / "aioli_long" / "dialogue+math" / "seed0"
    aioli, strat = _result(runs / "aioli" / "final"), _result(runs / "stratified" / "final")
    assert aioli["steps"] == strat["steps"] == aioli_long.QUICK_STEPS
    row = payload["table"]["dialogue+math"]["aioli"]
    expected = (np.mean(np.exp(list(aioli["val_loss"].values())))
                - np.mean(np.exp(list(strat["val_loss"].values()))))
    assert row["ppl_minus_stratified"]["mean"] == pytest.approx(expected, rel=1e-9)
    rounds = payload["results"]["dialogue+math"]["0"]["aioli"]["round_weights"]
    assert len(rounds) == aioli_long.ROUNDS and all(sum(w) == pytest.approx(1.0) for w in rounds)


def test_aioli_long_round_weights_are_those_in_force_at_each_rounds_end(tmp_path):
    import aioli_long

    trajectory = [{"step": 0, "weights": {"a": 0.9, "b": 0.1}}, {"step": 3, "weights": {"a": 0.6, "b": 0.4}},
                  {"step": 5, "weights": {"a": 0.1, "b": 0.9}}, {"step": 7, "weights": {"a": 0.3, "b": 0.7}},
                  {"step": 10, "weights": {"a": 0.2, "b": 0.8}}]
    (tmp_path / "trajectory.json").write_text(json.dumps({"domains": ["a", "b"], "trajectory": trajectory}))
    rounds = aioli_long.round_weights(tmp_path, update_steps=5, steps=15)
    assert rounds == [[0.6, 0.4], [0.3, 0.7], [0.2, 0.8]]  # in force at steps 4, 9 and 14
    assert aioli_long.moved(rounds, [0.5, 0.5]) == pytest.approx(0.3)


def test_summary_table_reads_the_gap_from_each_seeds_regrets(tmp_path, capsys):
    import summary

    rows = {"stratified": {"regret_per_seed": [0.02, 0.04, -0.01], "runs": 1},
            "li2025": {"regret_per_seed": [0.01, 0.0, 0.0], "runs": 14},
            "grid": {"regret_per_seed": [0.0, 0.0, 0.0], "runs": 21}}
    (tmp_path / "li2025_grid.json").write_text(json.dumps({"rows": rows}))
    assert summary.main(["--results", str(tmp_path)]) == 0
    line = next(x for x in (tmp_path / "summary.md").read_text().splitlines() if "| li2025 |" in x)
    # seeds 0 and 1 have a gap: shares 0.5 and 1.0; seed 2 (stratified ahead of the grid) is left out
    assert "| 0.75 ± 0.25 (2 of 3 seeds) |" in line
    assert f"| {np.mean([-0.01, -0.04, 0.01]):+.4f} ± {np.std([-0.01, -0.04, 0.01], ddof=1) / np.sqrt(3):.4f} |" in line

    # extrapolation: a row per variant and ratio, paired with stratified the same way; --compact keeps li2025's
    arm = lambda variant, regret: {"variant": variant, "ratio": 12.0, "runs": 14, "runs_cost": 0.74,
                                   "regret_per_seed": regret}
    (tmp_path / "extrapolation-skewed.json").write_text(json.dumps({
        "setting": "skewed", "setup": {"target": 300_000},
        "rows": {"stratified": rows["stratified"], "li2025 T/5": arm("li2025", [0.01, 0.0, 0.0]),
                 "repeat-law T/5": arm("repeat-law", [0.04, 0.04, 0.0])}}))
    assert summary.main(["--results", str(tmp_path)]) == 0
    lines = [x for x in (tmp_path / "summary.md").read_text().splitlines() if "300,000 tokens, target 12x" in x]
    assert len(lines) == 2 and "| li2025 | 0.75 ± 0.25 (2 of 3 seeds) |" in lines[0]
    assert "| repeat-law | -0.50 ± 0.50 (2 of 3 seeds) |" in lines[1] and "| 14 (0.74 runs at the target) | 3 |" in lines[1]
    capsys.readouterr()
    assert summary.main(["--results", str(tmp_path), "--compact"]) == 0
    compact = capsys.readouterr().out
    assert "| li2025 | 0.75" in compact and "repeat-law" not in compact


def test_skewed_setting_has_skewed_natural_proportions_and_refuses_data(tmp_path, capsys):
    import common
    import li2025_grid

    data = common.skewed_data(tmp_path, common.QUICK)
    natural = common.natural_weights(data)
    assert sorted(natural) == ["code", "dialogue", "docs"]
    assert natural["dialogue"] > 0.5 and natural["docs"] < natural["code"] < natural["dialogue"]
    assert common.skewed_data(tmp_path, common.QUICK).directory == data.directory  # built once, then reused
    assert li2025_grid.main(["--quick", "--quiet", "--setting", "skewed", "--data", str(data.directory),
                             "--work", str(tmp_path / "w"), "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "--setting skewed" in err and len(err.strip().splitlines()) == 1
