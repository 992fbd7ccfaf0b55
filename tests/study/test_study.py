"""Study specs, plans and shards, checked without running a study (the kill-and-resume run is in executors/test_local.py)."""

from pathlib import Path

import pandas as pd
import pytest
import yaml

from kdlab.errors import KdlabError
from kdlab.study.executors.local import parse_shard
from kdlab.study.folder import prepare_study
from kdlab.study.plan import build_plan
from kdlab.study.spec import load_spec, parse_params

EXPECTED_KINDS = {
    "prune": 1,
    "teacher-sft": 1,
    "answers": 1,
    "cache": 2,
    "student-sft": 4,
    "kd": 22,
    "eval": 28,
    "fidelity": 26,
}


def _edited(spec_path: Path, tmp_path: Path, edit) -> Path:
    data = yaml.safe_load(spec_path.read_text())
    edit(data)
    for domain in data["domains"].values():  # keep the data paths valid from the new folder
        domain["train"] = str(spec_path.parent / domain["train"])
        domain["data_dir"] = str(spec_path.parent / domain["data_dir"])
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_parse_params():
    assert parse_params("135M", "x") == 135e6 and parse_params("0.5B", "x") == 0.5e9 and parse_params(7, "x") == 7
    with pytest.raises(KdlabError, match="x: expected a size"):
        parse_params("big", "x")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(epochs=3), "unknown key\\(s\\) epochs"),
        (lambda d: d.update(students=["pruned-1l", "nope"]), "students: unknown model 'nope'"),
        (lambda d: d["domains"]["arith"].update(train="missing.json"), "domains.arith.train: file not found"),
        (lambda d: d["domains"]["arith"].update(tasks=["arith", "chess"]), "domains.arith.tasks"),
        (lambda d: d["student_training"]["train"].update(lr=-1), "student_training: train.lr must be > 0"),
        (lambda d: d["methods"].update(bad={"loss": "fkl", "beta": 2}), "methods.bad: kd.beta must be in \\[0, 1\\]"),
        (lambda d: d["methods"].update(odd={"loss": "fkl", "speed": 2}), "methods.odd: unknown key\\(s\\) speed"),
        (lambda d: d["ablations"].update(students=["small2"]), "ablations.students: 'small2' is not one of"),
        (lambda d: d["models"].update(deeper={"prune": {"model": "pruned-1l", "keep_layers": 1}}), "is itself pruned"),
        (lambda d: d.update(temperatures=[1, 0]), "temperatures: 0 is out of range"),
        (lambda d: d.update(teachers=["pruned-1l"]), "a teacher must be loadable"),
        (lambda d: d["methods"].update(sft={"loss": "fkl"}), "'sft' is the baseline"),
    ],
)
def test_spec_errors_name_the_key(tiny_study_spec, tmp_path, edit, message):
    path = _edited(tiny_study_spec, tmp_path, edit) if "train: file" not in message else None
    if path is None:  # the missing-file case must not be rewritten to an absolute path
        data = yaml.safe_load(tiny_study_spec.read_text())
        edit(data)
        path = tiny_study_spec.parent / "missing-train.yaml"
        path.write_text(yaml.safe_dump(data))
    with pytest.raises(KdlabError, match=message):
        load_spec(path)


def test_plan_expands_the_grid(tiny_study_spec):
    plan = build_plan(load_spec(tiny_study_spec))
    counts = pd.Series([node.kind for node in plan.nodes]).value_counts().to_dict()
    assert counts == EXPECTED_KINDS
    ids = [node.id for node in plan.nodes]
    assert len(ids) == len(set(ids))
    position = {node_id: i for i, node_id in enumerate(ids)}
    assert all(position[dep] < position[node.id] for node in plan.nodes for dep in node.deps)
    kd = [node for node in plan.nodes if node.kind == "kd"]
    assert sum(node.meta.noise > 0 for node in kd) == 1 and sum(node.meta.teacher_kind == "base" for node in kd) == 1
    assert {node.meta.temperature for node in kd if node.meta.method == "fkl"} == {1.0, 2.0}
    assert all("teacher_cache" in node.params for node in kd if node.meta.loss in ("fkl", "rkl"))
    assert build_plan(load_spec(tiny_study_spec)).by_id().keys() == plan.by_id().keys()  # deterministic names


