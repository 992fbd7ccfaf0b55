"""The test examples of an evaluation task (:class:`kdlab.eval.tasks.Task`): from a local LLM-Adapters folder
(``DIR/<folder>/test.json``) or from the task's Hugging Face Hub source, mapped row by row; every gold answer is
checked to be of the task's kind (:func:`kdlab.eval.extract.normalize_gold`).
"""

from __future__ import annotations

import re
from pathlib import Path

from kdlab.data.formats import Example, load_json_examples
from kdlab.errors import KdlabError
from kdlab.eval.extract import normalize_gold
from kdlab.eval.tasks import Task, get_task

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
    instruction = (
        f"Please choose the correct ending to complete the given sentence: {row['activity_label']}: {ctx}"
        f"\n\n{options}\n\nAnswer format: {formats}"
    )
    answer = f"ending{int(label) + 1}"
    return Example(instruction=instruction, output=f"the correct answer is {answer}", input="", answer=answer)


# ---------------------------------------------------------------------------------------------------------------


def _check_gold(task: Task, examples: list[Example], where: str) -> None:
    """Every example needs a gold answer of the task's kind; errors name the example and the field."""
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
        raise KdlabError(
            f"task {task.name}: hub mapping {hub.get('map')!r} is not a function of kdlab.eval.task_examples"
        )
    import datasets  # imported lazily: slow import

    try:
        dataset = datasets.load_dataset(hub["path"], hub.get("name"), split=f"{split}[:{limit}]" if limit else split)
    except Exception as exc:  # network, missing dataset, bad split: one line for the user
        first = (str(exc).splitlines() or [""])[0]
        raise KdlabError(
            f"{source}: could not load Hub dataset for task {task.name} ({type(exc).__name__}: {first}); "
            f"pass --data-dir DIR with DIR/{task.folder}/test.json to use local data"
        ) from None
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
            raise KdlabError(
                f"{path}: test file for task {task.name} not found; pass --data-dir DIR with "
                f"DIR/{task.folder}/test.json{hint}"
            )
        examples = load_json_examples(path)
        where = str(path)
    elif task.hub:
        examples = _load_hub(task, limit)
        where = f"hf:{task.hub.get('path')}"
    else:
        hint = " (generate it with `kdlab data synth --split test`)" if task.group == "synthetic" else ""
        raise KdlabError(
            f"task {task.name}: no local data given and no Hub source; pass --data-dir DIR with "
            f"DIR/{task.folder}/test.json{hint}"
        )
    if limit is not None:
        examples = examples[:limit]
    _check_gold(task, examples, where)
    return examples
