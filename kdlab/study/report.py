"""A readable report of a kdlab study: one self-contained HTML file and a Markdown twin.

:func:`write_report` draws the figures with matplotlib (Agg canvas, no pyplot state), embeds them in the HTML as
base64 PNG (inline CSS, no scripts, no external requests) and saves them as ``figures/<name>.png`` beside the
Markdown file. A figure whose dimension the study lacks (one temperature, no noise ablation, ...) is replaced by a
one-line "not in this study" note. Numbers come from the results table and the tables of :mod:`kdlab.study.stats`;
the findings section only restates them (with their significance), it does not interpret beyond them.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from scipy import stats as sps

import kdlab
from kdlab.errors import KdlabError
from kdlab.io import atomic_write_bytes, atomic_write_text
from kdlab.study.fidelity_report import (AGREEMENT_HEADER, AGREEMENT_NOTE, AGREEMENT_TITLE, PLANE_CAPTION, PLANE_TITLE,
                                         agreement_rows, plane_figure)
from kdlab.significance import stars, t_interval
from kdlab.study.stats import (CONFIG, SEED_INPUT, check_table, main_grid, paired_tests, seed_means, seed_summary,
                               study_hypotheses)
from kdlab.study.stats_markdown import config_label

# Okabe-Ito: distinguishable with the common colour-vision deficiencies
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
SFT_COLOR = "#8c8c8c"
TEACHER_COLOR = "#222222"
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
HATCHES = ["", "//", "..", "xx", "\\\\", "oo"]
LINE_STYLES = ["-", "--", ":", "-."]
STYLE = {
    "font.family": "DejaVu Sans", "font.size": 10, "axes.titlesize": 11, "axes.titleweight": "bold",
    "axes.labelsize": 10, "legend.fontsize": 9, "xtick.labelsize": 9, "ytick.labelsize": 9,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
    "grid.linestyle": "-", "axes.axisbelow": True, "figure.titlesize": 13, "figure.titleweight": "bold",
    "legend.frameon": False, "errorbar.capsize": 3, "lines.linewidth": 1.8, "lines.markersize": 6,
}
MAX_WIDTH = 11.5  # inches: the report's column at 110 dpi
MIN_WIDTH = 8.0  # inches: a one-panel figure still has room for its title and legend
FIGURE_KEYS = ("gain_vs_size", "temperature", "noise", "base_teacher", "methods", "agreement", "bleu")
REPORT_INPUT = SEED_INPUT + ["run", "improvement", "sft_accuracy", "teacher_accuracy", "agreement", "bleu",
                             "ci_low", "ci_high"]


@dataclass
class FigureResult:
    key: str
    title: str
    caption: str = ""
    png: bytes | None = None
    note: str | None = None  # "not in this study: ..." when the figure is skipped


# ----------------------------------------------------------------------------------------------------------------
# helpers


def _isnan(value) -> bool:
    return value is None or (isinstance(value, (float, np.floating)) and math.isnan(value))


def _fmt_p(p) -> str:
    if _isnan(p):
        return "–"
    if p < 0.001:
        return f"{p:.1e}"
    return f"{p:.3f}" if p < 0.1 else f"{p:.2f}"


def _pp(value, sign: bool = True) -> str:
    if _isnan(value):
        return "–"
    return f"{100 * value:+.1f}" if sign else f"{100 * value:.1f}"


def _size_label(billions: float) -> str:
    """``0.113`` -> ``113M``, ``1.5`` -> ``1.5B``."""
    return f"{billions * 1000:.0f}M" if billions < 1 else f"{billions:.3g}B"


def _new_figure(panels: int, ncols: int = 3, width: float = 4.3, height: float = 3.3):
    ncols = max(1, min(ncols, panels))
    nrows = math.ceil(panels / ncols)
    width = min(width, MAX_WIDTH / ncols)  # the page shows about 11.5 in at 100%: never shrink text below that
    width = max(width, MIN_WIDTH / ncols)  # room for the title and the legend of a one-panel figure
    fig = Figure(figsize=(width * ncols, height * nrows + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[panels:]:
        ax.set_visible(False)
    return fig, list(axes[:panels])


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, facecolor="white")
    return buffer.getvalue()


def _over_seeds(rows: pd.DataFrame, keys: list[str], value: str) -> pd.DataFrame:
    """Average ``value`` per (keys, seed) over everything else, then mean and 95% t-interval over seeds."""
    per_seed = rows.groupby(keys + ["seed"], dropna=False, sort=False)[value].mean().reset_index()
    out = []
    for key, group in per_seed.groupby(keys, dropna=False, sort=False):
        mean, _, low, high, n = t_interval(group[value])
        out.append({**dict(zip(keys, key if isinstance(key, tuple) else (key,))), "mean": mean, "low": low,
                    "high": high, "n_seeds": n})
    return pd.DataFrame(out, columns=keys + ["mean", "low", "high", "n_seeds"])


def _acc_interval(rows: pd.DataFrame) -> tuple[float, float, float]:
    """Mean accuracy over seeds with a t-interval clipped to [0, 1]; a single run gets its Wilson interval."""
    if len(rows) == 1:
        row = rows.iloc[0]
        return float(row["accuracy"]), float(row["ci_low"]), float(row["ci_high"])
    mean, _, low, high, _ = t_interval(rows["accuracy"])
    return mean, max(low, 0.0) if low == low else low, min(high, 1.0) if high == high else high  # clipped to [0, 1]


def _yerr(mean: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    lower = np.where(np.isfinite(low), mean - low, 0.0)
    upper = np.where(np.isfinite(high), high - mean, 0.0)
    return np.vstack([np.maximum(lower, 0), np.maximum(upper, 0)])


def _ordered_students(frame: pd.DataFrame) -> list[str]:
    sizes = frame.groupby("student", sort=False)["student_size_b"].first()
    return sorted(sizes.index, key=lambda s: (sizes[s], s))


def _figure_legend(fig: Figure, axes, title: str | None = None) -> None:
    """One legend below the panels with every labelled artist of every panel (first occurrence wins)."""
    handles = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if handles:
        fig.legend(list(handles.values()), list(handles.keys()), title=title, loc="outside lower center",
                   ncols=min(6, len(handles)))


class _Context:
    """The checked table plus a fixed colour per method, shared by every figure."""

    def __init__(self, frame: pd.DataFrame):
        self.frame = frame
        self.kd = frame[frame["role"] == "student-kd"]
        self.main = main_grid(frame)
        self.sft = frame[frame["role"] == "student-sft"]
        self.methods = list(dict.fromkeys(self.kd["method"]))
        self.colors = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(self.methods)}
        self.tasks = list(dict.fromkeys(frame["task"]))
        self.students = _ordered_students(frame[frame["role"].isin(["student-sft", "student-kd"])])

    def sft_rows(self, student: str, task: str) -> pd.DataFrame:
        return self.sft[(self.sft["student"] == student) & (self.sft["task"] == task)]


# ----------------------------------------------------------------------------------------------------------------
# figures


def fig_gain_vs_size(ctx: _Context) -> FigureResult:
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
    fig, axes = _new_figure(len(domains), ncols=3)
    methods = [m for m in ctx.methods if m in set(main["method"])]
    spread = np.linspace(-0.04, 0.04, len(methods)) if len(methods) > 1 else [0.0]
    for ax, domain in zip(axes, domains):
        rows = main[main["domain"] == domain]
        agg = _over_seeds(rows, ["method", "student_size_b"], "improvement")
        for offset, method in zip(spread, methods):
            part = agg[agg["method"] == method].sort_values("student_size_b")
            if part.empty:
                continue
            x = part["student_size_b"].to_numpy() * 10 ** offset  # small shift on the log axis
            mean = part["mean"].to_numpy() * 100
            ax.errorbar(x, mean, yerr=_yerr(mean, part["low"].to_numpy() * 100, part["high"].to_numpy() * 100),
                        marker="o", color=ctx.colors[method], label=method)
        ax.axhline(0, color="black", linewidth=0.9, linestyle="--")
        ax.set_xscale("log")
        ax.set_xticks(sizes)
        ax.set_xticklabels([_size_label(s) for s in sizes])
        ax.minorticks_off()
        ax.set_xlabel("student size (parameters)")
        ax.set_ylabel("gain over SFT (percentage points)")
        ax.set_title(f"{domain} ({', '.join(dict.fromkeys(rows['task']))})")
    _figure_legend(fig, axes, "method")
    fig.suptitle("KD gain over SFT vs student size, per task family")
    result.png = _png(fig)
    result.caption = ("Each point is KD accuracy minus the same student's SFT accuracy, averaged over the family's "
                      "tasks and the method's temperatures, mean over seeds with a 95% t-interval (no bar with one "
                      "seed); points above the dashed zero line mean KD beat SFT.")
    return result


def fig_temperature(ctx: _Context) -> FigureResult:
    result = FigureResult("temperature", "Temperature sweep")
    main = ctx.main.dropna(subset=["improvement", "temperature"])
    counts = main.groupby("method")["temperature"].nunique()
    swept = [m for m in ctx.methods if counts.get(m, 0) >= 2]
    if not swept:
        temps = sorted(main["temperature"].unique())
        result.note = ("not in this study: no method was run at more than one temperature"
                       + (f" (T = {', '.join(f'{t:g}' for t in temps)})" if temps else ""))
        return result
    main = main[main["method"].isin(swept)]
    students = [s for s in ctx.students if s in set(main["student"])]
    fig, axes = _new_figure(len(students), ncols=3)
    temps = sorted(main["temperature"].unique())
    for ax, student in zip(axes, students):
        agg = _over_seeds(main[main["student"] == student], ["method", "temperature"], "improvement")
        jitter = 0.015 * (temps[-1] - temps[0])
        for i, method in enumerate(swept):
            part = agg[agg["method"] == method].sort_values("temperature")
            if part.empty:
                continue
            mean = part["mean"].to_numpy() * 100
            ax.errorbar(part["temperature"] + (i - (len(swept) - 1) / 2) * jitter, mean,
                        yerr=_yerr(mean, part["low"].to_numpy() * 100, part["high"].to_numpy() * 100),
                        marker="o", color=ctx.colors[method], label=method)
        ax.axhline(0, color="black", linewidth=0.9, linestyle="--")
        ax.set_xticks(temps)
        ax.set_xticklabels([f"{t:g}" for t in temps])
        ax.set_xlabel("distillation temperature τ")
        ax.set_ylabel("gain over SFT (percentage points)")
        ax.set_title(student)
    _figure_legend(fig, axes, "method")
    fig.suptitle("Temperature sweep: KD gain over SFT vs temperature, per student")
    result.png = _png(fig)
    result.caption = ("Each line is one KD method: its gain over SFT (mean over tasks, then over seeds, 95% "
                      "t-interval) at each distillation temperature; compare heights at the same τ to rank methods.")
    return result


def fig_noise(ctx: _Context) -> FigureResult:
    result = FigureResult("noise", "Teacher-noise ablation")
    noisy = ctx.kd[ctx.kd["noise"] > 0]
    if noisy.empty:
        result.note = "not in this study: no teacher-noise ablation (every KD run used noise 0)"
        return result
    keys = [k for k in CONFIG if k != "noise"]
    configs = noisy[keys].drop_duplicates()
    rows = ctx.kd.merge(configs, on=keys, how="inner")  # the noisy runs plus the same configuration at noise 0
    tasks = [t for t in ctx.tasks if t in set(rows["task"])]
    fig, axes = _new_figure(len(tasks), ncols=3)
    sigmas = sorted(rows["noise"].unique())
    handles = {}
    for ax, task in zip(axes, tasks):
        part = rows[rows["task"] == task]
        for i, (key, group) in enumerate(part.groupby(keys, dropna=False, sort=False)):
            config = dict(zip(keys, key))
            label = f"{config['student']} · {config_label(config)}"
            points = []
            for sigma, at in group.groupby("noise"):
                points.append((sigma, *_acc_interval(at)))
            points = np.array(sorted(points))
            mean = points[:, 1] * 100
            color = ctx.colors.get(config["method"], PALETTE[i % len(PALETTE)])
            handle = ax.errorbar(points[:, 0], mean, yerr=_yerr(mean, points[:, 2] * 100, points[:, 3] * 100),
                                 marker=MARKERS[i % len(MARKERS)], color=color, label=label)
            handles.setdefault(label, handle)
            sft = ctx.sft_rows(config["student"], task)
            if not sft.empty:
                value = sft.groupby("seed")["accuracy"].mean().mean() * 100
                line = ax.axhline(value, color=SFT_COLOR, linestyle=":", linewidth=1.5,
                                  label=f"SFT {config['student']}")
                handles.setdefault(f"SFT {config['student']}", line)
        ax.set_xticks(sigmas)
        ax.set_xticklabels([f"{s:g}" for s in sigmas])
        ax.set_xlabel("noise σ on teacher logits")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(task)
    fig.legend(list(handles.values()), list(handles.keys()), loc="outside lower center",
               ncols=min(3, len(handles)))
    fig.suptitle("Teacher-noise ablation: accuracy vs noise on the teacher's logits")
    result.png = _png(fig)
    result.caption = ("Each line follows one KD configuration as noise of standard deviation σ is added to the "
                      "teacher's logits (σ = 0: the clean run); the dotted grey line is the student's SFT accuracy; "
                      "bars are 95% t-intervals over seeds (Wilson for a single run).")
    return result


def _bars(ax, centers, width, values, color, label, hatch="", edge="white"):
    means = np.array([v[0] for v in values]) * 100
    lows = np.array([v[1] for v in values]) * 100
    highs = np.array([v[2] for v in values]) * 100
    return ax.bar(centers, means, width, color=color, label=label, hatch=hatch, edgecolor=edge, linewidth=0.6,
                  yerr=_yerr(means, lows, highs), error_kw={"ecolor": "#333333", "elinewidth": 1, "capsize": 2})


def fig_base_teacher(ctx: _Context) -> FigureResult:
    result = FigureResult("base_teacher", "Base vs fine-tuned teacher")
    base = ctx.kd[ctx.kd["teacher_kind"] == "base"]
    if base.empty:
        result.note = "not in this study: no KD run from a base (task-unaware) teacher"
        return result
    keys = ["teacher", "student", "domain", "method", "temperature", "noise"]
    tasks = [t for t in ctx.tasks if t in set(base["task"])]
    most = max(len(base.loc[base["task"] == t, keys].drop_duplicates()) for t in tasks)
    fig, axes = _new_figure(len(tasks), ncols=3, width=max(4.3, 1.2 + 1.3 * most))
    teachers = ctx.frame[ctx.frame["role"].isin(["teacher", "base-teacher"])]
    series = [("SFT", SFT_COLOR, ""), ("KD, fine-tuned teacher", PALETTE[0], ""),
              ("KD, base teacher", PALETTE[5], "//")]
    for ax, task in zip(axes, tasks):
        values = {name: [] for name, _, _ in series}
        labels = []
        configs = base.loc[base["task"] == task, keys].drop_duplicates().to_dict("records")
        for config in configs:
            labels.append(f"{config['student']}\n{config_label(config)}")
            match = np.ones(len(ctx.kd), dtype=bool)
            for k in keys:
                column = ctx.kd[k]
                match &= column.isna().to_numpy() if _isnan(config[k]) else (column == config[k]).to_numpy()
            same = ctx.kd[match & (ctx.kd["task"] == task).to_numpy()]
            for name, rows in (("SFT", ctx.sft_rows(config["student"], task)),
                               ("KD, fine-tuned teacher", same[same["teacher_kind"] == "finetuned"]),
                               ("KD, base teacher", same[same["teacher_kind"] == "base"])):
                values[name].append(_acc_interval(rows) if not rows.empty else (math.nan,) * 3)
        x = np.arange(len(configs))
        width = 0.8 / len(series)
        for i, (name, color, hatch) in enumerate(series):
            _bars(ax, x + (i - 1) * width, width, values[name], color, name, hatch)
        for kind, style, name in (("finetuned", "-", "fine-tuned teacher"), ("base", "--", "base teacher")):
            acc = teachers[(teachers["teacher_kind"] == kind) & (teachers["task"] == task)]["accuracy"]
            if len(acc):
                ax.axhline(acc.mean() * 100, color=TEACHER_COLOR, linestyle=style, linewidth=1.2, label=name)
        ax.set_xticks(x)
        ax.set_xticklabels(labels)
        ax.set_ylabel("accuracy (%)")
        ax.set_title(task)
    handles = [Patch(facecolor=c, hatch=h, edgecolor="white", label=n) for n, c, h in series]
    handles += [Line2D([], [], color=TEACHER_COLOR, linestyle="-", label="fine-tuned teacher"),
                Line2D([], [], color=TEACHER_COLOR, linestyle="--", label="base teacher")]
    fig.legend(handles=handles, loc="outside lower center", ncols=5)
    fig.suptitle("KD from the base (task-unaware) vs the fine-tuned teacher")
    result.png = _png(fig)
    result.caption = ("For each student and KD configuration, the bars compare the SFT baseline with KD from the "
                      "fine-tuned teacher and KD from the base (not fine-tuned) teacher; horizontal lines mark the "
                      "two teachers' own accuracy; bars are 95% t-intervals over seeds (Wilson for a single run).")
    return result


def fig_methods(ctx: _Context) -> FigureResult:
    result = FigureResult("methods", "KD methods compared")
    main = ctx.main
    if main.empty:
        result.note = "not in this study: no KD run from the fine-tuned teacher without noise"
        return result
    configs = main[["method", "temperature"]].drop_duplicates()
    configs["_m"] = configs["method"].map({m: i for i, m in enumerate(ctx.methods)})
    configs = configs.sort_values(["_m", "temperature"]).to_dict("records")
    temps_by_method = {m: sorted(t for t in main.loc[main["method"] == m, "temperature"].unique() if not _isnan(t))
                       for m in ctx.methods}
    tasks = [t for t in ctx.tasks if t in set(main["task"])]
    students = [s for s in ctx.students if s in set(main["student"])]
    bars = len(configs) + 1
    panel = max(5.5, 0.9 + 0.32 * bars * len(students))
    fig, axes = _new_figure(len(tasks), ncols=2 if panel <= MAX_WIDTH / 2 else 1, width=panel, height=3.6)
    teachers = ctx.frame[ctx.frame["role"] == "teacher"]
    width = 0.85 / bars
    handles = {}
    for ax, task in zip(axes, tasks):
        x = np.arange(len(students))
        sft = [(_acc_interval(ctx.sft_rows(s, task)) if not ctx.sft_rows(s, task).empty else (math.nan,) * 3)
               for s in students]
        handles.setdefault("SFT", _bars(ax, x - 0.425 + width / 2, width, sft, SFT_COLOR, "SFT"))
        for j, config in enumerate(configs, start=1):
            temps = temps_by_method.get(config["method"], [])
            hatch = HATCHES[temps.index(config["temperature"]) % len(HATCHES)] if config["temperature"] in temps else ""
            values = []
            for student in students:
                rows = main[(main["student"] == student) & (main["task"] == task) & (main["method"] == config["method"])
                            & ((main["temperature"] == config["temperature"]) if not _isnan(config["temperature"])
                               else main["temperature"].isna())]
                values.append(_acc_interval(rows) if not rows.empty else (math.nan,) * 3)
            label = config_label(config)
            handles.setdefault(label, _bars(ax, x - 0.425 + width * (j + 0.5), width, values,
                                            ctx.colors[config["method"]], label, hatch))
        styles = ["--", "-.", ":"]
        for i, (teacher, rows) in enumerate(teachers[teachers["task"] == task].groupby("teacher", sort=False)):
            value = rows["accuracy"].mean() * 100
            line = ax.axhline(value, color=TEACHER_COLOR, linestyle=styles[i % 3], linewidth=1.2)
            handles.setdefault(f"teacher {teacher}", line)
        ax.set_xticks(x)
        ax.set_xticklabels(students)
        ax.set_ylabel("accuracy (%)")
        ax.set_title(task)
    fig.legend(list(handles.values()), list(handles.keys()), loc="outside lower center", ncols=min(6, len(handles)))
    fig.suptitle("KD methods compared with SFT, per task (fine-tuned teacher, no noise)")
    result.png = _png(fig)
    result.caption = ("Bars give each student's accuracy after SFT (grey) and after each KD method and temperature "
                      "(colour = method, hatching = temperature), mean over seeds with 95% t-intervals (Wilson for a "
                      "single run); the dashed line is the fine-tuned teacher's accuracy.")
    return result


def _fig_scatter(ctx: _Context, column: str, key: str, name: str, scale: float, unit: str) -> FigureResult:
    result = FigureResult(key, f"Accuracy vs {name}")
    points = seed_means(ctx.main) if not ctx.main.empty else pd.DataFrame()
    if points.empty or column not in points or points[column].notna().sum() == 0:
        result.note = f"not in this study: {name} was not computed for any KD run"
        return result
    points = points.dropna(subset=[column, "accuracy"])
    fig, axes = _new_figure(1, ncols=1, width=6.6, height=4.4)
    ax = axes[0]
    task_marker = {t: MARKERS[i % len(MARKERS)] for i, t in enumerate(ctx.tasks)}
    for (method, task), part in points.groupby(["method", "task"], sort=False):
        ax.scatter(part[column] * scale, part["accuracy"] * 100, color=ctx.colors[method],
                   marker=task_marker[task], s=42, alpha=0.85, edgecolor="white", linewidth=0.5)
    x, y = points[column].to_numpy(float), points["accuracy"].to_numpy(float)
    n = len(points)
    if n >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
        res = sps.spearmanr(x, y)
        stat = f"Spearman ρ = {res.statistic:.2f}, p = {_fmt_p(res.pvalue)}, n = {n}"
    else:
        stat = f"Spearman ρ undefined (n = {n} or constant values)"
    ax.set_title(f"Accuracy vs {name}\n{stat}", fontsize=11)
    ax.set_xlabel(f"{name} ({unit})")
    ax.set_ylabel("student accuracy (%)")
    handles = [Line2D([], [], color=ctx.colors[m], marker="o", linestyle="", label=m)
               for m in ctx.methods if m in set(points["method"])]
    handles += [Line2D([], [], color="#555555", marker=task_marker[t], linestyle="", label=t)
                for t in ctx.tasks if t in set(points["task"])]
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), title="method / task")
    result.png = _png(fig)
    result.caption = (f"Each point is one KD configuration on one task (mean over seeds; colour = method, marker = "
                      f"task), pooled over tasks, so differences in task difficulty also shape the cloud; ρ is the "
                      f"rank correlation of accuracy with {name} (the hypothesis table tests the gain over SFT "
                      f"instead).")
    return result


def fig_agreement(ctx: _Context) -> FigureResult:
    return _fig_scatter(ctx, "agreement", "agreement", "teacher–student answer agreement", 100, "% of examples")


def fig_bleu(ctx: _Context) -> FigureResult:
    return _fig_scatter(ctx, "bleu", "bleu", "BLEU of student vs teacher rationales", 1, "sacreBLEU, 0–100")


FIGURES = (fig_gain_vs_size, fig_temperature, fig_noise, fig_base_teacher, fig_methods, fig_agreement, fig_bleu)


def make_figures(frame: pd.DataFrame) -> list[FigureResult]:
    """Every report figure (or its "not in this study" note), in report order."""
    ctx = _Context(frame)
    with rc_context(STYLE):
        return [build(ctx) for build in FIGURES]


def _candidate_label(row) -> str:
    """The run a candidate set belongs to: ``SFT``, ``fkl``, ``fkl noise=2``, ``fkl (base teacher)``."""
    label = "SFT" if row["role"] == "student-sft" else str(row["method"])
    if row.get("noise"):
        label += f" noise={row['noise']:g}"
    if row.get("teacher_kind") == "base":
        label += " (base teacher)"
    return label


def fig_validation(selection: pd.DataFrame) -> FigureResult:
    """Validation accuracy of every candidate against the tuned setting, one panel per student, the choice ringed."""
    result = FigureResult("validation", "Settings selected on validation")
    if selection is None or selection.empty:
        result.note = "not in this study: no tuning section (every run used the spec's settings)"
        return result
    numeric = [c for c in selection.columns if c.startswith("setting:") and c != "setting:kd.temperature"
               and pd.api.types.is_numeric_dtype(selection[c])]
    x_col = numeric[0] if numeric else ("setting:kd.temperature" if "setting:kd.temperature" in selection else None)
    if x_col is None:
        result.note = "not in this study: no numeric tuned setting to plot"
        return result
    students = list(dict.fromkeys(selection["student"]))
    with rc_context(STYLE):
        fig, axes = _new_figure(len(students), ncols=min(3, len(students)), width=5.0, height=3.6)
        labels = list(dict.fromkeys(selection.apply(_candidate_label, axis=1)))
        colors = {label: ([SFT_COLOR] + PALETTE)[i % (len(PALETTE) + 1)] for i, label in enumerate(labels)}
        for ax, student in zip(axes, students):
            rows = selection[selection["student"] == student].assign(label=lambda f: f.apply(_candidate_label, axis=1))
            other = [c for c in rows.columns if c.startswith("setting:") and c != x_col]
            for label, runs in rows.groupby("label", sort=False):
                for style, (keys, line) in zip(LINE_STYLES, runs.groupby(other, dropna=False, sort=False) if other
                                               else [((), runs)]):
                    keys = keys if isinstance(keys, tuple) else (keys,)
                    extra = " ".join(f"{c.split(':', 1)[1].split('.')[-1]}={v:g}" for c, v in zip(other, keys) if v == v)
                    for i, (_, seed_line) in enumerate(line.groupby("seed", sort=True)):  # one line per seed
                        curve = seed_line.set_index(x_col)["val_accuracy"].sort_index()
                        ax.plot(curve.index, curve.to_numpy() * 100, marker="o", color=colors[label], linestyle=style,
                                alpha=0.85, label=f"{label} {extra}".strip() if i == 0 else None)
            chosen = rows[rows["selected"]]
            ax.scatter(chosen[x_col], chosen["val_accuracy"] * 100, s=160, facecolors="none", edgecolors="black",
                       linewidths=1.5, zorder=5, label="selected")
            if x_col != "setting:kd.temperature" and (rows[x_col] > 0).all():
                ax.set_xscale("log")
            ax.set_title(student)
            ax.set_xlabel(x_col.split(":", 1)[1])
            ax.set_ylabel("validation accuracy (%)")
        _figure_legend(fig, axes, title="run")
        result.png = _png(fig)
    n = int(selection["n"].max())
    result.caption = (f"Each line is one run's candidates for one seed, scored on the validation split (n = {n}, "
                      "disjoint from training and test); the ringed point of each is the setting carried to the test "
                      "set. Line styles: the other tuned settings (e.g. temperatures).")
    return result


def paper_view_table(paper: pd.DataFrame) -> Table:
    """The paper's max-over-test-temperatures view, labelled as optimistic."""
    rows = [[str(r["student"]), str(r["method"]), str(r["seed"]), str(r["task"]), r["temperatures"],
             f"{r['best_temperature']:g}", _pp(r["accuracy"], False), _pp(r["improvement"])] for _, r in paper.iterrows()]
    return Table(["student", "method", "seed", "task", "temperatures", "best on test", "accuracy", "gain vs SFT"], rows,
                 "llllllrr", "Paper-compatible view: best temperature on the test set",
                 "The paper took the maximum over temperatures on test scores. That selection is optimistic (it reads the "
                 "test set); kdlab's fair rule is `tuning: {temperature: validation}`. Shown for comparison only.")


