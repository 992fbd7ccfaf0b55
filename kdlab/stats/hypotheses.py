"""The paper's hypothesis tests H1-H5, written once: :func:`hypothesis_tests` runs them on *points*, used for a
study's runs (:func:`study_hypotheses`) and for the paper's published CSVs (:func:`kdlab.stats.paper.paper_hypotheses`,
which only turns the CSVs into points).

A point is one configuration x task with its ``improvement`` (KD accuracy - SFT accuracy), a group (the study's
``method``, the paper's KD family) and its correlates. Per task (and, with ``pooled``, task ``all`` pooling every
point) and group (``all``, then each group): H1 one-sided one-sample t-test of improvement > 0 (effect size Cohen's
d = mean / sd); H1-anova one-way ANOVA of improvement across the groups (group ``all`` only; eta squared); H2 / H3 /
H3b / H4 / H5 Spearman(improvement, a correlate) (effect size rho). A test that is undefined (too few points,
constant input) gives NaN and says why in ``note`` (:mod:`kdlab.stats.significance`). ``pvalue_holm`` is
Holm-adjusted within each (hypothesis, group) across the tasks.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from kdlab.errors import KdlabError
from kdlab.stats.significance import anova, holm, spearman, ttest_greater
from kdlab.stats.table import CONFIG, check_table, main_grid

HYPOTHESES = ("H1", "H1-anova", "H2", "H3", "H3b", "H4", "H5")
HYPOTHESIS_COLUMNS = [
    "hypothesis",
    "group",
    "task",
    "statistic",
    "pvalue",
    "n",
    "effect_size",
    "effect_name",
    "pvalue_holm",
    "mean",
    "test",
    "note",
]
# a study's H2..H5: Spearman(improvement, column of the results table)
CORRELATES = (
    ("H2", "teacher_accuracy"),
    ("H3", "student_size_b"),
    ("H3b", "sft_accuracy"),
    ("H4", "agreement"),
    ("H5", "bleu"),
)
HYPOTHESIS_INPUT = [
    "role",
    "task",
    "seed",
    "student_size_b",
    "improvement",
    "sft_accuracy",
    "teacher_accuracy",
    "agreement",
    "bleu",
] + CONFIG


def _tests(sub: pd.DataFrame, group: str, correlates: Sequence[tuple[str, str]], across: list | None) -> list[dict]:
    """The rows of one (task, group): H1, the ANOVA across the groups ``across`` (in that order; none when None),
    then each correlate."""
    improvement = sub["improvement"].to_numpy(float)
    rows = [{"hypothesis": "H1", **ttest_greater(improvement)}]
    if across is not None:
        samples = {g: sub.loc[sub[group] == g, "improvement"].to_numpy(float) for g in across}
        rows.append({"hypothesis": "H1-anova", **anova(samples)})
    for hypothesis, column in correlates:
        rows.append({"hypothesis": hypothesis, **spearman(improvement, sub[column].to_numpy(float), column)})
    return rows


def hypothesis_tests(
    points: pd.DataFrame,
    group: str,
    correlates: Sequence[tuple[str, str]],
    groups: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
    pooled: bool = False,
) -> pd.DataFrame:
    """H1-H5 on ``points`` (module docstring): one row per (hypothesis, group, task), :data:`HYPOTHESIS_COLUMNS`,
    sorted by hypothesis, task, then group.

    ``group``: the column holding a point's group. ``groups``: the groups tested after ``all``: a fixed list (each
    gets its rows in every task, NaN where it has no points; the ANOVA takes them in this order), or None for the
    values of ``group`` in order of appearance (a group without points in a task has no rows there). ``tasks``: the
    task order (default: order of appearance; a task without points is left out). ``correlates``: (hypothesis,
    column) pairs for the Spearman tests. ``pooled``: also test task ``all``, every point together.
    """
    tasks = [t for t in (tasks if tasks is not None else dict.fromkeys(points["task"])) if (points["task"] == t).any()]
    names = list(groups) if groups is not None else list(dict.fromkeys(points[group]))
    rows = []
    for task in tasks + (["all"] if pooled else []):
        per_task = points if task == "all" else points[points["task"] == task]
        for name in ["all"] + names:
            sub = per_task if name == "all" else per_task[per_task[group] == name]
            if sub.empty and groups is None:
                continue
            across = (names if groups is not None else list(dict.fromkeys(sub[group]))) if name == "all" else None
            rows += [{**row, "group": name, "task": task} for row in _tests(sub, group, correlates, across)]
    if not rows:
        return pd.DataFrame(columns=HYPOTHESIS_COLUMNS)
    out = pd.DataFrame(rows)
    out["pvalue_holm"] = out.groupby(["hypothesis", "group"], sort=False)["pvalue"].transform(
        lambda p: pd.Series(holm(p.to_numpy()), index=p.index)
    )
    ranks = {"hypothesis": HYPOTHESES, "task": tasks + ["all"], "group": ["all"] + names}
    keys = pd.DataFrame(
        {column: out[column].map({v: i for i, v in enumerate(ranked)}) for column, ranked in ranks.items()}
    )
    out = out.loc[keys.sort_values(list(ranks), kind="stable").index].reset_index(drop=True)
    out["n"] = out["n"].astype(int)
    return out[HYPOTHESIS_COLUMNS]


def seed_means(kd: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration x task: the mean over seeds of improvement and its correlates (NaN skipped),
    rounded to 12 decimals."""
    columns = ["improvement", "student_size_b", "sft_accuracy", "teacher_accuracy", "agreement", "bleu", "accuracy"]
    columns = [c for c in columns if c in kd.columns]
    grouped = kd.groupby(CONFIG + ["task"], dropna=False, sort=False)
    # rounded to 12 decimals so that values equal up to float noise tie in the Spearman ranks
    out = grouped[columns].mean().round(12)
    out["n_seeds"] = grouped["seed"].nunique()
    return out.reset_index()


def study_hypotheses(frame: pd.DataFrame) -> pd.DataFrame:
    """The paper's H1-H5 tests on this study's KD runs.

    Rows used: ``role == 'student-kd'``, ``teacher_kind == 'finetuned'`` and ``noise == 0`` (the main grid; the
    base-teacher and teacher-noise ablations are left out). Seeds are averaged first: one point per configuration x
    task (improvement = mean over seeds of KD accuracy - SFT accuracy, and the mean of each correlate). Unlike
    :mod:`kdlab.stats.paper`, which takes the maximum over temperatures on the test set, every (method, temperature)
    is its own point (no selection on the test set); points sharing a student or teacher are not independent, so
    read the p-values as descriptive, as in the paper.

    Groups: ``all`` and each method (the ``method`` column). Tasks: each task, and ``all`` pooling every
    configuration x task point. Correlates: H2 / H3 / H3b / H4 / H5 = teacher_accuracy / student_size_b /
    sft_accuracy / agreement / bleu. ``pvalue_holm`` is Holm-adjusted within each (hypothesis, group) across the
    tasks (``all`` included).
    """
    frame = check_table(frame, HYPOTHESIS_INPUT)
    kd = main_grid(frame)
    if kd.empty:
        raise KdlabError(
            "results table: no student-kd rows with teacher_kind 'finetuned' and noise 0 "
            "(the main grid the hypothesis tests use)"
        )
    return hypothesis_tests(seed_means(kd), "method", CORRELATES, pooled=True)
