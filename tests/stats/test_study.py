"""Tests for kdlab.stats.study: the seed summary against scipy's t-interval, and the statistics tables written
(the paper's temperature view, stats.md) on a synthetic study built in code (tests/stats/fixtures)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import synthetic_study as synthetic  # tests/stats/fixtures (pytest pythonpath)
from scipy import stats

from kdlab.errors import KdlabError
from kdlab.stats.formatting import stars
from kdlab.stats.hypotheses import study_hypotheses
from kdlab.stats.study import compute_study_stats, seed_summary, write_stats_tables
from kdlab.stats.table import main_grid

CONFIG = ["teacher", "teacher_kind", "student", "domain", "method", "temperature", "noise"]


@pytest.fixture(scope="module")
def kd_study(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("stats") / "study"
    return root, synthetic.make_study(root, n_examples=60)


# ----------------------------------------------------------------------------------------------------------------
# seeds


def test_seed_summary_matches_t_interval(kd_study):
    _, frame = kd_study
    out = seed_summary(frame)
    # a configuration whose accuracy and improvement both vary over seeds (scipy gives NaN for sd 0)
    varied = out[(out.role == "student-kd") & (out.accuracy_sd > 0) & (out.improvement_sd > 0)]
    assert len(varied) > 5
    row = varied.iloc[3]
    runs = frame[
        (frame.role == "student-kd")
        & (frame.student == row.student)
        & (frame.method == row.method)
        & (frame.temperature == row.temperature)
        & (frame.noise == row.noise)
        & (frame.teacher_kind == row.teacher_kind)
        & (frame.task == row.task)
    ]
    acc = runs.accuracy.to_numpy()
    low, high = stats.t.interval(0.95, len(acc) - 1, loc=acc.mean(), scale=stats.sem(acc))
    assert row.n_seeds == 2 and row.seeds == "0,1"
    assert row.accuracy_mean == pytest.approx(acc.mean()) and row.accuracy_sd == pytest.approx(acc.std(ddof=1))
    assert (row.accuracy_ci_low, row.accuracy_ci_high) == pytest.approx((low, high))
    imp = runs.improvement.to_numpy()
    low, high = stats.t.interval(0.95, len(imp) - 1, loc=imp.mean(), scale=stats.sem(imp))
    assert row.improvement_mean == pytest.approx(imp.mean())
    assert (row.improvement_ci_low, row.improvement_ci_high) == pytest.approx((low, high))
    assert math.isnan(row.wilson_low)
    # one seed (the teacher): no t-interval, the run's Wilson interval instead
    teacher = out[(out.role == "teacher") & (out.task == "gsm8k")].iloc[0]
    source = frame[(frame.role == "teacher") & (frame.task == "gsm8k")].iloc[0]
    assert teacher.n_seeds == 1 and math.isnan(teacher.accuracy_ci_low)
    assert (teacher.wilson_low, teacher.wilson_high) == (source.ci_low, source.ci_high)
    assert math.isnan(teacher.improvement_mean)
    # one row per role x configuration x task
    assert not out.duplicated(["role"] + CONFIG + ["task"]).any()
    assert out.n_seeds.sum() == len(frame)


def test_seed_summary_rejects_duplicate_rows(kd_study):
    _, frame = kd_study
    with pytest.raises(KdlabError, match="several rows for run"):
        seed_summary(pd.concat([frame, frame.iloc[[5]]]))
    with pytest.raises(KdlabError, match=r"missing column.*accuracy"):
        seed_summary(frame.drop(columns=["accuracy"]))


# ----------------------------------------------------------------------------------------------------------------
# files


def test_write_stats_tables(kd_study, tmp_path):
    root, frame = kd_study
    paths = write_stats_tables(compute_study_stats(root, frame, n_boot=200), tmp_path / "out")
    assert set(paths) == {"hypotheses", "paired", "seeds", "markdown", "paper_temperature"}  # two temperatures
    assert all(p.is_file() for p in paths.values())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "hypotheses.csv",
        "paired.csv",
        "paper_temperature.csv",
        "seeds.csv",
        "stats.md",
    ]
    paper = pd.read_csv(paths["paper_temperature"])
    main = main_grid(frame).dropna(subset=["temperature"])
    best = main.groupby(["student", "method", "seed", "task"])["accuracy"].max()
    assert (
        paper.set_index(["student", "method", "seed", "task"])["accuracy"].sort_index().tolist()
        == best.sort_index().tolist()
    )
    hyp = pd.read_csv(paths["hypotheses"])
    assert {"hypothesis", "group", "task", "statistic", "pvalue", "n", "effect_size", "effect_name"} <= set(hyp)
    pd.testing.assert_frame_equal(hyp[["statistic", "pvalue"]], study_hypotheses(frame)[["statistic", "pvalue"]])
    assert len(pd.read_csv(paths["paired"])) == (frame.role == "student-kd").sum()
    md = paths["markdown"].read_text()
    assert "## Hypotheses (H1-H5)" in md and "## Paired tests" in md and "## Seeds" in md
    h1 = hyp[(hyp.hypothesis == "H1") & (hyp.group == "all") & (hyp.task == "all")].iloc[0]
    assert h1.pvalue_holm < 0.05  # the synthetic KD gain is real: the pooled H1 row carries stars
    assert "| H1 | all | all |" in md and stars(h1.pvalue_holm) in md


def test_write_stats_tables_writes_nothing_on_error(tmp_path):
    with pytest.raises(KdlabError, match="empty"):
        write_stats_tables(compute_study_stats(tmp_path, pd.DataFrame(columns=["role"])), tmp_path / "out")
    assert not (tmp_path / "out").exists()
