"""Issue #16, data: bad prepared data or sources are one-line errors naming the file, line or flag,
and a failed `mixjax prepare` never changes an earlier output (compared byte for byte)."""

import errno
import fcntl
import json
import os
from pathlib import Path

import pytest

from mixjax.cli import main
from mixjax.data.prepared import PreparedData
from mixjax.errors import MixjaxError
from tests.data_fixtures import letter_domain, write_jsonl


@pytest.fixture()
def sources(tmp_path):
    return {"a": letter_domain(tmp_path / "a.jsonl", "a", 24), "b": letter_domain(tmp_path / "b.jsonl", "b", 16)}


def _prepare_argv(sources, out, *extra):
    argv = ["prepare", "--out", str(out), "--quiet", *extra]
    for name, path in sources.items():
        argv += ["--domain", f"{name}={path}"]
    return argv


@pytest.fixture()
def prepared(sources, tmp_path, capsys):
    """An existing prepared output (domains a and b) under tmp_path/data/out."""
    out = tmp_path / "data" / "out"
    assert main(_prepare_argv(sources, out)) == 0
    capsys.readouterr()
    return out


def _snapshot(directory: Path) -> dict:
    """Every file and folder under `directory` (hidden ones too), files with their bytes."""
    return {str(p.relative_to(directory)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(directory.rglob("*"))}


def _error(capsys, argv) -> str:
    """Run the CLI; it must exit 2 with exactly one line on stderr, which is returned."""
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"mixjax {argv[0]}: error: "), err
    return err.strip()


# 1. names read from a manifest cannot leave the output directory

def test_manifest_domain_name_escaping_the_output_is_refused(sources, prepared, tmp_path, capsys):
    victim = tmp_path / "victim"                  # prepared/../../victim
    victim.mkdir()
    (victim / "mine.txt").write_text("keep")
    path = prepared / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["domains"]["../../victim"] = manifest["domains"].pop("b")
    manifest["source_groups"][1]["domains"] = ["../../victim"]
    path.write_text(json.dumps(manifest))
    before = _snapshot(prepared)
    # b is no longer asked for, so the old code moved prepared/../../victim to its trash and deleted it
    err = _error(capsys, _prepare_argv({"a": sources["a"]}, prepared))
    assert err == (f"mixjax prepare: error: {path}: domains: domain name '../../victim' must use letters, "
                   "digits, '-' or '_'")
    assert (victim / "mine.txt").read_text() == "keep"
    assert _snapshot(prepared) == before
    err = _error(capsys, ["train", "--data", prepared, "--budget-tokens", "1000", "--out", tmp_path / "run"])
    assert f"{path}: domains: domain name '../../victim'" in err
    assert not (tmp_path / "run").exists()


def test_manifest_domain_path_escaping_the_output_is_refused(prepared, tmp_path, capsys):
    path = prepared / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["domains"]["b"]["path"] = "../../victim/mixjax_domain/1.0.0"
    path.write_text(json.dumps(manifest))
    before = _snapshot(prepared)
    err = _error(capsys, ["train", "--data", prepared, "--budget-tokens", "1000", "--out", tmp_path / "run"])
    assert err == (f"mixjax train: error: {path}: domain 'b': path '../../victim/mixjax_domain/1.0.0' must "
                   f"be a relative path inside {prepared} (no '..')")
    assert _snapshot(prepared) == before


# 2. one-line errors instead of tracebacks

def test_lone_surrogate_in_jsonl_is_a_one_line_error(sources, prepared, capsys):
    before = _snapshot(prepared)
    with open(sources["b"], "a") as f:  # a valid JSON escape, but "\ud800" alone is no Unicode character
        f.write('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x\\ud800y"}]}\n')
    err = _error(capsys, _prepare_argv(sources, prepared))
    assert err == (f"mixjax prepare: error: {sources['b']}:17: text holds a lone surrogate '\\ud800' at "
                   "character 1, which is not valid Unicode (fix the source's \\u escapes)")
    assert _snapshot(prepared) == before


