"""The tidy results table of a study as the statistics read it: its roles, the columns of a run's *configuration*,
the numeric columns, :func:`check_table` (validation, numbers as floats) and :func:`main_grid`.

A *configuration* of a run is ``(teacher, teacher_kind, student, domain, method, temperature, noise)``; seeds repeat
a configuration. The *main grid* is the ``student-kd`` rows with ``teacher_kind == 'finetuned'`` and ``noise == 0``
(SFT continued, loss ``sft``, is a later stage's baseline, not KD);
the other KD rows are ablations (task-unaware base teacher, noisy teacher logits).
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from kdlab.errors import KdlabError

ROLES = ("teacher", "base-teacher", "student-sft", "student-kd")
CONFIG = ["teacher", "teacher_kind", "student", "domain", "method", "temperature", "noise"]
NUMERIC = (
    "student_size_b",
    "temperature",
    "noise",
    "seed",
    "n",
    "correct",
    "accuracy",
    "ci_low",
    "ci_high",
    "sft_accuracy",
    "improvement",
    "teacher_accuracy",
    "agreement",
    "bleu",
    "cosine",
    "token_kl",
    "top1_agreement",
)


def check_table(frame: pd.DataFrame, columns: Iterable[str], what: str = "results table") -> pd.DataFrame:
    """A copy of ``frame`` with numeric columns as floats.

    KdlabError when it is empty, lacks columns (named), has non-numeric numbers or unknown roles."""
    if not isinstance(frame, pd.DataFrame):
        raise KdlabError(f"{what}: expected a pandas DataFrame, got {type(frame).__name__}")
    if len(frame) == 0:
        raise KdlabError(f"{what} is empty (no rows)")
    missing = [c for c in dict.fromkeys(columns) if c not in frame.columns]
    if missing:
        raise KdlabError(f"{what}: missing column(s) {', '.join(missing)}")
    frame = frame.copy()
    for column in NUMERIC:
        if column not in frame.columns:
            continue
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = values.isna() & frame[column].notna()
        if bad.any():
            raise KdlabError(f"{what}: column {column} has non-numeric value {frame[column][bad].iloc[0]!r}")
        frame[column] = values.astype(float)
    if "role" in frame.columns:
        odd = sorted(set(frame["role"].dropna().astype(str)) - set(ROLES))
        if odd:
            raise KdlabError(f"{what}: unknown role(s) {', '.join(odd)} (expected {', '.join(ROLES)})")
    return frame


def main_grid(frame: pd.DataFrame) -> pd.DataFrame:
    """The ``student-kd`` rows distilled from the fine-tuned teacher without noise (ablations left out)."""
    kd = frame["loss"] != "sft" if "loss" in frame.columns else True  # SFT continued (a later stage) is no KD
    return frame[
        (frame["role"] == "student-kd") & (frame["teacher_kind"] == "finetuned") & (frame["noise"].fillna(0) == 0) & kd
    ]
