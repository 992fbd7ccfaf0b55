"""The figures of a study report, drawn with matplotlib (Agg canvas, no pyplot state) as PNG bytes.

Each ``fig_*`` function takes the :class:`~kdlab.study.report.context.ReportContext` and returns a
:class:`FigureResult`: a PNG with its caption, or a one-line "not in this study" note when the study lacks the
dimension (one temperature, no noise ablation, ...). :func:`~kdlab.study.report.canvas.finish` ends every figure the
same way (legend, title, PNG, caption).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from scipy import stats as sps

from kdlab.study.report.canvas import (
    HATCHES,
    LINE_STYLES,
    MARKERS,
    MAX_WIDTH,
    PALETTE,
    SFT_COLOR,
    STYLE,
    TEACHER_COLOR,
    FigureResult,
    axes_handles,
    finish,
    interval_bars,
    new_figure,
    yerr,
)
from kdlab.study.report.context import (
    ReportContext,
    acc_interval,
    candidate_label,
    fmt_p,
    isnan,
    over_seeds,
    size_label,
)
from kdlab.study.stats import CONFIG, seed_means
from kdlab.study.stats_markdown import config_label

FIGURE_KEYS = ("gain_vs_size", "temperature", "noise", "base_teacher", "methods", "agreement", "bleu")
SEED_MARKERS = ["o", "s", "^", "D", "v"]
PLANE_TITLE = "Accuracy vs agreement with the teacher"
PLANE_CAPTION = (
    "One point per student run (colour = method, marker = seed), with 95% Wilson intervals on both axes "
    "(n test examples each). Agreement = share of test examples where the student's extracted answer equals "
    "the teacher's. The teacher sits at 100% agreement with itself. The dashed line joins each seed's "
    "Pareto front: runs that no other run of that seed beats on both axes."
)


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
            mean = part["mean"].to_numpy() * 100
            ax.errorbar(
                x,
                mean,
                yerr=yerr(mean, part["low"].to_numpy() * 100, part["high"].to_numpy() * 100),
                marker="o",
                color=ctx.colors[method],
                label=method,
            )
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
            mean = part["mean"].to_numpy() * 100
            ax.errorbar(
                part["temperature"] + (i - (len(swept) - 1) / 2) * jitter,
                mean,
                yerr=yerr(mean, part["low"].to_numpy() * 100, part["high"].to_numpy() * 100),
                marker="o",
                color=ctx.colors[method],
                label=method,
            )
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
                marker=MARKERS[i % len(MARKERS)],
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
            values = []
            for student in students:
                rows = main[
                    (main["student"] == student)
                    & (main["task"] == task)
                    & (main["method"] == config["method"])
                    & (
                        (main["temperature"] == config["temperature"])
                        if not isnan(config["temperature"])
                        else main["temperature"].isna()
                    )
                ]
                values.append(acc_interval(rows) if not rows.empty else (math.nan,) * 3)
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


def _fig_scatter(ctx: ReportContext, column: str, key: str, name: str, scale: float, unit: str) -> FigureResult:
    result = FigureResult(key, f"Accuracy vs {name}")
    points = seed_means(ctx.main) if not ctx.main.empty else pd.DataFrame()
    if points.empty or column not in points or points[column].notna().sum() == 0:
        result.note = f"not in this study: {name} was not computed for any KD run"
        return result
    points = points.dropna(subset=[column, "accuracy"])
    fig, axes = new_figure(1, ncols=1, width=6.6, height=4.4)
    ax = axes[0]
    task_marker = {t: MARKERS[i % len(MARKERS)] for i, t in enumerate(ctx.tasks)}
    for (method, task), part in points.groupby(["method", "task"], sort=False):
        ax.scatter(
            part[column] * scale,
            part["accuracy"] * 100,
            color=ctx.colors[method],
            marker=task_marker[task],
            s=42,
            alpha=0.85,
            edgecolor="white",
            linewidth=0.5,
        )
    x, y = points[column].to_numpy(float), points["accuracy"].to_numpy(float)
    n = len(points)
    if n >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
        res = sps.spearmanr(x, y)
        stat = f"Spearman ρ = {res.statistic:.2f}, p = {fmt_p(res.pvalue)}, n = {n}"
    else:
        stat = f"Spearman ρ undefined (n = {n} or constant values)"
    ax.set_title(f"Accuracy vs {name}\n{stat}", fontsize=11)
    ax.set_xlabel(f"{name} ({unit})")
    ax.set_ylabel("student accuracy (%)")
    handles = [
        Line2D([], [], color=ctx.colors[m], marker="o", linestyle="", label=m)
        for m in ctx.methods
        if m in set(points["method"])
    ]
    handles += [
        Line2D([], [], color="#555555", marker=task_marker[t], linestyle="", label=t)
        for t in ctx.tasks
        if t in set(points["task"])
    ]
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), title="method / task")
    caption = (
        f"Each point is one KD configuration on one task (mean over seeds; colour = method, marker = "
        f"task), pooled over tasks, so differences in task difficulty also shape the cloud; ρ is the "
        f"rank correlation of accuracy with {name} (the hypothesis table tests the gain over SFT "
        f"instead)."
    )
    return finish(result, fig, caption)


def fig_agreement(ctx: ReportContext) -> FigureResult:
    return _fig_scatter(ctx, "agreement", "agreement", "teacher–student answer agreement", 100, "% of examples")


def fig_bleu(ctx: ReportContext) -> FigureResult:
    return _fig_scatter(ctx, "bleu", "bleu", "BLEU of student vs teacher rationales", 1, "sacreBLEU, 0–100")


FIGURES = (fig_gain_vs_size, fig_temperature, fig_noise, fig_base_teacher, fig_methods, fig_agreement, fig_bleu)


def make_figures(frame: pd.DataFrame) -> list[FigureResult]:
    """Every report figure (or its "not in this study" note), in report order."""
    ctx = ReportContext(frame)
    with rc_context(STYLE):
        return [build(ctx) for build in FIGURES]


def fig_validation(selection: pd.DataFrame) -> FigureResult:
    """Validation accuracy of every candidate against the tuned setting, one panel per student, the choice ringed."""
    result = FigureResult("validation", "Settings selected on validation")
    if selection is None or selection.empty:
        result.note = "not in this study: no tuning section (every run used the spec's settings)"
        return result
    numeric = [
        c
        for c in selection.columns
        if c.startswith("setting:") and c != "setting:kd.temperature" and pd.api.types.is_numeric_dtype(selection[c])
    ]
    x_col = numeric[0] if numeric else ("setting:kd.temperature" if "setting:kd.temperature" in selection else None)
    if x_col is None:
        result.note = "not in this study: no numeric tuned setting to plot"
        return result
    students = list(dict.fromkeys(selection["student"]))
    caption = (
        f"Each line is one run's candidates for one seed, scored on the validation split (n = "
        f"{int(selection['n'].max())}, disjoint from training and test); the ringed point of each is the "
        "setting carried to the test set. Line styles: the other tuned settings (e.g. temperatures)."
    )
    with rc_context(STYLE):
        fig, axes = new_figure(len(students), ncols=min(3, len(students)), width=5.0, height=3.6)
        labels = list(dict.fromkeys(selection.apply(candidate_label, axis=1)))
        colors = {label: ([SFT_COLOR] + PALETTE)[i % (len(PALETTE) + 1)] for i, label in enumerate(labels)}
        for ax, student in zip(axes, students):
            rows = selection[selection["student"] == student].assign(label=lambda f: f.apply(candidate_label, axis=1))
            other = [c for c in rows.columns if c.startswith("setting:") and c != x_col]
            for label, runs in rows.groupby("label", sort=False):
                for style, (keys, line) in zip(
                    LINE_STYLES, runs.groupby(other, dropna=False, sort=False) if other else [((), runs)]
                ):
                    keys = keys if isinstance(keys, tuple) else (keys,)
                    extra = " ".join(
                        f"{c.split(':', 1)[1].split('.')[-1]}={v:g}" for c, v in zip(other, keys) if v == v
                    )
                    for i, (_, seed_line) in enumerate(line.groupby("seed", sort=True)):  # one line per seed
                        curve = seed_line.set_index(x_col)["val_accuracy"].sort_index()
                        ax.plot(
                            curve.index,
                            curve.to_numpy() * 100,
                            marker="o",
                            color=colors[label],
                            linestyle=style,
                            alpha=0.85,
                            label=f"{label} {extra}".strip() if i == 0 else None,
                        )
            chosen = rows[rows["selected"]]
            ax.scatter(
                chosen[x_col],
                chosen["val_accuracy"] * 100,
                s=160,
                facecolors="none",
                edgecolors="black",
                linewidths=1.5,
                zorder=5,
                label="selected",
            )
            if x_col != "setting:kd.temperature" and (rows[x_col] > 0).all():
                ax.set_xscale("log")
            ax.set_title(student)
            ax.set_xlabel(x_col.split(":", 1)[1])
            ax.set_ylabel("validation accuracy (%)")
        return finish(result, fig, caption, handles=axes_handles(axes), legend_title="run")


def _front(points: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Pareto points sorted by agreement (x), as a staircase-free polyline."""
    front = points[points["pareto"]].sort_values("agreement")
    return front["agreement"].to_numpy(float) * 100, front["accuracy"].to_numpy(float) * 100


