"""Fidelity statistics of a study: does an objective make the student decide like its teacher, and at what cost?

Two tables, both from per-example files the study already writes:

- :func:`fidelity_plane`: one row per (run, task) with accuracy and agreement with the teacher, each with its 95%
  Wilson interval over the n test examples (agreement = the share of examples whose extracted answers are equal,
  :mod:`kdlab.fidelity_metrics`'s policy: no answer on either side is a disagreement), and whether the run lies on the
  Pareto front of the (accuracy, agreement) plane among the students of its (teacher, student, domain, task, seed).
- :func:`agreement_tests`: every KD run against the run of the *reference* method (forward KL by default; the SFT
  baseline when asked) of the same teacher, student, domain, seed and task, on the same examples: per example the
  two runs' agreement flags (``<fidelity_dir>/pairs/<task>.jsonl``, field ``agree``) and correctness flags
  (``<eval_dir>/predictions/<task>.jsonl``). ``b_agree`` = examples where the method agrees with the teacher and the
  reference does not, ``c_agree`` the reverse; ``agree_diff = (b - c) / n`` with a paired percentile bootstrap 95%
  interval and the exact McNemar p (two-sided binomial of b in b + c at 1/2); the same for accuracy
  (``acc_diff``, ``acc_pvalue``). Holm adjusts each family (agreement p-values, accuracy p-values) over every
  comparison of the table. ``verdict`` states, per row, whether agreement rose significantly (Holm p < 0.05,
  diff > 0) without a significant accuracy loss.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd

from kdlab.errors import KdlabError
from kdlab.stats.formatting import present
from kdlab.stats.paired import check_n_boot, compare_pairs, read_flags
from kdlab.stats.significance import wilson_ci

GROUP = ["teacher", "teacher_kind", "student", "domain", "task", "seed"]
PLANE_COLUMNS = GROUP + [
    "run",
    "role",
    "method",
    "temperature",
    "noise",
    "n",
    "accuracy",
    "acc_low",
    "acc_high",
    "agreement",
    "agree_low",
    "agree_high",
    "pareto",
]
TEST_COLUMNS = GROUP + [
    "run",
    "method",
    "reference",
    "reference_run",
    "n",
    "agreement",
    "reference_agreement",
    "agree_diff",
    "agree_ci_low",
    "agree_ci_high",
    "b_agree",
    "c_agree",
    "agree_pvalue",
    "agree_pvalue_holm",
    "accuracy",
    "reference_accuracy",
    "acc_diff",
    "acc_ci_low",
    "acc_ci_high",
    "acc_pvalue",
    "acc_pvalue_holm",
    "verdict",
]


def pareto_front(points: list[tuple[float, float]]) -> list[bool]:
    """For each (x, y): True when no other point is >= in both coordinates and > in one (both maximised)."""
    return [not any(ox >= x and oy >= y and (ox > x or oy > y) for ox, oy in points) for x, y in points]


def fidelity_plane(frame: pd.DataFrame) -> pd.DataFrame:
    """Accuracy and agreement (with Wilson intervals) per student run and task; Pareto flags per group."""
    students = frame[frame["role"].isin(["student-sft", "student-kd"]) & frame["agreement"].notna()]
    rows = []
    for record in students.to_dict("records"):
        n = int(record["n"])
        agree_low, agree_high = wilson_ci(round(record["agreement"] * n), n)
        rows.append(
            {
                **{key: record[key] for key in GROUP},
                "run": record["run"],
                "role": record["role"],
                "method": record["method"],
                "temperature": record["temperature"],
                "noise": record["noise"],
                "n": n,
                "accuracy": record["accuracy"],
                "acc_low": record["ci_low"],
                "acc_high": record["ci_high"],
                "agreement": record["agreement"],
                "agree_low": agree_low,
                "agree_high": agree_high,
                "pareto": False,
            }
        )
    plane = pd.DataFrame(rows, columns=PLANE_COLUMNS)
    for _, group in plane.groupby(GROUP, dropna=False, sort=False):
        flags = pareto_front(list(zip(group["accuracy"], group["agreement"])))
        plane.loc[group.index, "pareto"] = flags
    return plane


def _flags(study_dir: Path, fidelity_dir: str, eval_dir: str, task: str) -> tuple[np.ndarray, ...]:
    """(ids, agree, correct) of one run on one task, checked to cover the same examples."""
    ids, agree = read_flags(study_dir / fidelity_dir / "pairs" / f"{task}.jsonl", "agree", "fidelity pairs")
    pred_ids, correct = read_flags(study_dir / eval_dir / "predictions" / f"{task}.jsonl")
    if not np.array_equal(ids, pred_ids):
        raise KdlabError(
            f"{fidelity_dir}: fidelity pairs and predictions of {eval_dir} hold other examples for task {task}"
        )
    return ids, agree, correct


def _comparisons(frame: pd.DataFrame, reference: str) -> list[tuple[dict, dict]]:
    """(KD run, its reference run) rows of ``frame`` with fidelity folders: the reference is the run of method
    ``reference`` without noise, or the SFT run with ``reference == "sft"``, of the same teacher, student, domain,
    task and seed (for SFT, a KD run from a base teacher is compared with the SFT run of the fine-tuned teacher)."""
    runs = frame[frame["role"].isin(["student-sft", "student-kd"]) & frame["fidelity_dir"].map(present)]
    is_reference = (
        runs["role"].eq("student-sft")
        if reference == "sft"
        else (runs["role"].eq("student-kd") & runs["method"].eq(reference) & runs["noise"].eq(0))
    )
    references = {tuple(record[key] for key in GROUP): record for record in runs[is_reference].to_dict("records")}
    pairs = []
    for record in runs[runs["role"].eq("student-kd") & ~is_reference].to_dict("records"):
        key = tuple(record[key] for key in GROUP)
        if reference == "sft":
            key = (record["teacher"], "finetuned", *key[2:])
        if key in references:
            pairs.append((record, references[key]))
    return pairs


AGREEMENT_NAMES = {
    "a_mean": "agreement",
    "b_mean": "reference_agreement",
    "diff": "agree_diff",
    "ci_low": "agree_ci_low",
    "ci_high": "agree_ci_high",
    "b": "b_agree",
    "c": "c_agree",
    "pvalue": "agree_pvalue",
    "pvalue_holm_all": "agree_pvalue_holm",
}
ACCURACY_NAMES = {
    "a_mean": "accuracy",
    "b_mean": "reference_accuracy",
    "diff": "acc_diff",
    "ci_low": "acc_ci_low",
    "ci_high": "acc_ci_high",
    "pvalue": "acc_pvalue",
    "pvalue_holm_all": "acc_pvalue_holm",
}


def agreement_tests(
    frame: pd.DataFrame, study_dir: str | Path, reference: str = "fkl", n_boot: int = 10000, seed: int = 0
) -> pd.DataFrame:
    """Paired agreement and accuracy tests of every KD run against the ``reference`` method (module docstring):
    :func:`kdlab.stats.paired.compare_pairs` on the agreement flags and on the correctness flags, Holm across
    every comparison of the table.

    ``reference`` is a method name of the study or ``"sft"`` (the student's SFT baseline). Runs without a fidelity
    folder, and the reference runs themselves, are left out. Empty when the study has no such pairs.
    """
    check_n_boot(n_boot)
    # a reference run is compared with every method: read its files once
    flags = cache(lambda fidelity_dir, eval_dir, task: _flags(Path(study_dir), fidelity_dir, eval_dir, task))
    rows, agree_pairs, correct_pairs = [], [], []
    for record, other in _comparisons(frame, reference):
        ids, agree, correct = flags(str(record["fidelity_dir"]), str(record["eval_dir"]), record["task"])
        ref_ids, ref_agree, ref_correct = flags(str(other["fidelity_dir"]), str(other["eval_dir"]), other["task"])
        if not np.array_equal(ids, ref_ids):
            raise KdlabError(
                f"{record['fidelity_dir']} and {other['fidelity_dir']}: different examples for task {record['task']}"
            )
        identity = {
            "run": record["run"],
            "method": record["method"],
            "reference": reference,
            "reference_run": other["run"],
        }
        rows.append({**{k: record[k] for k in GROUP}, **identity})
        agree_pairs.append((agree, ref_agree))
        correct_pairs.append((correct, ref_correct))
    if not rows:
        return pd.DataFrame(columns=TEST_COLUMNS)
    agreement = compare_pairs(agree_pairs, n_boot, seed).rename(columns=AGREEMENT_NAMES)
    accuracy = compare_pairs(correct_pairs, n_boot, seed).rename(columns=ACCURACY_NAMES)
    table = pd.concat([pd.DataFrame(rows), agreement, accuracy[list(ACCURACY_NAMES.values())]], axis=1)
    table["verdict"] = [verdict(row) for row in table.to_dict("records")]
    return table[TEST_COLUMNS]


def verdict(row: dict, alpha: float = 0.05) -> str:
    """One phrase: did agreement rise (or fall) significantly after Holm, and did accuracy drop significantly?"""
    agree_sig, acc_sig = row["agree_pvalue_holm"] < alpha, row["acc_pvalue_holm"] < alpha
    agreement = (
        ("agreement up" if row["agree_diff"] > 0 else "agreement down")
        if agree_sig
        else "agreement: no significant change"
    )
    accuracy = (
        ("accuracy up" if row["acc_diff"] > 0 else "accuracy down") if acc_sig else "no significant accuracy change"
    )
    return f"{agreement}; {accuracy}"


def fidelity_tables(
    study_dir: str | Path, frame: pd.DataFrame, n_boot: int = 10000, seed: int = 0
) -> dict[str, pd.DataFrame]:
    """``{"fidelity_plane", "agreement"}`` of a study: the plane, and the agreement tests of every KD run against
    forward KL (a method named ``fkl``, when the study has one) and against the SFT baseline, in one table
    (``reference`` column; Holm within each reference). Empty tables when the results carry no fidelity folders."""
    if "fidelity_dir" not in frame or not frame["fidelity_dir"].map(present).any():
        return {"fidelity_plane": pd.DataFrame(columns=PLANE_COLUMNS), "agreement": pd.DataFrame(columns=TEST_COLUMNS)}
    references = (["fkl"] if ((frame["role"] == "student-kd") & (frame["method"] == "fkl")).any() else []) + ["sft"]
    tests = [agreement_tests(frame, study_dir, reference, n_boot=n_boot, seed=seed) for reference in references]
    tests = [table for table in tests if not table.empty]
    agreement = pd.concat(tests, ignore_index=True) if tests else pd.DataFrame(columns=TEST_COLUMNS)
    return {"fidelity_plane": fidelity_plane(frame), "agreement": agreement}