def selection_table(selection: pd.DataFrame) -> Table:
    """One row per selection: the chosen settings and every candidate's validation accuracy."""
    rows = []
    for _, group in selection.groupby("select", sort=False):
        first, chosen = group.iloc[0], group[group["selected"]].iloc[0]
        scores = ", ".join(f"{r['settings']}: {_pp(r['val_accuracy'], False)}" for _, r in group.iterrows())
        rows.append([str(first["student"]), _candidate_label(first), str(first["seed"]), str(chosen["settings"]),
                     f"{_pp(chosen['val_accuracy'], False)} (n = {int(chosen['n'])})", scores])
    return Table(["student", "run", "seed", "selected", "validation accuracy", "all candidates (validation %)"], rows,
                 "llllrl", "Settings selected on validation",
                 "Every run was trained once per candidate; the best by validation accuracy (ties: the first listed) was "
                 "the only one evaluated on the test set. All runs had the same candidates, so the same budget.")


def data_fit_table(study_dir: Path):
    """The training runs that dropped or cut examples to fit ``train.max_length`` (None when none did)."""
    from kdlab.study.results import collect_data_fit

    fit = collect_data_fit(study_dir)
    if fit.empty:
        return None
    rows = [[str(r["run"]), f"{r['examples']} of {r['examples_in_data']}", str(r["dropped_long"]), str(r["cut_responses"]),
             str(r["max_length"]), str(r["on_long"])] for _, r in fit.iterrows()]
    return Table(["run", "examples trained", "dropped", "responses cut", "max_length", "on_long"], rows, "lrrrrl",
                 "Training examples that did not fit max_length",
                 "A cut response loses its end (the final answer and EOS); raise train.max_length or set train.on_long.")