def test_changed_setting_changes_only_affected_folders(tiny_study_spec, tmp_path):
    before = {node.id for node in build_plan(load_spec(_edited(tiny_study_spec, tmp_path, lambda d: None))).nodes}
    after = {
        node.id
        for node in build_plan(
            load_spec(_edited(tiny_study_spec, tmp_path, lambda d: d["student_training"]["train"].update(lr=5e-4)))
        ).nodes
    }
    unchanged = before & after
    assert any(node.startswith("teacher/") for node in unchanged)  # the teacher's settings did not change
    assert not any(node.startswith(("kd/", "sft/")) for node in unchanged)


@pytest.mark.parametrize("count", [2, 3, 5])
def test_shards_partition_the_runs(tiny_study_spec, count):
    plan = build_plan(load_spec(tiny_study_spec))
    shards = [plan.shard(index, count) for index in range(count)]
    ids = [node.id for shard in shards for node in shard]
    assert sorted(ids) == sorted(node.id for node in plan.nodes)  # every run in exactly one shard
    assert all(shards)
    by_id = plan.by_id()
    for node in plan.nodes:  # a run's evaluation and fidelity stay on its shard
        if node.kind in ("eval", "fidelity") and node.meta.run:
            assert node.shard(count) == by_id[node.meta.run].shard(count)
    assert parse_shard("2/3") == (1, 3)
    for bad in ("0/3", "4/3", "x"):
        with pytest.raises(KdlabError, match="--shard"):
            parse_shard(bad)


@pytest.mark.parametrize("name, kd_runs", [("paper-qwen2.5", 192), ("paper-llama3", 18), ("smollm2-cpu", 45)])
def test_ready_specs_plan(name, kd_runs, capsys):
    from kdlab.study.executors.local import run_study

    path = Path(__file__).resolve().parents[2] / "configs" / "studies" / f"{name}.yaml"
    spec = load_spec(path, check_files=False)
    plan = build_plan(spec)
    assert sum(node.kind == "kd" for node in plan.nodes) == kd_runs
    pairs = {(node.meta.teacher, node.meta.student) for node in plan.nodes if node.kind == "kd"}
    assert all(spec.models[s].params is None or spec.models[s].params < spec.models[t].params for t, s in pairs)
    run_study(path, out=None, dry_run=True)
    assert "total" in capsys.readouterr().out


@pytest.mark.parametrize(
    "section, key, value, expected",
    [
        ("evaluation", "limit", "2", "an integer > 0 or null"),
        ("evaluation", "batch_size", 0, "an integer > 0"),
        ("evaluation", "mode", "sample", "generate or loglik"),
        ("fidelity", "token_kl", "yes", "true or false"),
        ("teacher_cache", "k", 1.5, "an integer > 0"),
        ("cost", "tflops", "fast", "a number > 0"),
    ],
)
def test_spec_values_are_type_checked_and_a_run_writes_nothing(
    tiny_study_spec, tmp_path, section, key, value, expected
):
    """Why: `evaluation: {limit: "2"}` raised a TypeError and a real run left study.json/spec.yaml behind."""
    path = _edited(tiny_study_spec, tmp_path, lambda d: d.setdefault(section, {}).update({key: value}))
    with pytest.raises(KdlabError, match=f"{section}.{key}: expected {expected}, got {value!r}"):
        prepare_study(path, tmp_path / "study")
    assert not (tmp_path / "study").exists()


def test_a_missing_model_folder_fails_the_dry_run_and_the_run_start(tiny_study_spec, tmp_path, capsys):
    """Why: a spec naming a missing model folder passed --dry-run and failed mid-run."""
    from kdlab.cli import main

    path = _edited(tiny_study_spec, tmp_path, lambda d: d["models"]["small"].update(spec=str(tmp_path / "no-model")))
    for extra in (["--dry-run"], []):
        with pytest.raises(SystemExit) as info:
            main(["study", "run", str(path), "--out", str(tmp_path / "study"), *extra])
        assert info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert (
            err.startswith("kdlab: error:") and f"models.small: {tmp_path / 'no-model'} (model folder not found)" in err
        )
    assert not (tmp_path / "study").exists()
