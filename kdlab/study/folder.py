"""The study folder and the state of its runs, kept alike by every executor (local, Ray, SLURM) and read by
``kdlab study status|results|stats|report``.

Study folder::

    spec.yaml            a copy of the spec the study was last run with
    study.json           {"name", "spec_source", "spec_base"}: where relative paths of the spec point
    state/<node>.json    status of a node that was started: running (host, pid, heartbeat), failed (error), done
    state/<node>.log     the traceback of a failed node
    state/<node>.out     a node's own output when it ran in an engine's worker
    <kind>/<run>-<h>/    one folder per run (see :mod:`kdlab.study.kinds`)

Status of a node: ``done`` (its done file exists), ``running`` (a live process on this host, or a heartbeat younger
than :data:`STALE_SECONDS` from another host), ``failed`` (its last attempt raised), ``interrupted`` (started, neither
done nor running: re-running resumes it) or ``pending``. Failed nodes are retried by the next ``study run``.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import traceback
from pathlib import Path

from kdlab.errors import KdlabError
from kdlab.io import atomic_write_json, atomic_write_text
from kdlab.locks import pid_alive
from kdlab.study.kinds import execute, is_done
from kdlab.study.nodes import Node
from kdlab.study.spec import StudySpec, check_models, load_spec

STALE_SECONDS = 600
HEARTBEAT_SECONDS = 30
STATUSES = ("done", "running", "failed", "interrupted", "pending")


# the study folder ------------------------------------------------------------------------------------------------
def prepare_study(spec_path: str | Path, out: str | Path | None) -> tuple[StudySpec, Path]:
    """Load the spec, check its model folders, create the study folder (default ``runs/<name>``) and record the spec
    in it."""
    spec = load_spec(spec_path)
    check_models(spec)
    study_dir = study_folder(out, spec)
    study_dir.mkdir(parents=True, exist_ok=True)
    text = Path(spec_path).read_text()
    old = study_dir / "spec.yaml"
    if old.is_file() and old.read_text() != text:
        print(
            f"kdlab study: {spec_path} differs from the spec last run in {study_dir}; runs whose settings changed get "
            "new folders, finished runs of unchanged settings are kept",
            flush=True,
        )
    atomic_write_text(old, text)
    atomic_write_json(
        study_dir / "study.json",
        {"name": spec.name, "spec_source": str(Path(spec_path).resolve()), "spec_base": str(spec.path.parent)},
    )
    return spec, study_dir


def study_folder(out: str | Path | None, spec: StudySpec) -> Path:
    """The study folder: ``out``, default ``runs/<name>``. Refused when it exists and is not one (a file, or a folder
    holding other things), so neither a run nor a dry run or status reports a plan for a folder it cannot use."""
    study_dir = Path(out or Path("runs") / spec.name)
    if study_dir.exists() and not study_dir.is_dir():
        raise KdlabError(f"{study_dir}: exists and is a file, not a study folder; choose another --out")
    if study_dir.exists() and any(study_dir.iterdir()) and not (study_dir / "study.json").is_file():
        raise KdlabError(f"{study_dir}: exists and is not a study folder (no study.json); choose another --out")
    return study_dir


def load_study(study_dir: str | Path) -> tuple[StudySpec, Path]:
    """The spec of an existing study folder."""
    study_dir = Path(study_dir)
    info_path = study_dir / "study.json"
    if not info_path.is_file():
        raise KdlabError(
            f"{study_dir}: not a study folder (no study.json); run `kdlab study run SPEC --out {study_dir}` first"
        )
    info = json.loads(info_path.read_text())
    return load_spec(study_dir / "spec.yaml", base=info["spec_base"]), study_dir


# node states -----------------------------------------------------------------------------------------------------
def state_path(study_dir: Path, node: Node, suffix: str = ".json") -> Path:
    return Path(study_dir) / "state" / (node.id.replace("/", "__") + suffix)


def read_state(study_dir: Path, node: Node) -> dict:
    path = state_path(study_dir, node)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def node_status(study_dir: Path, node: Node) -> str:
    if is_done(node, study_dir):
        return "done"
    state = read_state(study_dir, node)
    if state.get("status") == "running":
        if state.get("host") == socket.gethostname():
            alive = pid_alive(int(state.get("pid", -1))) and state.get("pid") != os.getpid()
        else:
            alive = time.time() - float(state.get("heartbeat", 0)) < STALE_SECONDS
        return "running" if alive else "interrupted"
    if state.get("status") == "failed":
        return "failed"
    return "interrupted" if node.folder(study_dir).exists() else "pending"


class _Heartbeat:
    """Marks a node running and refreshes its heartbeat in the background while it runs."""

    def __init__(self, study_dir: Path, node: Node):
        self.path, self.stop = state_path(study_dir, node), threading.Event()
        self.state = {
            "status": "running",
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.time(),
            "heartbeat": time.time(),
            "node": node.id,
        }
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_SECONDS):
            self.state["heartbeat"] = time.time()
            atomic_write_json(self.path, self.state)

    def __enter__(self):
        atomic_write_json(self.path, self.state)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def record_run(node: Node, study_dir: Path) -> bool:
    """Run ``node`` in this process with a heartbeat and record its state (done, or failed with the first line of
    its error and the traceback in ``state/<node>.log``); True when it finished."""
    state_path(study_dir, node).parent.mkdir(parents=True, exist_ok=True)
    log = state_path(study_dir, node, ".log")
    beat = _Heartbeat(study_dir, node)
    try:
        with beat:
            execute(node, study_dir)
            if not is_done(node, study_dir):
                raise KdlabError(f"{node.id}: finished without its completion marker")
    except KeyboardInterrupt:
        state_path(study_dir, node).unlink(missing_ok=True)
        raise
    except Exception as exc:  # one failed run must not stop the rest of the study
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        atomic_write_json(
            state_path(study_dir, node), {**beat.state, "status": "failed", "error": message, "finished": time.time()}
        )
        atomic_write_text(log, traceback.format_exc())
        print(f"kdlab study: FAILED {node.id}: {message} (traceback: {log})", flush=True)
        return False
    atomic_write_json(
        state_path(study_dir, node),
        {**beat.state, "status": "done", "finished": time.time(), "seconds": time.time() - beat.state["started"]},
    )
    log.unlink(missing_ok=True)
    return True


def record_found_done(node: Node, study_dir: Path) -> None:
    """A worker lost between writing a node's done file and its state file leaves the state 'running': the retry
    finds the done file and records the node as done, so ``kdlab study status`` and the state agree."""
    state = read_state(study_dir, node)
    if state and state.get("status") != "done":
        atomic_write_json(
            state_path(study_dir, node),
            {
                **state,
                "status": "done",
                "finished": time.time(),
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "note": "completed by a worker lost before it recorded so",
            },
        )


def record_lost(node: Node, study_dir: Path, message: str, host: str) -> None:
    """Record ``node`` as failed for an engine that gave up on its worker (the worker could not record it)."""
    atomic_write_json(
        state_path(study_dir, node),
        {"status": "failed", "error": message, "node": node.id, "finished": time.time(), "host": host},
    )
