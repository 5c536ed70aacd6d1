"""`mixjax prepare`: TFDS output readable without TensorFlow, split determinism, manifest counts,
change detection, and an output directory that is never left half-written."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mixjax.cli import main
from mixjax.data.prepare import PrepareOptions, SourceSpec, parse_domain_flag, prepare
from mixjax.data.prepared import PreparedData
from mixjax.errors import MixjaxError
from tests.data_fixtures import letter_domain, write_jsonl


@pytest.fixture()
def sources(tmp_path):
    return {"a": letter_domain(tmp_path / "a.jsonl", "a", 120), "b": letter_domain(tmp_path / "b.jsonl", "b", 60)}


def _prepare(sources, out, **options):
    specs = [parse_domain_flag(f"{name}={path}") for name, path in sources.items()]
    return prepare(specs, out, PrepareOptions(**options), progress=False)


def _examples(data, domain, split):
    source = data.split(domain, split)
    return [(tuple(source[i]["tokens"].tolist()), tuple(source[i]["loss_mask"].tolist()))
            for i in range(len(source))]


def test_manifest_counts_match_the_written_data(sources, tmp_path):
    manifest = _prepare(sources, tmp_path / "out")
    data = PreparedData(tmp_path / "out")
    assert data.domains == ["a", "b"] and data.vocab_size == 259
    for d in data.domains:
        for split in ("train", "validation"):
            examples = _examples(data, d, split)
            counts = manifest["domains"][d][split]
            assert counts["examples"] == len(examples) > 0
            assert counts["tokens"] == sum(len(t) for t, _ in examples)
            assert counts["loss_tokens"] == sum(sum(m) for _, m in examples)
    assert manifest["domains"]["a"]["train"]["examples"] + manifest["domains"]["a"]["validation"]["examples"] == 120
    assert manifest["domains"]["a"]["validation"]["examples"] == 6  # 5% of 120


def test_tfds_reads_it_without_tensorflow(sources, tmp_path):
    _prepare(sources, tmp_path / "out")
    code = ("import sys, tensorflow_datasets as tfds; "
            f"src = tfds.data_source('mixjax_domain', data_dir={str(tmp_path / 'out' / 'a')!r}); "
            "print(len(src['train']), len(src['validation'])); "
            "assert 'tensorflow' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["114", "6"]


def test_split_is_deterministic_and_disjoint(sources, tmp_path):
    _prepare(sources, tmp_path / "one")
    _prepare(sources, tmp_path / "two")
    one, two = PreparedData(tmp_path / "one"), PreparedData(tmp_path / "two")
    for d in ("a", "b"):
        for split in ("train", "validation"):
            assert sorted(_examples(one, d, split)) == sorted(_examples(two, d, split))
        train = {t for t, _ in _examples(one, d, "train")}
        assert not train & {t for t, _ in _examples(one, d, "validation")}


def test_duplicate_records_stay_in_one_split(tmp_path):
    records = [{"prompt": f"p{i % 30}", "response": f"r{i % 30}"} for i in range(90)]  # each thrice
    path = write_jsonl(tmp_path / "d.jsonl", records)
    _prepare({"d": path}, tmp_path / "out", validation_fraction=0.1)
    data = PreparedData(tmp_path / "out")
    train, val = _examples(data, "d", "train"), _examples(data, "d", "validation")
    assert len(val) % 3 == 0 and len(val) > 0
    assert not {t for t, _ in train} & {t for t, _ in val}


def test_rerun_does_nothing_and_changes_are_detected(sources, tmp_path):
    out = tmp_path / "out"
    _prepare(sources, out)
    stamp = {p: os.stat(p).st_mtime_ns for p in out.rglob("*")}
    again = _prepare(sources, out)
    assert again["last_prepare"]["rebuilt"] == []
    assert {p: os.stat(p).st_mtime_ns for p in out.rglob("*")} == stamp
    letter_domain(sources["b"], "b", 61)  # one more example in b only
    changed = _prepare(sources, out)
    assert changed["last_prepare"]["rebuilt"] == ["b"]
    assert changed["domains"]["b"]["train"]["examples"] + changed["domains"]["b"]["validation"]["examples"] == 61
    assert os.stat(out / "a" / "mixjax_domain" / "1.0.0" / "features.json").st_mtime_ns == \
        stamp[out / "a" / "mixjax_domain" / "1.0.0" / "features.json"]
    assert _prepare(sources, out, loss_on="all")["last_prepare"]["rebuilt"] == ["a", "b"]  # settings count


def test_failure_leaves_previous_output_intact(sources, tmp_path):
    out = tmp_path / "out"
    _prepare(sources, out)
    before = (out / "manifest.json").read_text()
    files = sorted(p.relative_to(out) for p in out.rglob("*"))
    letter_domain(sources["a"], "a", 200)             # a changes and would be rebuilt ...
    with open(sources["b"], "a") as f:                # ... but b is now malformed
        f.write('{"messages": [\n')
    with pytest.raises(MixjaxError, match=r"b.jsonl:61: malformed JSON"):
        _prepare(sources, out)
    assert (out / "manifest.json").read_text() == before
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == files  # no staging left behind


def test_collection_split_by_id_prefix(tmp_path):
    records = [{"id": f"{src}.{i}", "system_prompt": "", "question": f"q{i}", "response": f"r{i}"}
               for i in range(20) for src in ("niv", "flan", "cot")]
    path = write_jsonl(tmp_path / "orca.jsonl", records)
    spec = SourceSpec(flag="--collection", paths=[path], split_field="id", split_prefix_sep=".")
    manifest = prepare([spec], tmp_path / "out", progress=False)
    assert list(manifest["domains"]) == ["cot", "flan", "niv"]
    assert all(d["train"]["examples"] + d["validation"]["examples"] == 20 for d in manifest["domains"].values())


def _cli_error(capsys, *argv):
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    return err


def test_cli_bad_inputs(sources, tmp_path, capsys):
    out = str(tmp_path / "out")
    a, b = str(sources["a"]), str(sources["b"])
    assert "duplicate domain name 'a'" in _cli_error(capsys, "prepare", "--domain", f"a={a}", "--domain", f"a={b}", "--out", out)
    assert "does not exist" in _cli_error(capsys, "prepare", "--domain", f"a={tmp_path}/nope.jsonl", "--out", out)
    assert "expected NAME=PATH" in _cli_error(capsys, "prepare", "--domain", a, "--out", out)
    assert "unknown format 'chatml'" in _cli_error(capsys, "prepare", "--domain", f"a={a}", "--format", "chatml", "--out", out)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert "empty domain" in _cli_error(capsys, "prepare", "--domain", f"e={empty}", "--out", out)
    no_answers = write_jsonl(tmp_path / "q.jsonl", [{"messages": [{"role": "user", "content": "x"}]}] * 3)
    assert "no example with loss tokens" in _cli_error(capsys, "prepare", "--domain", f"q={no_answers}", "--out", out)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    assert "refusing to write" in _cli_error(capsys, "prepare", "--domain", f"a={a}", "--out", str(tmp_path / "other"))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_cli_prepare_prints_table(sources, tmp_path, capsys):
    assert main(["prepare", "--domain", f"a={sources['a']}", "--domain", f"b={sources['b']}",
                 "--format", "a=messages", "--out", str(tmp_path / "out"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[-1] == "built: a, b"  # a first build, not a rebuild
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["domains"]["a"]["sources"] == {str(sources["a"]): "messages"}
    assert main(["prepare", "--domain", f"a={sources['a']}", "--domain", f"b={sources['b']}",
                 "--format", "a=messages", "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "rebuilt: nothing (inputs unchanged)"


def test_cli_prepare_detects_prompt_completion_and_question_answer(tmp_path, capsys):
    """Two common SFT layouts beyond the chat formats: OpenAI/TRL's prompt/completion and QA sets'."""
    pc = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": f"say {i}", "completion": f"{i} said"} for i in range(6)])
    qa = write_jsonl(tmp_path / "qa.jsonl", [{"question": f"{i}+1?", "answer": str(i + 1)} for i in range(6)])
    assert main(["prepare", "--domain", f"pc={pc}", "--domain", f"qa={qa}", "--out", str(tmp_path / "out"),
                 "--quiet"]) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["domains"]["pc"]["sources"] == {str(pc): "prompt_completion"}
    assert manifest["domains"]["qa"]["sources"] == {str(qa): "question_answer"}
    assert manifest["domains"]["qa"]["train"]["loss_tokens"] > 0


def test_not_prepared_directory(tmp_path):
    with pytest.raises(MixjaxError, match="data: .* is not a prepared data directory"):
        PreparedData(tmp_path)
