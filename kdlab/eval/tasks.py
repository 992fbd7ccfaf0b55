"""Evaluation tasks as data: a registry of :class:`Task` records, named groups and example loading.

A task says what kind of answer it expects (``number``, ``letter`` or ``label``), which labels are allowed, where
its LLM-Adapters test file lives under ``--data-dir`` (``DIR/<folder>/test.json``), optionally how to fetch it from
the Hugging Face Hub instead, and how to generate for it (``max_new_tokens``, ``stop`` strings). Answer extraction
lives in :mod:`kdlab.eval.extract`.

>>> [t.name for t in resolve_tasks("gsm8k,commonsense")][:3]
['gsm8k', 'boolq', 'piqa']
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from kdlab.data.formats import Example, load_json_examples
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
    - ``hub``: optional Hub source ``{"path", "name", "split", "map"}``; ``map`` names a mapping function of this
      module that turns one dataset row into an :class:`Example`. Used when no ``--data-dir`` is given.
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
    Task("gsm8k", "number", group="math",
         hub={"path": "openai/gsm8k", "name": "main", "split": "test", "map": "map_gsm8k"}),
    Task("SVAMP", "number", group="math"),
    Task("MultiArith", "number", group="math"),
    Task("AddSub", "number", group="math"),
    Task("SingleEq", "number", group="math"),
    Task("AQuA", "letter", LETTERS, group="math"),
    Task("mathqa", "letter", LETTERS, group="math"),
    Task("boolq", "label", ("true", "false"), group="commonsense"),
    Task("piqa", "label", _labels("solution", 2), group="commonsense"),
    Task("social_i_qa", "label", _labels("answer", 3), group="commonsense"),
    Task("hellaswag", "label", _labels("ending", 4), group="commonsense",
         hub={"path": "Rowan/hellaswag", "name": None, "split": "validation", "map": "map_hellaswag"}),
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
    "commonsense": ["boolq", "piqa", "social_i_qa", "hellaswag", "winogrande", "ARC-Easy", "ARC-Challenge",
                    "openbookqa"],
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


# ---------------------------------------------------------------------------------------------------------------
# Hub row mappings (named by Task.hub["map"]): one dataset row -> one LLM-Adapters style Example.

_GSM8K_CALC = re.compile(r"<<[^<>]*>>")


def map_gsm8k(row: dict) -> Example:
    """openai/gsm8k (``main``): ``question`` -> instruction; ``answer`` is a rationale ending ``#### N``.

    The gold answer is ``N`` without thousands separators; the output is the rationale without the calculator
    annotations ``<<a*b=c>>``, ending ``The answer is N.`` (a reference, the gold of the eval is ``answer``).
    """
    rationale, sep, final = row["answer"].rpartition("####")
    if not sep or not final.strip():
        raise KdlabError(f"gsm8k answer has no '#### N' line: {row['answer'][-80:]!r}")
    answer = final.strip().replace(",", "")
    output = _GSM8K_CALC.sub("", rationale).strip()
    output = f"{output}\nThe answer is {answer}." if output else f"The answer is {answer}."
    return Example(instruction=row["question"].strip(), output=output, input="", answer=answer)


def map_hellaswag(row: dict) -> Example:
    """Rowan/hellaswag: context + 4 endings -> the LLM-Adapters commonsense prompt; label ``k`` -> ``ending{k+1}``.

    Instruction: ``"Please choose the correct ending to complete the given sentence: {activity_label}: {ctx}\\n\\n
    Ending1: ... Ending2: ... Ending3: ... Ending4: ...\\n\\nAnswer format: ending1/ending2/ending3/ending4"`` with
    ``ctx = ctx_a + " " + ctx_b.capitalize()`` (as LLM-Adapters / lm-eval build it). Rows without a label (the
    test split) are refused.
    """
    label = str(row.get("label", "")).strip()
    if not label.isdigit():
        raise KdlabError("hellaswag row has no label (use the validation split)")
    ctx_b = row.get("ctx_b", "") or ""
    ctx = f"{row['ctx_a']} {ctx_b.capitalize()}".strip() if "ctx_a" in row else row["ctx"]
    endings = list(row["endings"])
    options = " ".join(f"Ending{i}: {ending}" for i, ending in enumerate(endings, start=1))
    formats = "/".join(f"ending{i}" for i in range(1, len(endings) + 1))
    instruction = (f"Please choose the correct ending to complete the given sentence: {row['activity_label']}: {ctx}"
                   f"\n\n{options}\n\nAnswer format: {formats}")
    answer = f"ending{int(label) + 1}"
    return Example(instruction=instruction, output=f"the correct answer is {answer}", input="", answer=answer)


# ---------------------------------------------------------------------------------------------------------------


def _check_gold(task: Task, examples: list[Example], where: str) -> None:
    """Every example needs a gold answer of the task's kind; errors name the example and the field."""
    from kdlab.eval.extract import normalize_gold

    for index, example in enumerate(examples):
        try:
            normalize_gold(task, example.answer)
        except KdlabError as exc:
            raise KdlabError(f"{where}[{index}]: field 'answer': {exc}") from None


