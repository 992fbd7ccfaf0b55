"""Render a study report: one self-contained HTML file and a Markdown twin.

:func:`write_report` gathers the figures (:mod:`~kdlab.study.report.figures`,
:mod:`~kdlab.study.report.fidelity_figures`, :mod:`~kdlab.study.report.validation_figure`), the tables
(:mod:`~kdlab.study.report.tables`) and the findings (:mod:`~kdlab.study.report.findings`), embeds the figures in the
HTML as base64 PNG (inline CSS, no scripts, no external requests) and saves them as ``figures/<name>.png`` beside the
Markdown file.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from kdlab.errors import KdlabError
from kdlab.io import atomic_write_bytes, atomic_write_text
from kdlab.stats.formatting import markdown_table
from kdlab.stats.hypotheses import study_hypotheses
from kdlab.stats.paired import paired_tests
from kdlab.stats.study import SEED_INPUT, seed_summary
from kdlab.stats.table import check_table
from kdlab.study.report.canvas import FigureResult
from kdlab.study.report.context import ReportContext
from kdlab.study.report.fidelity_figures import fidelity_plane_figure
from kdlab.study.report.figures import make_figures
from kdlab.study.report.findings import agreement_findings, error_bar_note, findings
from kdlab.study.report.tables import (
    Table,
    agreement_table,
    data_fit_table,
    hypothesis_tables,
    overview_table,
    paired_tables,
    paper_view_table,
    selection_table,
    staged_table,
)
from kdlab.study.report.validation_figure import fig_validation
from kdlab.version import __version__

REPORT_INPUT = SEED_INPUT + [
    "run",
    "improvement",
    "sft_accuracy",
    "teacher_accuracy",
    "agreement",
    "bleu",
    "ci_low",
    "ci_high",
]
SECTIONS = [
    ("findings", "Findings"),
    ("overview", "Results overview"),
    ("figures", "Figures"),
    ("hypotheses", "Hypothesis tests"),
    ("paired", "Paired tests"),
]

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


@dataclass
class Report:
    """Everything a report shows, in the order shown; rendered by :func:`render_html` and :func:`render_markdown`."""

    title: str
    subtitle: str
    facts: list[str]
    overview: Table
    extra_tables: list[Table]
    bars_note: str
    figures: list[FigureResult]
    hypotheses: tuple[Table, Table] | None  # (summary, detail); None when not testable
    hyp_note: str
    paired: tuple[Table, Table]
    footer: str


def _html_table(table: Table) -> str:
    align = table.align or "l" * len(table.header)
    head = "".join(f'<th class="{"r" if a == "r" else "l"}">{html.escape(h)}</th>' for h, a in zip(table.header, align))
    body = []
    for row in table.rows:
        cells = "".join(
            f'<td class="{"r" if a == "r" else "l"}">{html.escape(str(c))}</td>' for c, a in zip(row, align)
        )
        body.append(f"<tr>{cells}</tr>")
    if not table.rows:
        body.append(f'<tr><td colspan="{len(table.header)}">(no rows)</td></tr>')
    return (
        f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody>'
        f"</table></div>" + (f'<p class="tnote">{html.escape(table.note)}</p>' if table.note else "")
    )


def _md_table(table: Table) -> str:
    lines = markdown_table(table.header, table.rows, table.align)
    if not table.rows:
        lines.append("| (no rows) |" + " |" * (len(table.header) - 1))
    if table.note:
        lines += ["", f"_{table.note}_"]
    return "\n".join(lines)


def build_report(study_dir: Path, frame: pd.DataFrame, stats: dict, title: str) -> Report:
    """The report's content: ``stats`` holds the tables of :mod:`kdlab.stats.study`; a missing one is computed here."""
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
    ctx = ReportContext(frame)
    selection = stats.get("selection")
    figures = make_figures(frame)
    extra_tables = []
    staged = staged_table(frame, paired)
    if staged is not None:  # a staged study leads with its comparison
        extra_tables.append(staged)
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
        extra_tables.append(agreement_table(agreement))
    fit = data_fit_table(study_dir)
    if fit is not None:
        extra_tables.append(fit)

    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    roles = frame.groupby("role")["run"].nunique()
    role_text = ", ".join(
        f"{roles[r]} {r}" for r in ("teacher", "base-teacher", "student-sft", "student-kd") if r in roles
    )
    footer = (
        f"Study: {study_dir.name or study_dir} · generated {now} by kdlab {__version__} · "
        f"{frame['run'].nunique()} runs ({role_text}) · {len(frame)} run × task rows · "
        f"tasks: {', '.join(ctx.tasks)}"
    )
    subtitle = (
        f"{len(ctx.students)} student(s), {len(ctx.methods)} KD method(s) "
        f"({', '.join(ctx.methods)}), {len(ctx.tasks)} task(s), "
        f"{int(frame['seed'].nunique())} seed(s)"
    )
    return Report(
        title,
        subtitle,
        findings(ctx, hyp, paired) + agreement_findings(agreement),
        overview_table(ctx, seeds),
        extra_tables,
        error_bar_note(frame),
        figures,
        hypothesis_tables(hyp) if hyp is not None else None,
        hyp_note,
        paired_tables(paired),
        footer,
    )


