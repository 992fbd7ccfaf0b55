"""Reproduce the paper's hypothesis tests (H1-H5) from its published results CSVs.

Inputs
------
* results CSVs (``Teacher,Student,Method,<task>...``): one accuracy row per (teacher, student, method).
  SFT rows have ``Method == 'SFT'`` (their Teacher is ``-``); KD rows have ``student`` in Method, rows whose Method
  contains ``base_teacher`` are dropped. The family is ``RevKD`` / ``GKD`` when the Method contains that text
  (case as in the data, e.g. ``student_RevKD_temp_1.0``), else ``SeqKD``. The teacher is the ``Teacher`` column cut
  at the first ``_`` (``Qwen2.5-3B_ckpt2400`` -> ``Qwen2.5-3B``). Per (teacher, student, family, task) the MAX over
  the remaining rows (temperatures, checkpoints) is taken; improvement = that minus the student's SFT score.
  Several results CSVs are concatenated (columns matched by name); a task missing from a file is NaN there and
  those cells are left out of that task's tests.
* agreement / fidelity CSVs (``Teacher,Student,Pair,Method,<task>...``, e.g. ``EM1.csv`` / ``BLEU.csv``): the rows
  with ``Method == 'KD'`` give one value per (teacher, student, task). They carry no family, so every family's
  improvement for that (teacher, student) pair is matched to the same value; pairs or tasks without a value are
  left out of H4 / H5.

Tests per task column (every numeric column of the results, ``Average`` included) and group (all, SeqKD, RevKD, GKD):
H1 one-sided one-sample t-test of improvement > 0; H1-anova one-way ANOVA of improvement across the three families
(group ``all`` only); H2 Spearman(improvement, teacher's SFT score); H3 Spearman(improvement, student size in
billions, the last ``-`` part of its name); H3b Spearman(improvement, student's SFT score); H4 Spearman(improvement,
agreement); H5 Spearman(improvement, fidelity). This module only turns the CSVs into points (one per teacher,
student, family and task); the tests are the study's, :func:`kdlab.stats.hypotheses.hypothesis_tests` (a test that
is undefined, e.g. a family whose improvements are all equal, is NaN).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from kdlab.errors import KdlabError
from kdlab.io import atomic_dir
from kdlab.stats.formatting import isnan, num
from kdlab.stats.hypotheses import hypothesis_tests

FAMILIES = ("SeqKD", "RevKD", "GKD")
COLUMNS = ["hypothesis", "group", "task", "statistic", "pvalue"]
RESULT_KEYS = ("Teacher", "Student", "Method")
PAIR_KEYS = ("Teacher", "Student", "Method")


def _read_csv(path: str | Path, required: Sequence[str]) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise KdlabError(f"{path}: file not found")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise KdlabError(f"{path}: cannot read as CSV ({type(exc).__name__}: {exc})".replace("\n", " ")) from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise KdlabError(f"{path}: missing column(s) {', '.join(missing)}")
    frame["Teacher"] = frame["Teacher"].astype(str).str.strip()
    frame["Student"] = frame["Student"].astype(str).str.strip()
    frame["Method"] = frame["Method"].astype(str).str.strip()
    return frame


def _task_columns(frame: pd.DataFrame, path: Path, skip: Iterable[str]) -> list[str]:
    tasks = []
    for column in frame.columns:
        if column in skip:
            continue
        values = pd.to_numeric(frame[column], errors="coerce")
        if values.notna().sum() < frame[column].notna().sum():
            raise KdlabError(f"{path}: column {column} has non-numeric values")
        frame[column] = values
        tasks.append(column)
    if not tasks:
        raise KdlabError(f"{path}: no task columns besides {', '.join(skip)}")
    return tasks


def family_of(method: str) -> str:
    """``RevKD`` / ``GKD`` when the Method name says so, else ``SeqKD``."""
    if "RevKD" in method:
        return "RevKD"
    if "GKD" in method:
        return "GKD"
    return "SeqKD"


def teacher_of(name: str) -> str:
    """The teacher name cut at its first ``_`` (``Qwen2.5-3B_ckpt2400`` -> ``Qwen2.5-3B``)."""
    return str(name).split("_", 1)[0]


def size_of(student: str) -> float:
    """Size in billions from the last ``-`` part of the name (``Qwen2.5-0.5B`` -> 0.5)."""
    last = str(student).rsplit("-", 1)[-1]
    match = re.fullmatch(r"(\d+(?:\.\d+)?)[bB]", last)
    if not match:
        raise KdlabError(f"student {student!r}: cannot read a size like '0.5B' from its last '-' part")
    return float(match.group(1))


def load_results(paths: Sequence[str | Path]) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Return (long improvements, SFT scores indexed by student x task, task list)."""
    if not paths:
        raise KdlabError("no results CSV given")
    frames, tasks = [], []
    for path in paths:
        frame = _read_csv(path, RESULT_KEYS)
        for task in _task_columns(frame, Path(path), RESULT_KEYS):
            if task not in tasks:
                tasks.append(task)
        frame["_file"] = str(path)
        frames.append(frame)
    data = pd.concat(frames, ignore_index=True, sort=False)

    sft = data[data["Method"] == "SFT"]
    if sft.empty:
        raise KdlabError(f"{', '.join(map(str, paths))}: no rows with Method 'SFT'")
    dup = sft["Student"].duplicated(keep=False)
    if dup.any():
        # the same student's SFT row in several files: they must agree where both have a value
        for student, rows in sft[dup].groupby("Student"):
            for task in tasks:
                values = rows[task].dropna().unique()
                if len(values) > 1:
                    raise KdlabError(f"{', '.join(rows['_file'].unique())}: conflicting SFT {task} for {student}")
    sft_scores = sft.groupby("Student")[tasks].max()  # max of equal values / ignores NaN

    kd = data[
        data["Method"].str.contains("student", regex=False) & ~data["Method"].str.contains("base_teacher", regex=False)
    ].copy()
    if kd.empty:
        raise KdlabError(f"{', '.join(map(str, paths))}: no KD rows (Method containing 'student')")
    kd["teacher"] = kd["Teacher"].map(teacher_of)
    kd["family"] = kd["Method"].map(family_of)
    best = kd.groupby(["teacher", "Student", "family"])[tasks].max().reset_index()
    long = best.melt(id_vars=["teacher", "Student", "family"], value_vars=tasks, var_name="task", value_name="kd")
    long = long.dropna(subset=["kd"])
    missing = sorted(set(long["Student"]) - set(sft_scores.index))
    if missing:
        raise KdlabError(f"{', '.join(map(str, paths))}: no SFT row for student(s) {', '.join(missing)}")
    sft_long = sft_scores.stack().rename("sft").reset_index().rename(columns={"level_1": "task"})
    sft_long.columns = ["Student", "task", "sft"]
    long = long.merge(sft_long, on=["Student", "task"], how="inner")
    long["improvement"] = long["kd"] - long["sft"]
    teacher_sft = sft_long.rename(columns={"Student": "teacher", "sft": "teacher_sft"})
    long = long.merge(teacher_sft, on=["teacher", "task"], how="left")
    long["size"] = long["Student"].map(size_of)
    long = long.rename(columns={"Student": "student"})
    return long, sft_scores, tasks