# ----------------------------------------------------------------------------------------------------------------
# tables and findings (each as a list of rows of cell text, rendered to HTML and Markdown)


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    align: str = ""  # one of "l" / "r" per column
    title: str = ""
    note: str = ""


def overview_table(ctx: _Context, seeds: pd.DataFrame) -> Table:
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
    firsts = sorted(groups, key=lambda kv: (kv[1]["_r"].iloc[0] > 1, kv[1]["_s"].iloc[0], kv[1]["_r"].iloc[0],
                                             kv[1]["_ablation"].iloc[0], kv[1]["_m"].iloc[0],
                                             kv[1]["temperature"].fillna(-1).iloc[0], kv[1]["noise"].iloc[0]))
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
            low, high = ((r["accuracy_ci_low"], r["accuracy_ci_high"]) if r["n_seeds"] >= 2
                         else (r["wilson_low"], r["wilson_high"]))
            ci = f" [{_pp(low, False)}, {_pp(high, False)}]" if not _isnan(low) else ""
            cells.append(f"{_pp(r['accuracy_mean'], False)}{ci}")
        rows.append(cells)
    return Table(["model", "run", "seeds"] + tasks, rows, "lll" + "r" * len(tasks), "Results overview",
                 "Accuracy in % with a 95% interval: Student-t over seeds when a configuration has several seeds, "
                 "else the run's Wilson interval. Ablation rows (noisy or base teacher) are marked.")


