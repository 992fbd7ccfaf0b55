"""Metrics of an evaluation: accuracy with a 95% Wilson interval per task, macro averages per group, and their
plain-text summary for the terminal."""

from __future__ import annotations

from kdlab.eval.extract import MODES
from kdlab.eval.tasks import GROUPS
from kdlab.stats.significance import wilson_ci


def task_metrics(records: list[dict], mode: str) -> dict:
    """accuracy, n, no_answer (no extracted answer), ci95; per extraction mode (generate) or normalised (loglik)."""
    n = len(records)
    correct = sum(bool(record["correct"]) for record in records)
    metrics = {
        "accuracy": correct / n if n else 0.0,
        "n": n,
        "no_answer": sum(record["pred"] is None for record in records),
        "ci95": wilson_ci(correct, n),
    }
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
        groups[name] = {
            "accuracy": sum(results[task]["accuracy"] for task in present) / len(present),
            "tasks": present,
            "missing": [task for task in members if task not in results],
            "n": sum(results[task]["n"] for task in present),
        }
    return groups


def format_metrics(metrics: dict) -> str:
    """One line per task (accuracy, 95% CI, n, no answer) and per group."""
    lines = [f"{'task':<16}{'accuracy':>9}  {'95% CI':<15}{'n':>6}{'no answer':>11}"]
    for name, task in metrics["tasks"].items():
        low, high = task["ci95"]
        extra = f"   norm {task['accuracy_norm']:.3f}" if "accuracy_norm" in task else ""
        lines.append(
            f"{name:<16}{task['accuracy']:>9.3f}  [{low:.3f}, {high:.3f}]{task['n']:>6}{task['no_answer']:>11}{extra}"
        )
    for name, group in metrics["groups"].items():
        missing = f" (missing: {', '.join(group['missing'])})" if group["missing"] else ""
        lines.append(
            f"{'[' + name + ']':<16}{group['accuracy']:>9.3f}  macro over {len(group['tasks'])} tasks{missing}"
        )
    return "\n".join(lines)
