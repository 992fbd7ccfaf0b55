"""Reading ``predictions/<task>.jsonl`` of an evaluation folder: the one rule for what a line must be, shared by
``kdlab eval`` (resuming), ``kdlab fidelity``, the study's paired tests and :class:`kdlab.api.EvalResult`.

A line is a JSON object with an ``id`` (the example's index in its test file: an integer; a string is accepted
where ``str_ids`` says so, for folders written by other tools) and the fields its reader needs. Anything else is a
:class:`KdlabError` naming the file and the line number.
"""

from __future__ import annotations

import json
from pathlib import Path

from kdlab.errors import KdlabError


def _keys(fields: tuple[str, ...]) -> str:
    names = [repr(name) for name in fields]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def read_prediction_lines(
    path: str | Path, fields: tuple[str, ...] = ("id",), str_ids: bool = False, cut_last: bool = False
) -> list[tuple[int, dict]]:
    """(line number, record) of every non-blank line of ``path``, in file order.

    Each record must be a JSON object holding ``fields`` (``id`` among them), its ``id`` an integer (or a string
    with ``str_ids``). ``cut_last``: a last line that is not JSON — cut by a kill while it was written — is left
    out instead of refused (an interrupted ``kdlab eval`` resumes after it).
    """
    path = Path(path)
    lines = path.read_bytes().split(b"\n")
    while lines and not lines[-1].strip():
        lines.pop()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:  # JSONDecodeError, or UnicodeDecodeError for bytes that are not UTF-8
            if cut_last and number == len(lines):
                break
            hint = " (cut by an interrupted kdlab eval? rerun it to finish the folder)" if number == len(lines) else ""
            reason = getattr(exc, "msg", type(exc).__name__)
            raise KdlabError(f"{path}:{number}: not a JSON line ({reason}){hint}") from None
        if not isinstance(record, dict):
            raise KdlabError(f"{path}:{number}: a record must be a JSON object, not a {type(record).__name__}")
        if any(name not in record for name in fields):
            raise KdlabError(f"{path}:{number}: a record needs keys {_keys(fields)}")
        index = record.get("id")
        if isinstance(index, bool) or not isinstance(index, (int, str) if str_ids else int):
            kind = "an integer or a string" if str_ids else "an integer"
            raise KdlabError(f"{path}:{number}: field 'id' must be {kind} (the example's index), got {index!r:.40}")
        records.append((number, record))
    return records
