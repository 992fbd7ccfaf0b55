"""``stats.md``: the study statistics tables (:mod:`kdlab.stats.study`) as one Markdown page."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from kdlab.stats.formatting import markdown_table
from kdlab.stats.significance import stars

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


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else f"{value:.{digits}g}"
    return str(value)


def _pct(value) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def config_label(row) -> str:
    """``method T=2`` (+ ``sigma=1`` for noise, ``base teacher`` for a base teacher) of a configuration row."""
    get = row.get if isinstance(row, dict) else (lambda k, d=None: getattr(row, k, d))
    parts = [str(get("method", ""))]
    temperature = get("temperature", math.nan)
    if temperature is not None and not (isinstance(temperature, float) and math.isnan(temperature)):
        parts.append(f"T={temperature:g}")
    noise = get("noise", 0.0)
    if noise is not None and not (isinstance(noise, float) and math.isnan(noise)) and noise > 0:
        parts.append(f"σ={noise:g}")
    if get("teacher_kind", None) == "base" and get("role", "student-kd") == "student-kd":
        parts.append("base teacher")
    return " ".join(parts)


def stats_markdown(hypotheses: pd.DataFrame, paired: pd.DataFrame, seeds: pd.DataFrame) -> str:
    lines = [
        "# Study statistics",
        "",
        "Significance: * p < 0.05, ** p < 0.01, *** p < 0.001, on the Holm-adjusted p-value of each table.",
        "",
        "## Hypotheses (H1-H5)",
        "",
        "Main grid only (student-kd, fine-tuned teacher, no noise); seeds averaged per configuration x task. "
        "p (Holm): adjusted within each hypothesis x group across tasks.",
        "",
    ]
    rows = [
        [
            r.hypothesis,
            str(r.group),
            str(r.task),
            _fmt(r.statistic),
            _fmt(r.pvalue),
            _fmt(r.pvalue_holm) + (" " + stars(r.pvalue_holm) if stars(r.pvalue_holm) else ""),
            str(r.n),
            f"{_fmt(r.effect_size, 3)} ({r.effect_name})" if not math.isnan(r.effect_size) else "",
            r.note,
        ]
        for r in hypotheses.itertuples(index=False)
    ]
    lines += markdown_table(
        ["hypothesis", "group", "task", "statistic", "p", "p (Holm)", "n", "effect", "note"], rows, "lllrrrrll"
    )
    lines += [
        "",
        "## Paired tests: KD vs SFT on the same examples",
        "",
        "Exact McNemar; b = KD right & SFT wrong, c = SFT right & KD wrong; Δ = KD − SFT accuracy in "
        "percentage points with a 95% paired bootstrap CI. p (Holm) is adjusted across the tasks of each "
        "(configuration, seed); p (Holm, all) across every comparison.",
        "",
    ]
    rows = []
    for r in paired.to_dict("records"):
        rows.append(
            [
                str(r["student"]),
                config_label(r),
                _fmt(r["seed"]),
                str(r["task"]),
                _fmt(r["n"]),
                _pct(r["kd_accuracy"]),
                _pct(r["sft_accuracy"]),
                f"{100 * r['diff']:+.1f} [{100 * r['ci_low']:+.1f}, {100 * r['ci_high']:+.1f}]"
                if not math.isnan(r["diff"])
                else "",
                _fmt(r["b"]),
                _fmt(r["c"]),
                _fmt(r["odds_ratio"], 3),
                _fmt(r["pvalue"]),
                _fmt(r["pvalue_holm"]) + (" " + stars(r["pvalue_holm"]) if stars(r["pvalue_holm"]) else ""),
                _fmt(r["pvalue_holm_all"]),
                r["note"],
            ]
        )
    lines += markdown_table(PAIRED_TABLE_HEADER, rows, "lllllrrrrrrrrrl")
    lines += [
        "",
        "## Seeds: mean over seeds per configuration x task",
        "",
        "Accuracy and improvement in percent; 95% Student-t interval over seeds (blank with one seed).",
        "",
    ]
    rows = []
    for r in seeds.to_dict("records"):
        ci = (
            f"[{_pct(r['accuracy_ci_low'])}, {_pct(r['accuracy_ci_high'])}]"
            if not math.isnan(r["accuracy_ci_low"])
            else ""
        )
        imp = f"{100 * r['improvement_mean']:+.1f}" if not math.isnan(r["improvement_mean"]) else ""
        imp_ci = (
            f"[{100 * r['improvement_ci_low']:+.1f}, {100 * r['improvement_ci_high']:+.1f}]"
            if not math.isnan(r["improvement_ci_low"])
            else ""
        )
        label = config_label(r) if r["role"] == "student-kd" else str(r["role"])
        rows.append(
            [
                str(r["student"]),
                label,
                str(r["task"]),
                str(r["n_seeds"]),
                _pct(r["accuracy_mean"]),
                _pct(r["accuracy_sd"]),
                ci,
                imp,
                imp_ci,
            ]
        )
    lines += markdown_table(
        ["student", "configuration", "task", "seeds", "accuracy %", "sd", "95% CI", "gain pp", "gain 95% CI"],
        rows,
        "lllrrrrrr",
    )
    return "\n".join(lines) + "\n"
