"""The fidelity part of a study report: the accuracy–agreement plane and the agreement tests against a reference.

Inputs are the tables of :mod:`kdlab.study.fidelity_stats`; outputs are plain values (a PNG and table rows) that
:mod:`kdlab.study.report` places in its HTML and Markdown.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
SFT_COLOR, TEACHER_COLOR = "#8c8c8c", "#222222"
SEED_MARKERS = ["o", "s", "^", "D", "v"]

PLANE_TITLE = "Accuracy vs agreement with the teacher"
PLANE_CAPTION = ("One point per student run (colour = method, marker = seed), with 95% Wilson intervals on both axes "
                 "(n test examples each). Agreement = share of test examples where the student's extracted answer equals "
                 "the teacher's. The teacher sits at 100% agreement with itself. The dashed line joins each seed's "
                 "Pareto front: runs that no other run of that seed beats on both axes.")


def _front(points: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Pareto points sorted by agreement (x), as a staircase-free polyline."""
    front = points[points["pareto"]].sort_values("agreement")
    return front["agreement"].to_numpy(float) * 100, front["accuracy"].to_numpy(float) * 100


def plane_figure(plane: pd.DataFrame, teacher_accuracy: dict[str, float], style: dict | None = None) -> bytes | None:
    """PNG of the accuracy–agreement plane, one panel per task; None when no run has an agreement value."""
    from matplotlib import rc_context

    if plane.empty:
        return None
    tasks = list(dict.fromkeys(plane["task"]))
    methods = list(dict.fromkeys(plane.loc[plane["role"] == "student-kd", "method"]))
    colors = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(methods)}
    colors["sft"] = SFT_COLOR
    seeds = sorted(plane["seed"].dropna().unique().tolist())
    with rc_context(style or {}):
        fig = Figure(figsize=(max(8.0, 5.2 * len(tasks)) + 2.2, 4.8), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, len(tasks), squeeze=False).ravel()
        for ax, task in zip(axes, tasks):
            part = plane[plane["task"] == task]
            for record in part.to_dict("records"):
                method = "sft" if record["role"] == "student-sft" else record["method"]
                x, y = record["agreement"] * 100, record["accuracy"] * 100
                ax.errorbar(x, y, xerr=[[x - record["agree_low"] * 100], [record["agree_high"] * 100 - x]],
                            yerr=[[y - record["acc_low"] * 100], [record["acc_high"] * 100 - y]], fmt="none",
                            ecolor=colors[method], alpha=0.45, elinewidth=1)
                ax.scatter(x, y, color=colors[method], marker=SEED_MARKERS[seeds.index(record["seed"]) % len(SEED_MARKERS)],
                           s=70 if record["pareto"] else 45, edgecolor="black" if record["pareto"] else "white",
                           linewidth=0.8, zorder=3)
            for seed, seed_part in part.groupby("seed"):
                xs, ys = _front(seed_part)
                if len(xs) > 1:
                    ax.plot(xs, ys, linestyle="--", color="#555555", linewidth=1, zorder=2)
            if task in teacher_accuracy:
                ax.scatter(100, teacher_accuracy[task] * 100, marker="*", s=160, color=TEACHER_COLOR, zorder=4)
                ax.annotate("teacher", (100, teacher_accuracy[task] * 100), textcoords="offset points", xytext=(-8, 6),
                            ha="right", fontsize=9)
            ax.set_title(task)
            ax.set_xlabel("agreement with the teacher (% of test examples)")
            ax.set_ylabel("accuracy (%)")
        handles = [ax.scatter([], [], color=colors[m], marker="o", label="SFT" if m == "sft" else m)
                   for m in ["sft", *methods]]
        handles += [ax.scatter([], [], color="#777777", marker=SEED_MARKERS[i % len(SEED_MARKERS)], label=f"seed {s}")
                    for i, s in enumerate(seeds)]
        fig.legend(handles=handles, loc="outside right center", title="run")
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110, facecolor="white")
    return buffer.getvalue()


def _pct(value: float) -> str:
    return f"{100 * value:.0f}%"


def _pp(value: float, low: float, high: float) -> str:
    return f"{100 * value:+.0f} pp [{100 * low:+.0f}, {100 * high:+.0f}]"


def _p(value: float) -> str:
    return "—" if value != value else (f"{value:.2g}" if value >= 1e-3 else f"{value:.1e}")


AGREEMENT_HEADER = ["method", "vs", "seed", "task", "n", "agreement", "Δ agreement [95% CI]", "McNemar p (Holm)",
                    "accuracy", "Δ accuracy [95% CI]", "McNemar p (Holm)", "verdict"]
AGREEMENT_TITLE = "Agreement with the teacher: each method against the reference, on the same examples"
AGREEMENT_NOTE = ("Paired per example: Δ agreement = the method's agreement minus the reference run's (same student, "
                  "seed and test examples), percentile bootstrap 95% interval; exact McNemar test on the examples where "
                  "exactly one of the two agrees with the teacher; Holm over all comparisons of each column. The same "
                  "for accuracy. The verdict reads both at alpha = 0.05 after Holm.")


def agreement_rows(tests: pd.DataFrame) -> list[list[str]]:
    """Rows of the agreement table (:data:`AGREEMENT_HEADER`)."""
    rows = []
    for r in tests.to_dict("records"):
        rows.append([str(r["method"]), "SFT" if r["reference"] == "sft" else str(r["reference"]), str(r["seed"]), str(r["task"]),
                     str(r["n"]), f"{_pct(r['agreement'])} vs {_pct(r['reference_agreement'])}",
                     _pp(r["agree_diff"], r["agree_ci_low"], r["agree_ci_high"]),
                     f"{_p(r['agree_pvalue'])} ({_p(r['agree_pvalue_holm'])})",
                     f"{_pct(r['accuracy'])} vs {_pct(r['reference_accuracy'])}",
                     _pp(r["acc_diff"], r["acc_ci_low"], r["acc_ci_high"]),
                     f"{_p(r['acc_pvalue'])} ({_p(r['acc_pvalue_holm'])})", str(r["verdict"])])
    return rows
