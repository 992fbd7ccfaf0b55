"""Loading the test examples of a task from files and (faked) Hub datasets; the Hub row mappings."""

import json
import sys
import types
from pathlib import Path

import pytest
from kdlab_testing import SHARED_TASKS

from kdlab.data.formats import Example
from kdlab.errors import KdlabError
from kdlab.eval.extract import extract, is_correct
from kdlab.eval.task_examples import load_task_examples, map_gsm8k, map_hellaswag
from kdlab.eval.tasks import TASKS, Task

EVAL_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "paper-kd-generalization" / "eval"


@pytest.fixture
def eval_dir() -> Path:
    if not EVAL_DIR.is_dir():
        pytest.skip(f"../shared data not available: {EVAL_DIR} does not exist")
    return EVAL_DIR


@pytest.mark.shared
@pytest.mark.parametrize("name", SHARED_TASKS)
def test_load_shared_with_limit(eval_dir, name):
    examples = load_task_examples(name, eval_dir.parent / "eval", limit=3)
    assert len(examples) == 3 and all(isinstance(e, Example) and e.instruction and e.answer for e in examples)
    assert examples == load_task_examples(TASKS[name], str(eval_dir))[:3]


@pytest.mark.shared
def test_load_shared_counts(eval_dir):
    counts = {name: len(load_task_examples(name, eval_dir)) for name in ("gsm8k", "AQuA", "boolq", "winogrande")}
    assert counts == {"gsm8k": 1319, "AQuA": 254, "boolq": 3270, "winogrande": 1267}


def test_missing_folder(tmp_path):
    with pytest.raises(KdlabError) as info:
        load_task_examples("SVAMP", tmp_path)
    message = str(info.value)
    assert str(tmp_path / "SVAMP" / "test.json") in message and "--data-dir" in message
    with pytest.raises(KdlabError, match="kdlab data synth"):
        load_task_examples("arith", tmp_path)


def test_no_data_dir_without_hub():
    with pytest.raises(KdlabError, match=r"pass --data-dir DIR with DIR/SVAMP/test.json"):
        load_task_examples("SVAMP")


def test_bad_limit(tmp_path):
    with pytest.raises(KdlabError, match="positive integer"):
        load_task_examples("SVAMP", tmp_path, limit=0)


def test_bad_gold_names_file_index_field(tmp_path):
    folder = tmp_path / "gsm8k"
    folder.mkdir()
    records = [
        {"instruction": "1+1?", "input": "", "output": "", "answer": "2"},
        {"instruction": "2+2?", "input": "", "output": "", "answer": "four"},
    ]
    (folder / "test.json").write_text(json.dumps(records))
    with pytest.raises(KdlabError, match=r"test.json\[1\]: field 'answer'.*not a number"):
        load_task_examples("gsm8k", tmp_path)
    assert len(load_task_examples("gsm8k", tmp_path, limit=1)) == 1  # only the loaded examples are checked
    (folder / "test.json").write_text(json.dumps([{"instruction": "x", "output": ""}, 3]))
    with pytest.raises(KdlabError, match=r"test.json\[1\]"):
        load_task_examples("gsm8k", tmp_path)


def test_arith_from_synth(tmp_path):
    from kdlab.data.synth import write_synth

    write_synth(tmp_path / "arith" / "test.json", n=6, seed=1, split="test")
    examples = load_task_examples("arith", tmp_path, limit=4)
    assert len(examples) == 4
    for example in examples:  # the synthetic rationales end "The answer is N."
        assert is_correct("arith", extract("arith", example.output), example.answer)


def test_map_gsm8k():
    row = {
        "question": "Natalia sold clips to 48 friends, then half as many. How many? ",
        "answer": "She sold 48/2 = <<48/2=24>>24 in May.\nShe sold 48+24 = <<48+24=72>>72 clips.\n#### 1,072",
    }
    example = map_gsm8k(row)
    assert example.answer == "1072" and example.input == ""
    assert example.instruction == "Natalia sold clips to 48 friends, then half as many. How many?"
    assert "<<" not in example.output and example.output.endswith("The answer is 1072.")
    with pytest.raises(KdlabError, match="####"):
        map_gsm8k({"question": "q", "answer": "no final line"})


HELLASWAG_ROW = {
    "activity_label": "Removing ice from car",
    "ctx_a": "Then, the man writes over the snow.",
    "ctx_b": "then",
    "ctx": "Then, the man writes over the snow. then",
    "endings": [
        ", the man adds wax.",
        ", a person boards a lift.",
        ", the man puts on a coat.",
        ", the man continues removing the snow on his car.",
    ],
    "label": "3",
}


def test_map_hellaswag():
    example = map_hellaswag(HELLASWAG_ROW)
    assert example.answer == "ending4" and example.output == "the correct answer is ending4"
    assert example.instruction.startswith(
        "Please choose the correct ending to complete the given sentence: "
        "Removing ice from car: Then, the man writes over the snow. Then\n\n"
        "Ending1: , the man adds wax. Ending2: "
    )
    assert example.instruction.endswith("\n\nAnswer format: ending1/ending2/ending3/ending4")
    # the echoed format line is not an answer; the stated one is
    assert extract("hellaswag", example.instruction.split("\n\n")[-1] + " the correct answer is ending2") == "ending2"
    with pytest.raises(KdlabError, match="no label"):
        map_hellaswag({**HELLASWAG_ROW, "label": ""})


@pytest.fixture
def fake_datasets(monkeypatch):
    calls = []
    rows = {
        "openai/gsm8k": [{"question": f"q{i}?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"} for i in range(5)],
        "Rowan/hellaswag": [HELLASWAG_ROW] * 3,
    }

    def load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        if path not in rows:
            raise FileNotFoundError(f"Dataset '{path}' doesn't exist on the Hub\nmore detail")
        data = rows[path]
        if split and "[:" in split:
            data = data[: int(split.split("[:")[1].rstrip("]"))]
        return data

    module = types.ModuleType("datasets")
    module.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", module)
    return calls


def test_load_from_hub(fake_datasets):
    examples = load_task_examples("gsm8k", limit=2)
    assert fake_datasets == [("openai/gsm8k", "main", "test[:2]")]
    assert [e.answer for e in examples] == ["1", "2"] and examples[0].instruction == "q0?"
    examples = load_task_examples("hellaswag")
    assert fake_datasets[-1] == ("Rowan/hellaswag", None, "validation")
    assert len(examples) == 3 and examples[0].answer == "ending4"


def test_hub_errors_are_one_line(fake_datasets, monkeypatch):
    bad = Task("badhub", "number", hub={"path": "nobody/nothing", "name": None, "split": "test", "map": "map_gsm8k"})
    with pytest.raises(KdlabError) as info:
        load_task_examples(bad)
    message = str(info.value)
    assert "hf:nobody/nothing@test" in message and "doesn't exist" in message and "\n" not in message
    unmapped = Task("nomap", "number", hub={"path": "openai/gsm8k", "split": "test", "map": "no_such_map"})
    with pytest.raises(KdlabError, match="no_such_map"):
        load_task_examples(unmapped)
    broken = Task("broken", "number", hub={"path": "Rowan/hellaswag", "split": "validation", "map": "map_gsm8k"})
    with pytest.raises(KdlabError, match=r"hf:Rowan/hellaswag@validation\[0\]: cannot map row \(KeyError"):
        load_task_examples(broken)
