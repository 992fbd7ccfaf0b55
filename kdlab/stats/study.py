"""Statistics of a kdlab study, from its tidy results table (``results.csv`` / ``results.parquet``).

Three tables, each a :class:`pandas.DataFrame`:

* :func:`~kdlab.stats.hypotheses.study_hypotheses` -- the paper's H1-H5 tests (:mod:`kdlab.stats.hypotheses`), on
  this study's runs.
* :func:`~kdlab.stats.paired.paired_tests` -- per KD run and task: the KD student against its SFT twin on the same
  examples (exact McNemar, paired bootstrap CI of the accuracy difference, Holm correction).
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
from kdlab.stats.hypotheses import study_hypotheses
from kdlab.stats.markdown import stats_markdown
from kdlab.stats.paired import paired_tests
from kdlab.stats.significance import t_interval
from kdlab.stats.table import CONFIG, check_table, main_grid

SEED_COLUMNS = (
    ["role"]
    + CONFIG
    + [
        "task",
        "student_size_b",
        "loss",
        "init",
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

SEED_INPUT = ["role", "task", "seed", "accuracy", "student_size_b"] + CONFIG


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
        row["init"] = group["init"].iloc[0] if "init" in group else ""
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
