"""How a report figure is drawn and ended: palette, style, panels sized for the report, error bars, one legend for all
panels and the PNG (:func:`finish`)."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# Okabe-Ito: distinguishable with the common colour-vision deficiencies
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
SFT_COLOR = "#8c8c8c"
TEACHER_COLOR = "#222222"
# point markers of the figures (not the completion files of a study run, kdlab.study.kinds.KINDS[...].done_file)
PLOT_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
HATCHES = ["", "//", "..", "xx", "\\\\", "oo"]
LINE_STYLES = ["-", "--", ":", "-."]
STYLE = {
    "font.family": "DejaVu Sans",
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linestyle": "-",
    "axes.axisbelow": True,
    "figure.titlesize": 13,
    "figure.titleweight": "bold",
    "legend.frameon": False,
    "errorbar.capsize": 3,
    "lines.linewidth": 1.8,
    "lines.markersize": 6,
}
MAX_WIDTH = 11.5  # inches: the report's column at 110 dpi
MIN_WIDTH = 8.0  # inches: a one-panel figure still has room for its title and legend


@dataclass
class FigureResult:
    """One report figure: its PNG and caption, or the note saying why the study has no such figure."""

    key: str
    title: str
    caption: str = ""
    png: bytes | None = None
    note: str | None = None  # "not in this study: ..." when the figure is skipped


def new_figure(panels: int, ncols: int = 3, width: float = 4.3, height: float = 3.3):
    """A figure of ``panels`` panels on an Agg canvas, ``ncols`` per row, sized for the report's column; returns
    (figure, the visible axes)."""
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


def png_bytes(fig: Figure) -> bytes:
    """The figure as a PNG at 110 dpi on white."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, facecolor="white")
    return buffer.getvalue()


def yerr(mean: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Error bar lengths ``[2, n]`` below and above ``mean`` for an interval (0 where a bound is missing)."""
    lower = np.where(np.isfinite(low), mean - low, 0.0)
    upper = np.where(np.isfinite(high), high - mean, 0.0)
    return np.vstack([np.maximum(lower, 0), np.maximum(upper, 0)])


def percent_errorbar(ax, x, part, color: str, label: str) -> None:
    """Points at ``100 * part["mean"]`` with error bars to ``part["low"]`` and ``part["high"]`` (fractions), marker o."""
    mean = part["mean"].to_numpy() * 100
    high = part["high"].to_numpy() * 100
    ax.errorbar(x, mean, yerr=yerr(mean, part["low"].to_numpy() * 100, high), marker="o", color=color, label=label)


def axes_handles(axes) -> dict:
    """Every labelled artist of every panel, by label (first occurrence wins)."""
    handles = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    return handles


def finish(
    result: FigureResult,
    fig: Figure,
    caption: str,
    title: str | None = None,
    handles: dict | None = None,
    legend_title: str | None = None,
    ncols: int = 6,
    loc: str = "outside lower center",
) -> FigureResult:
    """End a figure: one legend for all panels (``handles``: label -> artist; none when empty), the figure's title,
    its PNG in ``result.png`` and the caption."""
    if handles:
        fig.legend(
            list(handles.values()), list(handles.keys()), title=legend_title, loc=loc, ncols=min(ncols, len(handles))
        )
    if title:
        fig.suptitle(title)
    result.png = png_bytes(fig)
    result.caption = caption
    return result


def interval_bars(ax, centers, width, values, color, label, hatch="", edge="white"):
    """Bars of (mean, low, high) shares drawn in percent, with their intervals."""
    means = np.array([v[0] for v in values]) * 100
    lows = np.array([v[1] for v in values]) * 100
    highs = np.array([v[2] for v in values]) * 100
    return ax.bar(
        centers,
        means,
        width,
        color=color,
        label=label,
        hatch=hatch,
        edgecolor=edge,
        linewidth=0.6,
        yerr=yerr(means, lows, highs),
        error_kw={"ecolor": "#333333", "elinewidth": 1, "capsize": 2},
    )
