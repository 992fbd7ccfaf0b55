"""Train/test contamination: how many test questions also appear in a training file.

A *question* is an example's ``instruction``, followed by a newline and its ``input`` when that is not empty.
Two measures are reported per test file:

- ``exact``: test questions whose normalised text (see :func:`normalise_question`) equals the normalised text
  of some training question;
- ``ngram``: test questions that share at least one word n-gram (``n`` consecutive word tokens, default 13)
  with some training question. Words are the matches of the regex ``\\w+`` in the normalised text (punctuation is
  dropped). A test question with fewer than ``n`` words has no n-gram, so it can only count through ``exact``;
  an exact duplicate with at least ``n`` words counts in both columns.

The training n-grams are kept as a set of hashes (Python's ``hash`` of the token tuple, stable within a process),
so a whole report over the six math test sets takes about a second.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from kdlab.data.formats import Example, load_json_examples
from kdlab.errors import KdlabError

_WHITESPACE = re.compile(r"\s+")
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class OverlapReport:
    """Contamination of one test file: ``exact`` and ``ngram`` count test questions (out of ``n_test``)."""

    test_file: str
    n_test: int
    exact: int
    ngram: int
    n: int  # the n-gram size used for ``ngram``


def normalise_question(text: str) -> str:
    """Lowercase, replace every run of whitespace (spaces, tabs, newlines) by one space, strip both ends.

    Nothing else changes: punctuation, digits and Unicode characters are kept as they are.
    """
    return _WHITESPACE.sub(" ", text.lower()).strip()


def question_text(example: Example) -> str:
    """The question of an example: ``instruction``, plus a newline and ``input`` when ``input`` is not empty."""
    if example.input.strip():
        return f"{example.instruction}\n{example.input}"
    return example.instruction


def _ngram_hashes(normalised: str, n: int) -> set[int]:
    words = _WORD.findall(normalised)
    return {hash(tuple(words[i : i + n])) for i in range(len(words) - n + 1)}


def overlap_report(train_path: str | Path, test_paths: list, n: int = 13) -> list[OverlapReport]:
    """One :class:`OverlapReport` per test file (in the given order) against one training file."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise KdlabError(f"n-gram size must be a positive integer, got {n!r}")
    train_questions = {normalise_question(question_text(example)) for example in load_json_examples(train_path)}
    train_ngrams: set[int] = set()
    for question in train_questions:
        train_ngrams |= _ngram_hashes(question, n)

    reports = []
    for test_path in test_paths:
        questions = [normalise_question(question_text(example)) for example in load_json_examples(test_path)]
        exact = sum(question in train_questions for question in questions)
        ngram = sum(not _ngram_hashes(question, n).isdisjoint(train_ngrams) for question in questions)
        reports.append(OverlapReport(test_file=str(test_path), n_test=len(questions), exact=exact, ngram=ngram, n=n))
    return reports


def _percent(count: int, total: int) -> str:
    return f"{100.0 * count / total:.1f}%" if total else "-"


def format_reports(reports: list[OverlapReport]) -> str:
    """A plain-text table, one row per report: file, n_test, exact (count, %), n-gram (count, %)."""
    ngram_title = f"{reports[0].n}-gram" if reports and len({r.n for r in reports}) == 1 else "n-gram"
    header = ["file", "n_test", "exact", "%", ngram_title, "%"]
    rows = [
        [
            r.test_file,
            str(r.n_test),
            str(r.exact),
            _percent(r.exact, r.n_test),
            str(r.ngram),
            _percent(r.ngram, r.n_test),
        ]
        for r in reports
    ]
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:])]
        return "  ".join([first] + rest).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(row) for row in rows]) + "\n"