def _load_hub(task: Task, limit: int | None) -> list[Example]:
    hub = task.hub or {}
    split = hub.get("split") or "test"
    source = f"hf:{hub.get('path')}{':' + hub['name'] if hub.get('name') else ''}@{split}"
    mapper = globals().get(str(hub.get("map")))
    if not callable(mapper):
        raise KdlabError(f"task {task.name}: hub mapping {hub.get('map')!r} is not a function of kdlab.eval.tasks")
    import datasets  # imported lazily: slow import

    try:
        dataset = datasets.load_dataset(hub["path"], hub.get("name"), split=f"{split}[:{limit}]" if limit else split)
    except Exception as exc:  # network, missing dataset, bad split: one line for the user
        first = (str(exc).splitlines() or [""])[0]
        raise KdlabError(f"{source}: could not load Hub dataset for task {task.name} ({type(exc).__name__}: {first}); "
                         f"pass --data-dir DIR with DIR/{task.folder}/test.json to use local data") from None
    examples = []
    for index, row in enumerate(dataset):
        try:
            examples.append(mapper(dict(row)))
        except KdlabError as exc:
            raise KdlabError(f"{source}[{index}]: {exc}") from None
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise KdlabError(f"{source}[{index}]: cannot map row ({type(exc).__name__}: {exc})") from None
    return examples


def load_task_examples(task: str | Task, data_dir: str | Path | None = None, limit: int | None = None) -> list[Example]:
    """The test examples of ``task``, in file order, the first ``limit`` of them when given.

    With ``data_dir``: ``data_dir/<folder>/test.json`` (LLM-Adapters JSON; errors name the file, index and field;
    a missing file is a :class:`KdlabError` naming the path). Without it: the task's Hub source, loaded through
    ``datasets`` and mapped row by row; a task without one asks for ``--data-dir``. Every gold ``answer`` is checked
    to be a number / an allowed letter or label.
    """
    task = get_task(task)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise KdlabError(f"limit {limit!r}: must be a positive integer (or None for all examples)")
    if data_dir is not None:
        path = Path(data_dir) / task.folder / "test.json"
        if not path.is_file():
            hint = " (generate one with `kdlab data synth --split test`)" if task.group == "synthetic" else ""
            raise KdlabError(f"{path}: test file for task {task.name} not found; pass --data-dir DIR with "
                             f"DIR/{task.folder}/test.json{hint}")
        examples = load_json_examples(path)
        where = str(path)
    elif task.hub:
        examples = _load_hub(task, limit)
        where = f"hf:{task.hub.get('path')}"
    else:
        hint = " (generate it with `kdlab data synth --split test`)" if task.group == "synthetic" else ""
        raise KdlabError(f"task {task.name}: no local data given and no Hub source; pass --data-dir DIR with "
                         f"DIR/{task.folder}/test.json{hint}")
    if limit is not None:
        examples = examples[:limit]
    _check_gold(task, examples, where)
    return examples
