"""Paired per-example tests of a study: every KD student against its SFT twin on the same examples (exact McNemar,
paired bootstrap CI of the accuracy difference, odds ratio, Holm correction); the tests and intervals themselves
live in :mod:`kdlab.stats.significance`, the prediction files are read by :mod:`kdlab.stats.predictions`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from kdlab.errors import KdlabError
from kdlab.stats.formatting import present
from kdlab.stats.predictions import read_predictions
from kdlab.stats.significance import holm, mcnemar_exact, odds_ratio, paired_bootstrap_ci
from kdlab.stats.table import CONFIG, check_table

PAIRED_COLUMNS = CONFIG + [
    "seed",
    "task",
    "run",
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


def paired_tests(frame: pd.DataFrame, study_dir: str | Path, n_boot: int = 10000, seed: int = 0) -> pd.DataFrame:
    """Every ``student-kd`` row (main grid and ablations) against its SFT twin (same student, domain, seed) on the
    same examples, read from ``<study_dir>/<eval_dir>/predictions/<task>.jsonl`` and joined by example ``id`` (the
    two files must hold the same ids).

    Columns: ``b`` = examples KD got right and SFT wrong, ``c`` = SFT right and KD wrong; ``diff`` = KD accuracy -
    SFT accuracy = (b - c) / n, with ``ci_low`` / ``ci_high`` a 95% paired percentile bootstrap over examples
    (``n_boot`` resamples; every comparison uses a generator seeded with ``seed``, so its interval does not depend
    on the other rows); ``odds_ratio`` = b / c (0.5 added to both when either is 0); ``pvalue`` = exact McNemar
    (two-sided binomial test of b in b + c at 1/2; 1 when b + c = 0). ``pvalue_holm`` is Holm-adjusted across the
    tasks of one (configuration, seed) family; ``pvalue_holm_all`` is Holm-adjusted across every comparison in the
    table. A KD row without ``sft_eval_dir`` gives NaN statistics and a ``note``.
    """
    frame = check_table(frame, PAIRED_INPUT)
    if not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise KdlabError(f"n_boot must be a positive integer, got {n_boot!r}")
    study_dir = Path(study_dir)
    kd_rows = frame[frame["role"] == "student-kd"]
    cache: dict[Path, tuple[np.ndarray, np.ndarray]] = {}

    def load(path: Path):
        if path not in cache:
            cache[path] = read_predictions(path)
        return cache[path]

    rows = []
    for record in kd_rows.to_dict("records"):
        row = {key: record[key] for key in CONFIG + ["seed", "task", "run"]}
        row.update({k: math.nan for k in PAIRED_COLUMNS if k not in row})
        row.update(note="", n_boot=n_boot, kd_file="", sft_file="")
        kd_file = study_dir / str(record["eval_dir"]) / "predictions" / f"{record['task']}.jsonl"
        row["kd_file"] = str(kd_file)
        sft_dir = record["sft_eval_dir"]
        if not present(sft_dir):
            row["note"] = "no paired SFT run (sft_eval_dir empty)"
            rows.append(row)
            continue
        sft_file = study_dir / str(sft_dir) / "predictions" / f"{record['task']}.jsonl"
        row["sft_file"] = str(sft_file)
        kd_ids, kd_ok = load(kd_file)
        sft_ids, sft_ok = load(sft_file)
        if len(kd_ids) != len(sft_ids) or not np.array_equal(kd_ids, sft_ids):
            only_kd = np.setdiff1d(kd_ids, sft_ids)
            only_sft = np.setdiff1d(sft_ids, kd_ids)
            raise KdlabError(
                f"example ids differ between {kd_file} and {sft_file}: {len(only_kd)} only in the first"
                f"{' (e.g. ' + ', '.join(map(str, only_kd[:3])) + ')' if len(only_kd) else ''}, {len(only_sft)} only "
                f"in the second{' (e.g. ' + ', '.join(map(str, only_sft[:3])) + ')' if len(only_sft) else ''}"
            )
        n = len(kd_ok)
        b = int((kd_ok & ~sft_ok).sum())
        c = int((~kd_ok & sft_ok).sum())
        low, high = paired_bootstrap_ci(kd_ok, sft_ok, n_boot=n_boot, seed=seed)
        row.update(
            n=n,
            kd_accuracy=kd_ok.mean(),
            sft_accuracy=sft_ok.mean(),
            diff=(b - c) / n,
            ci_low=low,
            ci_high=high,
            b=b,
            c=c,
            odds_ratio=odds_ratio(b, c),
            pvalue=mcnemar_exact(b, c),
        )
        rows.append(row)
    out = pd.DataFrame(rows, columns=PAIRED_COLUMNS)
    if out.empty:
        return out
    family = out.groupby(CONFIG + ["seed"], dropna=False, sort=False)["pvalue"]
    out["pvalue_holm"] = family.transform(lambda p: pd.Series(holm(p.to_numpy()), index=p.index))
    out["pvalue_holm_all"] = holm(out["pvalue"].to_numpy())
    return out
