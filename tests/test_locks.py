"""Run-folder locks (kdlab.locks): one process per output folder, real two-process races on tiny models."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kdlab_testing import cli_args

import kdlab
from kdlab.errors import KdlabError
from kdlab.locks import folder_lock, lock_file

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
TIMEOUT = 240


def start(*words, **flags):
    """Start ``python -m kdlab.cli`` with :func:`cli_args` ``(*words, **flags)``."""
    return subprocess.Popen(
        [sys.executable, "-m", "kdlab.cli", *cli_args(*words, **flags)],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process):
    out, err = process.communicate(timeout=TIMEOUT)
    return process.returncode, out, err


@pytest.fixture(scope="module")
def arith_dir(tmp_path_factory):
    from kdlab.data.synth import write_synth

    root = tmp_path_factory.mktemp("lock-data")
    write_synth(root / "arith" / "test.json", n=12, seed=3, split="test")
    return root


def test_a_held_lock_is_refused_naming_host_and_pid(tmp_path):
    folder = tmp_path / "run"
    with folder_lock(folder, "test"):
        assert lock_file(folder).read_text().split() == [socket.gethostname(), str(os.getpid())]
        code = (
            "import sys\nfrom kdlab.locks import folder_lock\nfrom kdlab.errors import KdlabError\n"
            f"try:\n    with folder_lock({str(folder)!r}):\n        pass\n"
            "except KdlabError as exc:\n    print(exc)\n    sys.exit(2)\n"
        )
        done = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2
        assert f"in use by PID {os.getpid()} on host {socket.gethostname()}" in done.stdout
        with folder_lock(folder):  # re-entrant in the holding process
            pass
    assert not lock_file(folder).exists()  # removed when released
    assert not folder.exists()  # the lock does not create the folder


def test_every_spelling_of_a_folder_meets_the_same_lock(tmp_path, monkeypatch):
    """Why: the lock file sat beside the unresolved --out, so a run through a symbolic link to the folder (or to a
    parent, or with ..) took a second lock and both wrote."""
    (tmp_path / "runs").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "runs" / "run")  # to the folder, before it exists
    (tmp_path / "parent").symlink_to(tmp_path / "runs")
    monkeypatch.chdir(tmp_path / "runs")
    env = {**ENV, "PYTHONPATH": str(Path(kdlab.__file__).parents[1])}  # this kdlab, from another working directory
    spellings = [
        tmp_path / "link",
        tmp_path / "parent" / "run",
        tmp_path / "runs" / "x" / ".." / "run",
        "run",
        "../parent/run/",
    ]
    with folder_lock(tmp_path / "runs" / "run", "test"):
        for spelling in spellings:
            assert lock_file(spelling) == tmp_path / "runs" / ".run.kdlab-lock"
            code = (
                "import sys\nfrom kdlab.locks import folder_lock\nfrom kdlab.errors import KdlabError\n"
                f"try:\n    with folder_lock({str(spelling)!r}):\n        pass\n"
                "except KdlabError as exc:\n    print(exc)\n    sys.exit(2)\n"
            )
            done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
            assert done.returncode == 2 and f"in use by PID {os.getpid()}" in done.stdout, (spelling, done.stderr)
    (tmp_path / "runs" / "run").mkdir()
    assert lock_file(tmp_path / "link") == lock_file(tmp_path / "parent" / "run") == lock_file("run")


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, capsys):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, timeout=60
    )
    pid = int(dead.stdout)
    folder = tmp_path / "run"
    lock_file(folder).write_text(f"{socket.gethostname()} {pid}\n")  # left by a kill -9
    with folder_lock(folder):
        assert lock_file(folder).read_text().split()[1] == str(os.getpid())
    assert f"taking over the lock left by PID {pid}" in capsys.readouterr().err


def test_an_evaluation_into_a_locked_folder_exits_2_and_writes_nothing(tiny_models, arith_dir, tmp_path):
    out = tmp_path / "eval"
    with folder_lock(out, "test"):
        code, _, err = finish(
            start(
                "eval",
                model=tiny_models["talker"],
                tasks="arith",
                data_dir=arith_dir,
                out=out,
                max_new_tokens=4,
                precision="fp32",
            )
        )
    assert code == 2, err[-2000:]
    assert err.strip().splitlines()[-1].startswith(f"kdlab: error: {out}: in use by PID {os.getpid()}")
    assert not out.exists()


def test_two_evaluations_with_different_models_into_one_folder(tiny_models, arith_dir, tmp_path):
    """Why: both exited 0, the folder was labelled with one model and one run reported a wrong no-answer count."""
    out = tmp_path / "eval"
    common = {
        "tasks": "arith",
        "data_dir": arith_dir,
        "out": out,
        "max_new_tokens": 24,
        "batch_size": 2,
        "precision": "fp32",
    }
    models = [tiny_models["talker"], tiny_models["teacher"]]
    results = [finish(process) for process in [start("eval", model=model, **common) for model in models]]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], [err[-1500:] for _, _, err in results]
    winner = models[[code for code, _, _ in results].index(0)]
    loser_err = next(err for code, _, err in results if code == 2)
    # "in use by another process" when it looked before the holder had written its PID into the lock file
    assert "in use by PID" in loser_err or "in use by another process" in loser_err or "other settings" in loser_err
    assert yaml.safe_load((out / "config.yaml").read_text())["model"] == str(winner)
    records = [json.loads(line) for line in (out / "predictions" / "arith.jsonl").read_text().splitlines()]
    metrics = json.loads((out / "metrics.json").read_text())["tasks"]["arith"]
    assert len(records) == metrics["n"] == 12
    assert metrics["no_answer"] == sum(record["pred"] is None for record in records)


def test_two_sft_runs_with_different_settings_into_one_folder(tiny_models, synth_train, tmp_path):
    """Why: both ran and the last writer won; now one trains and the other exits 2."""
    out = tmp_path / "run"
    common = {
        "model": tiny_models["student"],
        "data": synth_train,
        "out": out,
        "max_steps": 3,
        "batch_size": 2,
        "precision": "fp32",
        "save_steps": 0,
    }
    results = [finish(process) for process in [start("sft", **common, lr=lr) for lr in (1e-3, 2e-3)]]
    codes = [code for code, _, _ in results]
    assert sorted(codes) == [0, 2], [err[-1500:] for _, _, err in results]
    loser_err = results[codes.index(2)][2]
    assert "in use by PID" in loser_err or "different config" in loser_err
    winner_lr = (1e-3, 2e-3)[codes.index(0)]
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["lr"] == winner_lr
    assert json.loads((out / "result.json").read_text())["steps"] == 3


def test_two_runs_sharing_a_new_teacher_cache_build_it_once(tiny_models, synth_train, tmp_path):
    """One process builds the cache; the other waits for it and reuses it."""
    cache = tmp_path / "cache"
    runs = [
        start(
            "distill",
            teacher=tiny_models["teacher"],
            student=tiny_models["student"],
            data=synth_train,
            teacher_cache=cache,
            out=tmp_path / f"kd{i}",
            max_steps=1,
            batch_size=4,
            precision="fp32",
            save_steps=0,
        )
        for i in range(2)
    ]
    results = [finish(process) for process in runs]
    assert [code for code, _, _ in results] == [0, 0], [err[-1500:] for _, _, err in results]
    assert sum(out.count("building the teacher cache") for _, out, _ in results) == 1
    assert (cache / "manifest.json").is_file() and not lock_file(cache).exists()


def test_a_lock_file_that_cannot_be_created_is_a_clear_error(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(KdlabError, match="cannot create the lock file"), folder_lock(tmp_path / "run"):
        pass
