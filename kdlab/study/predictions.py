"""Per-example predictions of an evaluation (``<eval_dir>/predictions/<task>.jsonl``, one JSON record per line with
``id`` and ``correct``), read for the paired tests of :mod:`kdlab.study.stats` and :mod:`kdlab.study.fidelity_stats`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kdlab.errors import KdlabError


def read_predictions(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(ids sorted ascending, correct as bool) from a predictions JSONL file; KdlabError naming file and line."""
    if not path.is_file():
        raise KdlabError(f"{path}: predictions file not found")
    ids, correct = [], []
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise KdlabError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict) or "id" not in record or "correct" not in record:
                raise KdlabError(f"{path}:{lineno}: a record needs keys 'id' and 'correct'")
            ids.append(record["id"])
            correct.append(bool(record["correct"]))
    if not ids:
        raise KdlabError(f"{path}: no predictions")
    try:
        id_array = np.asarray(ids, dtype=np.int64)
    except (TypeError, ValueError):
        raise KdlabError(f"{path}: example ids must be integers") from None
    order = np.argsort(id_array, kind="stable")
    id_array, correct_array = id_array[order], np.asarray(correct, dtype=bool)[order]
    dup = id_array[1:][id_array[1:] == id_array[:-1]]
    if len(dup):
        raise KdlabError(f"{path}: example id {int(dup[0])} appears more than once")
    return id_array, correct_array
