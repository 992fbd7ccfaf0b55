"""The figures of a study report, drawn with matplotlib (Agg canvas, no pyplot state) as PNG bytes.

Each ``fig_*`` function takes the :class:`~kdlab.study.report.context.ReportContext` and returns a
:class:`FigureResult`: a PNG with its caption, or a one-line "not in this study" note when the study lacks the
dimension (one temperature, no noise ablation, ...). :func:`~kdlab.study.report.canvas.finish` ends every figure the
same way (legend, title, PNG, caption). This module draws the figures of the study grid (gain vs size, temperature,
teacher noise, base teacher, methods); :mod:`~kdlab.study.report.fidelity_figures` draws the fidelity ones (agreement,
BLEU, the accuracy–agreement plane) and :mod:`~kdlab.study.report.validation_figure` the validation figure of a tuned
study. :func:`make_figures` gathers the figures drawn from the results table, in report order.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from kdlab.stats.formatting import config_label, isnan, size_label
from kdlab.stats.table import CONFIG
from kdlab.study.report.canvas import (
    HATCHES,
    MAX_WIDTH,
    PALETTE,
    PLOT_MARKERS,
    SFT_COLOR,
    STYLE,
    TEACHER_COLOR,
    FigureResult,
    axes_handles,
    finish,
    interval_bars,
    new_figure,
    percent_errorbar,
    yerr,
)
from kdlab.study.report.context import ReportContext, acc_interval, over_seeds
from kdlab.study.report.fidelity_figures import fig_agreement, fig_bleu

FIGURE_KEYS = ("gain_vs_size", "temperature", "noise", "base_teacher", "methods", "agreement", "bleu")


def fig_gain_vs_size(ctx: ReportContext) -> FigureResult:
    result = FigureResult("gain_vs_size", "KD gain over SFT vs student size")
    main = ctx.main.dropna(subset=["improvement"])
    sizes = sorted(main["student_size_b"].dropna().unique())
    if main.empty:
        result.note = "not in this study: no KD run with a paired SFT run (no improvement to plot)"
        return result
    if len(sizes) < 2:
        result.note = f"not in this study: one student size only ({sizes[0]:g}B), so no trend over size"
        return result
    domains = list(dict.fromkeys(main["domain"]))
    fig, axes = new_figure(len(domains), ncols=3)
    methods = [m for m in ctx.methods if m in set(main["method"])]
    spread = np.linspace(-0.04, 0.04, len(methods)) if len(methods) > 1 else [0.0]
    for ax, domain in zip(axes, domains):
        rows = main[main["domain"] == domain]
        agg = over_seeds(rows, ["method", "student_size_b"], "improvement")
        for offset, method in zip(spread, methods):
            part = agg[agg["method"] == method].sort_values("student_size_b")
            if part.empty:
                continue
            x = part["student_size_b"].to_numpy() * 10**offset  # small shift on the log axis
            percent_errorbar(ax, x, part, ctx.colors[method], method)
        ax.axhline(0, color="black", linewidth=0.9, linestyle="--")
        ax.set_xscale("log")
        ax.set_xticks(sizes)
        ax.set_xticklabels([size_label(s) for s in sizes])
        ax.minorticks_off()
        ax.set_xlabel("student size (parameters)")
        ax.set_ylabel("gain over SFT (percentage points)")
        ax.set_title(f"{domain} ({', '.join(dict.fromkeys(rows['task']))})")
    caption = (
        "Each point is KD accuracy minus the same student's SFT accuracy, averaged over the family's "
        "tasks and the method's temperatures, mean over seeds with a 95% t-interval (no bar with one "
        "seed); points above the dashed zero line mean KD beat SFT."
    )
    return finish(
        result, fig, caption, "KD gain over SFT vs student size, per task family", axes_handles(axes), "method"
    )


def fig_temperature(ctx: ReportContext) -> FigureResult:
    result = FigureResult("temperature", "Temperature sweep")
    main = ctx.main.dropna(subset=["improvement", "temperature"])
    counts = main.groupby("method")["temperature"].nunique()
    swept = [m for m in ctx.methods if counts.get(m, 0) >= 2]
    if not swept:
        temps = sorted(main["temperature"].unique())
        result.note = "not in this study: no method was run at more than one temperature" + (
            f" (T = {', '.join(f'{t:g}' for t in temps)})" if temps else ""
        )
        return result
    main = main[main["method"].isin(swept)]
    students = [s for s in ctx.students if s in set(main["student"])]
    fig, axes = new_figure(len(students), ncols=3)
    temps = sorted(main["temperature"].unique())
    for ax, student in zip(axes, students):
        agg = over_seeds(main[main["student"] == student], ["method", "temperature"], "improvement")
        jitter = 0.015 * (temps[-1] - temps[0])
        for i, method in enumerate(swept):
            part = agg[agg["method"] == method].sort_values("temperature")
            if part.empty:
                continue
            x = part["temperature"] + (i - (len(swept) - 1) / 2) * jitter
            percent_errorbar(ax, x, part, ctx.colors[method], method)
        ax.axhline(0, color="black", linewidth=0.9, linestyle="--")
        ax.set_xticks(temps)
        ax.set_xticklabels([f"{t:g}" for t in temps])
        ax.set_xlabel("distillation temperature τ")
        ax.set_ylabel("gain over SFT (percentage points)")
        ax.set_title(student)
    caption = (
        "Each line is one KD method: its gain over SFT (mean over tasks, then over seeds, 95% "
        "t-interval) at each distillation temperature; compare heights at the same τ to rank methods."
    )
    return finish(
        result,
        fig,
        caption,
        "Temperature sweep: KD gain over SFT vs temperature, per student",
        axes_handles(axes),
        "method",
    )


def fig_noise(ctx: ReportContext) -> FigureResult:
    result = FigureResult("noise", "Teacher-noise ablation")
    noisy = ctx.kd[ctx.kd["noise"] > 0]
    if noisy.empty:
        result.note = "not in this study: no teacher-noise ablation (every KD run used noise 0)"
        return result
    keys = [k for k in CONFIG if k != "noise"]
    configs = noisy[keys].drop_duplicates()
    rows = ctx.kd.merge(configs, on=keys, how="inner")  # the noisy runs plus the same configuration at noise 0
    tasks = [t for t in ctx.tasks if t in set(rows["task"])]
    fig, axes = new_figure(len(tasks), ncols=3)
    sigmas = sorted(rows["noise"].unique())
    handles = {}
    for ax, task in zip(axes, tasks):
        part = rows[rows["task"] == task]
        for i, (key, group) in enumerate(part.groupby(keys, dropna=False, sort=False)):
            config = dict(zip(keys, key))
            label = f"{config['student']} · {config_label(config)}"
            points = []
            for sigma, at in group.groupby("noise"):
                points.append((sigma, *acc_interval(at)))
            points = np.array(sorted(points))
            mean = points[:, 1] * 100
            color = ctx.colors.get(config["method"], PALETTE[i % len(PALETTE)])
            handle = ax.errorbar(
                points[:, 0],
                mean,
                yerr=yerr(mean, points[:, 2] * 100, points[:, 3] * 100),
                marker=PLOT_MARKERS[i % len(PLOT_MARKERS)],
                color=color,
                label=label,
            )
            handles.setdefault(label, handle)
            sft = ctx.sft_rows(config["student"], task)
            if not sft.empty:
                value = sft.groupby("seed")["accuracy"].mean().mean() * 100
                line = ax.axhline(
                    value, color=SFT_COLOR, linestyle=":", linewidth=1.5, label=f"SFT {config['student']}"
                )
                handles.setdefault(f"SFT {config['student']}", line)
        ax.set_xticks(sigmas)
        ax.set_xticklabels([f"{s:g}" for s in sigmas])
        ax.set_xlabel("noise σ on teacher logits")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(task)
    caption = (
        "Each line follows one KD configuration as noise of standard deviation σ is added to the "
        "teacher's logits (σ = 0: the clean run); the dotted grey line is the student's SFT accuracy; "
        "bars are 95% t-intervals over seeds (Wilson for a single run)."
    )
    return finish(
        result, fig, caption, "Teacher-noise ablation: accuracy vs noise on the teacher's logits", handles, ncols=3
    )


def fig_base_teacher(ctx: ReportContext) -> FigureResult:
    result = FigureResult("base_teacher", "Base vs fine-tuned teacher")
    base = ctx.kd[ctx.kd["teacher_kind"] == "base"]
    if base.empty:
        result.note = "not in this study: no KD run from a base (task-unaware) teacher"
        return result
    keys = ["teacher", "student", "domain", "method", "temperature", "noise"]
    tasks = [t for t in ctx.tasks if t in set(base["task"])]
    most = max(len(base.loc[base["task"] == t, keys].drop_duplicates()) for t in tasks)
    fig, axes = new_figure(len(tasks), ncols=3, width=max(4.3, 1.2 + 1.3 * most))
    teachers = ctx.frame[ctx.frame["role"].isin(["teacher", "base-teacher"])]
    series = [
        ("SFT", SFT_COLOR, ""),
        ("KD, fine-tuned teacher", PALETTE[0], ""),
        ("KD, base teacher", PALETTE[5], "//"),
    ]
    for ax, task in zip(axes, tasks):
        values = {name: [] for name, _, _ in series}
        labels = []
        configs = base.loc[base["task"] == task, keys].drop_duplicates().to_dict("records")
        for config in configs:
            labels.append(f"{config['student']}\n{config_label(config)}")
            match = np.ones(len(ctx.kd), dtype=bool)
            for k in keys:
                column = ctx.kd[k]
                match &= column.isna().to_numpy() if isnan(config[k]) else (column == config[k]).to_numpy()
            same = ctx.kd[match & (ctx.kd["task"] == task).to_numpy()]
            for name, rows in (
                ("SFT", ctx.sft_rows(config["student"], task)),
                ("KD, fine-tuned teacher", same[same["teacher_kind"] == "finetuned"]),
                ("KD, base teacher", same[same["teacher_kind"] == "base"]),
            ):
                values[name].append(acc_interval(rows) if not rows.empty else (math.nan,) * 3)
        x = np.arange(len(configs))
        width = 0.8 / len(series)
        for i, (name, color, hatch) in enumerate(series):
            interval_bars(ax, x + (i - 1) * width, width, values[name], color, name, hatch)
        for kind, style, name in (("finetuned", "-", "fine-tuned teacher"), ("base", "--", "base teacher")):
            acc = teachers[(teachers["teacher_kind"] == kind) & (teachers["task"] == task)]["accuracy"]
            if len(acc):
                ax.axhline(acc.mean() * 100, color=TEACHER_COLOR, linestyle=style, linewidth=1.2, label=name)
        ax.set_xticks(x)
        ax.set_xticklabels(labels)
        ax.set_ylabel("accuracy (%)")
        ax.set_title(task)
    handles = [Patch(facecolor=c, hatch=h, edgecolor="white", label=n) for n, c, h in series]
    handles += [
        Line2D([], [], color=TEACHER_COLOR, linestyle="-", label="fine-tuned teacher"),
        Line2D([], [], color=TEACHER_COLOR, linestyle="--", label="base teacher"),
    ]
    caption = (
        "For each student and KD configuration, the bars compare the SFT baseline with KD from the "
        "fine-tuned teacher and KD from the base (not fine-tuned) teacher; horizontal lines mark the "
        "two teachers' own accuracy; bars are 95% t-intervals over seeds (Wilson for a single run)."
    )
    return finish(
        result,
        fig,
        caption,
        "KD from the base (task-unaware) vs the fine-tuned teacher",
        {h.get_label(): h for h in handles},
    )


def _config_intervals(main: pd.DataFrame, students: list[str], task: str, config: dict) -> list[tuple]:
    """Each student's accuracy with its interval (:func:`acc_interval`) for one (method, temperature) on one task;
    NaN for a student without such runs."""
    temperature = config["temperature"]
    same = main["temperature"].isna() if isnan(temperature) else main["temperature"] == temperature
    values = []
    for student in students:
        rows = main[(main["student"] == student) & (main["task"] == task) & (main["method"] == config["method"]) & same]
        values.append(acc_interval(rows) if not rows.empty else (math.nan,) * 3)
    return values


def fig_methods(ctx: ReportContext) -> FigureResult:
    result = FigureResult("methods", "KD methods compared")
    main = ctx.main
    if main.empty:
        result.note = "not in this study: no KD run from the fine-tuned teacher without noise"
        return result
    configs = main[["method", "temperature"]].drop_duplicates()
    configs["_m"] = configs["method"].map({m: i for i, m in enumerate(ctx.methods)})
    configs = configs.sort_values(["_m", "temperature"]).to_dict("records")
    temps_by_method = {
        m: sorted(t for t in main.loc[main["method"] == m, "temperature"].unique() if not isnan(t)) for m in ctx.methods
    }
    tasks = [t for t in ctx.tasks if t in set(main["task"])]
    students = [s for s in ctx.students if s in set(main["student"])]
    bars = len(configs) + 1
    panel = max(5.5, 0.9 + 0.32 * bars * len(students))
    fig, axes = new_figure(len(tasks), ncols=2 if panel <= MAX_WIDTH / 2 else 1, width=panel, height=3.6)
    teachers = ctx.frame[ctx.frame["role"] == "teacher"]
    width = 0.85 / bars
    handles = {}
    for ax, task in zip(axes, tasks):
        x = np.arange(len(students))
        sft = [
            (acc_interval(ctx.sft_rows(s, task)) if not ctx.sft_rows(s, task).empty else (math.nan,) * 3)
            for s in students
        ]
        handles.setdefault("SFT", interval_bars(ax, x - 0.425 + width / 2, width, sft, SFT_COLOR, "SFT"))
        for j, config in enumerate(configs, start=1):
            temps = temps_by_method.get(config["method"], [])
            hatch = HATCHES[temps.index(config["temperature"]) % len(HATCHES)] if config["temperature"] in temps else ""
            values = _config_intervals(main, students, task, config)
            label = config_label(config)
            handles.setdefault(
                label,
                interval_bars(
                    ax, x - 0.425 + width * (j + 0.5), width, values, ctx.colors[config["method"]], label, hatch
                ),
            )
        styles = ["--", "-.", ":"]
        for i, (teacher, rows) in enumerate(teachers[teachers["task"] == task].groupby("teacher", sort=False)):
            value = rows["accuracy"].mean() * 100
            line = ax.axhline(value, color=TEACHER_COLOR, linestyle=styles[i % 3], linewidth=1.2)
            handles.setdefault(f"teacher {teacher}", line)
        ax.set_xticks(x)
        ax.set_xticklabels(students)
        ax.set_ylabel("accuracy (%)")
        ax.set_title(task)
    caption = (
        "Bars give each student's accuracy after SFT (grey) and after each KD method and temperature "
        "(colour = method, hatching = temperature), mean over seeds with 95% t-intervals (Wilson for a "
        "single run); the dashed line is the fine-tuned teacher's accuracy."
    )
    return finish(
        result, fig, caption, "KD methods compared with SFT, per task (fine-tuned teacher, no noise)", handles
    )


FIGURES = (fig_gain_vs_size, fig_temperature, fig_noise, fig_base_teacher, fig_methods, fig_agreement, fig_bleu)


def make_figures(frame: pd.DataFrame) -> list[FigureResult]:
    """Every report figure (or its "not in this study" note), in report order."""
    ctx = ReportContext(frame)
    with rc_context(STYLE):
        return [build(ctx) for build in FIGURES]
