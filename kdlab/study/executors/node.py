"""One node of a study plan, run inside an engine's worker (a Ray task, a SLURM job).

The worker keeps the local runner's contract: a node whose completion marker exists is not run again, a started
node has ``state/<node>.json`` (running, done or failed, with the traceback in ``state/<node>.log``), and an
interrupted node resumes from its folder. The node's own output (training logs, progress bars) goes to
``state/<node>.out`` instead of the terminal, so the driver's progress stays readable.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path

from kdlab.io import atomic_write_json
from kdlab.study.executors.local import read_state, record_run, state_path
from kdlab.study.kinds import is_done
from kdlab.study.nodes import Node


def outcome(node: Node, status: str, ran: bool = False, seconds: float = 0.0, error: str | None = None) -> dict:
    """What a worker reports for a node: ``status`` is done, failed or skipped."""
    return {
        "id": node.id,
        "status": status,
        "ran": ran,
        "seconds": seconds,
        "error": error,
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }


@contextlib.contextmanager
def output_to(path: Path):
    """Send this process's Python-level stdout and stderr to ``path`` (appended) while the block runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", buffering=1) as handle, contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
        yield


def _record_done(node: Node, study_dir: Path) -> None:
    """A worker lost between writing a node's completion marker and its state file leaves the state 'running': the
    retry finds the marker and records the node as done, so ``kdlab study status`` and the state agree."""
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


def run_node(node: Node, study_dir: str | Path, *deps: dict) -> dict:
    """Run ``node`` into its folder unless it is done; ``deps`` are its dependencies' outcomes, and one that is not
    done skips it. Returns the node's :func:`outcome`."""
    study_dir = Path(study_dir)
    blocked = [dep["id"] for dep in deps if dep["status"] != "done"]
    if blocked:
        return outcome(node, "skipped", error=f"it needs {', '.join(blocked)}, which did not finish")
    if is_done(node, study_dir):
        _record_done(node, study_dir)
        return outcome(node, "done")
    begin = time.time()
    with output_to(state_path(study_dir, node, ".out")):
        ok = record_run(node, study_dir)
    if ok:
        return outcome(node, "done", ran=True, seconds=time.time() - begin)
    return outcome(
        node, "failed", ran=True, seconds=time.time() - begin, error=read_state(study_dir, node).get("error")
    )
