"""Evaluations always measure: a domain whose prompts are longer than a row still has its loss
measured by a bounded evaluation (validation rows hold only pieces with a loss target), and the
domains whose responses start after the row are named, with their counts, at `prepare` and
before training."""

import json

import numpy as np
import pytest

from mixjax.cli import main
from tests.data_fixtures import letter_domain, write_jsonl

PROMPT = 300  # characters (byte tokens) of each long prompt: more than a batch of 8 rows of 32


def _long_prompts(path, n):
    """n examples whose prompt fills more than the first batch of rows, with a short response."""
    return write_jsonl(path, [{"messages": [{"role": "user", "content": "P" * PROMPT + str(i % 10)},
                                            {"role": "assistant", "content": "p" * (5 + i % 7)}]}
                              for i in range(n)])


def _first_targets(data, domain):
    """Each example's first loss target (a masked token after the first), both splits: read directly."""
    out = []
    for split in ("train", "validation"):
        source = data.split(domain, split)
        for i in range(len(source)):
            mask = np.asarray(source[i]["loss_mask"], bool)
            out.append(int(np.flatnonzero(mask[1:])[0]) + 1)
    return np.array(out)


@pytest.mark.slow
def test_long_prompts_are_measured_and_named_before_training(tmp_path, capsys):
    from mixjax.data.prepared import PreparedData

    letter_domain(tmp_path / "a.jsonl", "a", 40)
    _long_prompts(tmp_path / "p.jsonl", 40)
    assert main(["prepare", "--domain", f"a={tmp_path / 'a.jsonl'}", "--domain", f"p={tmp_path / 'p.jsonl'}",
                 "--out", str(tmp_path / "data"), "--quiet"]) == 0
    data = PreparedData(tmp_path / "data")
    starts = {d: _first_targets(data, d) for d in ("a", "p")}
    assert (starts["p"] >= 256).all() and (starts["a"] < 32).all()
    printed = capsys.readouterr()
    assert ("note: --seq-len 256 (train's default): responses start after the first 256 tokens in p 40 of 40 "
            "examples; they are trained and evaluated cut from their prompts (no response of p fits a row with "
            "its prompt: raise --seq-len)") in printed.out

    # --seq-len 32, one validation batch of 8 rows: p's first 8 rows of 32 tokens are all prompt
    out = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "data"), "--weights", "a=0.5,p=0.5", "--budget-tokens", "512",
                 "--batch-size", "8", "--seq-len", "32", "--eval-max-batches", "1", "--model", "tiny", "--quiet",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr()
    notes = [line for line in printed.err.splitlines() if line.startswith("note: --seq-len")]
    assert notes == ["note: --seq-len 32: responses start after the first 32 tokens in p 40 of 40 examples; they "
                     "are trained and evaluated cut from their prompts (no response of p fits a row with its prompt: "
                     "raise --seq-len)"]
    result = json.loads((out / "result.json").read_text())
    assert all(isinstance(v, float) and 0 < v < 20 for v in result["val_loss"].values()), result["val_loss"]
    # at a row length between the manifest's (read from the examples): the counts match a direct count
    from mixjax.data.prepare import late_responses
    assert late_responses(data, 300) == {"p": (int((starts["p"] >= 300).sum()), 40)}
    assert late_responses(data, 16) == {d: (int((s >= 16).sum()), 40) for d, s in starts.items() if (s >= 16).any()}
