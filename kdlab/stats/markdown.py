"""``stats.md``: the study statistics tables (:mod:`kdlab.stats.study`) as one Markdown page, a section per table."""

from __future__ import annotations

import pandas as pd

from kdlab.stats.formatting import bounds, config_label, interval, isnan, markdown_table, num, pct, starred

# the columns of the every-comparison paired table, in stats.md and in the report
PAIRED_TABLE_HEADER = [
    "student",
    "configuration",
    "seed",
    "task",
    "n",
    "KD %",
    "SFT %",
    "Δ pp [95% CI]",
    "b",
    "c",
    "odds ratio",
    "p",
    "p (Holm)",
    "p (Holm, all)",
    "note",
]
INTRO = [
    "# Study statistics",
    "",
    "Significance: * p < 0.05, ** p < 0.01, *** p < 0.001, on the Holm-adjusted p-value of each table.",
    "",
]
HYPOTHESES_INTRO = [
    "## Hypotheses (H1-H5)",
    "",
    "Main grid only (student-kd, fine-tuned teacher, no noise); seeds averaged per configuration x task. "
    "p (Holm): adjusted within each hypothesis x group across tasks.",
    "",
]
PAIRED_INTRO = [
    "",
    "## Paired tests: KD vs SFT on the same examples",
    "",
    "Exact McNemar; b = KD right & SFT wrong, c = SFT right & KD wrong; Δ = KD − SFT accuracy in "
    "percentage points with a 95% paired bootstrap CI. p (Holm) is adjusted across the tasks of each "
    "(configuration, seed); p (Holm, all) across every comparison.",
    "",
]
SEEDS_INTRO = [
    "",
    "## Seeds: mean over seeds per configuration x task",
    "",
    "Accuracy and improvement in percent; 95% Student-t interval over seeds (blank with one seed).",
    "",
]


def hypotheses_section(hypotheses: pd.DataFrame) -> list[str]:
    """The H1-H5 table (:func:`kdlab.stats.hypotheses.study_hypotheses`)."""
    rows = [
        [
            r.hypothesis,
            str(r.group),
            str(r.task),
            num(r.statistic),
            num(r.pvalue),
            starred(num(r.pvalue_holm), r.pvalue_holm),
            str(r.n),
            "" if isnan(r.effect_size) else f"{num(r.effect_size, 3)} ({r.effect_name})",
            r.note,
        ]
        for r in hypotheses.itertuples(index=False)
    ]
    header = ["hypothesis", "group", "task", "statistic", "p", "p (Holm)", "n", "effect", "note"]
    return HYPOTHESES_INTRO + markdown_table(header, rows, "lllrrrrll")


def paired_section(paired: pd.DataFrame) -> list[str]:
    """Every paired KD-vs-SFT comparison (:func:`kdlab.stats.paired.paired_tests`)."""
    rows = [
        [
            str(r["student"]),
            config_label(r),
            num(r["seed"]),
            str(r["task"]),
            num(r["n"]),
            pct(r["kd_accuracy"]),
            pct(r["sft_accuracy"]),
            interval(r["diff"], r["ci_low"], r["ci_high"]),
            num(r["b"]),
            num(r["c"]),
            num(r["odds_ratio"], 3),
            num(r["pvalue"]),
            starred(num(r["pvalue_holm"]), r["pvalue_holm"]),
            num(r["pvalue_holm_all"]),
            r["note"],
        ]
        for r in paired.to_dict("records")
    ]
    return PAIRED_INTRO + markdown_table(PAIRED_TABLE_HEADER, rows, "lllllrrrrrrrrrl")


def seeds_section(seeds: pd.DataFrame) -> list[str]:
    """Mean accuracy and gain over seeds per configuration x task (:func:`kdlab.stats.study.seed_summary`)."""
    rows = [
        [
            str(r["student"]),
            config_label(r) if r["role"] == "student-kd" else str(r["role"]),
            str(r["task"]),
            str(r["n_seeds"]),
            pct(r["accuracy_mean"]),
            pct(r["accuracy_sd"]),
            bounds(r["accuracy_ci_low"], r["accuracy_ci_high"]),
            pct(r["improvement_mean"], sign=True),
            bounds(r["improvement_ci_low"], r["improvement_ci_high"], sign=True),
        ]
        for r in seeds.to_dict("records")
    ]
    header = ["student", "configuration", "task", "seeds", "accuracy %", "sd", "95% CI", "gain pp", "gain 95% CI"]
    return SEEDS_INTRO + markdown_table(header, rows, "lllrrrrrr")


def stats_markdown(hypotheses: pd.DataFrame, paired: pd.DataFrame, seeds: pd.DataFrame) -> str:
    """The page: the hypothesis tests, the paired tests and the seed summary."""
    lines = INTRO + hypotheses_section(hypotheses) + paired_section(paired) + seeds_section(seeds)
    return "\n".join(lines) + "\n"
