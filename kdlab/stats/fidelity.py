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

import json
from pathlib import Path

import numpy as np
import pandas as pd

from kdlab.errors import KdlabError
from kdlab.stats.formatting import present
from kdlab.stats.predictions import read_predictions
from kdlab.stats.significance import holm, mcnemar_exact, paired_bootstrap_ci, wilson_ci

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


def read_agreement(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(ids sorted ascending, agree as bool) from a fidelity ``pairs/<task>.jsonl`` file."""
    if not path.is_file():
        raise KdlabError(f"{path}: fidelity pairs file not found")
    ids, agree = [], []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            ids.append(int(record["id"]))
            agree.append(bool(record["agree"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise KdlabError(f"{path}:{lineno}: expected a JSON record with an integer 'id' and 'agree'") from None
    order = np.argsort(np.asarray(ids, dtype=np.int64), kind="stable")
    return np.asarray(ids, dtype=np.int64)[order], np.asarray(agree, dtype=bool)[order]


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


def _flags(study_dir: Path, record: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, agree, correct) of one run on one task, checked to cover the same examples."""
    task = record["task"]
    ids, agree = read_agreement(study_dir / str(record["fidelity_dir"]) / "pairs" / f"{task}.jsonl")
    pred_ids, correct = read_predictions(study_dir / str(record["eval_dir"]) / "predictions" / f"{task}.jsonl")
    if not np.array_equal(ids, pred_ids):
        raise KdlabError(
            f"{record['fidelity_dir']}: fidelity pairs and predictions of {record['eval_dir']} hold other "
            f"examples for task {task}"
        )
    return ids, agree, correct


def _paired(a: np.ndarray, b: np.ndarray, n_boot: int, seed: int) -> tuple[float, float, float, int, int, float]:
    """(diff, ci_low, ci_high, b, c, McNemar p) of two paired boolean vectors (a minus b)."""
    gain, loss = int((a & ~b).sum()), int((~a & b).sum())
    low, high = paired_bootstrap_ci(a, b, n_boot=n_boot, seed=seed)
    return (gain - loss) / len(a), low, high, gain, loss, mcnemar_exact(gain, loss)


def agreement_tests(
    frame: pd.DataFrame, study_dir: str | Path, reference: str = "fkl", n_boot: int = 10000, seed: int = 0
) -> pd.DataFrame:
    """Paired agreement and accuracy tests of every KD run against the ``reference`` method (module docstring).

    ``reference`` is a method name of the study or ``"sft"`` (the student's SFT baseline). Runs without a fidelity
    folder, and the reference runs themselves, are left out. Empty when the study has no such pairs.
    """
    study_dir = Path(study_dir)
    read: dict[tuple, tuple] = {}  # a reference run is compared with every method: read its files once

    def flags(record: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        key = (record["fidelity_dir"], record["eval_dir"], record["task"])
        if key not in read:
            read[key] = _flags(study_dir, record)
        return read[key]

    runs = frame[frame["role"].isin(["student-sft", "student-kd"]) & frame["fidelity_dir"].map(present)]
    is_reference = (
        runs["role"].eq("student-sft")
        if reference == "sft"
        else (runs["role"].eq("student-kd") & runs["method"].eq(reference) & runs["noise"].eq(0))
    )
    references = {tuple(record[key] for key in GROUP): record for record in runs[is_reference].to_dict("records")}
    rows = []
    for record in runs[runs["role"].eq("student-kd") & ~is_reference].to_dict("records"):
        key = tuple(record[key] for key in GROUP)
        if reference == "sft":
            key = (record["teacher"], "finetuned", *key[2:])
        other = references.get(key)
        if other is None:
            continue
        ids, agree, correct = flags(record)
        ref_ids, ref_agree, ref_correct = flags(other)
        if not np.array_equal(ids, ref_ids):
            raise KdlabError(
                f"{record['fidelity_dir']} and {other['fidelity_dir']}: different examples for task {record['task']}"
            )
        a_diff, a_low, a_high, b_agree, c_agree, a_p = _paired(agree, ref_agree, n_boot, seed)
        c_diff, c_low, c_high, _, _, c_p = _paired(correct, ref_correct, n_boot, seed)
        rows.append(
            {
                **{k: record[k] for k in GROUP},
                "run": record["run"],
                "method": record["method"],
                "reference": reference,
                "reference_run": other["run"],
                "n": len(ids),
                "agreement": agree.mean(),
                "reference_agreement": ref_agree.mean(),
                "agree_diff": a_diff,
                "agree_ci_low": a_low,
                "agree_ci_high": a_high,
                "b_agree": b_agree,
                "c_agree": c_agree,
                "agree_pvalue": a_p,
                "accuracy": correct.mean(),
                "reference_accuracy": ref_correct.mean(),
                "acc_diff": c_diff,
                "acc_ci_low": c_low,
                "acc_ci_high": c_high,
                "acc_pvalue": c_p,
            }
        )
    table = pd.DataFrame(rows, columns=TEST_COLUMNS)
    if table.empty:
        return table
    table["agree_pvalue_holm"] = holm(table["agree_pvalue"].to_numpy())
    table["acc_pvalue_holm"] = holm(table["acc_pvalue"].to_numpy())
    table["verdict"] = [verdict(row) for row in table.to_dict("records")]
    return table


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
