"""Fair comparisons: settings selected per run on a validation split, the test split read only after selection."""

import json
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import yaml
from kdlab_testing import edited_spec

from kdlab.data.formats import Example
from kdlab.data.split import validation_split
from kdlab.errors import KdlabError
from kdlab.stats.results import collect_results, collect_selection
from kdlab.study import node_runners
from kdlab.study.executors.local import run_plan
from kdlab.study.folder import prepare_study
from kdlab.study.kinds import KIND_ORDER, KINDS
from kdlab.study.nodes import SELECTED
from kdlab.study.plan import build_plan
from kdlab.study.spec import load_spec

LRS = [1e-3, 2e-2]


@pytest.fixture(scope="module")
def tuned_spec(tiny_models, tmp_path_factory) -> Path:
    """1 teacher, 1 pruned student, SFT + fkl at tau 1 and 2, lr tuned over two values on a 6-example validation split."""
    from kdlab.data.synth import write_synth

    root = tmp_path_factory.mktemp("tuned-spec")
    write_synth(root / "train.json", n=30, seed=0, split="train")
    write_synth(root / "eval" / "arith" / "test.json", n=6, seed=1, split="test")
    train = {"max_steps": 2, "batch_size": 4, "max_length": 320, "save_steps": 0, "lr": 1e-3}
    spec = {
        "name": "tuned",
        "models": {
            "teacher": {"spec": str(tiny_models["teacher"])},
            "pruned-1l": {"prune": {"model": "teacher", "keep_layers": 1}},
        },
        "teachers": ["teacher"],
        "students": ["pruned-1l"],
        "domains": {"arith": {"train": "train.json", "tasks": ["arith"], "data_dir": "eval"}},
        "methods": {"fkl": {"loss": "fkl"}},
        "temperatures": [1.0, 2.0],
        "teacher_training": {"lora": {"enabled": True}, "train": dict(train)},
        "student_training": {"lora": {"enabled": False}, "train": dict(train)},
        "teacher_cache": {"enabled": True, "k": 16},
        "evaluation": {"limit": 4, "max_new_tokens": 8, "batch_size": 8},
        "fidelity": {"enabled": True, "token_kl": True, "embeddings": False},
        "tuning": {"params": {"train.lr": LRS}, "validation": {"n": 6, "seed": 3}},
    }
    path = root / "tuned.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["tuning"]["params"].update({"lr": [1]}), "tuning.params: 'lr' is not a student run setting"),
        (lambda d: d["tuning"]["params"].update({"train.seed": [1, 2]}), "tuning.params.train.seed: cannot be tuned"),
        (lambda d: d["tuning"]["params"].update({"train.lr": [-1.0]}), "tuning.params: train.lr must be > 0"),
        (lambda d: d["tuning"]["params"].update({"train.lr": [1e-3, 1e-3]}), "values repeat"),
        (lambda d: d["tuning"].update(temperature="test"), "tuning.temperature: 'test' is not one of"),
        (
            lambda d: d["tuning"]["validation"].update(n=30),
            "tuning.validation.n: 30 validation examples would leave no",
        ),
        (lambda d: d["tuning"]["validation"].update(file="missing.json"), "tuning.validation.file: file not found"),
        (lambda d: d["tuning"]["validation"].update(task="chess"), "tuning.validation.task: unknown task 'chess'"),
    ],
)
def test_tuning_spec_errors_name_the_key(tuned_spec, tmp_path, edit, message):
    with pytest.raises(KdlabError, match=message):
        load_spec(edited_spec(tuned_spec, tmp_path, edit))


def _examples(questions) -> list[Example]:
    return [Example(instruction=q, input="", output="The answer is 1.", answer="1") for q in questions]


def test_validation_split_is_disjoint_and_seeded():
    train = _examples([f"What is {i} plus 1?" for i in range(20)] + ["What is 0 plus 1?"])  # one repeated question
    test = _examples(["What is 3 plus 1?"])
    split = validation_split(train, 5, seed=0, test=test)
    asked = {e.instruction for e in split.validation}
    assert not asked & {e.instruction for e in split.train}  # a repeated question never straddles the split
    assert "What is 3 plus 1?" not in asked  # test questions are never validation questions
    assert len(split.train) + split.removed_from_train + len(split.validation) + split.dropped_test_overlap == len(
        train
    )
    again = validation_split(train, 5, seed=0, test=test)
    assert [e.instruction for e in again.validation] == [e.instruction for e in split.validation]
    assert [e.instruction for e in validation_split(train, 5, seed=1).validation] != [
        e.instruction for e in split.validation
    ]
    given = validation_split(train, 0, seed=0, validation=_examples(["What is 4 plus 1?", "new one"]))
    assert "What is 4 plus 1?" not in {e.instruction for e in given.train} and given.removed_from_train == 1
    with pytest.raises(KdlabError, match="would leave no training data"):
        validation_split(train, 21, seed=0)


