"""The fidelity figures of a study report: how closely the students follow the teacher.

:func:`fig_agreement` and :func:`fig_bleu` scatter each KD configuration's accuracy against its answer agreement with
the teacher / the BLEU of its rationales against the teacher's (one point per configuration × task, mean over seeds,
with the Spearman rank correlation); :func:`plane_figure` and :func:`fidelity_plane_figure` draw the accuracy–agreement
plane of :func:`kdlab.stats.fidelity.fidelity_tables` (one point per run, Wilson intervals, each seed's Pareto
front).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from kdlab.stats.formatting import isnan, p_value
from kdlab.stats.hypotheses import seed_means
from kdlab.stats.significance import spearman
from kdlab.study.report.canvas import (
    PALETTE,
    PLOT_MARKERS,
    SFT_COLOR,
    STYLE,
    TEACHER_COLOR,
    FigureResult,
    finish,
    new_figure,
)
from kdlab.study.report.context import ReportContext

SEED_MARKERS = PLOT_MARKERS[:5]
PLANE_TITLE = "Accuracy vs agreement with the teacher"
PLANE_CAPTION = (
    "One point per student run (colour = method, marker = seed), with 95% Wilson intervals on both axes "
    "(n test examples each). Agreement = share of test examples where the student's extracted answer equals "
    "the teacher's. The teacher sits at 100% agreement with itself. The dashed line joins each seed's "
    "Pareto front: runs that no other run of that seed beats on both axes."
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
    task_marker = {t: PLOT_MARKERS[i % len(PLOT_MARKERS)] for i, t in enumerate(ctx.tasks)}
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
    n, rho = len(points), spearman(x, y, name)
    if isnan(rho["statistic"]):
        stat = f"Spearman ρ undefined (n = {n} or constant values)"
    else:
        stat = f"Spearman ρ = {rho['statistic']:.2f}, p = {p_value(rho['pvalue'])}, n = {n}"
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


def _plane_panel(ax, part: pd.DataFrame, colors: dict, seeds: list, teacher: float | None) -> None:
    """One task's panel of the plane: each run with its Wilson intervals (a larger, black-edged point on the Pareto
    front), each seed's front as a dashed line, the teacher (``teacher``: its accuracy) at 100% agreement."""
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
    if teacher is not None:
        ax.scatter(100, teacher * 100, marker="*", s=160, color=TEACHER_COLOR, zorder=4)
        ax.annotate("teacher", (100, teacher * 100), textcoords="offset points", xytext=(-8, 6), ha="right", fontsize=9)
    ax.set_xlabel("agreement with the teacher (% of test examples)")
    ax.set_ylabel("accuracy (%)")


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
        _plane_panel(ax, plane[plane["task"] == task], colors, seeds, teacher_accuracy.get(task))
        ax.set_title(task)
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
