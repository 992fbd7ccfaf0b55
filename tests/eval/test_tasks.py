"""Task registry: resolving names and groups, validating task records."""

import pytest
from kdlab_testing import SHARED_TASKS

from kdlab.errors import KdlabError
from kdlab.eval import task_examples
from kdlab.eval.tasks import GROUPS, TASKS, Task, get_task, resolve_tasks


def _names(tasks):
    return [task.name for task in tasks]


def test_registry_contents():
    assert set(TASKS) == set(SHARED_TASKS) | {"hellaswag", "arith"}
    assert GROUPS["math"] == ["gsm8k", "SVAMP", "MultiArith", "AddSub", "AQuA", "SingleEq"]
    assert len(GROUPS["commonsense"]) == 8 and GROUPS["paper14"] == GROUPS["math"] + GROUPS["commonsense"]
    for task in TASKS.values():
        assert task.folder and task.max_new_tokens > 0
        assert (task.answer_type == "number") == (not task.labels)
        if task.hub:
            assert callable(getattr(task_examples, task.hub["map"]))
    assert TASKS["gsm8k"].max_new_tokens == 256 and TASKS["boolq"].max_new_tokens == 32
    assert TASKS["AQuA"].labels == ("A", "B", "C", "D", "E") and TASKS["piqa"].labels == ("solution1", "solution2")
    assert TASKS["arith"].group == "synthetic" and TASKS["arith"].folder == "arith"
    assert hash(TASKS["hellaswag"])  # hashable despite the hub dict


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("gsm8k,boolq", ["gsm8k", "boolq"]),
        ("gsm8k, boolq ,", ["gsm8k", "boolq"]),
        ("math", GROUPS["math"]),
        (["paper14"], GROUPS["paper14"]),
        ("commonsense,boolq,math", GROUPS["commonsense"] + GROUPS["math"]),  # duplicates dropped, order kept
        ("SVAMP,math", ["SVAMP", "gsm8k", "MultiArith", "AddSub", "AQuA", "SingleEq"]),
        (["GSM8K", "arc-easy,Arith"], ["gsm8k", "ARC-Easy", "arith"]),  # case-insensitive
    ],
)
def test_resolve_tasks(spec, expected):
    assert _names(resolve_tasks(spec)) == expected


def test_resolve_unknown_names():
    with pytest.raises(KdlabError) as info:
        resolve_tasks("gsm8k,gsm9k")
    message = str(info.value)
    assert "unknown task 'gsm9k'" in message and "gsm8k" in message and "paper14" in message and "\n" not in message
    with pytest.raises(KdlabError, match="no tasks given"):
        resolve_tasks(" , ")
    with pytest.raises(KdlabError, match="expected one task"):
        get_task("math")
    assert get_task(TASKS["boolq"]) is TASKS["boolq"]


def test_task_validation():
    with pytest.raises(ValueError):
        Task("x", "word")
    with pytest.raises(ValueError):
        Task("x", "label")  # labels needed
    task = Task("x", "label", ("yes", "no"), group="commonsense")
    assert task.folder == "x" and task.max_new_tokens == 32
