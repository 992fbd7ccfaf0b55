"""The Ray executor on a local Ray cluster (2 CPUs): the tiny study with a failing run and a worker killed mid-run."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

import kdlab.version
from kdlab.study.executors.local import run_study
from kdlab.study.executors.ray import check_cluster, run_plan_ray, task_options
from kdlab.study.folder import node_status, prepare_study, state_path
from kdlab.study.kinds import KINDS, is_done
from kdlab.study.plan import build_plan
from kdlab.study.resources import Need

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster for this module (workers inherit this process's environment, PYTHONPATH included)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _markers(plan, study_dir: Path) -> dict[str, int]:
    return {
        node.id: (node.folder(study_dir) / KINDS[node.kind].done_file).stat().st_mtime_ns
        for node in plan.nodes
        if is_done(node, study_dir)
    }


def _states(study_dir: Path) -> list[dict]:
    states = []
    for path in (study_dir / "state").glob("*.json"):
        try:
            states.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return states


def _kill_a_running_worker(study_dir: Path, after_done: int, timeout: float = 240.0) -> tuple[str, int]:
    """Once ``after_done`` runs are done, SIGKILL the Ray worker of a training or evaluation run in progress; returns
    (that run, the killed pid). A kill that lands just after its run finished does not count: another is tried."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        states = _states(study_dir)
        running = [
            state
            for state in states
            if state.get("status") == "running"
            and state["pid"] != os.getpid()
            and state["node"].startswith(("kd/", "sft/", "eval/"))
        ]
        if sum(state.get("status") == "done" for state in states) < after_done or not running:
            time.sleep(0.01)
            continue
        victim = running[0]
        os.kill(victim["pid"], signal.SIGKILL)
        path = study_dir / "state" / (victim["node"].replace("/", "__") + ".json")
        time.sleep(0.2)
        after = json.loads(path.read_text())
        if not (after["status"] == "done" and after["pid"] == victim["pid"]):  # it did not finish before the kill
            return victim["node"], victim["pid"]
    raise AssertionError("no run in progress to kill")


def test_task_options():
    assert task_options(Need(gpus=0.5, cpus=2, memory_gb=1), 3) == {
        "num_cpus": 2,
        "num_gpus": 0.5,
        "max_retries": 3,
        "retry_exceptions": False,
        "memory": 2**30,
    }
    assert task_options(Need(gpus=1), 0, use_gpus=False)["num_gpus"] == 0


def test_cluster_check_sees_the_folder_and_this_kdlab(ray_cluster, tmp_path):
    answers = check_cluster(tmp_path, {"kd": Need(gpus=0)}, use_gpus=False)
    assert len(answers) == 1 and answers[0]["seen"] and answers[0]["file"] == kdlab.version.__file__
    assert not list((tmp_path / "state").glob(".probe-*"))
    with pytest.raises(kdlab.errors.KdlabError, match=r"resources.kd: asks for 1 GPU"):
        check_cluster(tmp_path, {"kd": Need(gpus=1)}, use_gpus=True)


def test_tiny_study_on_ray_with_a_failure_and_a_killed_worker(ray_cluster, tiny_study_spec, tmp_path):
    spec, study_dir = prepare_study(tiny_study_spec, tmp_path / "ray")
    plan = build_plan(spec)
    failing = next(node for node in plan.nodes if node.kind == "eval" and node.meta.role == "student-kd")
    failing.folder(study_dir).parent.mkdir(parents=True)
    failing.folder(study_dir).write_text("a file where the evaluation's folder should be")  # this run will fail

    result = {}
    driver = threading.Thread(target=lambda: result.update(summary=run_plan_ray(plan, study_dir, max_retries=2)))
    driver.start()
    killed, pid = _kill_a_running_worker(study_dir, after_done=12)
    done_at_kill = _markers(plan, study_dir)
    driver.join(timeout=300)
    summary = result["summary"]

    assert summary.failed == 1 and summary.blocked == 1  # the evaluation, then its fidelity
    assert node_status(study_dir, failing) == "failed" and summary.done == len(plan.nodes) - 2
    state = json.loads(state_path(study_dir, plan.by_id()[killed]).read_text())
    assert state["status"] == "done" and state["pid"] != pid  # retried in another worker
    assert all(_markers(plan, study_dir)[node] == mtime for node, mtime in done_at_kill.items())

    failing.folder(study_dir).unlink()
    again = run_plan_ray(plan, study_dir)
    assert again.ran == 2 and again.failed == 0 and again.done == len(plan.nodes)
    assert all(_markers(plan, study_dir)[node] == mtime for node, mtime in done_at_kill.items())
    assert state_path(study_dir, plan.by_id()[killed], ".out").is_file()  # the run's output, kept in the study


def test_same_results_as_the_local_executor(ray_cluster, small_study_spec, tmp_path, results_table):
    local_dir, _ = run_study(small_study_spec, tmp_path / "local")
    spec, study_dir = prepare_study(small_study_spec, tmp_path / "ray")
    summary = run_plan_ray(build_plan(spec), study_dir)
    assert summary.ran == 7 and summary.done == 7
    pd.testing.assert_frame_equal(results_table(study_dir), results_table(local_dir))