@pytest.mark.parametrize("line, problem", [
    ("[" * 100_000 + "]" * 100_000, "malformed JSON (RecursionError"),
    ('{"prompt": "p", "response": ' + "9" * 5000 + "}", "malformed JSON (ValueError: Exceeds the limit"),
], ids=["too deep", "too many digits"])
def test_other_unreadable_json_lines_are_one_line_errors(sources, prepared, capsys, line, problem):
    before = _snapshot(prepared)
    with open(sources["a"], "a") as f:
        f.write(line + "\n")
    err = _error(capsys, _prepare_argv(sources, prepared))
    assert f"{sources['a']}:25: {problem}" in err
    assert _snapshot(prepared) == before


def test_corrupt_parquet_page_is_a_one_line_error(sources, prepared, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": f"p{i} " * 20, "response": f"r{i} " * 20} for i in range(50)]),
                   path, compression="snappy")
    column = pq.ParquetFile(path).metadata.row_group(0).column(0)
    middle = (column.dictionary_page_offset or column.data_page_offset) + column.total_compressed_size // 2
    data = bytearray(path.read_bytes())
    data[middle:middle + 16] = b"\xff" * 16       # inside a compressed page: the footer still reads
    path.write_bytes(bytes(data))
    before = _snapshot(prepared)
    err = _error(capsys, _prepare_argv({**sources, "p": path}, prepared))
    assert err == (f"mixjax prepare: error: {path}: corrupt Parquet data after row 0 "
                   "(OSError: Corrupt snappy compressed data.)")
    assert _snapshot(prepared) == before


@pytest.mark.parametrize("text, problem", [
    ("{}", "not a mixjax manifest (missing 'format_version', 'domains', 'vocab_size'); delete it or "
           "prepare into a new --out"),
    ("[]", "not a mixjax manifest (a JSON list, expected an object)"),
    ('{"format_version": 1, "vocab_size": 259, "domains": {"a": {"path": "a/mixjax_domain/1.0.0"}}}',
     "domain 'a': 'train' must hold counts examples, tokens, loss_tokens"),
    ('{"format_version": 1, "vocab_size": 259, "domains": {}}', "'domains' must be a non-empty object"),
], ids=["empty object", "list", "no counts", "no domains"])
def test_manifest_missing_keys_is_a_one_line_error(sources, prepared, tmp_path, capsys, text, problem):
    path = prepared / "manifest.json"
    path.write_text(text)
    before = _snapshot(prepared)
    err = _error(capsys, ["train", "--data", prepared, "--budget-tokens", "1000", "--out", tmp_path / "run"])
    assert err == f"mixjax train: error: {path}: {problem}"
    err = _error(capsys, _prepare_argv(sources, prepared))   # prepare refuses to write over it
    assert err == f"mixjax prepare: error: {path}: {problem}"
    assert _snapshot(prepared) == before


def test_truncated_array_record_names_the_file(sources, prepared, tmp_path, capsys):
    train_file = prepared / "a" / "mixjax_domain" / "1.0.0" / "mixjax_domain-train.array_record-00000-of-00001"
    with open(train_file, "r+b") as f:
        f.truncate(70_000)                        # the footer (record index) is lost
    before = _snapshot(prepared)
    err = _error(capsys, ["train", "--data", prepared, "--budget-tokens", "1000", "--out", tmp_path / "run"])
    assert err == (f"mixjax train: error: {train_file}: truncated or corrupt array_record file (0 of 23 "
                   "records readable); rerun `mixjax prepare` to rebuild it")
    assert _snapshot(prepared) == before
    assert main(_prepare_argv(sources, prepared)) == 0     # ... and the rerun does rebuild it
    assert "rebuilt: a\n" in capsys.readouterr().out
    assert len(PreparedData(prepared).split("a", "train")) == 23


def test_damaged_record_inside_a_whole_file_names_the_file(prepared):
    train_file = prepared / "b" / "mixjax_domain" / "1.0.0" / "mixjax_domain-train.array_record-00000-of-00001"
    data = bytearray(train_file.read_bytes())
    data[100:110] = b"\0" * 10                    # a chunk's data, not the footer: opening works
    train_file.write_bytes(bytes(data))
    source = PreparedData(prepared).split("b", "train")
    with pytest.raises(MixjaxError) as e:
        source[0]
    assert str(e.value).startswith(f"{train_file}: cannot read record 0 (Corrupted Riegeli")
    assert str(e.value).endswith(f"delete {prepared / 'b'} and rerun `mixjax prepare`")
    assert "\n" not in str(e.value)


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/some/file")


