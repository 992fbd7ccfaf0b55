"""Answer options parsed from LLM-Adapters instructions, for log-likelihood scoring of choice tasks.

Formats (as in the LLM-Adapters test files):
- ``Answer1: ... Answer2: ...`` (social_i_qa, ARC, openbookqa), ``Solution1:`` (piqa), ``Option1:`` (winogrande),
  ``Ending1:`` (hellaswag): labels ``answer1``, ``solution1``, ... up to the ``Answer format:`` line;
- ``Answer Choices: (A) ... (B) ...`` (AQuA) and ``The options: A ) ... , B ) ...`` (mathqa): labels ``A`` ... ``E``;
- boolq: the options are the words ``true`` and ``false``.
"""

from __future__ import annotations

import re

from kdlab.errors import KdlabError
from kdlab.eval.tasks import Task

_NUMBERED = re.compile(r"\b(Answer|Solution|Option|Ending)(\d)\s*:\s*")
_FORMAT_LINE = re.compile(r"\s*Answer format:.*$", re.S)
_LETTERED = re.compile(r"\(([A-E])\)\s*")
_MATHQA_LETTERED = re.compile(r"(?:^|,\s*)([A-E])\s\)\s*")


def parse_options(task: Task, instruction: str) -> dict[str, str]:
    """Map each of the task's labels to its option text; a KdlabError if the instruction has no options."""
    if task.labels == ("true", "false"):
        return {"true": "true", "false": "false"}
    if task.answer_type == "letter":
        _, sep, choices = instruction.rpartition("Answer Choices:")
        if sep:
            return _split(_LETTERED, choices, lambda match: match.group(1), task, instruction)
        _, sep, choices = instruction.rpartition("The options:")  # mathqa: "A ) 38 , B ) 27.675 , ..."
        choices = choices.strip()
        if choices.startswith("[") and choices.endswith("]"):  # some mathqa items hold a Python list of options
            choices = " , ".join(item.strip(" '\"") for item in choices[1:-1].split("', '"))
        return _split(_MATHQA_LETTERED, choices, lambda match: match.group(1), task, instruction)
    body = _FORMAT_LINE.sub("", instruction)
    return _split(_NUMBERED, body, lambda match: f"{match.group(1).lower()}{match.group(2)}", task, instruction)


def _split(pattern: re.Pattern, text: str, label_of, task: Task, instruction: str) -> dict[str, str]:
    matches = list(pattern.finditer(text))
    options = {}
    for match, following in zip(matches, matches[1:] + [None]):
        end = following.start() if following is not None else len(text)
        options[label_of(match)] = text[match.end() : end].strip()
    options = {label: value for label, value in options.items() if label in task.labels}
    if len(options) < 2:
        raise KdlabError(f"{task.name}: could not parse answer options from instruction: {instruction[:80]!r}")
    return options