def render_html(report: Report) -> str:
    """The self-contained HTML page: inline CSS, figures as base64 PNG, long tables folded in ``<details>``."""
    title, overview = report.title, report.overview
    parts = [
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body><main>",
        f'<h1>{html.escape(title)}</h1><p class="subtitle">{html.escape(report.subtitle)}</p>',
        "<nav>" + "".join(f'<a href="#{k}">{html.escape(v)}</a>' for k, v in SECTIONS) + "</nav>",
        '<h2 id="findings">Findings</h2><ul class="findings">'
        + "".join(f"<li>{html.escape(f)}</li>" for f in report.facts)
        + "</ul>",
        f'<h2 id="overview">{html.escape(overview.title)}</h2>',
        _html_table(overview),
    ]
    for table in report.extra_tables:
        parts += [f"<h2>{html.escape(table.title)}</h2>", _html_table(table)]
    parts += ['<h2 id="figures">Figures</h2>', f'<p class="tnote">{html.escape(report.bars_note)}</p>']
    for figure in report.figures:
        parts.append(f"<h3>{html.escape(figure.title)}</h3>")
        if figure.png is None:
            parts.append(f'<p class="note">{html.escape(figure.note or "")}</p>')
        else:
            data = base64.b64encode(figure.png).decode("ascii")
            parts.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(figure.title)}">'
                f"<figcaption><b>{html.escape(figure.title)}.</b> {html.escape(figure.caption)}"
                f"</figcaption></figure>"
            )
    parts.append('<h2 id="hypotheses">Hypothesis tests (H1–H5)</h2>')
    if report.hypotheses is None:
        parts.append(f'<p class="note">{html.escape("not in this study: " + report.hyp_note)}</p>')
    else:
        parts += [_html_table(report.hypotheses[0]), _html_details(report.hypotheses[1])]
    parts.append('<h2 id="paired">Paired tests: KD vs SFT on the same examples</h2>')
    parts += [_html_table(report.paired[0]), _html_details(report.paired[1])]
    parts.append(f"<footer>{html.escape(report.footer)}</footer></main></body></html>\n")
    return "\n".join(parts)


def _html_details(table: Table) -> str:
    return (
        f"<details><summary>{html.escape(table.title)} ({len(table.rows)} rows)</summary>{_html_table(table)}</details>"
    )


def render_markdown(report: Report) -> str:
    """The Markdown twin: the same sections, figures as links to ``figures/<key>.png``."""
    md = [f"# {report.title}", "", f"_{report.subtitle}_", "", "## Findings", ""]
    md += [f"- {f}" for f in report.facts]
    md += ["", f"## {report.overview.title}", "", _md_table(report.overview), ""]
    for table in report.extra_tables:
        md += [f"## {table.title}", "", _md_table(table), ""]
    md += ["## Figures", "", f"_{report.bars_note}_", ""]
    for figure in report.figures:
        md += [f"### {figure.title}", ""]
        if figure.png is None:
            md += [f"> {figure.note}", ""]
        else:
            md += [f"![{figure.title}](figures/{figure.key}.png)", "", f"_{figure.caption}_", ""]
    md += ["## Hypothesis tests (H1–H5)", ""]
    if report.hypotheses is None:
        md += [f"> not in this study: {report.hyp_note}", ""]
    else:
        for table in report.hypotheses:
            md += [f"### {table.title}", "", _md_table(table), ""]
    md += ["## Paired tests: KD vs SFT on the same examples", ""]
    for table in report.paired:
        md += [f"### {table.title}", "", _md_table(table), ""]
    md += ["---", "", report.footer, ""]
    return "\n".join(md)


def write_report(
    study_dir: str | Path,
    frame: pd.DataFrame,
    stats: dict | None,
    out_dir: str | Path,
    title: str = "Knowledge-distillation study",
) -> tuple[Path, Path]:
    """Write ``out_dir/report.html`` (self-contained) and ``out_dir/report.md`` with ``out_dir/figures/*.png``.

    ``stats`` holds the tables of :mod:`kdlab.stats.study` (``hypotheses``, ``paired``, ``seeds``); a missing one is
    computed here (the paired tests read the predictions under ``study_dir``). Returns (html path, markdown path).
    """
    frame = check_table(frame, REPORT_INPUT)
    out_dir = Path(out_dir)
    report = build_report(Path(study_dir), frame, dict(stats or {}), title)
    fig_dir = out_dir / "figures"
    for figure in report.figures:
        path = fig_dir / f"{figure.key}.png"
        if figure.png is not None:
            atomic_write_bytes(path, figure.png)
        else:
            path.unlink(missing_ok=True)  # a stale figure from an earlier report
    html_path, md_path = out_dir / "report.html", out_dir / "report.md"
    atomic_write_text(html_path, render_html(report))
    atomic_write_text(md_path, render_markdown(report))
    return html_path, md_path
