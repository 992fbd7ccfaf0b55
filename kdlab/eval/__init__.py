"""Evaluation: the task registry (:mod:`kdlab.eval.tasks`) and answer extraction (:mod:`kdlab.eval.extract`)."""

from kdlab.eval.extract import EXTRACTORS, MODES, extract, get_extractor, is_correct, normalize_gold
from kdlab.eval.tasks import GROUPS, TASKS, Task, get_task, load_task_examples, resolve_tasks

__all__ = [
    "EXTRACTORS", "GROUPS", "MODES", "TASKS", "Task", "extract", "get_extractor", "get_task", "is_correct",
    "load_task_examples", "normalize_gold", "resolve_tasks",
]
