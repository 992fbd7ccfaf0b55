"""The validation figure of a tuned study: each candidate setting's validation accuracy, the selected one ringed."""

from __future__ import annotations

import pandas as pd
from matplotlib import rc_context

from kdlab.study.report.canvas import (
    LINE_STYLES,
    PALETTE,
    SFT_COLOR,
    STYLE,
    FigureResult,
    axes_handles,
    finish,
    new_figure,
)
from kdlab.study.report.context import candidate_label


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
