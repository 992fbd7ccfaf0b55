"""Tests for kdlab.study.executors.local: a study killed mid-run resumes without redoing finished runs, a failed
run is recorded and retried, and the resumed study's results, statistics and report are complete."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from kdlab.stats.results import RESULT_COLUMNS, collect_results
from kdlab.study.executors.local import run_plan
from kdlab.study.executors.progress import format_plan, format_status, study_status
from kdlab.study.folder import node_status, prepare_study
from kdlab.study.kinds import KINDS, execute, is_done
from kdlab.study.plan import build_plan
from kdlab.study.spec import load_spec


def _markers(study_dir: Path) -> dict[str, float]:
    plan = build_plan(
        load_spec(study_dir / "spec.yaml", base=yaml.safe_load((study_dir / "study.json").read_text())["spec_base"])
    )
    return {
        node.id: (node.folder(study_dir) / KINDS[node.kind].done_file).stat().st_mtime_ns
        for node in plan.nodes
        if is_done(node, study_dir)
    }


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
    assert 4 <= len(finished) < len(build_plan(load_spec(tiny_study_spec)).nodes)

    spec, study_dir = prepare_study(tiny_study_spec, study_dir)
    plan = build_plan(spec)
    assert "pending" in format_plan(plan, study_dir)
    # one evaluation fails on the first resume: it is recorded, its fidelity is skipped, the rest goes on
    failing = next(node for node in plan.nodes if node.kind == "eval" and node.meta.role == "student-kd")
    real_execute = execute

    def flaky(node, where):
        if node.id == failing.id:
            raise RuntimeError("disk on fire")
        real_execute(node, where)

    monkeypatch.setattr("kdlab.study.folder.execute", flaky)
    summary = run_plan(plan, study_dir, poll=0.1)
    assert summary.failed == 1 and summary.blocked == 1
    assert node_status(study_dir, failing) == "failed"
    assert "disk on fire" in format_status(plan, study_dir)
    monkeypatch.setattr("kdlab.study.folder.execute", real_execute)
    summary = run_plan(plan, study_dir, poll=0.1)
    assert summary.failed == 0 and summary.ran == 2
    groups = study_status(plan, study_dir)
    assert len(groups["done"]) == len(plan.nodes)
    after = _markers(study_dir)
    assert all(after[node_id] == mtime for node_id, mtime in finished.items())  # nothing finished was redone

    frame = collect_results(plan, study_dir)
    assert list(frame.columns) == RESULT_COLUMNS
    assert frame.groupby("role").size().to_dict() == {
        "base-teacher": 2,
        "student-kd": 44,
        "student-sft": 8,
        "teacher": 2,
    }
    kd = frame[frame.role == "student-kd"]
    assert kd["improvement"].notna().all() and kd["token_kl"].notna().all() and kd["agreement"].notna().all()
    assert (kd["improvement"] == kd["accuracy"] - kd["sft_accuracy"]).all()
    assert set(kd["task"]) == {"arith", "AddSub"} and set(kd["seed"]) == {0, 1}
    assert frame["student_size_b"].gt(0).all()
    base = kd[kd.teacher_kind == "base"]
    teacher_rows = frame[frame.role == "base-teacher"].set_index("task")["accuracy"]
    assert (base["teacher_accuracy"].values == teacher_rows.loc[base["task"]].values).all()

    from kdlab.stats.study import compute_stats
    from kdlab.study.report import write_report

    tables = compute_stats(study_dir, frame, study_dir / "stats")
    assert len(tables["paired"]) == len(kd) and set(tables["paired"]["run"]) == set(kd["run"])
    assert (study_dir / "results" / "results.parquet").is_file() and (study_dir / "stats" / "stats.md").is_file()
    html, markdown = write_report(study_dir, frame, tables, study_dir / "report", title="tiny")
    assert "data:image/png;base64," in html.read_text() and markdown.is_file()