def plane_figure(plane: pd.DataFrame, teacher_accuracy: dict[str, float], style: dict | None = None) -> bytes | None:
    """PNG of the accuracy–agreement plane, one panel per task; None when no run has an agreement value."""
    with rc_context(style or {}):
        return _draw_plane(plane, teacher_accuracy).png


def fidelity_plane_figure(frame: pd.DataFrame, plane: pd.DataFrame) -> FigureResult:
    """The accuracy–agreement plane as a report figure, each task's fine-tuned teacher marked."""
    teachers = frame[(frame["role"] == "teacher")].drop_duplicates("task")
    with rc_context(STYLE):
        return _draw_plane(plane, dict(zip(teachers["task"], teachers["accuracy"])))


def _draw_plane(plane: pd.DataFrame, teacher_accuracy: dict[str, float]) -> FigureResult:
    result = FigureResult("fidelity_plane", PLANE_TITLE, PLANE_CAPTION)
    if plane.empty:
        return result
    tasks = list(dict.fromkeys(plane["task"]))
    methods = list(dict.fromkeys(plane.loc[plane["role"] == "student-kd", "method"]))
    colors = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(methods)}
    colors["sft"] = SFT_COLOR
    seeds = sorted(plane["seed"].dropna().unique().tolist())
    fig = Figure(figsize=(max(8.0, 5.2 * len(tasks)) + 2.2, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(tasks), squeeze=False).ravel()
    for ax, task in zip(axes, tasks):
        part = plane[plane["task"] == task]
        for record in part.to_dict("records"):
            method = "sft" if record["role"] == "student-sft" else record["method"]
            x, y = record["agreement"] * 100, record["accuracy"] * 100
            ax.errorbar(
                x,
                y,
                xerr=[[x - record["agree_low"] * 100], [record["agree_high"] * 100 - x]],
                yerr=[[y - record["acc_low"] * 100], [record["acc_high"] * 100 - y]],
                fmt="none",
                ecolor=colors[method],
                alpha=0.45,
                elinewidth=1,
            )
            ax.scatter(
                x,
                y,
                color=colors[method],
                marker=SEED_MARKERS[seeds.index(record["seed"]) % len(SEED_MARKERS)],
                s=70 if record["pareto"] else 45,
                edgecolor="black" if record["pareto"] else "white",
                linewidth=0.8,
                zorder=3,
            )
        for _seed, seed_part in part.groupby("seed"):
            xs, ys = _front(seed_part)
            if len(xs) > 1:
                ax.plot(xs, ys, linestyle="--", color="#555555", linewidth=1, zorder=2)
        if task in teacher_accuracy:
            ax.scatter(100, teacher_accuracy[task] * 100, marker="*", s=160, color=TEACHER_COLOR, zorder=4)
            ax.annotate(
                "teacher",
                (100, teacher_accuracy[task] * 100),
                textcoords="offset points",
                xytext=(-8, 6),
                ha="right",
                fontsize=9,
            )
        ax.set_title(task)
        ax.set_xlabel("agreement with the teacher (% of test examples)")
        ax.set_ylabel("accuracy (%)")
    handles = [
        ax.scatter([], [], color=colors[m], marker="o", label="SFT" if m == "sft" else m) for m in ["sft", *methods]
    ]
    handles += [
        ax.scatter([], [], color="#777777", marker=SEED_MARKERS[i % len(SEED_MARKERS)], label=f"seed {s}")
        for i, s in enumerate(seeds)
    ]
    return finish(
        result,
        fig,
        PLANE_CAPTION,
        handles={h.get_label(): h for h in handles},
        legend_title="run",
        ncols=1,
        loc="outside right center",
    )