EFFECT_NAMES = {"cohen_d": "d", "eta_squared": "η²", "spearman_rho": "ρ"}


def hypothesis_tables(hyp: pd.DataFrame) -> tuple[Table, Table]:
    def rows_of(part: pd.DataFrame) -> list[list[str]]:
        rows = []
        for r in part.itertuples(index=False):
            name = EFFECT_NAMES.get(r.effect_name, r.effect_name)
            effect = "" if _isnan(r.effect_size) else f"{name} = {r.effect_size:.2f}"
            mark = stars(r.pvalue_holm)
            statistic = "–" if _isnan(r.statistic) else f"{r.statistic:.3g}"
            rows.append([r.hypothesis, str(r.group), str(r.task), statistic,
                         _fmt_p(r.pvalue), _fmt_p(r.pvalue_holm) + (f" {mark}" if mark else ""), str(r.n), effect,
                         "" if _isnan(r.mean) else f"{100 * r.mean:+.1f}", r.note])
        return rows

    header = ["hypothesis", "group", "task", "statistic", "p", "p (Holm)", "n", "effect size", "mean gain pp", "note"]
    pooled = hyp[hyp["task"] == "all"]
    summary = Table(header, rows_of(pooled), "lllrrrrrrl", "Hypothesis tests, pooled over tasks",
                    "H1: one-sided t-test of gain > 0 (effect: Cohen's d); H1-anova: gain differs across methods "
                    "(η²); H2/H3/H3b/H4/H5: Spearman ρ of the gain with teacher accuracy / student size / "
                    "student SFT accuracy / agreement / BLEU. Main grid only (fine-tuned teacher, no noise), "
                    "seeds averaged per configuration × task. p (Holm): adjusted within each hypothesis × group "
                    "across tasks; "
                    "* p < 0.05, ** p < 0.01, *** p < 0.001 on that adjusted p.")
    per_task = Table(header, rows_of(hyp[hyp["task"] != "all"]), "lllrrrrrrl", "Hypothesis tests per task")
    return summary, per_task