def _fake_candidates(tmp_path: Path, scores: list[float]) -> dict:
    candidates = []
    for i, score in enumerate(scores):
        run, val = tmp_path / "kd" / f"run{i}", tmp_path / "val" / f"run{i}"
        (run / "final").mkdir(parents=True)
        val.mkdir(parents=True)
        (val / "metrics.json").write_text(json.dumps({"tasks": {"arith": {"n": 10, "accuracy": score}}}))
        candidates.append({"run": f"study:kd/run{i}", "eval": f"study:val/run{i}", "settings": {"train.lr": 10.0**-i}})
    return {"candidates": candidates, "task": "arith", "lora": False}


@pytest.mark.parametrize("scores, chosen", [([0.1, 0.5, 0.3], 1), ([0.4, 0.2, 0.4], 0), ([0.0, 0.0, 0.9], 2)])
def test_select_takes_the_best_validation_score_first_on_ties(tmp_path, scores, chosen):
    out = tmp_path / "select" / "x"
    node_runners.select(_fake_candidates(tmp_path, scores), out, tmp_path)
    selection = json.loads((out / "selection.json").read_text())
    assert selection["selected"]["run"] == f"kd/run{chosen}"
    assert (out / SELECTED).resolve() == (tmp_path / "kd" / f"run{chosen}").resolve()
    assert (out / SELECTED / "final").is_dir()
    assert [c["accuracy"] for c in selection["candidates"]] == scores


def test_plan_gives_every_method_the_same_candidates(tuned_spec):
    plan = build_plan(load_spec(tuned_spec))
    counts = pd.Series([node.kind for node in plan.nodes]).value_counts().to_dict()
    # SFT: 2 lrs; fkl: 2 lrs x 2 temperatures, one select each; only the two selected runs (and the teacher) on test
    assert counts == {
        "prune": 1,
        "split": 1,
        "teacher-sft": 1,
        "cache": 1,
        "student-sft": 2,
        "kd": 4,
        "val-eval": 6,
        "select": 2,
        "eval": 3,
        "fidelity": 2,
    }
    kinds = [KIND_ORDER.index(node.kind) for node in plan.nodes]
    assert kinds == sorted(kinds)  # training, validation, selection, then test evaluation
    selects = [node for node in plan.nodes if node.kind == "select"]
    lrs = [sorted({c["settings"]["train.lr"] for c in node.params["candidates"]}) for node in selects]
    assert lrs == [LRS, LRS]
    by_id = plan.by_id()
    steps_of = [
        by_id[c["run"].split(":", 1)[1]].params["flags"]["train.max_steps"]
        for node in selects
        for c in node.params["candidates"]
    ]
    assert len(set(steps_of)) == 1  # the same budget
    split = next(node for node in plan.nodes if node.kind == "split")
    training = [node for node in plan.nodes if node.kind in ("teacher-sft", "student-sft", "kd", "cache")]
    assert all(split.id in node.deps for node in training)  # nobody trains on the validation examples
    tests = [node for node in plan.nodes if node.kind == "eval" and node.meta.role != "teacher"]
    assert all(node.params["model"].startswith("study:select/") for node in tests)


def test_tuned_study_selects_on_validation_before_reading_test(tuned_spec, tmp_path, monkeypatch):
    spec, study_dir = prepare_study(tuned_spec, tmp_path / "study")
    plan = build_plan(spec)
    test_file = (tuned_spec.parent / "eval" / "arith" / "test.json").resolve()
    events = []

    import kdlab.eval.task_examples as task_examples

    real_load, real_select = task_examples.load_json_examples, KINDS["select"].runner

    def load(path):
        events.append(("read", Path(path).resolve(), time.monotonic()))
        return real_load(path)

    def select(p, out, where):
        real_select(p, out, where)
        events.append(("select", out, time.monotonic()))

    monkeypatch.setattr(task_examples, "load_json_examples", load)
    monkeypatch.setitem(KINDS, "select", replace(KINDS["select"], runner=select))
    summary = run_plan(plan, study_dir, poll=0.1)
    assert summary.failed == 0 and summary.blocked == 0

    test_reads = [i for i, event in enumerate(events) if event[0] == "read" and event[1] == test_file]
    selections = [i for i, event in enumerate(events) if event[0] == "select"]
    assert len(selections) == 2 and test_reads
    assert min(test_reads) > max(selections)  # no model was scored on the test split before every selection was made
    val_reads = [event for event in events if event[0] == "read" and event[1] != test_file]
    assert len(val_reads) == 6 and all("data/arith-" in str(event[1]) for event in val_reads)

    for node in (node for node in plan.nodes if node.kind == "select"):
        selection = json.loads((node.folder(study_dir) / "selection.json").read_text())
        scores = []
        for candidate in node.params["candidates"]:
            metrics = json.loads((study_dir / candidate["eval"].split(":", 1)[1] / "metrics.json").read_text())
            scores.append(metrics["tasks"]["arith"]["accuracy"])
        best = scores.index(max(scores))  # the first of the best
        assert selection["selected"]["run"] == node.params["candidates"][best]["run"].split(":", 1)[1]
        assert (node.folder(study_dir) / "selected").resolve() == (study_dir / selection["selected"]["run"]).resolve()

    frame = collect_results(plan, study_dir)
    students = frame[frame.role.isin(["student-sft", "student-kd"])]
    assert len(students) == 2 and students["selected"].str.contains("train.lr=").all()
    assert students["run"].str.match(r"^(sft|kd)/").all()  # the chosen training runs, not the select nodes
    kd = students[students.role == "student-kd"].iloc[0]
    assert "kd.temperature=" in kd["selected"] and pd.isna(kd["temperature"])
    selection = collect_selection(plan, study_dir)
    assert len(selection) == 6 and selection.groupby("select")["selected"].sum().tolist() == [1, 1]

    from kdlab.stats.study import compute_stats
    from kdlab.study.report import write_report

    tables = compute_stats(study_dir, frame, study_dir / "stats", selection)
    assert (study_dir / "results" / "selection.csv").is_file()
    html, markdown = write_report(study_dir, frame, tables, study_dir / "report", title="tuned")
    text = markdown.read_text()
    assert "## Settings selected on validation" in text and kd["selected"] in text
    assert (study_dir / "report" / "figures" / "validation.png").is_file()
    assert "Settings selected on validation" in html.read_text()


