"""What every part of a study report reads: the checked results table split by role (:class:`ReportContext`) and
accuracy means over seeds with their intervals (numbers as text: :mod:`kdlab.stats.formatting`)."""

from __future__ import annotations

import pandas as pd

from kdlab.stats.significance import t_interval
from kdlab.stats.table import main_grid
from kdlab.study.report.canvas import PALETTE
from kdlab.study.runmeta import RunMeta


def over_seeds(rows: pd.DataFrame, keys: list[str], value: str) -> pd.DataFrame:
    """Average ``value`` per (keys, seed) over everything else, then mean and 95% t-interval over seeds."""
    per_seed = rows.groupby(keys + ["seed"], dropna=False, sort=False)[value].mean().reset_index()
    out = []
    for key, group in per_seed.groupby(keys, dropna=False, sort=False):
        mean, _, low, high, n = t_interval(group[value])
        out.append(
            {
                **dict(zip(keys, key if isinstance(key, tuple) else (key,))),
                "mean": mean,
                "low": low,
                "high": high,
                "n_seeds": n,
            }
        )
    return pd.DataFrame(out, columns=keys + ["mean", "low", "high", "n_seeds"])


def acc_interval(rows: pd.DataFrame) -> tuple[float, float, float]:
    """Mean accuracy over seeds with a t-interval clipped to [0, 1]; a single run gets its Wilson interval."""
    if len(rows) == 1:
        row = rows.iloc[0]
        return float(row["accuracy"]), float(row["ci_low"]), float(row["ci_high"])
    mean, _, low, high, _ = t_interval(rows["accuracy"], within=(0.0, 1.0))
    return mean, low, high


def ordered_students(frame: pd.DataFrame) -> list[str]:
    """Students by size, then name."""
    sizes = frame.groupby("student", sort=False)["student_size_b"].first()
    return sorted(sizes.index, key=lambda s: (sizes[s], s))


class ReportContext:
    """The checked table split by role (KD, main grid, SFT), its tasks and students, and a fixed colour per method,
    shared by every figure and table."""

    def __init__(self, frame: pd.DataFrame):
        self.frame = frame
        self.kd = frame[frame["role"] == "student-kd"]
        self.main = main_grid(frame)
        self.sft = frame[frame["role"] == "student-sft"]
        self.methods = list(dict.fromkeys(self.kd["method"]))
        self.colors = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(self.methods)}
        self.tasks = list(dict.fromkeys(frame["task"]))
        self.students = ordered_students(frame[frame["role"].isin(["student-sft", "student-kd"])])

    def sft_rows(self, student: str, task: str) -> pd.DataFrame:
        return self.sft[(self.sft["student"] == student) & (self.sft["task"] == task)]


def candidate_label(row) -> str:
    """The run a candidate of a selection belongs to: ``SFT``, ``fkl``, ``fkl noise=2``, ``fkl (base teacher)``."""
    return RunMeta.from_row(row).label(temperature=False)
