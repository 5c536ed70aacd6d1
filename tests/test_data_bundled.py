"""The bundled real-text domains and the demo's data part."""

import json

import pytest

from mixjax.cli import main
from mixjax.data.bundled import BUILDERS, LICENCES, SOURCES, write_bundled
from mixjax.data.formats import detect_format


@pytest.mark.slow
def test_bundled_domains_are_real_text_of_at_least_1mb(tmp_path):
    summary = write_bundled(tmp_path)
    assert set(summary) == {"dialogue", "math", "code"} == set(BUILDERS)
    assert set(LICENCES) == set(SOURCES) == set(BUILDERS) | {"docs"}  # docs: the skewed collection's
    expected_format = {"dialogue": "messages", "math": "openmath", "code": "alpaca"}
    for name, info in summary.items():
        path = tmp_path / f"{name}.jsonl"
        assert path.stat().st_size >= 1_000_000 and info["bytes"] >= 1_000_000
        lines = path.read_text().splitlines()
        assert len(lines) == info["records"] == len(set(lines)) > 100          # no duplicates
        assert all(detect_format(json.loads(l), name) == expected_format[name] for l in lines[:50])
    assert json.loads((tmp_path / "SOURCES.json").read_text()) == summary
    # deterministic: a second write is byte-identical
    write_bundled(tmp_path / "again")
    for name in BUILDERS:
        assert (tmp_path / f"{name}.jsonl").read_bytes() == (tmp_path / "again" / f"{name}.jsonl").read_bytes()


def test_bundled_content_looks_like_its_domain(tmp_path):
    write_bundled(tmp_path, size_bytes=50_000)
    first = {n: json.loads((tmp_path / f"{n}.jsonl").read_text().splitlines()[0]) for n in BUILDERS}
    roles = [m["role"] for m in first["dialogue"]["messages"]]
    assert roles[0] == "user" and "assistant" in roles
    assert "####" in first["math"]["generated_solution"] or any(c.isdigit() for c in first["math"]["generated_solution"])
    assert "def " in first["code"]["output"]


def test_data_demo_command(tmp_path, capsys):
    assert main(["data", "demo", "--out", str(tmp_path / "src"), "--size-mb", "0.05"]) == 0
    assert "dialogue" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "src").iterdir()) == [
        "SOURCES.json", "code.jsonl", "dialogue.jsonl", "math.jsonl"]
    assert main(["data", "demo", "--out", str(tmp_path / "x"), "--size-mb", "0"]) == 2
    assert "--size-mb must be positive" in capsys.readouterr().err