def test_paper_rule_keeps_every_temperature_and_labels_the_max_over_test(tuned_spec, tmp_path):
    from kdlab.stats.study import PAPER_RULE, paper_temperature_view

    plan = build_plan(load_spec(edited_spec(tuned_spec, tmp_path, lambda d: d["tuning"].update(temperature="paper"))))
    selects = [node for node in plan.nodes if node.kind == "select"]
    assert len(selects) == 3  # SFT, fkl tau 1, fkl tau 2: temperatures are not selected on validation
    assert all("kd.temperature" not in c["settings"] for node in selects for c in node.params["candidates"])
    frame = pd.DataFrame(
        {
            "role": "student-kd",
            "teacher_kind": "finetuned",
            "noise": 0.0,
            "teacher": "t",
            "student": "s",
            "domain": "d",
            "method": "fkl",
            "seed": 0,
            "task": "arith",
            "temperature": [1.0, 2.0],
            "accuracy": [0.3, 0.5],
            "sft_accuracy": 0.4,
            "improvement": [-0.1, 0.1],
        }
    )
    view = paper_temperature_view(frame)
    assert view["best_temperature"].tolist() == [2.0] and view["accuracy"].tolist() == [0.5]
    assert (view["rule"] == PAPER_RULE).all() and "TEST" in PAPER_RULE


def test_split_step_keeps_validation_out_of_the_teachers_data_too(tmp_path):
    from kdlab.data.formats import load_json_examples, write_json_examples

    train = _examples([f"What is {i} plus 2?" for i in range(12)])
    write_json_examples(train, tmp_path / "train.json")
    write_json_examples(train[:3] + _examples(["teacher only"]), tmp_path / "teacher.json")
    write_json_examples(_examples(["What is 11 plus 2?"]), tmp_path / "tests" / "arith" / "test.json")
    params = {
        "train": str(tmp_path / "train.json"),
        "n": 4,
        "seed": 0,
        "file": None,
        "task": "arith",
        "test_tasks": ["arith"],
        "test_dir": str(tmp_path / "tests"),
        "teacher_train": str(tmp_path / "teacher.json"),
    }
    out = tmp_path / "split"
    node_runners.split(params, out, tmp_path)
    validation = {e.instruction for e in load_json_examples(out / "arith" / "test.json")}
    students = {e.instruction for e in load_json_examples(out / "train.json")}
    teacher = {e.instruction for e in load_json_examples(out / "teacher.json")}
    assert not validation & students and not validation & teacher and "teacher only" in teacher
    assert "What is 11 plus 2?" not in validation
    info = json.loads((out / "split.json").read_text())
    assert (
        info["validation"] == len(validation)
        and info["train"] == len(students) == 8
        and info["teacher"] == len(teacher)
    )


def test_teacher_train_is_the_teachers_data(tuned_spec, tmp_path):
    from kdlab.data.synth import write_synth

    write_synth(tmp_path / "teacher.json", n=12, seed=9, split="train")

    def edit(d):
        return d["domains"]["arith"].update(teacher_train=str(tmp_path / "teacher.json"))

    path = edited_spec(tuned_spec, tmp_path, edit)
    plan = build_plan(load_spec(path))
    teacher = next(node for node in plan.nodes if node.kind == "teacher-sft")
    split = next(node for node in plan.nodes if node.kind == "split")
    assert teacher.params["data"] == f"study:{split.id}/teacher.json" and split.params["teacher_train"] == str(
        tmp_path / "teacher.json"
    )
    data = yaml.safe_load(path.read_text())
    del data["tuning"]
    path.write_text(yaml.safe_dump(data))
    teacher = next(node for node in build_plan(load_spec(path)).nodes if node.kind == "teacher-sft")
    assert teacher.params["data"] == str(tmp_path / "teacher.json")
