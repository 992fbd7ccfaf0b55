"""Tests for kdlab.stats.hypotheses on a study: each H1-H5 statistic against an independent numpy / scipy
computation on a synthetic study built in code (tests/stats/fixtures/synthetic_study.py), plus hand-computed
cases and the error paths (the paper's side: tests/stats/test_paper.py)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import synthetic_study as synthetic  # tests/stats/fixtures (pytest pythonpath)
from scipy import stats

from kdlab.errors import KdlabError
from kdlab.stats.hypotheses import hypothesis_tests, study_hypotheses
from kdlab.stats.significance import holm

CONFIG = ["teacher", "teacher_kind", "student", "domain", "method", "temperature", "noise"]


@pytest.fixture(scope="module")
def kd_study(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("stats") / "study"
    return root, synthetic.make_study(root, n_examples=60)


def _pick(table: pd.DataFrame, hypothesis: str, group: str, task: str) -> pd.Series:
    rows = table[(table.hypothesis == hypothesis) & (table.group == group) & (table.task == task)]
    assert len(rows) == 1, (hypothesis, group, task)
    return rows.iloc[0]


def _independent_points(frame: pd.DataFrame) -> pd.DataFrame:
    """Seed-averaged main-grid points, computed by pivoting seeds into columns (not the module's groupby); rounded
    to 10 decimals so that improvements equal up to float noise tie in the Spearman ranks (as in the module)."""
    kd = frame[(frame.role == "student-kd") & (frame.teacher_kind == "finetuned") & (frame.noise == 0)].copy()
    kd["key"] = kd[CONFIG + ["task"]].astype(str).agg("|".join, axis=1)
    out = {}
    for column in ("improvement", "teacher_accuracy", "student_size_b", "sft_accuracy", "agreement", "bleu"):
        out[column] = kd.pivot(index="key", columns="seed", values=column).mean(axis=1).round(10)
    points = pd.DataFrame(out)
    first = kd.drop_duplicates("key").set_index("key")
    points["task"] = first["task"]
    points["method"] = first["method"]
    return points


# ----------------------------------------------------------------------------------------------------------------
# H1-H5


def test_h1_ttest_and_cohens_d_match_scipy(kd_study):
    _, frame = kd_study
    table = study_hypotheses(frame)
    points = _independent_points(frame)
    cases = [("all", "gsm8k"), ("fkl", "gsm8k"), ("gkd", "boolq"), ("all", "all"), ("rkl", "all")]
    for group, task in cases:
        sub = points if task == "all" else points[points.task == task]
        sub = sub if group == "all" else sub[sub.method == group]
        x = sub["improvement"].to_numpy()
        expected = stats.ttest_1samp(x, 0.0, alternative="greater")
        row = _pick(table, "H1", group, task)
        assert row.n == len(x) == (12 if (group, task) == ("all", "gsm8k") else len(x))
        assert row.statistic == pytest.approx(expected.statistic)
        assert row.pvalue == pytest.approx(expected.pvalue)
        assert row.effect_size == pytest.approx(x.mean() / x.std(ddof=1))
        assert row.effect_name == "cohen_d"
        assert row["mean"] == pytest.approx(x.mean())
    # per task: 2 students x 3 methods x 2 temperatures = 12 configurations; pooled over 2 tasks: 24
    assert _pick(table, "H1", "all", "gsm8k").n == 12
    assert _pick(table, "H1", "all", "all").n == 24


def test_h1_anova_and_eta_squared_match_scipy(kd_study):
    _, frame = kd_study
    table = study_hypotheses(frame)
    points = _independent_points(frame)
    for task in ("gsm8k", "boolq", "all"):
        sub = points if task == "all" else points[points.task == task]
        samples = [sub.loc[sub.method == m, "improvement"].to_numpy() for m in ("fkl", "rkl", "gkd")]
        expected = stats.f_oneway(*samples)
        allx = np.concatenate(samples)
        between = sum(len(s) * (s.mean() - allx.mean()) ** 2 for s in samples)
        row = _pick(table, "H1-anova", "all", task)
        assert row.statistic == pytest.approx(expected.statistic)
        assert row.pvalue == pytest.approx(expected.pvalue)
        assert row.effect_size == pytest.approx(between / ((allx - allx.mean()) ** 2).sum())
        assert row.effect_name == "eta_squared"
    assert table[table.hypothesis == "H1-anova"].group.unique().tolist() == ["all"]


@pytest.mark.parametrize(
    "hypothesis,column",
    [
        ("H2", "teacher_accuracy"),
        ("H3", "student_size_b"),
        ("H3b", "sft_accuracy"),
        ("H4", "agreement"),
        ("H5", "bleu"),
    ],
)
def test_correlations_match_scipy_spearman(kd_study, hypothesis, column):
    _, frame = kd_study
    table = study_hypotheses(frame)
    points = _independent_points(frame)
    for group, task in (("all", "all"), ("gkd", "all"), ("all", "gsm8k")):
        sub = points if task == "all" else points[points.task == task]
        sub = sub if group == "all" else sub[sub.method == group]
        row = _pick(table, hypothesis, group, task)
        if sub[column].nunique() < 2:
            assert math.isnan(row.statistic) and "constant" in row.note
            continue
        expected = stats.spearmanr(sub["improvement"], sub[column])
        assert row.statistic == pytest.approx(expected.statistic)
        assert row.pvalue == pytest.approx(expected.pvalue)
        assert row.effect_size == pytest.approx(expected.statistic)
        assert row.n == len(sub)


def test_seeds_are_averaged_before_testing(kd_study):
    _, frame = kd_study
    # doubling the spread between seeds around the same mean must not change the seed-averaged points
    kd = frame.role == "student-kd"
    shifted = frame.copy()
    sign = np.where(shifted.seed == 0, 1.0, -1.0)
    shifted.loc[kd, "improvement"] = shifted.loc[kd, "improvement"] + 0.05 * sign[kd.to_numpy()]
    a, b = study_hypotheses(frame), study_hypotheses(shifted)
    pd.testing.assert_series_equal(a.statistic, b.statistic)
    # ... while a single seed gives different points
    single = study_hypotheses(frame[frame.seed == 0])
    assert not np.allclose(single.statistic.fillna(0), a.statistic.fillna(0))


def test_ablation_rows_are_excluded(kd_study):
    _, frame = kd_study
    ablation = (frame.role == "student-kd") & ((frame.teacher_kind == "base") | (frame.noise > 0))
    assert ablation.sum() > 0
    wild = frame.copy()
    wild.loc[ablation, "improvement"] = 0.9
    pd.testing.assert_frame_equal(study_hypotheses(frame), study_hypotheses(wild))
    pd.testing.assert_frame_equal(study_hypotheses(frame), study_hypotheses(frame[~ablation]))


def test_holm_on_hypotheses_is_within_hypothesis_and_group(kd_study):
    _, frame = kd_study
    table = study_hypotheses(frame)
    part = table[(table.hypothesis == "H1") & (table.group == "fkl")]
    assert list(part.task) == ["gsm8k", "boolq", "all"]
    np.testing.assert_allclose(part.pvalue_holm, holm(part.pvalue.to_numpy()))


def test_undefined_tests_are_nan_with_a_reason_and_no_warning(tmp_path):
    frame = synthetic.make_study(
        tmp_path / "s",
        students={"Tiny-0.5B": 0.5},
        methods={"fkl": "fkl"},
        temperatures=(2.0,),
        seeds=(0,),
        noise=(),
        base_teacher=False,
        fidelity=False,
        n_examples=20,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = study_hypotheses(frame)
    h1 = _pick(table, "H1", "all", "gsm8k")
    assert h1.n == 1 and math.isnan(h1.pvalue) and "too few points" in h1.note
    anova = _pick(table, "H1-anova", "all", "all")
    assert math.isnan(anova.pvalue) and "fewer than 2 methods" in anova.note
    h4 = _pick(table, "H4", "all", "all")
    assert h4.n == 0 and math.isnan(h4.statistic) and "agreement" in h4.note
    # constant improvement: the t-test and Spearman are undefined, reported as such
    constant = frame.copy()
    constant.loc[constant.role == "student-kd", "improvement"] = 0.05
    two = pd.concat([constant, constant.assign(task="other", domain="math")], ignore_index=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = study_hypotheses(two)
    row = _pick(table, "H1", "all", "all")
    assert math.isnan(row.statistic) and "constant" in row.note and row.n == 3  # gsm8k, boolq, other


def test_hypotheses_errors_name_the_problem(kd_study):
    _, frame = kd_study
    with pytest.raises(KdlabError, match=r"missing column.*improvement.*bleu"):
        study_hypotheses(frame.drop(columns=["improvement", "bleu"]))
    with pytest.raises(KdlabError, match="empty"):
        study_hypotheses(frame.iloc[:0])
    with pytest.raises(KdlabError, match="no student-kd rows"):
        study_hypotheses(frame[frame.role != "student-kd"])
    with pytest.raises(KdlabError, match=r"unknown role.*student-x"):
        study_hypotheses(frame.assign(role=frame.role.replace("student-kd", "student-x")))
    with pytest.raises(KdlabError, match="column noise has non-numeric value 'loud'"):
        study_hypotheses(frame.assign(noise=frame.noise.astype(object).where(frame.noise == 0, "loud")))


def test_the_core_with_groups_found_or_fixed():
    """hypothesis_tests, the core shared with the paper: groups in order of appearance (a group without points in a
    task has no rows there) or a fixed list (every group in every task, NaN and n = 0 without points)."""
    points = pd.DataFrame(
        {
            "task": ["a", "a", "a", "a", "b", "b", "b"],
            "g": ["x", "x", "y", "y", "x", "x", "x"],
            "improvement": [0.1, 0.3, -0.1, 0.05, 0.2, 0.4, 0.1],
            "size": [1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 3.0],
        }
    )
    found = hypothesis_tests(points, "g", [("H3", "size")], pooled=True)
    assert set(zip(found.task, found.group)) == {(t, g) for t in ("a", "all") for g in ("all", "x", "y")} | {
        ("b", "all"),
        ("b", "x"),
    }
    assert list(found.hypothesis.drop_duplicates()) == ["H1", "H1-anova", "H3"]
    x = _pick(found, "H1", "x", "all")
    expected = stats.ttest_1samp([0.1, 0.3, 0.2, 0.4, 0.1], 0.0, alternative="greater")
    assert (x.statistic, x.pvalue, x.n) == (expected.statistic, expected.pvalue, 5)
    anova = _pick(found, "H1-anova", "all", "a")
    assert anova.statistic == pytest.approx(stats.f_oneway([0.1, 0.3], [-0.1, 0.05]).statistic)
    fixed = hypothesis_tests(points, "g", [("H3", "size")], groups=["y", "x", "z"])
    assert "all" not in set(fixed.task) and list(fixed[fixed.hypothesis == "H1"].group[:4]) == ["all", "y", "x", "z"]
    empty = _pick(fixed, "H1", "y", "b")
    assert empty.n == 0 and math.isnan(empty.statistic) and "too few points" in empty.note
    assert hypothesis_tests(points.iloc[:0], "g", []).empty