def load_pair_values(paths: Sequence[str | Path], name: str) -> pd.DataFrame:
    """Long (teacher, student, task, <name>) from the ``Method == 'KD'`` rows of agreement / fidelity CSVs."""
    frames = []
    for path in paths:
        frame = _read_csv(path, PAIR_KEYS)
        skip = [c for c in ("Teacher", "Student", "Pair", "Method") if c in frame.columns]
        tasks = _task_columns(frame, Path(path), skip)
        rows = frame[frame["Method"] == "KD"]
        if rows.empty:
            raise KdlabError(f"{path}: no rows with Method 'KD'")
        rows = rows.assign(teacher=rows["Teacher"].map(teacher_of))
        frames.append(rows.melt(id_vars=["teacher", "Student"], value_vars=tasks, var_name="task", value_name=name))
    if not frames:
        return pd.DataFrame(columns=["teacher", "student", "task", name])
    long = pd.concat(frames, ignore_index=True).dropna(subset=[name]).rename(columns={"Student": "student"})
    dup = long.duplicated(["teacher", "student", "task"], keep=False)
    if dup.any():
        first = long[dup].iloc[0]
        raise KdlabError(f"{name}: several values for {first['teacher']} -> {first['student']} on {first['task']}")
    return long


def paper_hypotheses(
    results: Sequence[str | Path], agreement: Sequence[str | Path] = (), fidelity: Sequence[str | Path] = ()
) -> pd.DataFrame:
    """One row per (hypothesis, group, task): ``hypothesis, group, task, statistic, pvalue, n``, the tests of
    :func:`kdlab.stats.hypotheses.hypothesis_tests` on the paper's points (one per teacher, student, family and task;
    H4 / H5 only when agreement / fidelity CSVs are given)."""
    long, _, tasks = load_results(list(results))
    correlates = [("H2", "teacher_sft"), ("H3", "size"), ("H3b", "sft")]
    for hypothesis, name, paths in (("H4", "agreement", agreement), ("H5", "fidelity", fidelity)):
        if paths:
            long = long.merge(load_pair_values(list(paths), name), on=["teacher", "student", "task"], how="left")
            correlates.append((hypothesis, name))
    table = hypothesis_tests(long, "family", correlates, groups=FAMILIES, tasks=tasks)
    return table[COLUMNS + ["n"]]


def to_markdown(frame: pd.DataFrame) -> str:
    lines = [
        "# Paper hypothesis tests",
        "",
        "p < 0.05 is marked with *.",
        "",
        "| hypothesis | group | task | statistic | p-value | n |",
        "|---|---|---|---:|---:|---:|",
    ]
    for row in frame.itertuples(index=False):
        mark = " *" if not isnan(row.pvalue) and row.pvalue < 0.05 else ""
        lines.append(
            f"| {row.hypothesis} | {row.group} | {row.task} | {num(row.statistic)} | "
            f"{num(row.pvalue)}{mark} | {row.n} |"
        )
    return "\n".join(lines) + "\n"


def write_paper_stats(
    results: Sequence[str | Path], agreement: Sequence[str | Path], fidelity: Sequence[str | Path], out_dir: str | Path
) -> pd.DataFrame:
    """Write ``out_dir/hypotheses.csv`` and ``out_dir/hypotheses.md``; return the table.

    ``out_dir`` must be missing, empty or an earlier output of this command holding only what kdlab wrote; anything
    else (a user's own ``hypotheses.csv`` included) is refused before any work (:func:`kdlab.outputs.check_output_dir`).
    The folder appears or is replaced in one rename (:func:`kdlab.io.atomic_dir`).
    """
    from kdlab.outputs import PAPER_STATS, check_output_dir

    out_dir = check_output_dir(out_dir, PAPER_STATS)
    frame = paper_hypotheses(results, agreement, fidelity)
    with atomic_dir(out_dir, kind=PAPER_STATS) as tmp:
        (tmp / "hypotheses.csv").write_text(frame[COLUMNS + ["n"]].to_csv(index=False), encoding="utf-8")
        (tmp / "hypotheses.md").write_text(to_markdown(frame), encoding="utf-8")
    return frame