def paired_tables(paired: pd.DataFrame) -> tuple[Table, Table]:
    ok = paired.dropna(subset=["pvalue"])
    rows = []
    keys = [k for k in CONFIG if k != "domain"]  # a configuration's runs on every domain in one row
    for _, group in ok.groupby(keys, dropna=False, sort=False):
        first = group.iloc[0].to_dict()
        better = int((group["diff"] > 0).sum())
        sig_better = int(((group["pvalue_holm"] < 0.05) & (group["diff"] > 0)).sum())
        sig_worse = int(((group["pvalue_holm"] < 0.05) & (group["diff"] < 0)).sum())
        rows.append([str(first["student"]), config_label(first), str(group["task"].nunique()),
                     str(group["seed"].nunique()), str(len(group)), f"{100 * group['diff'].mean():+.1f}",
                     str(better), str(sig_better), str(sig_worse)])
    summary = Table(["student", "configuration", "tasks", "seeds", "comparisons", "mean Δ pp", "KD ahead",
                     "KD better *", "KD worse *"], rows, "llrrrrrrr", "Paired tests: summary per configuration",
                    "One comparison = one KD run against its SFT twin (same student, seed) on one task's examples. "
                    "* = significant after Holm correction across the tasks of that configuration and seed "
                    "(exact McNemar, p < 0.05).")
    rows = []
    for r in paired.to_dict("records"):
        mark = stars(r["pvalue_holm"])
        ci = ("" if _isnan(r["diff"]) else
              f"{100 * r['diff']:+.1f} [{100 * r['ci_low']:+.1f}, {100 * r['ci_high']:+.1f}]")
        rows.append([str(r["student"]), config_label(r), f"{r['seed']:g}", str(r["task"]),
                     "" if _isnan(r["n"]) else f"{r['n']:.0f}", _pp(r["kd_accuracy"], False),
                     _pp(r["sft_accuracy"], False), ci, "" if _isnan(r["b"]) else f"{r['b']:.0f}",
                     "" if _isnan(r["c"]) else f"{r['c']:.0f}",
                     "" if _isnan(r["odds_ratio"]) else f"{r['odds_ratio']:.2f}", _fmt_p(r["pvalue"]),
                     _fmt_p(r["pvalue_holm"]) + (f" {mark}" if mark else ""), _fmt_p(r["pvalue_holm_all"]),
                     r["note"]])
    detail = Table(["student", "configuration", "seed", "task", "n", "KD %", "SFT %", "Δ pp [95% CI]", "b", "c",
                    "odds ratio", "p", "p (Holm)", "p (Holm, all)", "note"], rows, "llllrrrrrrrrrrl",
                   "Paired tests: every comparison",
                   "b = examples KD got right and SFT wrong, c = the reverse; Δ = KD − SFT accuracy with a 95% "
                   "paired bootstrap interval over examples; odds ratio b / c (0.5 added to both when either is "
                   "0); p = exact McNemar; p (Holm) adjusted across the tasks of one configuration and seed "
                   "(stars use it); "
                   "p (Holm, all) adjusted across every comparison in the table.")
    return summary, detail


