"""A readable report of a kdlab study: one self-contained HTML file and a Markdown twin.

:mod:`~kdlab.study.report.figures` draws the figures (on :mod:`~kdlab.study.report.canvas`; the fidelity figures in
:mod:`~kdlab.study.report.fidelity_figures`, the validation figure of a tuned study in
:mod:`~kdlab.study.report.validation_figure`), :mod:`~kdlab.study.report.tables` builds the tables and
:mod:`~kdlab.study.report.findings` the findings text from the results table and the tables of
:mod:`kdlab.stats.study`, and :mod:`~kdlab.study.report.render` writes them as HTML and Markdown. The findings only
restate numbers (with their significance), they do not interpret beyond them.
"""

from kdlab.study.report.canvas import FigureResult
from kdlab.study.report.figures import FIGURE_KEYS, make_figures
from kdlab.study.report.render import REPORT_INPUT, write_report

__all__ = ["FIGURE_KEYS", "REPORT_INPUT", "FigureResult", "make_figures", "write_report"]
