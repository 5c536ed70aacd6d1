"""Observations CSV: round trip, missing losses, extra columns, one-line errors for bad input."""

import numpy as np
import pytest

from mixjax.errors import MixjaxError
from mixjax.observations import parse_csv, read_csv, to_csv_text, write_csv
from mixjax.methods.li2025_design import perturbation_design

GOOD = """run,tokens_if,tokens_math,loss_if,loss_math,seed
base,1000,1000,2.5,1.5,0
if_x2,2000,1000,2.25,,1
"""


def test_parse_keeps_order_missing_losses_and_extra_columns(tmp_path):
    obs = parse_csv(GOOD)
    assert obs.runs == ["base", "if_x2"] and obs.domains == ["if", "math"]
    np.testing.assert_array_equal(obs.tokens, [[1000, 1000], [2000, 1000]])
    assert np.isnan(obs.losses[1, 1]) and obs.observed.sum() == 3
    assert obs.extra == {"seed": ["0", "1"]}
    path = tmp_path / "runs.csv"
    write_csv(obs, path)
    again = read_csv(path)
    assert again.runs == obs.runs and again.extra == obs.extra
    np.testing.assert_array_equal(again.tokens, obs.tokens)
    np.testing.assert_array_equal(again.observed, obs.observed)
    np.testing.assert_array_equal(again.losses[again.observed], obs.losses[obs.observed])
    assert to_csv_text(again) == to_csv_text(obs)


def test_a_domain_without_a_loss_column_is_all_missing():
    obs = parse_csv("run,tokens_a,tokens_b,loss_a\nr1,1,2,3.0\n")
    assert obs.domains == ["a", "b"] and np.isnan(obs.losses[0, 1])


def test_select_reorders_domains():
    obs = parse_csv(GOOD).select(["math", "if"])
    np.testing.assert_array_equal(obs.tokens[1], [1000, 2000])
    with pytest.raises(MixjaxError, match="do not match"):
        parse_csv(GOOD).select(["if", "code"])


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty file"),
        ("tokens_a,tokens_b\n1,2\n", "no 'run' column"),
        ("run,tokens_a,loss_a\nr,1,2\n", "at least 2 domains"),
        ("run,tokens_a,tokens_b,loss_c\nr,1,2,3\n", "loss_c has no tokens_c"),
        ("run,tokens_a,tokens_b\n", "no runs"),
        ("run,tokens_a,tokens_b\nr,1\n", "line 2: 2 fields"),
        ("run,tokens_a,tokens_b,loss_a\nr,1,2,nan\n", "line 2: loss_a is 'nan'"),
        ("run,tokens_a,tokens_b,loss_a\nr,1,2,inf\n", "line 2: loss_a is 'inf'"),
        ("run,tokens_a,tokens_b,loss_a\nr,1,2,-0.5\n", "line 2: loss_a is negative"),
        ("run,tokens_a,tokens_b,loss_a\nr,1,2,1\ns,-1,2,1\n", "line 3: tokens_a is negative"),
        ("run,tokens_a,tokens_b,loss_a\nr,NaN,2,1\n", "tokens_a is 'NaN'"),
        ("run,tokens_a,tokens_b,loss_a\nr,,2,1\n", "tokens_a is empty"),
        ("run,tokens_a,tokens_b,loss_a\nr,x,2,1\n", "tokens_a is not a number"),
        ("run,tokens_a,tokens_b,loss_a\nr,0,0,1\n", "no tokens in any domain"),
        ("run,tokens_a,tokens_b\n,1,2\n", "empty run name"),
    ],
)
def test_bad_csv_gives_one_line_errors_naming_the_line(text, message):
    with pytest.raises(MixjaxError, match=message) as e:
        parse_csv(text, source="runs.csv")
    assert str(e.value).startswith("runs.csv") and "\n" not in str(e.value)


def test_missing_file():
    with pytest.raises(MixjaxError, match="no such observations file"):
        read_csv("/nonexistent/runs.csv")


def test_perturbation_design_is_one_base_and_four_runs_per_domain():
    runs, tokens = perturbation_design(["a", "b", "c"], 100)
    assert len(runs) == 13 and tokens.shape == (13, 3)
    np.testing.assert_array_equal(tokens[0], [100, 100, 100])
    np.testing.assert_array_equal(sorted(tokens[1:5, 0]), [25, 50, 200, 300])
    assert np.all(tokens[1:5, 1:] == 100)


@pytest.mark.parametrize(
    "tokens, losses, message",
    [
        ([[1.0, -1.0]], [[1.0, 1.0]], "invalid tokens"),
        ([[1.0, np.inf]], [[1.0, 1.0]], "invalid tokens"),
        ([[0.0, 0.0]], [[1.0, 1.0]], "invalid tokens"),
        ([[1.0, 1.0]], [[np.inf, 1.0]], "infinite or negative loss"),
        ([[1.0, 1.0]], [[-2.0, 1.0]], "infinite or negative loss"),
    ],
)
def test_tables_built_in_code_are_checked_too(tokens, losses, message):
    from mixjax.observations import Observations

    with pytest.raises(MixjaxError, match=message):
        Observations(["r"], ["a", "b"], np.array(tokens), np.array(losses))
