"""One node of a study plan, run inside an engine's worker (a Ray task, a SLURM job).

The worker keeps the study folder's contract (:mod:`kdlab.study.folder`): a node whose done file exists is not run
again, a started node has ``state/<node>.json`` (running, done or failed, with the traceback in ``state/<node>.log``),
and an interrupted node resumes from its folder. The node's own output (training logs, progress bars) goes to
``state/<node>.out`` instead of the terminal, so the driver's progress stays readable.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path

from kdlab.study.folder import read_state, record_found_done, record_run, state_path
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


def run_node(node: Node, study_dir: str | Path, *deps: dict) -> dict:
    """Run ``node`` into its folder unless it is done; ``deps`` are its dependencies' outcomes, and one that is not
    done skips it. Returns the node's :func:`outcome`."""
    study_dir = Path(study_dir)
    blocked = [dep["id"] for dep in deps if dep["status"] != "done"]
    if blocked:
        return outcome(node, "skipped", error=f"it needs {', '.join(blocked)}, which did not finish")
    if is_done(node, study_dir):
        record_found_done(node, study_dir)
        return outcome(node, "done")
    begin = time.time()
    with output_to(state_path(study_dir, node, ".out")):
        ok = record_run(node, study_dir)
    if ok:
        return outcome(node, "done", ran=True, seconds=time.time() - begin)
    return outcome(
        node, "failed", ran=True, seconds=time.time() - begin, error=read_state(study_dir, node).get("error")
    )
