"""Paired per-example tests: two runs on the same examples, compared example by example.

:func:`read_flags` reads a per-example file of an evaluation (``predictions/<task>.jsonl``, field ``correct``) or of
a fidelity folder (``pairs/<task>.jsonl``, field ``agree``); :func:`compare_pairs` runs the exact McNemar test, the
paired bootstrap interval and Holm's correction over a set of comparisons. Two tables use them: :func:`paired_tests`
(every KD student against its SFT twin, accuracy) and :func:`kdlab.stats.fidelity.agreement_tests` (every method
against a reference, agreement with the teacher and accuracy). The tests themselves are in
:mod:`kdlab.stats.significance`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd

from kdlab.errors import KdlabError
from kdlab.eval.predictions import read_prediction_lines
from kdlab.stats.formatting import present
from kdlab.stats.significance import holm, mcnemar_exact, odds_ratio, paired_bootstrap_ci
from kdlab.stats.table import CONFIG, check_table

# one comparison of two runs a and b (compare_pairs)
COMPARISON_COLUMNS = ["n", "a_mean", "b_mean", "diff", "ci_low", "ci_high", "b", "c", "odds_ratio", "pvalue"]
PAIRED_COLUMNS = CONFIG + [
    "seed",
    "task",
    "run",
    "init",
    "reference",
    "n",
    "kd_accuracy",
    "sft_accuracy",
    "diff",
    "ci_low",
    "ci_high",
    "b",
    "c",
    "odds_ratio",
    "pvalue",
    "pvalue_holm",
    "pvalue_holm_all",
    "n_boot",
    "kd_file",
    "sft_file",
    "note",
]
PAIRED_INPUT = ["role", "task", "seed", "run", "eval_dir", "sft_eval_dir"] + CONFIG


def read_flags(path: Path, field: str = "correct", what: str = "predictions") -> tuple[np.ndarray, np.ndarray]:
    """(example ids sorted ascending, the boolean ``field`` of each) from a per-example JSONL file, one JSON record
    per line with ``id`` and ``field`` (the rule of :mod:`kdlab.eval.predictions`); ``what`` names the file in
    errors. KdlabError naming the file (and the line) when it is missing, empty, malformed or repeats an id."""
    if not path.is_file():
        raise KdlabError(f"{path}: {what} file not found")
    records = [record for _, record in read_prediction_lines(path, ("id", field))]
    if not records:
        raise KdlabError(f"{path}: no {what}")
    try:
        ids = np.asarray([record["id"] for record in records], dtype=np.int64)
    except OverflowError:
        raise KdlabError(f"{path}: example ids must be integers of at most 64 bits") from None
    order = np.argsort(ids, kind="stable")
    ids, flags = ids[order], np.asarray([bool(record[field]) for record in records], dtype=bool)[order]
    dup = ids[1:][ids[1:] == ids[:-1]]
    if len(dup):
        raise KdlabError(f"{path}: example id {int(dup[0])} appears more than once")
    return ids, flags


def check_n_boot(n_boot) -> None:
    if not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise KdlabError(f"n_boot must be a positive integer, got {n_boot!r}")


def compare(a: np.ndarray, b: np.ndarray, n_boot: int = 10000, seed: int = 0) -> dict:
    """Two paired boolean vectors (the same examples in the same order) compared: ``n``, their shares ``a_mean`` and
    ``b_mean``, ``diff`` = a_mean - b_mean = (b - c) / n with ``ci_low`` / ``ci_high`` its 95% paired percentile
    bootstrap interval (``n_boot`` resamples from a generator seeded with ``seed``, so a comparison's interval does
    not depend on the others), ``b`` = examples true in a and false in b, ``c`` the reverse, ``odds_ratio`` b / c
    (:func:`~kdlab.stats.significance.odds_ratio`) and ``pvalue``, the exact McNemar p."""
    gain, loss = int((a & ~b).sum()), int((~a & b).sum())
    low, high = paired_bootstrap_ci(a, b, n_boot=n_boot, seed=seed)
    values = (len(a), a.mean(), b.mean(), (gain - loss) / len(a), low, high, gain, loss)
    return dict(zip(COMPARISON_COLUMNS, values), odds_ratio=odds_ratio(gain, loss), pvalue=mcnemar_exact(gain, loss))


def holm_within(pvalues: pd.Series, families: pd.DataFrame | None = None) -> np.ndarray:
    """Holm-adjusted ``pvalues`` within each family: the rows of ``families`` with equal values (NaN equal to NaN);
    one family of every row when None."""
    if families is None:
        return holm(pvalues.to_numpy())
    grouped = families.assign(_p=pvalues.to_numpy()).groupby(list(families.columns), dropna=False, sort=False)["_p"]
    return grouped.transform(lambda p: pd.Series(holm(p.to_numpy()), index=p.index)).to_numpy()


def compare_pairs(
    pairs: Sequence[tuple[np.ndarray, np.ndarray] | None],
    n_boot: int = 10000,
    seed: int = 0,
    families: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """McNemar, bootstrap and Holm over a set of comparisons: a row of :func:`compare` per pair (NaN for None, a
    comparison that could not be made), ``pvalue_holm`` Holm-adjusted within each family of ``families`` (one row
    per pair; every row is one family when None) and ``pvalue_holm_all`` across every comparison."""
    check_n_boot(n_boot)
    nan = dict.fromkeys(COMPARISON_COLUMNS, math.nan)
    table = pd.DataFrame(
        [compare(*pair, n_boot=n_boot, seed=seed) if pair is not None else nan for pair in pairs],
        columns=COMPARISON_COLUMNS,
    )
    table["pvalue_holm"] = holm_within(table["pvalue"], families)
    table["pvalue_holm_all"] = holm(table["pvalue"].to_numpy())
    return table


def _ids_differ(first: Path, second: Path, first_ids: np.ndarray, second_ids: np.ndarray) -> KdlabError:
    only_first, only_second = np.setdiff1d(first_ids, second_ids), np.setdiff1d(second_ids, first_ids)

    def examples(ids: np.ndarray) -> str:
        return f" (e.g. {', '.join(map(str, ids[:3]))})" if len(ids) else ""

    return KdlabError(
        f"example ids differ between {first} and {second}: {len(only_first)} only in the first"
        f"{examples(only_first)}, {len(only_second)} only in the second{examples(only_second)}"
    )


def _kd_and_sft(record: dict, study_dir: Path, read) -> tuple[dict, tuple[np.ndarray, np.ndarray] | None]:
    """The identity of one KD row (its files, a note) and its (KD, SFT) correctness flags; None without SFT twin."""
    kd_file = study_dir / str(record["eval_dir"]) / "predictions" / f"{record['task']}.jsonl"
    row = {key: record[key] for key in CONFIG + ["seed", "task", "run"]}
    row.update({key: record.get(key) or "" for key in ("init", "reference")})  # absent from older tables
    row.update(kd_file=str(kd_file), sft_file="", note="")
    if not present(record["sft_eval_dir"]):
        return {**row, "note": "no paired SFT run (sft_eval_dir empty)"}, None
    sft_file = study_dir / str(record["sft_eval_dir"]) / "predictions" / f"{record['task']}.jsonl"
    row["sft_file"] = str(sft_file)
    (kd_ids, kd_ok), (sft_ids, sft_ok) = read(kd_file), read(sft_file)
    if not np.array_equal(kd_ids, sft_ids):
        raise _ids_differ(kd_file, sft_file, kd_ids, sft_ids)
    return row, (kd_ok, sft_ok)


def paired_tests(frame: pd.DataFrame, study_dir: str | Path, n_boot: int = 10000, seed: int = 0) -> pd.DataFrame:
    """Every ``student-kd`` row (main grid and ablations) against its SFT twin (same student, domain, seed) on the
    same examples, read from ``<study_dir>/<eval_dir>/predictions/<task>.jsonl`` and joined by example ``id`` (the
    two files must hold the same ids).

    A later-stage row's twin is its ``reference`` (SFT continued from the same stage, see
    :mod:`kdlab.stats.results`); ``init`` and ``reference`` are carried into the output.

    Columns (:func:`compare`, KD as a and SFT as b): ``b`` = examples KD got right and SFT wrong, ``c`` = SFT right
    and KD wrong; ``diff`` = KD accuracy - SFT accuracy = (b - c) / n with its 95% paired bootstrap interval
    ``ci_low`` / ``ci_high``; ``odds_ratio`` = b / c (0.5 added to both when either is 0); ``pvalue`` = exact McNemar
    (two-sided binomial test of b in b + c at 1/2; 1 when b + c = 0). ``pvalue_holm`` is Holm-adjusted across the
    tasks of one (configuration, seed) family; ``pvalue_holm_all`` across every comparison in the table. A KD row
    without ``sft_eval_dir`` gives NaN statistics and a ``note``.
    """
    frame = check_table(frame, PAIRED_INPUT)
    check_n_boot(n_boot)
    read = cache(read_flags)  # an SFT run is the twin of many KD runs: read its files once
    rows, pairs = [], []
    for record in frame[frame["role"] == "student-kd"].to_dict("records"):
        row, pair = _kd_and_sft(record, Path(study_dir), read)
        rows.append(row)
        pairs.append(pair)
    if not rows:
        return pd.DataFrame(columns=PAIRED_COLUMNS)
    identity = pd.DataFrame(rows)
    tests = compare_pairs(pairs, n_boot, seed, families=identity[CONFIG + ["seed"]])
    out = pd.concat([identity, tests.rename(columns={"a_mean": "kd_accuracy", "b_mean": "sft_accuracy"})], axis=1)
    out["n_boot"] = n_boot
    return out[PAIRED_COLUMNS]