def _fail_manifest_commit(real_replace):
    def replace(src, dst, **kwargs):
        if Path(dst).name == "manifest.json" and ".staging-" in str(src):
            _enospc()
        return real_replace(src, dst, **kwargs)
    return replace


@pytest.mark.parametrize("where", ["domain data", "domain data (array_record)", "manifest", "commit"])
def test_disk_full_keeps_the_old_output(sources, prepared, capsys, monkeypatch, where):
    import mixjax.data.prepare as prepare_module
    import mixjax.data.tfds_builder as tfds_builder

    before = _snapshot(prepared)
    letter_domain(sources["a"], "a", 25)          # a changes: it is rebuilt, b is reused
    if where == "domain data":
        monkeypatch.setattr(tfds_builder, "write_domain", _enospc)
    elif where == "domain data (array_record)":   # what array_record's C++ writer raises
        def full(*args, **kwargs):
            raise RuntimeError('Failed to finalize writing of split "train": write() failed: No space left '
                               "on device; writing x; at byte 69632; Failed to close chunk_writer")
        monkeypatch.setattr(tfds_builder, "write_domain", full)
    elif where == "manifest":                     # the old code had already swapped a in by then
        monkeypatch.setattr(prepare_module, "write_json_atomic", _enospc)
    else:                                         # a moved in, then the manifest's move fails: undone
        monkeypatch.setattr(os, "replace", _fail_manifest_commit(os.replace))
    err = _error(capsys, _prepare_argv(sources, prepared))
    assert err == (f"mixjax prepare: error: no space left on device: {prepared} "
                   "(the previous output there is unchanged)")
    assert _snapshot(prepared) == before          # no staging or trash left either


def test_disk_full_on_a_new_output_leaves_nothing(sources, tmp_path, capsys, monkeypatch):
    import mixjax.data.prepare as prepare_module

    monkeypatch.setattr(prepare_module, "write_json_atomic", _enospc)
    err = _error(capsys, _prepare_argv(sources, tmp_path / "new"))
    assert err == f"mixjax prepare: error: no space left on device: {tmp_path / 'new'} (nothing was left there)"
    assert not (tmp_path / "new").exists()


def test_too_long_domain_name_is_a_one_line_error(sources, tmp_path, capsys):
    err = _error(capsys, ["prepare", "--domain", f"{'x' * 300}={sources['a']}", "--out", tmp_path / "out"])
    assert "domain name 'xxxxxxxxxxxxxxxxxxxx...' is longer than 100 characters" in err
    assert not (tmp_path / "out").exists()


# 3. collection split values that would be merged silently

def test_split_values_cleaning_up_to_one_name_are_refused(sources, prepared, tmp_path, capsys):
    records = [{"source": src, "prompt": f"q{i}", "response": f"r{i}"}
               for i in range(4) for src in ("flan v2", "cot", "flan_v2")]
    collection = write_jsonl(tmp_path / "tulu.jsonl", records)
    before = _snapshot(prepared)
    err = _error(capsys, _prepare_argv(sources, prepared, "--collection", collection, "--split-field", "source"))
    assert err == (f"mixjax prepare: error: {collection}:3: --split-field source values 'flan v2' and "
                   "'flan_v2' both become domain name 'flan_v2'; make them differ in letters or digits")
    assert _snapshot(prepared) == before
    accented = write_jsonl(tmp_path / "accented.jsonl", [{"source": s, "prompt": "q", "response": f"r{i}"}
                                                         for i in range(3) for s in ("café", "caf")])
    err = _error(capsys, _prepare_argv(sources, prepared, "--collection", accented, "--split-field", "source"))
    assert "values 'café' and 'caf' both become domain name 'caf'" in err
    assert _snapshot(prepared) == before


# 4. leftovers of killed runs

def _leftovers(out: Path) -> None:
    (out / ".staging-k1ll3d00" / "a").mkdir(parents=True)
    (out / ".staging-k1ll3d00" / "a" / "half.array_record").write_bytes(b"\0" * 100)
    (out / ".trash-k1ll3d01" / "old").mkdir(parents=True)
    (out / ".manifest.json.k1ll3d02.tmp").write_text("{")


