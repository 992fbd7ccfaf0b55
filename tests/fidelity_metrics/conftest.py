"""Hand-made teacher and student evaluation folders with known answers, shared by the fidelity tests."""

import json
from types import SimpleNamespace

import pytest
import yaml

# teacher / student answers with known agreement (gold, teacher pred, student pred):
#   arith: id0 right/right agree, id1 right/wrong, id2 wrong/wrong same answer, id3 no answer on both sides,
#          id4 wrong/wrong same answer, id5 wrong / student no answer
#   boolq: id0 teacher wrong / student right, id1 both wrong with the same answer
GOLD = {"arith": ["1", "2", "9", "4", "7", "8"], "boolq": ["true", "false"]}
TEACHER = {"arith": ["1", "2", "3", None, "5", "6"], "boolq": ["false", "true"]}
STUDENT = {"arith": ["1", "3", "3", None, "5", None], "boolq": ["true", "true"]}
T_OUT = {
    "arith": ["so 1 + 0 = 1 . The answer is 1.", "the cat sat on the mat", "x", "", "the answer is 5", "3 + 3 = 6"],
    "boolq": ["the correct answer is false", "the correct answer is true"],
}
S_OUT = {
    "arith": ["so 1 + 0 = 1 . The answer is 1.", "mat the cat", "y", "nothing", "The answer is 5.", "no idea"],
    "boolq": ["the correct answer is true", "the correct answer is true"],
}


def _write_eval(folder, tasks, mode="generate", extraction="strict"):
    """A hand-made evaluation folder. ``tasks``: {task: [(pred, gold, output), ...]} (output ignored for loglik)."""
    (folder / "predictions").mkdir(parents=True)
    (folder / "config.yaml").write_text(
        yaml.safe_dump(
            {"model": "hand", "tasks": sorted(tasks), "out": str(folder), "mode": mode, "extraction": extraction}
        )
    )
    metrics = {}
    for task, rows in tasks.items():
        lines = []
        for index, (pred, gold, output) in enumerate(rows):
            correct = pred is not None and pred == gold
            record = {"id": index, "prompt": f"question {index}", "gold": gold, "pred": pred, "correct": correct}
            if mode == "generate":
                record.update(
                    output=output, preds={"paper": pred, "strict": pred}, corrects={"paper": correct, "strict": correct}
                )
            else:
                record.update(options={}, scores={}, scores_norm={}, pred_norm=pred, correct_norm=correct)
            lines.append(json.dumps(record) + "\n")
        (folder / "predictions" / f"{task}.jsonl").write_text("".join(lines))
        metrics[task] = {"accuracy": sum(json.loads(line)["correct"] for line in lines) / len(lines), "n": len(lines)}
    (folder / "metrics.json").write_text(json.dumps({"tasks": metrics}))
    return folder


def _folders(tmp_path, mode="generate"):
    teacher = _write_eval(tmp_path / "teacher", {t: list(zip(TEACHER[t], GOLD[t], T_OUT[t])) for t in GOLD}, mode)
    student = _write_eval(tmp_path / "student", {t: list(zip(STUDENT[t], GOLD[t], S_OUT[t])) for t in GOLD}, mode)
    return teacher, student


@pytest.fixture
def answers():
    """The known answers above: gold, teacher, student (preds) and teacher_output, student_output, by task."""
    return SimpleNamespace(gold=GOLD, teacher=TEACHER, student=STUDENT, teacher_output=T_OUT, student_output=S_OUT)


@pytest.fixture
def write_eval():
    """``write_eval(folder, tasks, mode="generate", extraction="strict")``: a hand-made evaluation folder."""
    return _write_eval


@pytest.fixture
def folders():
    """``folders(tmp_path, mode="generate")``: the teacher's and the student's folders with the known answers."""
    return _folders


@pytest.fixture(scope="session")
def talker_eval(tiny_models, tmp_path_factory):
    """A generate evaluation of the tiny "talker" model on 4 synthetic arithmetic examples."""
    from kdlab.data.synth import write_synth
    from kdlab.eval.evaluate import EvalSettings, evaluate

    root = tmp_path_factory.mktemp("fidelity")
    write_synth(root / "data" / "arith" / "test.json", n=4, seed=3, split="test")
    evaluate(
        EvalSettings(
            model=str(tiny_models["talker"]),
            tasks=["arith"],
            data_dir=str(root / "data"),
            out=str(root / "talker_eval"),
            limit=4,
            max_new_tokens=12,
        )
    )
    return root / "talker_eval"
