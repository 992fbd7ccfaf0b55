"""One Markdown table renderer for every Markdown file a study writes (``stats.md``, ``report.md``)."""

from __future__ import annotations


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
