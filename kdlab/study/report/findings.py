"""The findings text of a study report: plain-language statements that only restate numbers of the tables (with their
significance), and the note on how to read the error bars."""

from __future__ import annotations

import pandas as pd
from scipy import stats as sps

from kdlab.stats.formatting import isnan, p_value
from kdlab.stats.table import CONFIG
from kdlab.study.report.context import ReportContext


def _hyp_row(hyp: pd.DataFrame, hypothesis: str, group: str = "all", task: str = "all"):
    rows = hyp[(hyp["hypothesis"] == hypothesis) & (hyp["group"] == group) & (hyp["task"] == task)]
    return None if rows.empty else rows.iloc[0]


def _significance(p) -> str:
    if isnan(p):
        return "not testable"
    return "significant at 0.05" if p < 0.05 else "not significant at 0.05"


def _paired_facts(ctx: ReportContext, paired: pd.DataFrame) -> list[str]:
    """How many paired KD-vs-SFT comparisons of the main grid KD won, and how many significantly."""
    main_keys = ctx.main[["run", "task"]].drop_duplicates()
    main_paired = paired.merge(main_keys, on=["run", "task"]) if len(paired) else paired
    main_paired = main_paired.dropna(subset=["pvalue"]) if len(main_paired) else main_paired
    if not len(main_paired):
        return []
    ahead = int((main_paired["diff"] > 0).sum())
    ties = int((main_paired["diff"] == 0).sum())
    better = int(((main_paired["pvalue_holm"] < 0.05) & (main_paired["diff"] > 0)).sum())
    worse = int(((main_paired["pvalue_holm"] < 0.05) & (main_paired["diff"] < 0)).sum())
    return [
        f"KD was ahead of SFT in {ahead} of {len(main_paired)} paired comparisons of the main grid "
        f"(KD run × task{', ' + str(ties) + ' ties' if ties else ''}); {better} significantly better and "
        f"{worse} significantly worse after Holm correction within each configuration × seed (exact "
        f"McNemar, p < 0.05)."
    ]


def _gain_facts(ctx: ReportContext, hyp: pd.DataFrame) -> list[str]:
    """H1 pooled (the mean gain and its t-test), then the mean gain by method with the ANOVA across methods."""
    out = []
    h1 = _hyp_row(hyp, "H1")
    if h1 is not None and not isnan(h1["mean"]):
        caveat = h1["note"] or "points sharing a student are not independent, so read p as descriptive"
        d = "" if isnan(h1["effect_size"]) else f" (Cohen's d {h1['effect_size']:.2f})"
        out.append(
            f"Mean gain of KD over SFT across {h1['n']} configuration × task points: "
            f"{100 * h1['mean']:+.1f} percentage points{d}; one-sided t-test of gain > 0: "
            f"p = {p_value(h1['pvalue'])}, {_significance(h1['pvalue'])} ({caveat})."
        )
    gains = []
    for method in ctx.methods:
        row = _hyp_row(hyp, "H1", method)
        if row is not None and not isnan(row["mean"]):
            gains.append(f"{method} {100 * row['mean']:+.1f} pp")
    anova = _hyp_row(hyp, "H1-anova")
    if len(gains) >= 2 and anova is not None:
        test = (
            f"ANOVA across methods p = {p_value(anova['pvalue'])}, η² = {anova['effect_size']:.2f} "
            f"({_significance(anova['pvalue'])})"
            if not isnan(anova["pvalue"])
            else f"ANOVA across methods not testable ({anova['note']})"
        )
        out.append(f"Mean gain by method: {', '.join(gains)}; {test}.")
    return out


CORRELATE_WORDS = (
    ("H3", "student size"),
    ("H2", "teacher accuracy"),
    ("H4", "answer agreement"),
    ("H5", "BLEU fidelity"),
)


def _correlation_facts(hyp: pd.DataFrame) -> list[str]:
    """The pooled Spearman tests of the gain against student size, teacher accuracy, agreement and BLEU."""
    out = []
    for hypothesis, what in CORRELATE_WORDS:
        row = _hyp_row(hyp, hypothesis)
        if row is None:
            continue
        if isnan(row["statistic"]):
            out.append(f"Gain vs {what}: not testable ({row['note']}).")
            continue
        direction = ""
        if row["pvalue"] < 0.05:
            direction = f": the gain {'rises' if row['statistic'] > 0 else 'falls'} with {what}"
        out.append(
            f"Gain vs {what}: Spearman ρ = {row['statistic']:.2f}, p = {p_value(row['pvalue'])}, n = "
            f"{row['n']} ({_significance(row['pvalue'])}){direction}."
        )
    return out


def _fidelity_facts(ctx: ReportContext) -> list[str]:
    """Mean, sd and range of the main grid's agreement and BLEU with the teacher."""
    out = []
    for column, what, scale, unit in (
        ("agreement", "Teacher–student answer agreement", 100, "%"),
        ("bleu", "BLEU of student vs teacher rationales", 1, ""),
    ):
        values = ctx.main[column].dropna()
        if len(values):
            sd = f" ± {values.std(ddof=1) * scale:.1f}{unit} (sd)" if len(values) > 1 else ""
            out.append(
                f"{what} (main-grid KD runs): mean {values.mean() * scale:.1f}{unit}{sd} over {len(values)} "
                f"run × task values, range {values.min() * scale:.1f}–{values.max() * scale:.1f}{unit}."
            )
    return out