def _hyp_row(hyp: pd.DataFrame, hypothesis: str, group: str = "all", task: str = "all"):
    rows = hyp[(hyp["hypothesis"] == hypothesis) & (hyp["group"] == group) & (hyp["task"] == task)]
    return None if rows.empty else rows.iloc[0]


def _significance(p) -> str:
    if _isnan(p):
        return "not testable"
    return "significant at 0.05" if p < 0.05 else "not significant at 0.05"


def findings(ctx: _Context, hyp: pd.DataFrame | None, paired: pd.DataFrame) -> list[str]:
    """Plain-language statements, each a restatement of numbers in the tables."""
    out = []
    main_keys = ctx.main[["run", "task"]].drop_duplicates()
    main_paired = paired.merge(main_keys, on=["run", "task"]) if len(paired) else paired
    main_paired = main_paired.dropna(subset=["pvalue"]) if len(main_paired) else main_paired
    if len(main_paired):
        ahead = int((main_paired["diff"] > 0).sum())
        ties = int((main_paired["diff"] == 0).sum())
        better = int(((main_paired["pvalue_holm"] < 0.05) & (main_paired["diff"] > 0)).sum())
        worse = int(((main_paired["pvalue_holm"] < 0.05) & (main_paired["diff"] < 0)).sum())
        out.append(f"KD was ahead of SFT in {ahead} of {len(main_paired)} paired comparisons of the main grid "
                   f"(KD run × task{', ' + str(ties) + ' ties' if ties else ''}); {better} significantly better and "
                   f"{worse} significantly worse after Holm correction within each configuration × seed (exact "
                   f"McNemar, p < 0.05).")
    if hyp is not None:
        h1 = _hyp_row(hyp, "H1")
        if h1 is not None and not _isnan(h1["mean"]):
            caveat = h1["note"] or "points sharing a student are not independent, so read p as descriptive"
            d = "" if _isnan(h1["effect_size"]) else f" (Cohen's d {h1['effect_size']:.2f})"
            out.append(f"Mean gain of KD over SFT across {h1['n']} configuration × task points: "
                       f"{100 * h1['mean']:+.1f} percentage points{d}; one-sided t-test of gain > 0: "
                       f"p = {_fmt_p(h1['pvalue'])}, {_significance(h1['pvalue'])} ({caveat}).")
        gains = []
        for method in ctx.methods:
            row = _hyp_row(hyp, "H1", method)
            if row is not None and not _isnan(row["mean"]):
                gains.append(f"{method} {100 * row['mean']:+.1f} pp")
        anova = _hyp_row(hyp, "H1-anova")
        if len(gains) >= 2 and anova is not None:
            test = (f"ANOVA across methods p = {_fmt_p(anova['pvalue'])}, η² = {anova['effect_size']:.2f} "
                    f"({_significance(anova['pvalue'])})" if not _isnan(anova["pvalue"])
                    else f"ANOVA across methods not testable ({anova['note']})")
            out.append(f"Mean gain by method: {', '.join(gains)}; {test}.")
        for hypothesis, what in (("H3", "student size"), ("H2", "teacher accuracy"), ("H4", "answer agreement"),
                                 ("H5", "BLEU fidelity")):
            row = _hyp_row(hyp, hypothesis)
            if row is None:
                continue
            if _isnan(row["statistic"]):
                out.append(f"Gain vs {what}: not testable ({row['note']}).")
                continue
            direction = ""
            if row["pvalue"] < 0.05:
                direction = (f": the gain {'rises' if row['statistic'] > 0 else 'falls'} with {what}")
            out.append(f"Gain vs {what}: Spearman ρ = {row['statistic']:.2f}, p = {_fmt_p(row['pvalue'])}, n = "
                       f"{row['n']} ({_significance(row['pvalue'])}){direction}.")
    for column, what, scale, unit in (("agreement", "Teacher–student answer agreement", 100, "%"),
                                      ("bleu", "BLEU of student vs teacher rationales", 1, "")):
        values = ctx.main[column].dropna()
        if len(values):
            sd = f" ± {values.std(ddof=1) * scale:.1f}{unit} (sd)" if len(values) > 1 else ""
            out.append(f"{what} (main-grid KD runs): mean {values.mean() * scale:.1f}{unit}{sd} over {len(values)} "
                       f"run × task values, range {values.min() * scale:.1f}–{values.max() * scale:.1f}{unit}.")
    temps = ctx.main.dropna(subset=["temperature", "improvement"])
    if temps["temperature"].nunique() >= 2:
        by_t = temps.groupby("temperature")["improvement"].mean()
        out.append("Mean gain by temperature (all methods, students, tasks, seeds): "
                   + ", ".join(f"τ={t:g} {100 * v:+.1f} pp" for t, v in by_t.items()) + " (descriptive).")
    base = ctx.kd[ctx.kd["teacher_kind"] == "base"]
    if len(base):
        keys = ["teacher", "student", "domain", "method", "temperature", "noise", "task", "seed"]
        ft = ctx.kd[ctx.kd["teacher_kind"] == "finetuned"]
        matched = base.merge(ft, on=keys, suffixes=("_base", "_ft"))
        if len(matched):
            diff = (matched["accuracy_base"] - matched["accuracy_ft"]) * 100
            out.append(f"KD from the base (task-unaware) teacher: mean accuracy "
                       f"{100 * matched['accuracy_base'].mean():.1f}% vs {100 * matched['accuracy_ft'].mean():.1f}% "
                       f"from the fine-tuned teacher on the same {len(matched)} configuration × task × seed runs "
                       f"(difference {diff.mean():+.1f} pp, range "
                       f"{diff.min():+.1f} to {diff.max():+.1f}).")
    noisy = ctx.kd[ctx.kd["noise"] > 0]
    if len(noisy):
        keys = [k for k in CONFIG if k != "noise"]
        rows = ctx.kd.merge(noisy[keys].drop_duplicates(), on=keys)
        by_sigma = rows.groupby("noise")["accuracy"].mean()
        out.append("Teacher-noise ablation, mean accuracy by σ: "
                   + ", ".join(f"σ={s:g} {100 * v:.1f}%" for s, v in by_sigma.items()) + ".")
    if not out:
        out.append("No KD run with a paired SFT run yet: nothing to summarise.")
    return out


