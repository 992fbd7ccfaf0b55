"""The tables of a study report: each table is rows of cell text (:class:`Table`), rendered by
:mod:`kdlab.study.report.render`. The findings text that restates them lives in :mod:`kdlab.study.report.findings`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from kdlab.stats.formatting import DASH, bounds, config_label, fmt, interval, isnan, p_value, pct, starred
from kdlab.stats.markdown import PAIRED_TABLE_HEADER
from kdlab.stats.significance import t_interval
from kdlab.stats.table import CONFIG
from kdlab.study.report.context import ReportContext, candidate_label


@dataclass
class Table:
    """A table as rows of cell text, rendered to HTML and Markdown by :mod:`kdlab.study.report.render`."""

    header: list[str]
    rows: list[list[str]]
    align: str = ""  # one of "l" / "r" per column
    title: str = ""
    note: str = ""


def overview_table(ctx: ReportContext, seeds: pd.DataFrame) -> Table:
    """Accuracy per configuration (rows) and task (columns) with its 95% interval, teachers and SFT first."""
    tasks = ctx.tasks
    order = {"teacher": 0, "base-teacher": 1, "student-sft": 2, "student-kd": 3}
    student_order = {s: i for i, s in enumerate(ctx.students)}
    method_order = {m: i for i, m in enumerate(ctx.methods)}
    seeds = seeds.copy()
    seeds["_ablation"] = (seeds["teacher_kind"] == "base") | (seeds["noise"].fillna(0) > 0)
    seeds["_r"] = seeds["role"].map(order)
    seeds["_s"] = seeds["student"].map(student_order).fillna(-1)
    seeds["_m"] = seeds["method"].map(method_order).fillna(-1)
    keys = ["role"] + [k for k in CONFIG if k != "domain"]  # one row per configuration across its domains' tasks
    rows = []
    groups = seeds.groupby(keys, dropna=False, sort=False)
    firsts = sorted(
        groups,
        key=lambda kv: (
            kv[1]["_r"].iloc[0] > 1,
            kv[1]["_s"].iloc[0],
            kv[1]["_r"].iloc[0],
            kv[1]["_ablation"].iloc[0],
            kv[1]["_m"].iloc[0],
            kv[1]["temperature"].fillna(-1).iloc[0],
            kv[1]["noise"].iloc[0],
        ),
    )
    for _, group in firsts:
        first = group.iloc[0]
        role = first["role"]
        if role in ("teacher", "base-teacher"):
            what = "teacher (fine-tuned)" if role == "teacher" else "teacher (base, not fine-tuned)"
        elif role == "student-sft":
            what = "SFT"
        else:
            what = "KD " + config_label(first.to_dict()) + (" (ablation)" if first["_ablation"] else "")
        cells = [str(first["student"]), what, first["seeds"] or "–"]
        by_task = {r["task"]: r for r in group.to_dict("records")}
        for task in tasks:
            r = by_task.get(task)
            if r is None:
                cells.append("")
                continue
            low, high = (
                (r["accuracy_ci_low"], r["accuracy_ci_high"])
                if r["n_seeds"] >= 2
                else (r["wilson_low"], r["wilson_high"])
            )
            cells.append(" ".join(filter(None, [pct(r["accuracy_mean"], missing=DASH), bounds(low, high)])))
        rows.append(cells)
    return Table(
        ["model", "run", "seeds"] + tasks,
        rows,
        "lll" + "r" * len(tasks),
        "Results overview",
        "Accuracy in % with a 95% interval: Student-t over seeds when a configuration has several seeds, "
        "else the run's Wilson interval. Ablation rows (noisy or base teacher) are marked.",
    )


def staged_table(frame: pd.DataFrame, paired: pd.DataFrame) -> Table | None:
    """A staged study's comparison (None without later stages): per student and task, the first stage (SFT) and
    every later-stage method of the main grid over seeds -- mean accuracy with a 95% t-interval, its reference
    (SFT continued from the same stage, or the stage it continued), the mean paired difference with its t-interval
    over seeds, each seed's difference with its exact McNemar p after Holm over every comparison of the study, and
    mean agreement and BLEU with the teacher."""
    if "init" not in frame.columns:
        return None
    later = frame[(frame["role"] == "student-kd") & (frame["teacher_kind"] == "finetuned") & (frame["noise"] == 0)]
    later = later[later["init"].fillna("").astype(str) != ""]  # SFT continued included: a stage of its own
    if later.empty:
        return None
    sft = frame[frame["role"] == "student-sft"]
    holm = {(r["run"], r["task"]): r for r in paired.to_dict("records")} if len(paired) else {}
    rows = []

    for (student, task), group in later.groupby(["student", "task"], sort=False):
        first = sft[(sft["student"] == student) & (sft["task"] == task)]
        seeds = ",".join(f"{s:g}" for s in sorted(first["seed"]))
        rows.append([str(student), str(task), "SFT (first stage)", seeds, _mean_ci(first["accuracy"])] + [""] * 4)
        rows[-1] += [fmt(first["agreement"].mean(), ".2f"), fmt(first["bleu"].mean(), ".0f")]
        for _, runs in group.groupby("method", sort=False):
            r0 = runs.iloc[0]
            per_seed = []
            for r in runs.sort_values("seed").to_dict("records"):
                test = holm.get((r["run"], r["task"]))
                p_text = f" (p {p_value(test['pvalue_holm_all'])})" if test is not None else ""
                per_seed.append(f"s{r['seed']:g}: {fmt(100 * r['improvement'], '+.0f')}{p_text}")
            rows.append(
                [
                    str(student),
                    str(task),
                    config_label(r0.to_dict()),
                    ",".join(f"{s:g}" for s in sorted(runs["seed"])),
                    _mean_ci(runs["accuracy"]),
                    str(r0.get("reference") or "SFT"),
                    _mean_ci(runs["sft_accuracy"]),
                    _mean_ci(runs["improvement"], signed=True),
                    "; ".join(per_seed),
                    fmt(runs["agreement"].mean(), ".2f"),
                    fmt(runs["bleu"].mean(), ".0f"),
                ]
            )
    header = ["student", "task", "run", "seeds", "accuracy %", "reference", "reference %", "Δ pp", "per seed Δ pp (p)"]
    return Table(
        header + ["agreement", "BLEU"],
        rows,
        "llllrlrrlrr",
        "Staged comparison: each later stage against its reference",
        "Means over seeds with 95% Student-t intervals (accuracy clipped to [0, 100]). Reference: SFT continued "
        "from the same stage (same start, same budget), or for SFT continued the run it continued; Δ = accuracy − "
        "reference accuracy on the same test problems. p: exact McNemar per seed, Holm-adjusted over every paired "
        "comparison of the study. Agreement: share of problems with the teacher's answer; BLEU vs the teacher's "
        "rationales.",
    )


def _mean_ci(values, signed: bool = False) -> str:
    """Mean of accuracies (or, ``signed``, of differences) in percent with its 95% t-interval over seeds."""
    mean, _, low, high, n = t_interval(values, within=None if signed else (0.0, 1.0))
    spec = "+.1f" if signed else ".1f"
    return fmt(100 * mean, spec) + (f" [{100 * low:{spec}}, {100 * high:{spec}}]" if n > 1 else "")


EFFECT_NAMES = {"cohen_d": "d", "eta_squared": "η²", "spearman_rho": "ρ"}


def hypothesis_tables(hyp: pd.DataFrame) -> tuple[Table, Table]:
    """The hypothesis tests pooled over tasks (summary) and per task (detail)."""

    def rows_of(part: pd.DataFrame) -> list[list[str]]:
        rows = []
        for r in part.itertuples(index=False):
            name = EFFECT_NAMES.get(r.effect_name, r.effect_name)
            effect = "" if isnan(r.effect_size) else f"{name} = {r.effect_size:.2f}"
            rows.append(
                [
                    r.hypothesis,
                    str(r.group),
                    str(r.task),
                    fmt(r.statistic, ".3g", DASH),
                    p_value(r.pvalue),
                    starred(p_value(r.pvalue_holm), r.pvalue_holm),
                    str(r.n),
                    effect,
                    pct(r.mean, sign=True),
                    r.note,
                ]
            )
        return rows

    header = ["hypothesis", "group", "task", "statistic", "p", "p (Holm)", "n", "effect size", "mean gain pp", "note"]
    pooled = hyp[hyp["task"] == "all"]
    summary = Table(
        header,
        rows_of(pooled),
        "lllrrrrrrl",
        "Hypothesis tests, pooled over tasks",
        "H1: one-sided t-test of gain > 0 (effect: Cohen's d); H1-anova: gain differs across methods "
        "(η²); H2/H3/H3b/H4/H5: Spearman ρ of the gain with teacher accuracy / student size / "
        "student SFT accuracy / agreement / BLEU. Main grid only (fine-tuned teacher, no noise), "
        "seeds averaged per configuration × task. p (Holm): adjusted within each hypothesis × group "
        "across tasks; "
        "* p < 0.05, ** p < 0.01, *** p < 0.001 on that adjusted p.",
    )
    per_task = Table(header, rows_of(hyp[hyp["task"] != "all"]), "lllrrrrrrl", "Hypothesis tests per task")
    return summary, per_task


def paired_summary_table(paired: pd.DataFrame) -> Table:
    """The paired KD-vs-SFT tests summed up per configuration (its runs on every domain, task and seed)."""
    ok = paired.dropna(subset=["pvalue"])
    rows = []
    keys = [k for k in CONFIG if k != "domain"]  # a configuration's runs on every domain in one row
    for _, group in ok.groupby(keys, dropna=False, sort=False):
        first = group.iloc[0].to_dict()
        better = int((group["diff"] > 0).sum())
        sig_better = int(((group["pvalue_holm"] < 0.05) & (group["diff"] > 0)).sum())
        sig_worse = int(((group["pvalue_holm"] < 0.05) & (group["diff"] < 0)).sum())
        rows.append(
            [
                str(first["student"]),
                config_label(first),
                str(group["task"].nunique()),
                str(group["seed"].nunique()),
                str(len(group)),
                pct(group["diff"].mean(), sign=True),
                str(better),
                str(sig_better),
                str(sig_worse),
            ]
        )
    return Table(
        [
            "student",
            "configuration",
            "tasks",
            "seeds",
            "comparisons",
            "mean Δ pp",
            "KD ahead",
            "KD better *",
            "KD worse *",
        ],
        rows,
        "llrrrrrrr",
        "Paired tests: summary per configuration",
        "One comparison = one KD run against its SFT twin (same student, seed) on one task's examples. "
        "* = significant after Holm correction across the tasks of that configuration and seed "
        "(exact McNemar, p < 0.05).",
    )


def paired_detail_table(paired: pd.DataFrame) -> Table:
    """Every paired KD-vs-SFT comparison (the columns of ``stats.md``'s paired table, in the report's style)."""
    rows = []
    for r in paired.to_dict("records"):
        rows.append(
            [
                str(r["student"]),
                config_label(r),
                f"{r['seed']:g}",
                str(r["task"]),
                fmt(r["n"], ".0f"),
                pct(r["kd_accuracy"], missing=DASH),
                pct(r["sft_accuracy"], missing=DASH),
                interval(r["diff"], r["ci_low"], r["ci_high"]),
                fmt(r["b"], ".0f"),
                fmt(r["c"], ".0f"),
                fmt(r["odds_ratio"], ".2f"),
                p_value(r["pvalue"]),
                starred(p_value(r["pvalue_holm"]), r["pvalue_holm"]),
                p_value(r["pvalue_holm_all"]),
                r["note"],
            ]
        )
    return Table(
        PAIRED_TABLE_HEADER,
        rows,
        "llllrrrrrrrrrrl",
        "Paired tests: every comparison",
        "SFT = the row's reference: the same student's SFT, or for a later stage SFT continued from the same "
        "stage (same start, same budget); "
        "b = examples KD got right and SFT wrong, c = the reverse; Δ = KD − SFT accuracy with a 95% "
        "paired bootstrap interval over examples; odds ratio b / c (0.5 added to both when either is "
        "0); p = exact McNemar; p (Holm) adjusted across the tasks of one configuration and seed "
        "(stars use it); "
        "p (Holm, all) adjusted across every comparison in the table.",
    )


def paired_tables(paired: pd.DataFrame) -> tuple[Table, Table]:
    """The paired KD-vs-SFT tests: a summary per configuration and every comparison."""
    return paired_summary_table(paired), paired_detail_table(paired)


def paper_view_table(paper: pd.DataFrame) -> Table:
    """The paper's max-over-test-temperatures view, labelled as optimistic."""
    rows = [
        [
            str(r["student"]),
            str(r["method"]),
            str(r["seed"]),
            str(r["task"]),
            r["temperatures"],
            f"{r['best_temperature']:g}",
            pct(r["accuracy"], missing=DASH),
            pct(r["improvement"], sign=True, missing=DASH),
        ]
        for _, r in paper.iterrows()
    ]
    return Table(
        ["student", "method", "seed", "task", "temperatures", "best on test", "accuracy", "gain vs SFT"],
        rows,
        "llllllrr",
        "Paper-compatible view: best temperature on the test set",
        "The paper took the maximum over temperatures on test scores. That selection is optimistic (it reads the "
        "test set); kdlab's fair rule is `tuning: {temperature: validation}`. Shown for comparison only.",
    )


