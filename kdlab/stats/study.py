"""Statistics of a kdlab study, from its tidy results table (``results.csv`` / ``results.parquet``).

Three tables, each a :class:`pandas.DataFrame`:

* :func:`study_hypotheses` -- the paper's H1-H5 tests (as in :mod:`kdlab.stats.paper`), on this study's runs.
* :func:`paired_tests` -- per KD run and task: the KD student against its SFT twin on the same examples
  (exact McNemar, paired bootstrap CI of the accuracy difference, Holm correction), in
  :mod:`kdlab.stats.paired`.
* :func:`seed_summary` -- per configuration x task: mean over seeds with a t-interval.

:func:`compute_stats` writes them as ``hypotheses.csv``, ``paired.csv``, ``seeds.csv`` and ``stats.md`` (rendered by
:mod:`kdlab.stats.markdown`), with the paper's temperature view and the fidelity tables
(:mod:`kdlab.stats.fidelity`); the tests and intervals themselves live in :mod:`kdlab.stats.significance`.

A *configuration* of a run is ``(teacher, teacher_kind, student, domain, method, temperature, noise)``; seeds repeat
a configuration. The *main grid* is the ``student-kd`` rows with ``teacher_kind == 'finetuned'`` and ``noise == 0``;
the other KD rows are ablations. The table's columns are checked by :mod:`kdlab.stats.table` (``check_table``,
``main_grid``, ``CONFIG``).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from kdlab.errors import KdlabError
from kdlab.io import atomic_write_text
from kdlab.stats.fidelity import fidelity_tables
from kdlab.stats.markdown import stats_markdown
from kdlab.stats.paired import paired_tests
from kdlab.stats.significance import anova, holm, spearman, t_interval, ttest_greater
from kdlab.stats.table import CONFIG, check_table, main_grid

HYPOTHESES = ("H1", "H1-anova", "H2", "H3", "H3b", "H4", "H5")
# H2..H5: Spearman(improvement, column)
CORRELATES = (
    ("H2", "teacher_accuracy"),
    ("H3", "student_size_b"),
    ("H3b", "sft_accuracy"),
    ("H4", "agreement"),
    ("H5", "bleu"),
)
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
SEED_COLUMNS = (
    ["role"]
    + CONFIG
    + [
        "task",
        "student_size_b",
        "loss",
        "n_seeds",
        "seeds",
        "n",
        "accuracy_mean",
        "accuracy_sd",
        "accuracy_ci_low",
        "accuracy_ci_high",
        "wilson_low",
        "wilson_high",
        "improvement_mean",
        "improvement_sd",
        "improvement_ci_low",
        "improvement_ci_high",
        "sft_accuracy_mean",
        "teacher_accuracy_mean",
        "agreement_mean",
        "bleu_mean",
    ]
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
SEED_INPUT = ["role", "task", "seed", "accuracy", "student_size_b"] + CONFIG


# ----------------------------------------------------------------------------------------------------------------
# H1-H5


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
    configuration x task point. Tests: H1 one-sided one-sample t-test of improvement > 0 (effect size Cohen's
    d = mean / sd); H1-anova one-way ANOVA of improvement across methods (group ``all`` only; eta squared);
    H2 / H3 / H3b / H4 / H5 Spearman(improvement, teacher_accuracy / student_size_b / sft_accuracy / agreement /
    bleu) (effect size rho). A test that is undefined (too few points, constant input) gives NaN and says why in
    ``note``. ``pvalue_holm`` is Holm-adjusted within each (hypothesis, group) across the tasks (``all`` included).
    """
    frame = check_table(frame, HYPOTHESIS_INPUT)
    kd = main_grid(frame)
    if kd.empty:
        raise KdlabError(
            "results table: no student-kd rows with teacher_kind 'finetuned' and noise 0 "
            "(the main grid the hypothesis tests use)"
        )
    points = seed_means(kd)
    tasks = list(dict.fromkeys(points["task"]))
    methods = list(dict.fromkeys(points["method"]))
    rows = []
    for task in tasks + ["all"]:
        per_task = points if task == "all" else points[points["task"] == task]
        for group in ["all"] + methods:
            sub = per_task if group == "all" else per_task[per_task["method"] == group]
            if sub.empty:
                continue
            imp = sub["improvement"].to_numpy(float)
            rows.append({"hypothesis": "H1", "group": group, "task": task, **ttest_greater(imp)})
            if group == "all":
                samples = {m: s["improvement"].to_numpy(float) for m, s in sub.groupby("method", sort=False)}
                rows.append({"hypothesis": "H1-anova", "group": group, "task": task, **anova(samples)})
            for hypothesis, column in CORRELATES:
                rows.append(
                    {
                        "hypothesis": hypothesis,
                        "group": group,
                        "task": task,
                        **spearman(imp, sub[column].to_numpy(float), column),
                    }
                )
    out = pd.DataFrame(rows)
    out["pvalue_holm"] = out.groupby(["hypothesis", "group"], sort=False)["pvalue"].transform(
        lambda p: pd.Series(holm(p.to_numpy()), index=p.index)
    )
    order = {h: i for i, h in enumerate(HYPOTHESES)}
    out["_h"] = out["hypothesis"].map(order)
    out["_t"] = out["task"].map({t: i for i, t in enumerate(tasks + ["all"])})
    out["_g"] = out["group"].map({g: i for i, g in enumerate(["all"] + methods)})
    out = out.sort_values(["_h", "_t", "_g"], kind="stable").reset_index(drop=True)
    out["n"] = out["n"].astype(int)
    return out[HYPOTHESIS_COLUMNS]


