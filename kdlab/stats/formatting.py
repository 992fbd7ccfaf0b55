"""Numbers and tables as text, for every table and sentence of kdlab's statistics (``stats.md``, the study report,
the paper's ``hypotheses.md``, the terminal): a missing number (None, NaN, pandas NA) never prints as ``nan``.

Each formatter takes the text of a missing value (``missing``): ``stats.md`` leaves the cell empty, the report
writes a dash (:data:`DASH`). :func:`markdown_table` renders every Markdown table a study writes.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

DASH = "–"  # a missing number in the report


def isnan(value) -> bool:
    """None, a float NaN or pandas' NA: a number that is not there."""
    return value is None or value is pd.NA or (isinstance(value, (float, np.floating)) and math.isnan(value))


def present(value) -> bool:
    """Neither missing nor an empty string (the folder columns of the results table)."""
    return not isnan(value) and str(value) != ""


def fmt(value, spec: str = "", missing: str = "") -> str:
    """``format(value, spec)``, or ``missing`` for a missing value."""
    return missing if isnan(value) else format(value, spec)


def num(value, digits: int = 4, missing: str = "") -> str:
    """A float in ``digits`` significant digits (``0.012345`` -> ``0.01235``), anything else as ``str(value)``."""
    if isnan(value):
        return missing
    return f"{value:.{digits}g}" if isinstance(value, (float, np.floating)) else str(value)


def pct(value, decimals: int = 1, sign: bool = False, missing: str = "") -> str:
    """A share in percent (or a difference of shares in percentage points): ``0.052`` -> ``5.2`` (``+5.2`` with
    ``sign``)."""
    if isnan(value):
        return missing
    return f"{100 * value:{'+' if sign else ''}.{decimals}f}"


def bounds(low, high, decimals: int = 1, sign: bool = False, missing: str = "") -> str:
    """An interval of shares in percent: ``[1.0, 9.4]``; ``missing`` when a bound is missing."""
    if isnan(low) or isnan(high):
        return missing
    return f"[{pct(low, decimals, sign)}, {pct(high, decimals, sign)}]"


def interval(value, low, high, decimals: int = 1, unit: str = "", missing: str = "") -> str:
    """A difference of shares in signed percentage points with its interval: ``+5.2 [+1.0, +9.4]`` (``unit`` after
    the value: ``+5 pp [+1, +9]``); ``missing`` when the difference is."""
    if isnan(value):
        return missing
    return f"{pct(value, decimals, sign=True)}{unit} {bounds(low, high, decimals, sign=True)}"


def p_value(p, digits: int | None = None, missing: str = DASH) -> str:
    """A p-value: scientific below 0.001 (``1.2e-05``); above, 3 decimals below 0.1 and 2 from there (``0.012``,
    ``0.53``), or ``digits`` significant digits (``0.012``, ``0.5``)."""
    if isnan(p):
        return missing
    if p < 0.001:
        return f"{p:.1e}"
    if digits is not None:
        return f"{p:.{digits}g}"
    return f"{p:.3f}" if p < 0.1 else f"{p:.2f}"


def stars(p) -> str:
    """``***`` p < 0.001, ``**`` p < 0.01, ``*`` p < 0.05, else empty (missing -> empty)."""
    if not isinstance(p, (int, float)) or isnan(p):
        return ""
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else ""


def starred(text: str, p) -> str:
    """``text`` followed by the :func:`stars` of ``p`` when it has any: ``0.003 **``."""
    mark = stars(p)
    return f"{text} {mark}" if mark else text


def size_label(billions: float) -> str:
    """A parameter count in billions as text: ``0.113`` -> ``113M``, ``1.5`` -> ``1.5B``."""
    return f"{billions * 1000:.0f}M" if billions < 1 else f"{billions:.3g}B"


def config_label(row) -> str:
    """``method T=2`` (+ ``σ=1`` for teacher noise, ``base teacher`` for a KD run from a base teacher, ``after SFT``
    for a later stage) of a configuration row (a dict or a pandas row)."""
    get = row.get if isinstance(row, dict) else (lambda k, d=None: getattr(row, k, d))
    parts = [str(get("method", ""))]
    init = get("init", None)
    if isinstance(init, str) and init:
        parts.append("after " + " > ".join("SFT" if stage == "sft" else stage for stage in init.split(">")))
    temperature = get("temperature", math.nan)
    if not isnan(temperature):
        parts.append(f"T={temperature:g}")
    noise = get("noise", 0.0)
    if not isnan(noise) and noise > 0:
        parts.append(f"σ={noise:g}")
    if get("teacher_kind", None) == "base" and get("role", "student-kd") == "student-kd":
        parts.append("base teacher")
    return " ".join(parts)


def markdown_table(header: list[str], rows: list[list], align: str | None = None) -> list[str]:
    """The lines of a pipe table: the header, the alignment row (``r`` -> ``---:``, else ``---``) and one line per row.

    A cell is written as ``str(cell)`` with ``|`` escaped and line breaks turned into spaces, so it stays in its cell.
    """
    align = align or "l" * len(header)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---:" if a == "r" else "---" for a in align) + " |"]
    lines += [
        "| " + " | ".join(str(cell).replace("|", "\\|").replace("\n", " ") for cell in row) + " |" for row in rows
    ]
    return lines
