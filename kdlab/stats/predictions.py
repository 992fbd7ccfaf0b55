"""Per-example predictions of an evaluation (``<eval_dir>/predictions/<task>.jsonl``, one JSON record per line with
``id`` and ``correct``, checked by :mod:`kdlab.eval.predictions`), read for the paired tests of
:mod:`kdlab.stats.study` and :mod:`kdlab.stats.fidelity`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kdlab.errors import KdlabError
from kdlab.eval.predictions import read_prediction_lines


def read_predictions(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(ids sorted ascending, correct as bool) from a predictions JSONL file; KdlabError naming file and line."""
    if not path.is_file():
        raise KdlabError(f"{path}: predictions file not found")
    records = [record for _, record in read_prediction_lines(path, ("id", "correct"))]
    ids = [record["id"] for record in records]
    correct = [bool(record["correct"]) for record in records]
    if not ids:
        raise KdlabError(f"{path}: no predictions")
    try:
        id_array = np.asarray(ids, dtype=np.int64)
    except OverflowError:
        raise KdlabError(f"{path}: example ids must be integers of at most 64 bits") from None
    order = np.argsort(id_array, kind="stable")
    id_array, correct_array = id_array[order], np.asarray(correct, dtype=bool)[order]
    dup = id_array[1:][id_array[1:] == id_array[:-1]]
    if len(dup):
        raise KdlabError(f"{path}: example id {int(dup[0])} appears more than once")
    return id_array, correct_array