# ----------------------------------------------------------------------------------------------------------------
# seeds


def seed_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per role x configuration x task: mean accuracy over seeds, its sd, the number of seeds and a 95% Student-t
    interval clipped to [0, 1] (NaN for one seed; ``wilson_low`` / ``wilson_high`` then hold that run's Wilson
    interval), and the same for the improvement over SFT (KD rows only), plus the mean SFT / teacher accuracy,
    agreement and BLEU."""
    frame = check_table(frame, SEED_INPUT)
    keys = ["role"] + CONFIG + ["task"]
    dup = frame.duplicated(keys + ["seed"], keep=False)
    if dup.any():
        first = frame[dup].iloc[0]
        raise KdlabError(
            f"results table: several rows for run {first.get('run', '?')} "
            f"({first['role']}, {first['student']}, {first['method']}, task {first['task']}, "
            f"seed {first['seed']:g})"
        )
    rows = []
    for key, group in frame.groupby(keys, dropna=False, sort=False):
        row = dict(zip(keys, key))
        row["student_size_b"] = group["student_size_b"].iloc[0]
        row["loss"] = group["loss"].iloc[0] if "loss" in group else None
        seeds = sorted(group["seed"].dropna().unique())
        row["n_seeds"] = len(seeds)
        row["seeds"] = ",".join(f"{s:g}" for s in seeds)
        row["n"] = group["n"].mean() if "n" in group else math.nan
        mean, sd, low, high, _ = t_interval(group["accuracy"], within=(0.0, 1.0))
        row.update(accuracy_mean=mean, accuracy_sd=sd, accuracy_ci_low=low, accuracy_ci_high=high)
        single = len(group) == 1 and "ci_low" in group and "ci_high" in group
        row["wilson_low"] = group["ci_low"].iloc[0] if single else math.nan
        row["wilson_high"] = group["ci_high"].iloc[0] if single else math.nan
        if "improvement" in group:
            mean, sd, low, high, _ = t_interval(group["improvement"])
        else:
            mean = sd = low = high = math.nan
        row.update(improvement_mean=mean, improvement_sd=sd, improvement_ci_low=low, improvement_ci_high=high)
        for source, target in (
            ("sft_accuracy", "sft_accuracy_mean"),
            ("teacher_accuracy", "teacher_accuracy_mean"),
            ("agreement", "agreement_mean"),
            ("bleu", "bleu_mean"),
        ):
            values = group[source].dropna() if source in group else pd.Series(dtype=float)
            row[target] = float(values.mean()) if len(values) else math.nan
        rows.append(row)
    return pd.DataFrame(rows, columns=SEED_COLUMNS)


# ----------------------------------------------------------------------------------------------------------------
# the paper's temperature rule, all tables, output


PAPER_RULE = "paper-compatible: temperature = max over TEST scores (optimistic; not a fair selection)"
PAPER_VIEW_COLUMNS = [
    "teacher",
    "student",
    "domain",
    "method",
    "seed",
    "task",
    "temperatures",
    "best_temperature",
    "accuracy",
    "sft_accuracy",
    "improvement",
    "rule",
]


def paper_temperature_view(frame: pd.DataFrame) -> pd.DataFrame:
    """The paper's rule, labelled as such: per KD method, student, seed and task, the best accuracy over the
    temperatures evaluated on the test set. Only main-grid methods run at two or more temperatures appear; the
    selection is on test scores, so the improvement it shows is biased upwards (``rule`` says so on every row)."""
    kd = main_grid(frame).dropna(subset=["temperature"])
    keys = ["teacher", "student", "domain", "method", "seed", "task"]
    rows = []
    for key, group in kd.groupby(keys, sort=False):
        if group["temperature"].nunique() < 2:
            continue
        best = group.loc[group["accuracy"].idxmax()]
        rows.append(
            {
                **dict(zip(keys, key)),
                "temperatures": " ".join(f"{t:g}" for t in sorted(group["temperature"])),
                "best_temperature": float(best["temperature"]),
                "accuracy": float(best["accuracy"]),
                "sft_accuracy": float(best["sft_accuracy"]),
                "improvement": float(best["improvement"]),
                "rule": PAPER_RULE,
            }
        )
    return pd.DataFrame(rows, columns=PAPER_VIEW_COLUMNS)


def compute_study_stats(
    study_dir: str | Path, frame: pd.DataFrame, n_boot: int = 10000, seed: int = 0
) -> dict[str, pd.DataFrame]:
    """``{"hypotheses", "paired", "seeds", "paper_temperature"}`` tables of a study."""
    return {
        "hypotheses": study_hypotheses(frame),
        "paired": paired_tests(frame, study_dir, n_boot=n_boot, seed=seed),
        "seeds": seed_summary(frame),
        "paper_temperature": paper_temperature_view(frame),
    }


def write_stats_tables(tables: dict[str, pd.DataFrame], out_dir: str | Path) -> dict[str, Path]:
    """Write the tables of :func:`compute_study_stats` (CSV each, and ``stats.md``) into ``out_dir``; also
    ``fidelity_plane`` and ``agreement`` (:func:`kdlab.stats.fidelity.fidelity_tables`) when present."""
    out_dir = Path(out_dir)
    paths = {
        "hypotheses": out_dir / "hypotheses.csv",
        "paired": out_dir / "paired.csv",
        "seeds": out_dir / "seeds.csv",
        "markdown": out_dir / "stats.md",
    }
    for name in ("hypotheses", "paired", "seeds"):
        atomic_write_text(paths[name], tables[name].to_csv(index=False))
    for name in ("paper_temperature", "fidelity_plane", "agreement"):
        table = tables.get(name)
        if table is not None and not table.empty:
            paths[name] = out_dir / f"{name}.csv"
            atomic_write_text(paths[name], table.to_csv(index=False))
    atomic_write_text(paths["markdown"], stats_markdown(tables["hypotheses"], tables["paired"], tables["seeds"]))
    return paths


def compute_stats(
    study_dir: str | Path,
    frame: pd.DataFrame,
    out_dir: str | Path,
    selection: pd.DataFrame | None = None,
    n_boot: int = 10000,
    seed: int = 0,
) -> dict[str, pd.DataFrame]:
    """Everything ``kdlab study stats`` writes: the results (and selection) tables into ``<study_dir>/results``
    (:func:`kdlab.stats.results.write_results`), then the statistics tables of :func:`compute_study_stats` and
    :func:`kdlab.stats.fidelity.fidelity_tables` into ``out_dir`` (:func:`write_stats_tables`). Returns the
    statistics tables, with ``selection`` among them when given."""
    from kdlab.stats.results import write_results  # results pulls in the plan; the tables alone do not need it

    write_results(frame, Path(study_dir) / "results", selection)
    tables = {**compute_study_stats(study_dir, frame, n_boot=n_boot, seed=seed), **fidelity_tables(study_dir, frame)}
    write_stats_tables(tables, out_dir)
    return {**tables, "selection": selection} if selection is not None else tables
