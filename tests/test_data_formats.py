"""Format detection and conversion of each SFT format, sources and their errors."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mixjax.data.formats import detect_format, to_messages
from mixjax.data.sources import read_records, split_key
from mixjax.errors import MixjaxError
from tests.data_fixtures import write_jsonl

U, A, S = "user", "assistant", "system"

CASES = [
    ("messages", {"messages": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"},
                               {"role": "assistant", "content": "hello"}]},
     [(S, "be nice"), (U, "hi"), (A, "hello")]),
    ("sharegpt", {"conversations": [{"from": "human", "value": "q1"}, {"from": "gpt", "value": "a1"},
                                    {"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2"}]},
     [(U, "q1"), (A, "a1"), (U, "q2"), (A, "a2")]),
    ("prompt_response", {"prompt": "p", "response": "r"}, [(U, "p"), (A, "r")]),
    ("prompt_completion", {"prompt": "p", "completion": "c"}, [(U, "p"), (A, "c")]),
    ("question_answer", {"question": "2+2?", "answer": "4"}, [(U, "2+2?"), (A, "4")]),
    ("alpaca", {"instruction": "sort", "input": "[3,1]", "output": "[1,3]"}, [(U, "sort\n\n[3,1]"), (A, "[1,3]")]),
    ("alpaca", {"instruction": "say hi", "input": "", "output": "hi"}, [(U, "say hi"), (A, "hi")]),
    ("openmath", {"problem": "1+1?", "generated_solution": "1+1=2 \\boxed{2}", "expected_answer": "2"},
     [(U, "1+1?"), (A, "1+1=2 \\boxed{2}")]),
    ("orca", {"id": "niv.1", "system_prompt": "You are an AI.", "question": "q", "response": "r"},
     [(S, "You are an AI."), (U, "q"), (A, "r")]),
    ("orca", {"id": "t0.1", "system_prompt": "", "question": "q", "response": "r"}, [(U, "q"), (A, "r")]),
    ("text", {"text": "plain text"}, [("text", "plain text")]),
]


@pytest.mark.parametrize("expected_format,record,expected", CASES)
def test_detect_and_convert(expected_format, record, expected):
    fmt = detect_format(record, "f.jsonl:1")
    assert fmt == expected_format
    assert [(m["role"], m["content"]) for m in to_messages(record, fmt, "f.jsonl:1")] == expected


def test_unknown_format_names_file_and_line():
    with pytest.raises(MixjaxError, match=r"f.jsonl:7: unknown format"):
        detect_format({"foo": 1}, "f.jsonl:7")


def test_record_missing_field_of_overridden_format():
    with pytest.raises(MixjaxError, match=r"f.jsonl:2: missing field 'output' \(format alpaca\)"):
        to_messages({"instruction": "x"}, "alpaca", "f.jsonl:2")


def test_bad_role_and_speaker():
    with pytest.raises(MixjaxError, match="unknown role 'bot'"):
        to_messages({"messages": [{"role": "bot", "content": "x"}]}, "messages", "w")
    with pytest.raises(MixjaxError, match="unknown speaker 'alien'"):
        to_messages({"conversations": [{"from": "alien", "value": "x"}]}, "sharegpt", "w")


def test_malformed_jsonl_line_names_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n\n{"prompt": "a", "resp\n')
    records = read_records(path)
    assert next(records)[0] == f"{path}:1"
    with pytest.raises(MixjaxError, match=rf"{path}:3: malformed JSON"):
        next(records)


def test_parquet_rows(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"problem": ["p1", "p2"], "generated_solution": ["s1", "s2"]}), path)
    rows = list(read_records(path))
    assert [w for w, _ in rows] == [f"{path}:row 1", f"{path}:row 2"]
    assert detect_format(rows[1][1], rows[1][0]) == "openmath"
    assert rows[1][1]["generated_solution"] == "s2"


def test_split_key_field_and_id_prefix():
    assert split_key({"source": "ai2/flan_v2"}, "source", None, "w") == "ai2/flan_v2"
    assert split_key({"id": "niv.242684"}, "id", ".", "w") == "niv"
    with pytest.raises(MixjaxError, match="w: missing split field 'source'"):
        split_key({"id": 1}, "source", None, "w")


def test_jsonl_fixture_round_trip(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"prompt": "p", "response": "r"}])
    assert list(read_records(path)) == [(f"{path}:1", {"prompt": "p", "response": "r"})]


def test_the_readme_quick_start_lists_every_format():
    import re
    from pathlib import Path

    from mixjax.data.formats import FORMATS

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    listed = re.search(r"# formats: (.*?)\n(?:\s*# (.*?)\n)?", readme)
    names = {n.strip() for part in listed.groups() if part for n in part.split(",") if n.strip()}
    assert names == set(FORMATS)