def _temperature_facts(ctx: ReportContext) -> list[str]:
    """The mean gain at each temperature of the main grid (when it has several)."""
    temps = ctx.main.dropna(subset=["temperature", "improvement"])
    if temps["temperature"].nunique() < 2:
        return []
    by_t = temps.groupby("temperature")["improvement"].mean()
    return [
        "Mean gain by temperature (all methods, students, tasks, seeds): "
        + ", ".join(f"τ={t:g} {100 * v:+.1f} pp" for t, v in by_t.items())
        + " (descriptive)."
    ]


def _ablation_facts(ctx: ReportContext) -> list[str]:
    """The base-teacher ablation against the same runs from the fine-tuned teacher; accuracy by teacher noise."""
    out = []
    base = ctx.kd[ctx.kd["teacher_kind"] == "base"]
    if len(base):
        keys = ["teacher", "student", "domain", "method", "temperature", "noise", "task", "seed"]
        ft = ctx.kd[ctx.kd["teacher_kind"] == "finetuned"]
        matched = base.merge(ft, on=keys, suffixes=("_base", "_ft"))
        if len(matched):
            diff = (matched["accuracy_base"] - matched["accuracy_ft"]) * 100
            out.append(
                f"KD from the base (task-unaware) teacher: mean accuracy "
                f"{100 * matched['accuracy_base'].mean():.1f}% vs {100 * matched['accuracy_ft'].mean():.1f}% "
                f"from the fine-tuned teacher on the same {len(matched)} configuration × task × seed runs "
                f"(difference {diff.mean():+.1f} pp, range "
                f"{diff.min():+.1f} to {diff.max():+.1f})."
            )
    noisy = ctx.kd[ctx.kd["noise"] > 0]
    if len(noisy):
        keys = [k for k in CONFIG if k != "noise"]
        rows = ctx.kd.merge(noisy[keys].drop_duplicates(), on=keys)
        by_sigma = rows.groupby("noise")["accuracy"].mean()
        out.append(
            "Teacher-noise ablation, mean accuracy by σ: "
            + ", ".join(f"σ={s:g} {100 * v:.1f}%" for s, v in by_sigma.items())
            + "."
        )
    return out


def findings(ctx: ReportContext, hyp: pd.DataFrame | None, paired: pd.DataFrame) -> list[str]:
    """Plain-language statements, each a restatement of numbers in the tables: the paired tests, the hypothesis
    tests (when the study has them), fidelity, temperature and the ablations."""
    hypotheses = _gain_facts(ctx, hyp) + _correlation_facts(hyp) if hyp is not None else []
    out = [
        *_paired_facts(ctx, paired),
        *hypotheses,
        *_fidelity_facts(ctx),
        *_temperature_facts(ctx),
        *_ablation_facts(ctx),
    ]
    return out or ["No KD run with a paired SFT run yet: nothing to summarise."]


def agreement_findings(agreement: pd.DataFrame | None) -> list[str]:
    """One sentence per reference: how many KD runs raised agreement significantly without a significant accuracy loss."""
    if agreement is None or agreement.empty:
        return []
    facts = []
    for reference, part in agreement.groupby("reference", sort=False):
        raised = part[(part["agree_pvalue_holm"] < 0.05) & (part["agree_diff"] > 0)]
        safe = raised[~((raised["acc_pvalue_holm"] < 0.05) & (raised["acc_diff"] < 0))]
        name = "the SFT baseline" if reference == "sft" else reference
        which = ", ".join(
            f"{r['method']} (seed {r['seed']}, {r['task']}: {100 * r['agree_diff']:+.0f} pp)"
            for r in safe.to_dict("records")
        )
        facts.append(
            f"Agreement with the teacher vs {name}: {len(safe)} of {len(part)} KD runs raised it significantly "
            f"(McNemar, Holm) without a significant accuracy loss" + (f": {which}." if which else ".")
        )
    return facts


def error_bar_note(frame: pd.DataFrame) -> str:
    """How to read the error bars, with the t multiplier for the seed counts of this study."""
    runs = frame[frame["role"].isin(["student-sft", "student-kd"])]
    counts = sorted(runs.groupby(["role"] + CONFIG + ["task"], dropna=False)["seed"].nunique().unique())
    multipliers = [f"t = {sps.t.ppf(0.975, k - 1):.1f} for {k} seeds" for k in counts if k >= 2]
    text = (
        "Error bars are 95% intervals: Student-t over seeds (mean ± t·sd/√k for k seeds"
        + (f"; {', '.join(multipliers)}" if multipliers else "")
        + ")"
    )
    if 1 in counts:
        text += ", or a single run's Wilson interval over its examples"
    text += "."
    if 2 in counts:
        text += " With 2 seeds the t-interval is wide by construction; more seeds narrow it quickly."
    return text
