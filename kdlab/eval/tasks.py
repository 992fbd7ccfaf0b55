"""Evaluation tasks as data: a registry of :class:`Task` records, named groups and example loading.

A task says what kind of answer it expects (``number``, ``letter`` or ``label``), which labels are allowed, where
its LLM-Adapters test file lives under ``--data-dir`` (``DIR/<folder>/test.json``), optionally how to fetch it from
the Hugging Face Hub instead, and how to generate for it (``max_new_tokens``, ``stop`` strings). Loading a task's
examples lives in :mod:`kdlab.eval.task_examples`, answer extraction in :mod:`kdlab.eval.extract`.

>>> [t.name for t in resolve_tasks("gsm8k,commonsense")][:3]
['gsm8k', 'boolq', 'piqa']
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kdlab.errors import KdlabError

ANSWER_TYPES = ("number", "letter", "label")
TASK_GROUPS = ("math", "commonsense", "synthetic")
DEFAULT_MAX_NEW_TOKENS = {"math": 256, "synthetic": 256, "commonsense": 32}
# Generation stops when the model starts a new prompt section (it sometimes continues the Alpaca template).
STOP = ("### Instruction", "### Response", "### Input")


@dataclass(frozen=True)
class Task:
    """One evaluation task.

    - ``name``: registry name (``"gsm8k"``, ``"ARC-Easy"``, ...).
    - ``answer_type``: ``"number"``, ``"letter"`` (options A-E: AQuA, mathqa) or ``"label"`` (commonsense labels).
    - ``labels``: allowed answers for letter/label tasks, canonical spelling (lowercase for labels).
    - ``folder``: LLM-Adapters folder under ``--data-dir`` (``DIR/<folder>/test.json``); defaults to ``name``.
    - ``hub``: optional Hub source ``{"path", "name", "split", "map"}``; ``map`` names a mapping function of
      :mod:`kdlab.eval.task_examples` that turns one dataset row into an :class:`~kdlab.data.formats.Example`. Used
      when no ``--data-dir`` is given.
    - ``max_new_tokens``: generation budget; ``None`` means the group default (256 math/synthetic, 32 commonsense).
    - ``stop``: stop strings for generation.
    - ``group``: task family, ``"math"``, ``"commonsense"`` or ``"synthetic"`` (sets the defaults above). The named
      task sets of :data:`GROUPS` are separate: ``mathqa`` is a math task but not in the paper's ``math`` set.
    """

    name: str
    answer_type: str
    labels: tuple[str, ...] = ()
    folder: str = ""
    hub: dict | None = field(default=None, hash=False, compare=False)
    max_new_tokens: int | None = None
    stop: tuple[str, ...] = STOP
    group: str = "math"

    def __post_init__(self) -> None:
        if self.answer_type not in ANSWER_TYPES:
            raise ValueError(f"task {self.name}: answer_type {self.answer_type!r} not in {ANSWER_TYPES}")
        if self.group not in TASK_GROUPS:
            raise ValueError(f"task {self.name}: group {self.group!r} not in {TASK_GROUPS}")
        if self.answer_type != "number" and not self.labels:
            raise ValueError(f"task {self.name}: a {self.answer_type} task needs labels")
        if not self.folder:
            object.__setattr__(self, "folder", self.name)
        if self.max_new_tokens is None:
            object.__setattr__(self, "max_new_tokens", DEFAULT_MAX_NEW_TOKENS[self.group])


LETTERS = ("A", "B", "C", "D", "E")


def _labels(prefix: str, n: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}" for i in range(1, n + 1))


_TASK_LIST = [
    Task(
        "gsm8k",
        "number",
        group="math",
        hub={"path": "openai/gsm8k", "name": "main", "split": "test", "map": "map_gsm8k"},
    ),
    Task("SVAMP", "number", group="math"),
    Task("MultiArith", "number", group="math"),
    Task("AddSub", "number", group="math"),
    Task("SingleEq", "number", group="math"),
    Task("AQuA", "letter", LETTERS, group="math"),
    Task("mathqa", "letter", LETTERS, group="math"),
    Task("boolq", "label", ("true", "false"), group="commonsense"),
    Task("piqa", "label", _labels("solution", 2), group="commonsense"),
    Task("social_i_qa", "label", _labels("answer", 3), group="commonsense"),
    Task(
        "hellaswag",
        "label",
        _labels("ending", 4),
        group="commonsense",
        hub={"path": "Rowan/hellaswag", "name": None, "split": "validation", "map": "map_hellaswag"},
    ),
    Task("winogrande", "label", _labels("option", 2), group="commonsense"),
    # a few ARC questions have 3 or 5 options (ARC-Easy has one gold "answer5")
    Task("ARC-Easy", "label", _labels("answer", 5), group="commonsense"),
    Task("ARC-Challenge", "label", _labels("answer", 5), group="commonsense"),
    Task("openbookqa", "label", _labels("answer", 4), group="commonsense"),
    Task("arith", "number", folder="arith", group="synthetic"),
]
TASKS: dict[str, Task] = {task.name: task for task in _TASK_LIST}

GROUPS: dict[str, list[str]] = {
    "math": ["gsm8k", "SVAMP", "MultiArith", "AddSub", "AQuA", "SingleEq"],
    "commonsense": [
        "boolq",
        "piqa",
        "social_i_qa",
        "hellaswag",
        "winogrande",
        "ARC-Easy",
        "ARC-Challenge",
        "openbookqa",
    ],
}
GROUPS["paper14"] = GROUPS["math"] + GROUPS["commonsense"]

_BY_LOWER = {name.lower(): name for name in TASKS}
_GROUP_BY_LOWER = {name.lower(): name for name in GROUPS}


def get_task(task: str | Task) -> Task:
    """The :class:`Task` for a name (case-insensitive) or the task itself; unknown names raise :class:`KdlabError`."""
    if isinstance(task, Task):
        return task
    tasks = resolve_tasks(task)
    if len(tasks) != 1:
        raise KdlabError(f"task {task!r}: expected one task, got {len(tasks)} ({', '.join(t.name for t in tasks)})")
    return tasks[0]


def _known() -> str:
    return f"known tasks: {', '.join(TASKS)}; groups: {', '.join(GROUPS)}"


def resolve_tasks(spec: str | list[str] | tuple[str, ...]) -> list[Task]:
    """Tasks named by ``spec``: comma-separated task and group names, or a list of them.

    Names match case-insensitively (``"GSM8K"``, ``"arc-easy"``); groups expand in their order; duplicates are
    dropped keeping the first occurrence. An unknown or empty name raises :class:`KdlabError` listing the known
    names and groups.
    """
    items = [spec] if isinstance(spec, str) else list(spec)
    names = [part.strip() for item in items for part in str(item).split(",") if part.strip()]
    if not names:
        raise KdlabError(f"no tasks given ({_known()})")
    resolved: list[Task] = []
    for name in names:
        key = name.lower()
        if key in _GROUP_BY_LOWER:
            found = [TASKS[n] for n in GROUPS[_GROUP_BY_LOWER[key]]]
        elif key in _BY_LOWER:
            found = [TASKS[_BY_LOWER[key]]]
        else:
            raise KdlabError(f"unknown task {name!r} ({_known()})")
        resolved.extend(task for task in found if task not in resolved)
    return resolved
