"""Tests for kdlab.stats.formatting: every formatter on a number, on each kind of missing value and on the edges of
its rules."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from kdlab.stats.formatting import (
    DASH,
    bounds,
    config_label,
    fmt,
    interval,
    isnan,
    markdown_table,
    num,
    p_value,
    pct,
    present,
    size_label,
    starred,
    stars,
)

MISSING = [None, math.nan, np.float64("nan"), np.float32("nan"), pd.NA]


@pytest.mark.parametrize("value", MISSING)
def test_every_formatter_writes_a_missing_value_as_missing(value):
    assert isnan(value) and not present(value)
    assert fmt(value, ".3f") == num(value) == pct(value) == bounds(value, 0.5) == interval(value, 0.1, 0.2) == ""
    assert pct(value, missing=DASH) == p_value(value) == DASH and p_value(value, 2, missing="—") == "—"
    assert stars(value) == "" and starred("x", value) == "x"


def test_numbers():
    assert not isnan(0.0) and not isnan("x") and present(0) and not present("")
    assert num(0.012345) == "0.01235" and num(np.float64(2.0)) == "2" and num(3) == "3" and num(1 / 3, 3) == "0.333"
    assert pct(0.052) == "5.2" and pct(0.052, sign=True) == "+5.2" and pct(-0.05, 0) == "-5" and pct(1.0) == "100.0"
    assert bounds(0.01, 0.094) == "[1.0, 9.4]" and bounds(-0.01, 0.02, sign=True) == "[-1.0, +2.0]"
    assert bounds(0.1, math.nan) == ""
    assert interval(0.052, 0.01, 0.094) == "+5.2 [+1.0, +9.4]"
    assert interval(0.05, -0.01, 0.11, decimals=0, unit=" pp") == "+5 pp [-1, +11]"
    assert size_label(0.113) == "113M" and size_label(1.5) == "1.5B"


def test_p_values_and_stars():
    assert [p_value(p) for p in (0.0004, 0.012, 0.1, 0.5314, 1.0)] == ["4.0e-04", "0.012", "0.10", "0.53", "1.00"]
    assert [p_value(p, digits=2) for p in (0.0004, 0.012, 0.5314, 1.0)] == ["4.0e-04", "0.012", "0.53", "1"]
    assert [stars(p) for p in (0.0005, 0.005, 0.03, 0.05, math.nan)] == ["***", "**", "*", "", ""]
    assert starred("0.003", 0.003) == "0.003 **" and starred("0.2", 0.2) == "0.2"


def test_config_label():
    assert config_label({"method": "fkl", "temperature": 2.0, "noise": 0.0}) == "fkl T=2"
    row = {"method": "rkl", "temperature": math.nan, "noise": 1.0, "teacher_kind": "base", "role": "student-kd"}
    assert config_label(row) == "rkl σ=1 base teacher"
    assert config_label(pd.Series({"method": "sft", "temperature": None, "noise": math.nan})) == "sft"


def test_markdown_table_keeps_cells_in_their_column():
    lines = markdown_table(["a", "b"], [["x|y", "1\n2"]], "lr")
    assert lines == ["| a | b |", "| --- | ---: |", "| x\\|y | 1 2 |"]
