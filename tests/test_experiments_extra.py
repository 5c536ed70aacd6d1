"""The quickstart notebook, `experiments/budget_sweep.py` and `experiments/reweight_collection.py`
end to end at their quick scale, and the collection script's input checks."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "experiments"))

import budget_sweep  # noqa: E402
import reweight_collection  # noqa: E402

NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"


def table_row(markdown: str, *first_cells: str) -> list[str]:
    """The cells of the Markdown table row that starts with `first_cells`."""
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[:len(first_cells)] == list(first_cells):
            return cells
    raise AssertionError(f"no table row starting with {first_cells}")


def run_script(script: str, *args: str) -> None:
    """An experiment as a user runs it: its own process, so one CPU device (the suite's other
    tests fake 8, which makes these small runs several times slower)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / script), *args], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def outputs(results: Path, name: str):
    payload = json.loads((results / f"{name}.json").read_text())
    markdown = (results / f"{name}.md").read_text()
    pngs = re.findall(r"!\[([^\]]+\.png)\]", markdown)
    assert pngs and all((results / p).is_file() and (results / p).stat().st_size > 1000 for p in pngs)
    return payload, markdown


def code_cells():
    import nbformat

    return [c for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.cell_type == "code"]


def test_committed_notebook_stores_its_plots_without_noise():
    """Outputs are stored (run top to bottom by notebooks/refresh_outputs.py) so the plots show on
    GitHub: three modest PNGs, no errors, no stderr (progress bars, warnings)."""
    import base64

    cells = code_cells()
    assert [c.execution_count for c in cells] == list(range(1, len(cells) + 1))
    outputs = [o for c in cells for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error" or o.get("name") == "stderr"]
    images = [base64.b64decode(o.data["image/png"]) for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3 and all(png.startswith(b"\x89PNG") and len(png) < 120_000 for png in images)
    assert NOTEBOOK.stat().st_size < 400_000


def test_notebook_installs_mixjax_where_missing_and_uses_the_library():
    """The first code cell installs mixjax only when it cannot be imported (Colab); no cell imports
    the command layer or re-implements the law's predictions (mixjax.validation.predicted_losses)."""
    cells = code_cells()
    first = cells[0].source
    assert re.search(r"^try:\n\s+import mixjax\b.*\nexcept ImportError:\n(.*\n)*\s+%pip install ", first, re.M), first
    sources = "\n".join(c.source for c in cells)
    assert not re.search(r"\bmixjax\.(commands|cli)\b", sources)
    assert not re.search(r"from mixjax\.laws import .*\bpredict\b", sources)
    assert "predicted_losses(" in sources


@pytest.mark.slow
def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    from nbclient import NotebookClient

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:  # install this interpreter's kernel spec where the test can find it
        from ipykernel.kernelspec import install

        install(prefix=str(tmp_path / "jupyter"))
        monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter" / "share" / "jupyter"))
    work, cwd = tmp_path / "quickstart", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.setenv("MIXJAX_QUICKSTART_DIR", str(work))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    assert next(c for c in nb.cells if c.cell_type == "code").outputs == []  # mixjax is installed: no pip
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3  # fitted curves, weights vs budget, Aioli's trajectory
    assert not any(cwd.iterdir())  # it writes only under its own directory

    summary = json.loads((work / "summary.json").read_text())
    assert summary["n_runs"] == 13
    # The perturbations move each domain's loss by 0.1-0.3 nats, several times a run's noise at
    # this size (leave-one-run-out error 0.02-0.04), and the law explains 0.8-0.96 of the variance
    # (measured). Below 0.5 would mean the losses do not follow the tokens: a broken pipeline.
    assert all(r2 > 0.5 for r2 in summary["r2"].values()), summary["r2"]
    law = json.loads((work / "law.json").read_text())
    assert law["law"] == "li2025" and law["diagnostics"]["domains"].keys() == summary["r2"].keys()
    weights = json.loads((work / "weights.json").read_text())["results"]
    assert len(weights) == 25 and all(abs(sum(r["weights"].values()) - 1) < 1e-6 for r in weights)
    assert abs(sum(summary["aioli"]["weights"].values()) - 1) < 1e-9
    trajectory = json.loads((work / "aioli" / "trajectory.json").read_text())["trajectory"]
    assert len(trajectory) == summary["aioli"]["trajectory_points"] > 4
    final = json.loads((work / "aioli" / "final" / "result.json").read_text())
    assert final["val_loss"] == summary["val_loss"]["aioli"] and sum(final["tokens"].values()) == 32_768


@pytest.mark.slow
def test_budget_sweep_quick(tmp_path):
    work, results = tmp_path / "work", tmp_path / "results"
    run_script("budget_sweep.py", "--quick", "--quiet", "--seeds", "2", "--work", str(work), "--results", str(results))
    payload, markdown = outputs(results, "budget_sweep_quick")
    domains = payload["domains"]
    assert len(payload["fit"]["runs"]) == 1 + 4 * len(domains)
    assert all(abs(sum(r["weights"].values()) - 1) < 1e-6 for r in payload["optimum"])
    assert {r["budget"] for r in payload["optimum"]} >= set(budget_sweep.QUICK.check_budgets)
    for check in payload["checks"].values():
        budget = check["budget"]
        assert set(check["arms"]) == set(budget_sweep.ARMS)
        for arm, row in check["arms"].items():
            assert abs(sum(row["weights"].values()) - 1) < 1e-6
            totals = []
            for seed, run in row["seeds"].items():
                result = json.loads((work / run["run"] / "result.json").read_text())
                assert result["val_loss"] == run["val_loss"] and result["config"]["seed"] == int(seed)
                assert sum(result["tokens"].values()) == budget
                totals.append(sum(result["val_loss"].values()))
            assert row["totals"] == pytest.approx(totals) and row["total_mean"] == pytest.approx(np.mean(totals))
            cells = table_row(markdown, f"{budget:,}", arm)
            assert cells[2 + len(domains):2 + 2 * len(domains)] == [f"{row['val_loss_mean'][d]:.4f}" for d in domains]
            assert cells[2 + 2 * len(domains)].startswith(f"{np.mean(totals):.4f} ±")
        other = check["arms"][budget_sweep.ARMS[2]]["weights"]
        other_budget = [b for b in budget_sweep.QUICK.check_budgets if b != budget][0]
        assert other == payload["checks"][str(other_budget)]["arms"]["optimised"]["weights"]
        diff = check["optimised_minus"]["stratified"]
        assert diff["n"] == 2 and diff["mean"] == pytest.approx(
            check["arms"]["optimised"]["total_mean"] - check["arms"]["stratified"]["total_mean"])


@pytest.mark.slow
def test_reweight_collection_quick(tmp_path):
    work, results = tmp_path / "work", tmp_path / "results"
    run_script("reweight_collection.py", "--quick", "--quiet", "--work", str(work), "--results", str(results))
    payload, markdown = outputs(results, "reweight_collection_quick")
    domains = payload["domains"]
    assert domains == sorted(reweight_collection.BUNDLED_SHARES)
    natural = payload["natural_weights"]
    assert natural["dialogue"] > natural["math"] > natural["docs"]  # unequal, as built
    manifest = json.loads((work / "data" / "manifest.json").read_text())
    train = {d: manifest["domains"][d]["train"]["tokens"] for d in domains}
    assert payload["train_tokens"] == train
    assert len(payload["fit"]["runs"]) == 1 + 4 * len(domains)
    for arm, row in payload["rows"].items():
        assert abs(sum(row["weights"].values()) - 1) < 1e-6
        for seed, run in row["seeds"].items():
            result = json.loads((work / run["run"] / "result.json").read_text())
            assert result["val_loss"] == run["val_loss"]
            assert sum(result["tokens"].values()) == payload["scale"]["budget"]
            assert row["epochs"] == pytest.approx({d: result["tokens"][d] / train[d] for d in domains})
        cells = table_row(markdown, arm)
        assert cells[1 + len(domains):1 + 2 * len(domains)] == [
            f"{row['val_loss_mean'][d]:.4f} ± {row['val_loss_std'][d]:.4f}" for d in domains]
    assert payload["rows"]["optimised"]["weights"] == pytest.approx(payload["optimum"]["weights"])
    assert "### Repetition" in markdown


def test_reweight_collection_field_missing_is_one_line(tmp_path, capsys):
    collection = tmp_path / "tulu.jsonl"
    collection.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                                             {"role": "assistant", "content": f"a{i}"}],
                                                "dataset": "x"}) for i in range(4)) + "\n")
    args = ["--quick", "--work", str(tmp_path / "w"), "--results", str(tmp_path / "r")]
    assert reweight_collection.main(["--collection", str(collection), "--field", "source", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--field source" in err and f"{collection}:1" in err
    assert reweight_collection.main(["--collection", str(collection), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--collection needs --field" in err
    assert not (tmp_path / "r").exists()
    assert reweight_collection.main(["--collection", str(collection), "--field", "dataset", "--tokenizer",
                                     str(tmp_path), "--quick", "--work", str(tmp_path / "w2")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--tokenizer DIR needs --init" in err
    assert not (tmp_path / "w2").exists()  # refused before preparing anything


@pytest.mark.parametrize("shape", ["tulu3", "openorca"])
def test_reweight_collection_splits_real_shapes(tmp_path, capsys, shape):
    """Synthetic files shaped like Tulu3 (messages + source) and OpenOrca (id prefix, orca fields)."""
    rng = np.random.default_rng(0)
    counts = {"ai2-adapt-dev/flan_v2": 12, "allenai/tulu-3-sft-personas-math": 6} if shape == "tulu3" \
        else {"niv": 12, "cot": 6}
    lines = []
    for source, n in counts.items():
        for i in range(n):
            text = " ".join(rng.choice(["alpha", "beta", "gamma", "delta"], size=20))
            if shape == "tulu3":
                lines.append({"id": f"{source}_{i}", "source": source, "messages": [
                    {"role": "user", "content": f"question {i}: {text}"}, {"role": "assistant", "content": text}]})
            else:
                lines.append({"id": f"{source}.{1000 + i}", "system_prompt": "", "question": f"q {i} {text}",
                              "response": text})
    collection = tmp_path / f"{shape}.jsonl"
    collection.write_text("".join(json.dumps(x) + "\n" for x in lines))
    field = ["--field", "source"] if shape == "tulu3" else ["--field", "id", "--split-prefix", "."]
    assert reweight_collection.main(["--collection", str(collection), *field, "--dry-run", "--quick", "--quiet",
                                     "--work", str(tmp_path / "w"), "--results", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    manifest = json.loads((tmp_path / "w" / "data" / "manifest.json").read_text())
    expected = {"tulu3": ["ai2-adapt-dev_flan_v2", "allenai_tulu-3-sft-personas-math"], "openorca": ["cot", "niv"]}
    assert sorted(manifest["domains"]) == expected[shape]
    assert "2 domains" in out and "9 perturbation runs" in out and "natural weight" in out
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_aioli_eval_size_quick_distances_follow_from_the_estimates(tmp_path):
    """The distances the table reports are those of EG steps from the recorded A matrices,
    recomputed here with the update written out (p_j * exp(eta * sum_i A_ij), normalised)."""
    import aioli_eval_size

    results = tmp_path / "results"
    assert aioli_eval_size.main(["--quick", "--quiet", "--work", str(tmp_path / "work"), "--results", str(results)]) == 0
    payload = json.loads((results / "aioli_eval_size_quick.json").read_text())
    eta = payload["aioli"]["eta"]
    assert payload["updates"] and all(u["run_matches_4_batches"] for u in payload["updates"])

    def step(p, a):
        w = np.asarray(p) * np.exp(eta * np.asarray(a).sum(axis=0))
        return w / w.sum()

    for update in payload["updates"]:
        reference = step(update["weights_before"], update["reference_a"])
        assert abs(np.abs(reference - update["weights_before"]).sum() - update["step_size_l1"]) < 1e-9
        for name, row in update["candidates"].items():
            assert abs(np.abs(step(update["weights_before"], row["a"]) - reference).sum() - row["distance_l1"]) < 1e-9, name
    assert "| 4 batches |" in (results / "aioli_eval_size_quick.md").read_text()
