"""Tests for kdlab.stats.paired: hand-computed cases, the error paths, and every row of a synthetic study
(tests/stats/fixtures/synthetic_study.py) against an independent recomputation from its prediction files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import synthetic_study as synthetic  # tests/stats/fixtures (pytest pythonpath)
from scipy import stats

from kdlab.errors import KdlabError
from kdlab.stats.paired import compare_pairs, paired_tests
from kdlab.stats.significance import holm, mcnemar_exact, paired_bootstrap_ci

CONFIG = ["teacher", "teacher_kind", "student", "domain", "method", "temperature", "noise"]


@pytest.fixture(scope="module")
def kd_study(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("paired") / "study"
    return root, synthetic.make_study(root, n_examples=60)


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _hand_study(root: Path, kd: list[int], sft: list[int], kd_ids=None, sft_ids=None) -> pd.DataFrame:
    kd_ids = kd_ids if kd_ids is not None else list(range(len(kd)))
    sft_ids = sft_ids if sft_ids is not None else list(range(len(sft)))
    # the KD file is written in reverse order: the join is by id, not by line
    _write_jsonl(
        root / "kd/eval/predictions/t.jsonl",
        [
            {"id": i, "correct": bool(c), "pred": "x", "gold": "x", "output": ""}
            for i, c in reversed(list(zip(kd_ids, kd)))
        ],
    )
    _write_jsonl(
        root / "sft/eval/predictions/t.jsonl",
        [{"id": i, "correct": bool(c), "pred": "x", "gold": "x", "output": ""} for i, c in zip(sft_ids, sft)],
    )
    row = {
        "run": "kd",
        "role": "student-kd",
        "domain": "math",
        "task": "t",
        "teacher": "T",
        "teacher_kind": "finetuned",
        "student": "S",
        "student_size_b": 0.5,
        "method": "fkl",
        "loss": "fkl",
        "temperature": 2.0,
        "noise": 0.0,
        "seed": 0,
        "eval_dir": "kd/eval",
        "sft_eval_dir": "sft/eval",
    }
    return pd.DataFrame([row])


def test_paired_test_hand_computed_case(tmp_path):
    kd = [1, 1, 1, 0, 1, 0, 1, 1, 1, 1, 1, 1]
    sft = [0, 1, 0, 0, 1, 1, 0, 0, 0, 1, 0, 1]
    # b (KD right, SFT wrong): ids 0, 2, 6, 7, 8, 10 -> 6; c (SFT right, KD wrong): id 5 -> 1
    out = paired_tests(_hand_study(tmp_path, kd, sft), tmp_path, n_boot=2000, seed=1)
    row = out.iloc[0]
    assert (row.b, row.c, row.n) == (6, 1, 12)
    assert row.kd_accuracy == pytest.approx(10 / 12) and row.sft_accuracy == pytest.approx(5 / 12)
    assert row["diff"] == pytest.approx(5 / 12)
    assert row.odds_ratio == pytest.approx(6.0)
    # Bin(7, 1/2): 2 * P(X <= 1) = 2 * (1 + 7) / 128
    assert row.pvalue == pytest.approx(16 / 128)
    assert row.pvalue_holm == pytest.approx(16 / 128) and row.pvalue_holm_all == pytest.approx(16 / 128)
    assert row.ci_low <= row["diff"] <= row.ci_high


def test_paired_ids_must_match(tmp_path):
    frame = _hand_study(tmp_path, [1, 0, 1], [1, 1, 0], kd_ids=[0, 1, 2], sft_ids=[0, 1, 5])
    with pytest.raises(
        KdlabError,
        match=r"example ids differ between .*kd/eval/predictions/t.jsonl and "
        r".*sft/eval/predictions/t.jsonl: 1 only in the first \(e.g. 2\)",
    ):
        paired_tests(frame, tmp_path, n_boot=10)


def test_paired_file_errors(tmp_path):
    frame = _hand_study(tmp_path, [1, 0], [0, 0], kd_ids=[3, 3])
    with pytest.raises(KdlabError, match=r"kd/eval/predictions/t.jsonl: example id 3 appears more than once"):
        paired_tests(frame, tmp_path, n_boot=10)
    frame = _hand_study(tmp_path, [1, 0], [0, 0])
    (tmp_path / "sft/eval/predictions/t.jsonl").unlink()
    with pytest.raises(KdlabError, match=r"sft/eval/predictions/t.jsonl: predictions file not found"):
        paired_tests(frame, tmp_path, n_boot=10)
    _write_jsonl(tmp_path / "sft/eval/predictions/t.jsonl", [{"id": 0}])
    with pytest.raises(KdlabError, match=r"t.jsonl:1: a record needs keys 'id' and 'correct'"):
        paired_tests(frame, tmp_path, n_boot=10)
    with pytest.raises(KdlabError, match="n_boot"):
        paired_tests(frame, tmp_path, n_boot=0)
    with pytest.raises(KdlabError, match=r"missing column.*sft_eval_dir"):
        paired_tests(frame.drop(columns=["sft_eval_dir"]), tmp_path)
    # a KD row without its SFT pair is reported, not silently dropped
    out = paired_tests(frame.assign(sft_eval_dir=None), tmp_path, n_boot=10)
    assert math.isnan(out.iloc[0].pvalue) and "no paired SFT run" in out.iloc[0].note


def test_paired_tests_over_a_study(kd_study):
    root, frame = kd_study
    out = paired_tests(frame, root, n_boot=500, seed=0)
    kd = frame[frame.role == "student-kd"]
    assert len(out) == len(kd)
    # every row against an independent recomputation from the files
    for row in out.sample(8, random_state=0).itertuples():
        a = {r["id"]: r["correct"] for r in map(json.loads, Path(row.kd_file).read_text().splitlines())}
        b = {r["id"]: r["correct"] for r in map(json.loads, Path(row.sft_file).read_text().splitlines())}
        assert row.b == sum(a[i] and not b[i] for i in a) and row.c == sum(b[i] and not a[i] for i in a)
        assert row.pvalue == pytest.approx(stats.binomtest(row.b, row.b + row.c).pvalue if row.b + row.c else 1.0)
    # the accuracies agree with the table the study wrote
    merged = out.merge(kd[["run", "task", "accuracy", "sft_accuracy"]], on=["run", "task"], suffixes=("", "_table"))
    np.testing.assert_allclose(merged.kd_accuracy, merged.accuracy)
    np.testing.assert_allclose(merged.sft_accuracy, merged.sft_accuracy_table)
    # Holm: within each (configuration, seed) across its tasks, and across the whole table
    for _, family in out.groupby(CONFIG + ["seed"], dropna=False):
        np.testing.assert_allclose(family.pvalue_holm, holm(family.pvalue.to_numpy()))
    np.testing.assert_allclose(out.pvalue_holm_all, holm(out.pvalue.to_numpy()))
    assert (out.pvalue_holm_all >= out.pvalue_holm - 1e-12).all()
    # reproducible with the seed, and independent of the other rows
    again = paired_tests(frame[frame.run == out.run.iloc[3]], root, n_boot=500, seed=0)
    assert again.ci_low.iloc[0] == out[out.run == out.run.iloc[3]].ci_low.iloc[0]


def test_compare_pairs_is_one_rule_for_every_paired_table():
    """McNemar, bootstrap and Holm over a set of comparisons: Holm within the given families and over all rows; a
    comparison that cannot be made is NaN and stays out of both families."""
    rng = np.random.default_rng(0)
    pairs = [(rng.random(50) < p, rng.random(50) < 0.4) for p in (0.8, 0.5, 0.6)] + [None]
    families = pd.DataFrame({"config": ["a", "a", "b", "b"], "temperature": [math.nan, math.nan, 1.0, 1.0]})
    table = compare_pairs(pairs, n_boot=200, seed=3, families=families)
    for i, (a, b) in enumerate(pairs[:3]):
        row = table.iloc[i]
        assert (row.b, row.c, row.n) == ((a & ~b).sum(), (~a & b).sum(), 50)
        assert row["diff"] == pytest.approx(a.mean() - b.mean()) and row.a_mean == pytest.approx(a.mean())
        assert row.pvalue == mcnemar_exact(row.b, row.c)
        assert (row.ci_low, row.ci_high) == paired_bootstrap_ci(a, b, n_boot=200, seed=3)
    assert table.iloc[3].isna().all()
    np.testing.assert_allclose(table.pvalue_holm[:2], holm(table.pvalue[:2]))  # NaN temperatures are one family
    assert table.pvalue_holm[2] == table.pvalue[2]
    np.testing.assert_allclose(table.pvalue_holm_all[:3], holm(table.pvalue[:3]))
    without = compare_pairs(pairs, n_boot=200, seed=3)
    np.testing.assert_allclose(without.pvalue_holm, without.pvalue_holm_all)
    with pytest.raises(KdlabError, match="n_boot"):
        compare_pairs(pairs, n_boot=0)