def selection_table(selection: pd.DataFrame) -> Table:
    """One row per selection: the chosen settings and every candidate's validation accuracy."""
    rows = []
    for _, group in selection.groupby("select", sort=False):
        first, chosen = group.iloc[0], group[group["selected"]].iloc[0]
        scores = ", ".join(f"{r['settings']}: {pct(r['val_accuracy'], missing=DASH)}" for _, r in group.iterrows())
        rows.append(
            [
                str(first["student"]),
                candidate_label(first),
                str(first["seed"]),
                str(chosen["settings"]),
                f"{pct(chosen['val_accuracy'], missing=DASH)} (n = {int(chosen['n'])})",
                scores,
            ]
        )
    return Table(
        ["student", "run", "seed", "selected", "validation accuracy", "all candidates (validation %)"],
        rows,
        "llllrl",
        "Settings selected on validation",
        "Every run was trained once per candidate; the best by validation accuracy (ties: the first listed) was "
        "the only one evaluated on the test set. All runs had the same candidates, so the same budget.",
    )


def data_fit_table(study_dir: Path):
    """The training runs that dropped or cut examples to fit ``train.max_length`` (None when none did)."""
    from kdlab.stats.results import collect_data_fit

    fit = collect_data_fit(study_dir)
    if fit.empty:
        return None
    rows = [
        [
            str(r["run"]),
            f"{r['examples']} of {r['examples_in_data']}",
            str(r["dropped_long"]),
            str(r["cut_responses"]),
            str(r["max_length"]),
            str(r["on_long"]),
        ]
        for _, r in fit.iterrows()
    ]
    return Table(
        ["run", "examples trained", "dropped", "responses cut", "max_length", "on_long"],
        rows,
        "lrrrrl",
        "Training examples that did not fit max_length",
        "A cut response loses its end (the final answer and EOS); raise train.max_length or set train.on_long.",
    )