def fidelity_plane_figure(frame: pd.DataFrame, plane: pd.DataFrame) -> FigureResult:
    """The accuracy–agreement plane (:func:`kdlab.study.fidelity_report.plane_figure`) as a report figure."""
    teachers = frame[(frame["role"] == "teacher")].drop_duplicates("task")
    png = plane_figure(plane, dict(zip(teachers["task"], teachers["accuracy"])), STYLE)
    return FigureResult("fidelity_plane", PLANE_TITLE, PLANE_CAPTION, png=png)


def agreement_findings(agreement: pd.DataFrame | None) -> list[str]:
    """One sentence per reference: how many KD runs raised agreement significantly without a significant accuracy loss."""
    if agreement is None or agreement.empty:
        return []
    facts = []
    for reference, part in agreement.groupby("reference", sort=False):
        raised = part[(part["agree_pvalue_holm"] < 0.05) & (part["agree_diff"] > 0)]
        safe = raised[~((raised["acc_pvalue_holm"] < 0.05) & (raised["acc_diff"] < 0))]
        name = "the SFT baseline" if reference == "sft" else reference
        which = ", ".join(f"{r['method']} (seed {r['seed']}, {r['task']}: {100 * r['agree_diff']:+.0f} pp)" for r in safe.to_dict("records"))
        facts.append(f"Agreement with the teacher vs {name}: {len(safe)} of {len(part)} KD runs raised it significantly "
                     f"(McNemar, Holm) without a significant accuracy loss" + (f": {which}." if which else "."))
    return facts


def error_bar_note(frame: pd.DataFrame) -> str:
    """How to read the error bars, with the t multiplier for the seed counts of this study."""
    runs = frame[frame["role"].isin(["student-sft", "student-kd"])]
    counts = sorted(runs.groupby(["role"] + CONFIG + ["task"], dropna=False)["seed"].nunique().unique())
    multipliers = [f"t = {sps.t.ppf(0.975, k - 1):.1f} for {k} seeds" for k in counts if k >= 2]
    text = ("Error bars are 95% intervals: Student-t over seeds (mean ± t·sd/√k for k seeds"
            + (f"; {', '.join(multipliers)}" if multipliers else "") + ")")
    if 1 in counts:
        text += ", or a single run's Wilson interval over its examples"
    text += "."
    if 2 in counts:
        text += " With 2 seeds the t-interval is wide by construction; more seeds narrow it quickly."
    return text


# ----------------------------------------------------------------------------------------------------------------
# rendering

CSS = """
:root { --ink: #1d2733; --muted: #5b6673; --rule: #d8dee6; --band: #f4f6f9; --accent: #0072B2; }
* { box-sizing: border-box; }
body { margin: 0; background: #fff; color: var(--ink);
       font: 15px/1.55 -apple-system, "Segoe UI", "DejaVu Sans", "Liberation Sans", Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 28px 32px 48px; }
h1 { font-size: 28px; margin: 0 0 4px; }
h2 { font-size: 21px; margin: 40px 0 10px; padding-bottom: 6px; border-bottom: 2px solid var(--rule); }
h3 { font-size: 17px; margin: 26px 0 8px; }
.subtitle { color: var(--muted); margin: 0 0 18px; }
nav { background: var(--band); border-radius: 8px; padding: 10px 16px; margin: 12px 0 8px; }
nav a { color: var(--accent); text-decoration: none; margin-right: 16px; white-space: nowrap; }
ul.findings li { margin: 6px 0; }
figure { margin: 18px 0 30px; }
figure img { display: block; max-width: 100%; height: auto; margin: 0 auto; border: 1px solid var(--rule);
             border-radius: 6px; }
figcaption { color: var(--muted); font-size: 14px; margin-top: 8px; max-width: 960px; }
figcaption b { color: var(--ink); }
p.note { background: #fff8e6; border-left: 4px solid #E69F00; padding: 8px 12px; border-radius: 4px; }
.table-wrap { overflow-x: auto; margin: 8px 0 6px; border: 1px solid var(--rule); border-radius: 6px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { padding: 5px 9px; border-bottom: 1px solid var(--rule); text-align: left; vertical-align: top;
         white-space: nowrap; }
th { background: var(--band); font-weight: 600; position: sticky; top: 0; white-space: nowrap; }
td.r, th.r { text-align: right; white-space: nowrap; }
tbody tr:nth-child(even) { background: #fafbfc; }
.tnote { color: var(--muted); font-size: 13px; margin: 4px 0 16px; }
details { margin: 10px 0 18px; }
summary { cursor: pointer; color: var(--accent); font-weight: 600; }
footer { margin-top: 48px; padding-top: 12px; border-top: 1px solid var(--rule); color: var(--muted);
         font-size: 13px; }
"""


def _html_table(table: Table) -> str:
    align = table.align or "l" * len(table.header)
    head = "".join(f'<th class="{"r" if a == "r" else "l"}">{html.escape(h)}</th>' for h, a in zip(table.header, align))
    body = []
    for row in table.rows:
        cells = "".join(f'<td class="{"r" if a == "r" else "l"}">{html.escape(str(c))}</td>'
                        for c, a in zip(row, align))
        body.append(f"<tr>{cells}</tr>")
    if not table.rows:
        body.append(f'<tr><td colspan="{len(table.header)}">(no rows)</td></tr>')
    return (f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody>'
            f"</table></div>" + (f'<p class="tnote">{html.escape(table.note)}</p>' if table.note else ""))


def _md_table(table: Table) -> str:
    align = table.align or "l" * len(table.header)
    lines = ["| " + " | ".join(table.header) + " |",
             "| " + " | ".join("---:" if a == "r" else "---" for a in align) + " |"]
    for row in table.rows:
        lines.append("| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |")
    if not table.rows:
        lines.append("| (no rows) |" + " |" * (len(table.header) - 1))
    if table.note:
        lines += ["", f"_{table.note}_"]
    return "\n".join(lines)


