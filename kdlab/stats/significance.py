"""Significance tests and confidence intervals, written once for the hypothesis tests of a study and of the paper
(:mod:`kdlab.stats.hypotheses`), the paired tests (:mod:`kdlab.stats.paired`), the seed summary
(:mod:`kdlab.stats.study`) and evaluation metrics (:mod:`kdlab.eval.metrics`).

* intervals: :func:`wilson_ci` (a proportion), :func:`t_interval` (a mean over seeds), :func:`paired_bootstrap_ci`
  (a paired accuracy difference);
* paired tests: :func:`mcnemar_exact`, :func:`odds_ratio`;
* multiple testing: :func:`holm` (:func:`kdlab.stats.formatting.stars` marks a p-value);
* scipy tests returning a result row with a ``note`` instead of warnings: :func:`ttest_greater`, :func:`anova`,
  :func:`spearman`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import stats


def wilson_ci(correct: int, n: int) -> list[float]:
    """95% Wilson score interval of a proportion (scipy's binomtest)."""
    if n == 0:
        return [0.0, 1.0]
    interval = stats.binomtest(correct, n).proportion_ci(confidence_level=0.95, method="wilson")
    return [float(interval.low), float(interval.high)]


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values, in the input order; NaN entries stay NaN and do not count in the family.

    Sort the m valid p-values ascending, multiply the i-th smallest (i = 0..m-1) by (m - i), take the running
    maximum so the adjusted values keep the order of the raw ones, cap at 1.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    m = int(ok.sum())
    if m == 0:
        return out
    valid = p[ok]
    order = np.argsort(valid, kind="stable")
    adjusted = np.minimum(np.maximum.accumulate(valid[order] * (m - np.arange(m))), 1.0)
    back = np.empty(m)
    back[order] = adjusted
    out[ok] = back
    return out


def t_interval(
    values: Sequence[float], level: float = 0.95, within: tuple[float, float] | None = None
) -> tuple[float, float, float, float, int]:
    """(mean, sd, low, high, n) of the finite values; a Student-t interval, NaN bounds for fewer than 2 values.

    ``within``: the range the interval is clipped to (an accuracy lies in ``(0.0, 1.0)``)."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return math.nan, math.nan, math.nan, math.nan, 0
    mean = float(x.mean())
    if n < 2:
        return mean, math.nan, math.nan, math.nan, 1
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    low, high = mean - half, mean + half
    if within is not None:
        low, high = max(low, within[0]), min(high, within[1])
    return mean, sd, low, high, n


def quiet(fn, *args, **kwargs):
    """Call a scipy test; warnings are caught and returned as text instead of reaching the user."""
    with warnings.catch_warnings(record=True) as caught, np.errstate(all="ignore"):
        warnings.simplefilter("always")
        result = fn(*args, **kwargs)
    return result, "; ".join(dict.fromkeys(str(w.message).split("\n")[0] for w in caught))


def ttest_greater(values: np.ndarray) -> dict:
    """One-sided one-sample t-test of mean > 0 on the finite values: a row with ``statistic``, ``pvalue``, ``n``,
    ``effect_size`` (Cohen's d = mean / sd), ``mean``, ``test`` and ``note`` (NaN with the reason when undefined:
    fewer than 2 values or sd 0)."""
    x = values[np.isfinite(values)]
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    row = {
        "statistic": math.nan,
        "pvalue": math.nan,
        "n": n,
        "effect_size": math.nan,
        "effect_name": "cohen_d",
        "mean": mean,
        "test": "one-sided one-sample t (improvement > 0)",
        "note": "",
    }
    if n < 2:
        row["note"] = f"too few points ({n}; need 2)"
    elif np.ptp(x) == 0:
        row["note"] = "improvement is constant (sd 0)"
    else:
        res, note = quiet(stats.ttest_1samp, x, 0.0, alternative="greater")
        row.update(
            statistic=float(res.statistic), pvalue=float(res.pvalue), effect_size=mean / float(x.std(ddof=1)), note=note
        )
    return row


def anova(samples: dict[str, np.ndarray]) -> dict:
    """One-way ANOVA across the groups of ``samples`` (finite values; empty groups dropped): a row like
    :func:`ttest_greater` with ``effect_size`` eta squared = (SS_total - SS_within) / SS_total; NaN with the reason
    for fewer than 2 groups, one point per group, or zero variance."""
    samples = {k: v[np.isfinite(v)] for k, v in samples.items()}
    samples = {k: v for k, v in samples.items() if len(v)}
    n = sum(len(v) for v in samples.values())
    row = {
        "statistic": math.nan,
        "pvalue": math.nan,
        "n": n,
        "effect_size": math.nan,
        "effect_name": "eta_squared",
        "mean": math.nan,
        "test": "one-way ANOVA of improvement across methods",
        "note": "",
    }
    if len(samples) < 2:
        row["note"] = f"fewer than 2 methods with data ({len(samples)})"
        return row
    if n <= len(samples):
        row["note"] = "one point per method: no within-method variance to compare with"
        return row
    pooled = np.concatenate(list(samples.values()))
    row["mean"] = float(pooled.mean())
    ss_total = float(((pooled - pooled.mean()) ** 2).sum())
    ss_within = float(sum(((v - v.mean()) ** 2).sum() for v in samples.values()))
    if ss_total == 0:
        row["note"] = "improvement is constant (sd 0)"
    elif ss_within == 0:
        row["note"] = "no variance within methods (F is infinite)"
    else:
        res, note = quiet(stats.f_oneway, *samples.values())
        row.update(
            statistic=float(res.statistic),
            pvalue=float(res.pvalue),
            effect_size=(ss_total - ss_within) / ss_total,
            note=note,
        )
    return row


def spearman(x: np.ndarray, y: np.ndarray, name: str) -> dict:
    """Spearman rank correlation of ``x`` (the improvement) with ``y`` (the correlate ``name``) on the pairs where
    both are finite: a row like :func:`ttest_greater` with ``effect_size`` = rho; NaN with the reason for fewer than
    3 pairs or a constant input."""
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = int(ok.sum())
    row = {
        "statistic": math.nan,
        "pvalue": math.nan,
        "n": n,
        "effect_size": math.nan,
        "effect_name": "spearman_rho",
        "mean": math.nan,
        "test": f"Spearman(improvement, {name})",
        "note": "",
    }
    if n < 3:
        row["note"] = f"too few points with {name} ({n}; need 3)"
    elif np.ptp(x) == 0:
        row["note"] = "improvement is constant"
    elif np.ptp(y) == 0:
        row["note"] = f"{name} is constant ({y[0]:.4g})"
    else:
        res, note = quiet(stats.spearmanr, x, y)
        rho = float(res.statistic)
        row.update(statistic=rho, pvalue=float(res.pvalue), effect_size=rho, note=note)
    return row


def paired_bootstrap_ci(
    kd: np.ndarray, sft: np.ndarray, n_boot: int = 10000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(kd) - mean(sft): resample example positions (the same ones for both
    runs, so the pairing is kept) ``n_boot`` times with a generator seeded by ``seed``; vectorised in chunks."""
    d = kd.astype(np.float64) - sft.astype(np.float64)
    n = len(d)
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    step = max(1, 2_000_000 // n)
    for start in range(0, n_boot, step):
        size = min(step, n_boot - start)
        idx = rng.integers(0, n, size=(size, n), dtype=np.int64 if n > 2**31 - 1 else np.int32)
        means[start : start + size] = d[idx].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def mcnemar_exact(b: int, c: int) -> float:
    """Exact McNemar test: two-sided binomial test of b successes in b + c trials at 1/2 (p = 1 when b + c = 0)."""
    if b + c == 0:
        return 1.0
    return float(stats.binomtest(int(b), int(b + c), 0.5, alternative="two-sided").pvalue)


def odds_ratio(b: int, c: int) -> float:
    """Paired odds ratio b / c; when b or c is 0, 0.5 is added to both (Haldane-Anscombe), so b = c = 0 gives 1."""
    if b == 0 or c == 0:
        return (b + 0.5) / (c + 0.5)
    return b / c