def test_later_run_removes_stale_staging_and_trash(sources, prepared, capsys):
    before = _snapshot(prepared)
    _leftovers(prepared)
    assert main(_prepare_argv(sources, prepared)) == 0
    assert "rebuilt: nothing" in capsys.readouterr().out
    assert _snapshot(prepared) == before


def test_run_killed_during_its_swap_gets_its_old_copy_back(sources, prepared, capsys):
    before = _snapshot(prepared)
    (prepared / ".trash-k1ll3d03").mkdir()
    os.replace(prepared / "b", prepared / ".trash-k1ll3d03" / "b")   # killed after moving b aside
    assert main(_prepare_argv(sources, prepared)) == 0
    assert "rebuilt: nothing" in capsys.readouterr().out               # b's old copy is back and whole
    assert _snapshot(prepared) == before


def test_first_run_killed_leaves_no_obstacle(sources, tmp_path, capsys):
    out = tmp_path / "out"
    (out / ".staging-k1ll3d04" / "a").mkdir(parents=True)
    assert main(_prepare_argv(sources, out)) == 0          # the old code: "is not empty ... refusing"
    assert sorted(p.name for p in out.iterdir()) == ["a", "b", "manifest.json"]


def test_leftovers_are_kept_while_a_run_holds_the_lock(sources, prepared, capsys):
    (prepared / ".staging-l1ve0000").mkdir()                # a running prepare's staging
    before = _snapshot(prepared)
    fd = os.open(prepared, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)     # ... which holds the lock
        err = _error(capsys, _prepare_argv(sources, prepared))
    finally:
        os.close(fd)
    assert err == (f"mixjax prepare: error: --out: {prepared} is being written by another `mixjax prepare` "
                   "(it holds the directory's lock); wait for it to finish")
    assert _snapshot(prepared) == before


def test_leftover_names_in_someone_elses_directory_are_kept(sources, tmp_path, capsys):
    other = tmp_path / "other"
    (other / ".staging-notmine0").mkdir(parents=True)
    (other / "keep.txt").write_text("mine")
    before = _snapshot(other)
    assert "is not empty and holds no manifest.json" in _error(capsys, _prepare_argv(sources, other))
    assert _snapshot(other) == before


# 5. a record too large for memory is refused before it is read whole

def test_record_over_max_record_bytes_is_refused(sources, prepared, tmp_path, capsys):
    before = _snapshot(prepared)
    with open(sources["b"], "a") as f:
        f.write(json.dumps({"messages": [{"role": "user", "content": "q"},
                                         {"role": "assistant", "content": "b" * 3000}]}) + "\n")
    err = _error(capsys, _prepare_argv(sources, prepared, "--max-record-bytes", "2000"))
    assert err == (f"mixjax prepare: error: {sources['b']}:17: record is longer than --max-record-bytes "
                   "(2,000 bytes); raise the limit or split the record")
    assert _snapshot(prepared) == before
    assert main(_prepare_argv(sources, prepared, "--max-record-bytes", "4000")) == 0   # fits: rebuilt
    assert "rebuilt: b\n" in capsys.readouterr().out
    assert main(_prepare_argv(sources, prepared, "--max-record-bytes", "1000000")) == 0
    assert "rebuilt: nothing" in capsys.readouterr().out    # the limit is not part of a fingerprint
    assert "--max-record-bytes: must be a positive number of bytes" in \
        _error(capsys, _prepare_argv(sources, prepared, "--max-record-bytes", "0"))


def test_parquet_row_over_max_record_bytes_is_refused(sources, prepared, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "q", "response": "r" * (10 if i != 2 else 3000)}
                                         for i in range(5)]), path)
    before = _snapshot(prepared)
    err = _error(capsys, _prepare_argv({**sources, "p": path}, prepared, "--max-record-bytes", "2000"))
    assert err == (f"mixjax prepare: error: {path}:row 3: record text is longer than --max-record-bytes "
                   "(2,000 bytes); raise the limit or split the record")
    assert _snapshot(prepared) == before
