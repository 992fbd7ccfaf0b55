"""A study's outputs from its finished runs: the results table, then the statistics, then the report.

Used by ``kdlab study results|stats|report`` (:mod:`kdlab.study.commands`), the Python API (:mod:`kdlab.api`)
and the demo.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kdlab.errors import KdlabError
from kdlab.stats.results import collect_results, collect_selection
from kdlab.stats.study import compute_stats
from kdlab.study.plan import build_plan
from kdlab.study.report import write_report


def finished_results(spec, study_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(results table, selection table) of a study whose evaluations have finished; a clear error otherwise."""
    plan = build_plan(spec)
    frame = collect_results(plan, study_dir)
    if frame.empty:
        raise KdlabError(f"{study_dir}: no finished evaluations yet (see `kdlab study status {study_dir}`)")
    return frame, collect_selection(plan, study_dir)


def write_study_report(spec, study_dir: Path, out: Path | None = None) -> tuple[Path, Path]:
    """``kdlab study report``: the results and statistics tables (``study_dir/results``, ``study_dir/stats``), then
    the report (``out``, default ``study_dir/report``); returns the HTML and Markdown files."""
    frame, selection = finished_results(spec, study_dir)
    stats = compute_stats(study_dir, frame, study_dir / "stats", selection)
    return write_report(study_dir, frame, stats, Path(out or study_dir / "report"), title=f"kdlab study: {spec.name}")