def write_report(study_dir: str | Path, frame: pd.DataFrame, stats: dict | None, out_dir: str | Path,
                 title: str = "Knowledge-distillation study") -> tuple[Path, Path]:
    """Write ``out_dir/report.html`` (self-contained) and ``out_dir/report.md`` with ``out_dir/figures/*.png``.

    ``stats`` holds the tables of :mod:`kdlab.study.stats` (``hypotheses``, ``paired``, ``seeds``); a missing one is
    computed here (the paired tests read the predictions under ``study_dir``). Returns (html path, markdown path).
    """
    frame = check_table(frame, REPORT_INPUT)
    stats = dict(stats or {})
    study_dir = Path(study_dir)
    out_dir = Path(out_dir)
    seeds = stats.get("seeds")
    if seeds is None:
        seeds = seed_summary(frame)
    paired = stats.get("paired")
    if paired is None:
        paired = paired_tests(frame, study_dir)
    hyp = stats.get("hypotheses")
    hyp_note = ""
    if hyp is None:
        try:
            hyp = study_hypotheses(frame)
        except KdlabError as exc:  # e.g. only ablation runs so far: report the rest
            hyp, hyp_note = None, str(exc)
    ctx = _Context(frame)
    selection = stats.get("selection")
    figures = make_figures(frame)
    extra_tables = []
    if selection is not None and not selection.empty:
        figures.insert(0, fig_validation(selection))
        extra_tables.append(selection_table(selection))
    paper = stats.get("paper_temperature")
    if paper is not None and not paper.empty:
        extra_tables.append(paper_view_table(paper))
    plane, agreement = stats.get("fidelity_plane"), stats.get("agreement")
    if plane is not None and not plane.empty:
        figures.insert(0, fidelity_plane_figure(frame, plane))
    if agreement is not None and not agreement.empty:
        extra_tables.append(Table(AGREEMENT_HEADER, agreement_rows(agreement), "l" * 4 + "r" * 7 + "l", AGREEMENT_TITLE,
                                  AGREEMENT_NOTE))
    fit = data_fit_table(study_dir)
    if fit is not None:
        extra_tables.append(fit)
    overview = overview_table(ctx, seeds)
    if hyp is not None:
        hyp_summary, hyp_detail = hypothesis_tables(hyp)
    paired_summary, paired_detail = paired_tables(paired)
    facts = findings(ctx, hyp, paired) + agreement_findings(agreement)

    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    roles = frame.groupby("role")["run"].nunique()
    role_text = ", ".join(f"{roles[r]} {r}" for r in ("teacher", "base-teacher", "student-sft", "student-kd")
                          if r in roles)
    footer = (f"Study: {study_dir.name or study_dir} · generated {now} by kdlab {kdlab.__version__} · "
              f"{frame['run'].nunique()} runs ({role_text}) · {len(frame)} run × task rows · "
              f"tasks: {', '.join(ctx.tasks)}")
    subtitle = (f"{len(ctx.students)} student(s), {len(ctx.methods)} KD method(s) "
                f"({', '.join(ctx.methods)}), {len(ctx.tasks)} task(s), "
                f"{int(frame['seed'].nunique())} seed(s)")

    bars_note = error_bar_note(frame)

    # ---- figures on disk (Markdown) ----
    fig_dir = out_dir / "figures"
    for figure in figures:
        path = fig_dir / f"{figure.key}.png"
        if figure.png is not None:
            atomic_write_bytes(path, figure.png)
        else:
            path.unlink(missing_ok=True)  # a stale figure from an earlier report

    sections = [("findings", "Findings"), ("overview", "Results overview"), ("figures", "Figures"),
                ("hypotheses", "Hypothesis tests"), ("paired", "Paired tests")]

    # ---- HTML ----
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
             f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body><main>",
             f"<h1>{html.escape(title)}</h1><p class=\"subtitle\">{html.escape(subtitle)}</p>",
             "<nav>" + "".join(f'<a href="#{k}">{html.escape(v)}</a>' for k, v in sections) + "</nav>",
             '<h2 id="findings">Findings</h2><ul class="findings">'
             + "".join(f"<li>{html.escape(f)}</li>" for f in facts) + "</ul>",
             f'<h2 id="overview">{html.escape(overview.title)}</h2>', _html_table(overview)]
    for table in extra_tables:
        parts += [f"<h2>{html.escape(table.title)}</h2>", _html_table(table)]
    parts += ['<h2 id="figures">Figures</h2>', f'<p class="tnote">{html.escape(bars_note)}</p>']
    for figure in figures:
        parts.append(f"<h3>{html.escape(figure.title)}</h3>")
        if figure.png is None:
            parts.append(f'<p class="note">{html.escape(figure.note or "")}</p>')
        else:
            data = base64.b64encode(figure.png).decode("ascii")
            parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(figure.title)}">'
                         f"<figcaption><b>{html.escape(figure.title)}.</b> {html.escape(figure.caption)}"
                         f"</figcaption></figure>")
    parts.append('<h2 id="hypotheses">Hypothesis tests (H1–H5)</h2>')
    if hyp is None:
        parts.append(f'<p class="note">{html.escape("not in this study: " + hyp_note)}</p>')
    else:
        parts.append(_html_table(hyp_summary))
        parts.append(f"<details><summary>{html.escape(hyp_detail.title)} ({len(hyp_detail.rows)} rows)</summary>"
                     f"{_html_table(hyp_detail)}</details>")
    parts.append('<h2 id="paired">Paired tests: KD vs SFT on the same examples</h2>')
    parts.append(_html_table(paired_summary))
    parts.append(f"<details><summary>{html.escape(paired_detail.title)} ({len(paired_detail.rows)} rows)</summary>"
                 f"{_html_table(paired_detail)}</details>")
    parts.append(f"<footer>{html.escape(footer)}</footer></main></body></html>\n")
    html_path = out_dir / "report.html"
    atomic_write_text(html_path, "\n".join(parts))

    # ---- Markdown ----
    md = [f"# {title}", "", f"_{subtitle}_", "", "## Findings", ""]
    md += [f"- {f}" for f in facts]
    md += ["", f"## {overview.title}", "", _md_table(overview), ""]
    for table in extra_tables:
        md += [f"## {table.title}", "", _md_table(table), ""]
    md += ["## Figures", "", f"_{bars_note}_", ""]
    for figure in figures:
        md += [f"### {figure.title}", ""]
        if figure.png is None:
            md += [f"> {figure.note}", ""]
        else:
            md += [f"![{figure.title}](figures/{figure.key}.png)", "", f"_{figure.caption}_", ""]
    md += ["## Hypothesis tests (H1–H5)", ""]
    if hyp is None:
        md += [f"> not in this study: {hyp_note}", ""]
    else:
        md += [f"### {hyp_summary.title}", "", _md_table(hyp_summary), "", f"### {hyp_detail.title}", "",
               _md_table(hyp_detail), ""]
    md += ["## Paired tests: KD vs SFT on the same examples", "", f"### {paired_summary.title}", "",
           _md_table(paired_summary), "", f"### {paired_detail.title}", "", _md_table(paired_detail), "", "---", "",
           footer, ""]
    md_path = out_dir / "report.md"
    atomic_write_text(md_path, "\n".join(md))
    return html_path, md_path
