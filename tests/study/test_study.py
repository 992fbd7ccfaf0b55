"""Study specs, plans, shards, and a whole tiny study run end to end with a kill and a resume."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from kdlab.errors import KdlabError
from kdlab.study import steps
from kdlab.study.plan import build_plan
from kdlab.study.results import RESULT_COLUMNS, collect_results
from kdlab.study.runner import format_plan, format_status, node_status, parse_shard, prepare_study, run_plan, study_status
from kdlab.study.spec import load_spec, parse_params

EXPECTED_KINDS = {"prune": 1, "teacher-sft": 1, "answers": 1, "cache": 2, "student-sft": 4, "kd": 22, "eval": 28, "fidelity": 26}


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


@pytest.mark.parametrize("edit, message", [
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
])
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
    assert sum(node.meta["noise"] > 0 for node in kd) == 1 and sum(node.meta["teacher_kind"] == "base" for node in kd) == 1
    assert {node.meta["temperature"] for node in kd if node.meta["method"] == "fkl"} == {1.0, 2.0}
    assert all("teacher_cache" in node.params for node in kd if node.meta["loss"] in ("fkl", "rkl"))
    assert build_plan(load_spec(tiny_study_spec)).by_id().keys() == plan.by_id().keys()  # deterministic names


def test_changed_setting_changes_only_affected_folders(tiny_study_spec, tmp_path):
    before = {node.id for node in build_plan(load_spec(_edited(tiny_study_spec, tmp_path, lambda d: None))).nodes}
    after = {node.id for node in build_plan(load_spec(_edited(tiny_study_spec, tmp_path,
                                                             lambda d: d["student_training"]["train"].update(lr=5e-4)))).nodes}
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
        if node.kind in ("eval", "fidelity") and node.meta.get("run"):
            assert node.shard(count) == by_id[node.meta["run"]].shard(count)
    assert parse_shard("2/3") == (1, 3)
    for bad in ("0/3", "4/3", "x"):
        with pytest.raises(KdlabError, match="--shard"):
            parse_shard(bad)


def _markers(study_dir: Path) -> dict[str, float]:
    plan = build_plan(load_spec(study_dir / "spec.yaml", base=yaml.safe_load((study_dir / "study.json").read_text())["spec_base"]))
    return {node.id: (node.folder(study_dir) / steps.MARKERS[node.kind]).stat().st_mtime_ns
            for node in plan.nodes if steps.is_done(node, study_dir)}


def test_tiny_study_killed_and_resumed(tiny_study_spec, tmp_path, monkeypatch):
    study_dir = tmp_path / "study"
    command = [sys.executable, "-m", "kdlab.cli", "study", "run", str(tiny_study_spec), "--out", str(study_dir)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:  # kill -9 once a few runs have finished (and, most likely, while one is in progress)
        deadline = time.time() + 240
        while time.time() < deadline and process.poll() is None:
            if len(list((study_dir / "state").glob("*.json")) if (study_dir / "state").is_dir() else []) >= 8:
                break
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    finished = _markers(study_dir)
    assert 4 <= len(finished) < sum(EXPECTED_KINDS.values())

    spec, study_dir = prepare_study(tiny_study_spec, study_dir)
    plan = build_plan(spec)
    assert "pending" in format_plan(plan, study_dir)
    # one evaluation fails on the first resume: it is recorded, its fidelity is skipped, the rest goes on
    failing = next(node for node in plan.nodes if node.kind == "eval" and node.meta["role"] == "student-kd")
    real_execute = steps.execute

    def flaky(node, where):
        if node.id == failing.id:
            raise RuntimeError("disk on fire")
        real_execute(node, where)

    monkeypatch.setattr("kdlab.study.runner.execute", flaky)
    summary = run_plan(plan, study_dir, poll=0.1)
    assert summary.failed == 1 and summary.blocked == 1
    assert node_status(study_dir, failing) == "failed"
    assert "disk on fire" in format_status(plan, study_dir)
    monkeypatch.setattr("kdlab.study.runner.execute", real_execute)
    summary = run_plan(plan, study_dir, poll=0.1)
    assert summary.failed == 0 and summary.ran == 2
    groups = study_status(plan, study_dir)
    assert len(groups["done"]) == len(plan.nodes)
    after = _markers(study_dir)
    assert all(after[node_id] == mtime for node_id, mtime in finished.items())  # nothing finished was redone

    frame = collect_results(plan, study_dir)
    assert list(frame.columns) == RESULT_COLUMNS
    assert frame.groupby("role").size().to_dict() == {"base-teacher": 2, "student-kd": 44, "student-sft": 8, "teacher": 2}
    kd = frame[frame.role == "student-kd"]
    assert kd["improvement"].notna().all() and kd["token_kl"].notna().all() and kd["agreement"].notna().all()
    assert (kd["improvement"] == kd["accuracy"] - kd["sft_accuracy"]).all()
    assert set(kd["task"]) == {"arith", "AddSub"} and set(kd["seed"]) == {0, 1}
    assert frame["student_size_b"].gt(0).all()
    base = kd[kd.teacher_kind == "base"]
    teacher_rows = frame[frame.role == "base-teacher"].set_index("task")["accuracy"]
    assert (base["teacher_accuracy"].values == teacher_rows.loc[base["task"]].values).all()

    from kdlab.study.report import write_report
    from kdlab.study.stats import compute_stats

    tables = compute_stats(study_dir, frame, study_dir / "stats")
    assert len(tables["paired"]) == len(kd) and set(tables["paired"]["run"]) == set(kd["run"])
    assert (study_dir / "results" / "results.parquet").is_file() and (study_dir / "stats" / "stats.md").is_file()
    html, markdown = write_report(study_dir, frame, tables, study_dir / "report", title="tiny")
    assert "data:image/png;base64," in html.read_text() and markdown.is_file()


@pytest.mark.parametrize("name, kd_runs", [("paper-qwen2.5", 192), ("paper-llama3", 18), ("smollm2-cpu", 45)])
def test_ready_specs_plan(name, kd_runs, capsys):
    from kdlab.study.runner import run_study

    path = Path(__file__).resolve().parents[2] / "configs" / "studies" / f"{name}.yaml"
    spec = load_spec(path, check_files=False)
    plan = build_plan(spec)
    assert sum(node.kind == "kd" for node in plan.nodes) == kd_runs
    pairs = {(node.meta["teacher"], node.meta["student"]) for node in plan.nodes if node.kind == "kd"}
    assert all(spec.models[s].params is None or spec.models[s].params < spec.models[t].params for t, s in pairs)
    run_study(path, out=None, dry_run=True)
    assert "total" in capsys.readouterr().out


@pytest.mark.parametrize("section, key, value, expected", [
    ("evaluation", "limit", "2", "an integer > 0 or null"),
    ("evaluation", "batch_size", 0, "an integer > 0"),
    ("evaluation", "mode", "sample", "generate or loglik"),
    ("fidelity", "token_kl", "yes", "true or false"),
    ("teacher_cache", "k", 1.5, "an integer > 0"),
    ("cost", "tflops", "fast", "a number > 0"),
])
def test_spec_values_are_type_checked_and_a_run_writes_nothing(tiny_study_spec, tmp_path, section, key, value, expected):
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
        assert err.startswith("kdlab: error:") and f"models.small: {tmp_path / 'no-model'} (model folder not found)" in err
    assert not (tmp_path / "study").exists()