AGREEMENT_HEADER = [
    "method",
    "vs",
    "seed",
    "task",
    "n",
    "agreement",
    "Δ agreement [95% CI]",
    "McNemar p (Holm)",
    "accuracy",
    "Δ accuracy [95% CI]",
    "McNemar p (Holm)",
    "verdict",
]
AGREEMENT_TITLE = "Agreement with the teacher: each method against the reference, on the same examples"
AGREEMENT_NOTE = (
    "Paired per example: Δ agreement = the method's agreement minus the reference run's (same student, "
    "seed and test examples), percentile bootstrap 95% interval; exact McNemar test on the examples where "
    "exactly one of the two agrees with the teacher; Holm over all comparisons of each column. The same "
    "for accuracy. The verdict reads both at alpha = 0.05 after Holm."
)


def _share(value) -> str:
    return f"{pct(value, 0)}%"


def _pp_interval(value, low, high) -> str:
    return interval(value, low, high, decimals=0, unit=" pp")


def _p(value) -> str:
    return p_value(value, digits=2, missing="—")


def agreement_rows(tests: pd.DataFrame) -> list[list[str]]:
    """Rows of the agreement table (:data:`AGREEMENT_HEADER`)."""
    rows = []
    for r in tests.to_dict("records"):
        rows.append(
            [
                str(r["method"]),
                "SFT" if r["reference"] == "sft" else str(r["reference"]),
                str(r["seed"]),
                str(r["task"]),
                str(r["n"]),
                f"{_share(r['agreement'])} vs {_share(r['reference_agreement'])}",
                _pp_interval(r["agree_diff"], r["agree_ci_low"], r["agree_ci_high"]),
                f"{_p(r['agree_pvalue'])} ({_p(r['agree_pvalue_holm'])})",
                f"{_share(r['accuracy'])} vs {_share(r['reference_accuracy'])}",
                _pp_interval(r["acc_diff"], r["acc_ci_low"], r["acc_ci_high"]),
                f"{_p(r['acc_pvalue'])} ({_p(r['acc_pvalue_holm'])})",
                str(r["verdict"]),
            ]
        )
    return rows


def agreement_table(agreement: pd.DataFrame) -> Table:
    """The agreement tests of :func:`kdlab.stats.fidelity.agreement_tests` as a report table."""
    return Table(AGREEMENT_HEADER, agreement_rows(agreement), "l" * 4 + "r" * 7 + "l", AGREEMENT_TITLE, AGREEMENT_NOTE)
