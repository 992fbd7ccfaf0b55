"""Metrics of an evaluation: accuracy with a 95% Wilson interval per task, macro averages per group."""

from __future__ import annotations

from scipy.stats import binomtest

from kdlab.eval.extract import MODES
from kdlab.eval.tasks import GROUPS


def wilson_ci(correct: int, n: int) -> list[float]:
    """95% Wilson score interval of a proportion (scipy's binomtest)."""
    if n == 0:
        return [0.0, 1.0]
    interval = binomtest(correct, n).proportion_ci(confidence_level=0.95, method="wilson")
    return [float(interval.low), float(interval.high)]


def task_metrics(records: list[dict], mode: str) -> dict:
    """accuracy, n, no_answer (no extracted answer), ci95; per extraction mode (generate) or normalised (loglik)."""
    n = len(records)
    correct = sum(bool(record["correct"]) for record in records)
    metrics = {"accuracy": correct / n if n else 0.0, "n": n, "no_answer": sum(record["pred"] is None for record in records),
               "ci95": wilson_ci(correct, n)}
    if mode == "generate":
        metrics["accuracy_by_extraction"] = {m: sum(bool(r["corrects"][m]) for r in records) / max(n, 1) for m in MODES}
        metrics["no_answer_by_extraction"] = {m: sum(r["preds"][m] is None for r in records) for m in MODES}
    else:
        correct_norm = sum(bool(record["correct_norm"]) for record in records)
        metrics["accuracy_norm"] = correct_norm / n if n else 0.0
        metrics["ci95_norm"] = wilson_ci(correct_norm, n)
    return metrics


def group_metrics(results: dict[str, dict]) -> dict:
    """Macro average accuracy over the evaluated tasks of each group (tasks missing from the run are listed)."""
    groups = {}
    for name, members in GROUPS.items():
        present = [task for task in members if task in results]
        if not present:
            continue
        groups[name] = {"accuracy": sum(results[task]["accuracy"] for task in present) / len(present),
                        "tasks": present, "missing": [task for task in members if task not in results],
                        "n": sum(results[task]["n"] for task in present)}
    return groups
