"""Plain-text summary of evaluation metrics for the terminal."""

from __future__ import annotations


def format_metrics(metrics: dict) -> str:
    """One line per task (accuracy, 95% CI, n, no answer) and per group."""
    lines = [f"{'task':<16}{'accuracy':>9}  {'95% CI':<15}{'n':>6}{'no answer':>11}"]
    for name, task in metrics["tasks"].items():
        low, high = task["ci95"]
        extra = f"   norm {task['accuracy_norm']:.3f}" if "accuracy_norm" in task else ""
        lines.append(f"{name:<16}{task['accuracy']:>9.3f}  [{low:.3f}, {high:.3f}]{task['n']:>6}{task['no_answer']:>11}{extra}")
    for name, group in metrics["groups"].items():
        missing = f" (missing: {', '.join(group['missing'])})" if group["missing"] else ""
        lines.append(f"{'[' + name + ']':<16}{group['accuracy']:>9.3f}  macro over {len(group['tasks'])} tasks{missing}")
    return "\n".join(lines)
