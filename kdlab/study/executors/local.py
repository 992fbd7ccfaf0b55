"""``kdlab study run|status``: run a study's plan in dependency order, skip what is done, resume what was cut.

Study folder::

    spec.yaml            a copy of the spec the study was last run with
    study.json           {"name", "spec_source", "spec_base"}: where relative paths of the spec point
    state/<node>.json    status of a node that was started: running (host, pid, heartbeat), failed (error), done
    state/<node>.log     the traceback of a failed node
    <kind>/<run>-<h>/    one folder per run (see :mod:`kdlab.study.plan`)

Status of a node: ``done`` (its completion marker exists), ``running`` (a live process on this host, or a heartbeat
younger than :data:`STALE_SECONDS` from another host), ``failed`` (its last attempt raised), ``interrupted`` (started,
neither done nor running: re-running resumes it) or ``pending``. Failed nodes are retried by the next ``study run``.

Shards: ``--shard K/N`` (1-based K) runs the nodes whose group hashes to K; nodes of other shards that it needs
(e.g. the teacher's SFT) are waited for, polling the shared study folder. Every machine must see the same folder.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from kdlab.errors import KdlabError
from kdlab.io import atomic_write_json, atomic_write_text
from kdlab.locks import pid_alive
from kdlab.study.cost import format_seconds
from kdlab.study.kinds import KIND_ORDER, execute, is_done
from kdlab.study.nodes import Node
from kdlab.study.plan import Plan, build_plan
from kdlab.study.spec import StudySpec, check_models, load_spec

STALE_SECONDS = 600
HEARTBEAT_SECONDS = 30
STATUSES = ("done", "running", "failed", "interrupted", "pending")


# ---------------------------------------------------------------- the study folder


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


# ---------------------------------------------------------------- node states


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


# ---------------------------------------------------------------- running


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"K/N"`` (1-based) -> (K - 1, N); None -> (0, 1)."""
    if not text:
        return 0, 1
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise KdlabError(f"--shard {text!r}: expected K/N, e.g. 2/4") from None
    if not 1 <= index <= count:
        raise KdlabError(f"--shard {text!r}: K must be between 1 and N")
    return index - 1, count


@dataclass
class RunSummary:
    done: int = 0
    ran: int = 0
    failed: int = 0
    blocked: int = 0
    seconds: float = 0.0


class Clock:
    """Estimated time left: the plan's FLOP estimate, calibrated by the runs finished in this session.

    Each kind of run (training, evaluation, ...) gets its own correction factor once one of its runs has been
    measured; kinds not measured yet use the factor of all measured runs.
    """

    def __init__(self, plan: Plan):
        self.plan = plan
        self.estimated: dict[str, float] = {}
        self.measured: dict[str, float] = {}

    def record(self, node: Node, seconds: float) -> None:
        if node.flops > 0:
            self.estimated[node.kind] = self.estimated.get(node.kind, 0.0) + self.plan.seconds(node)
            self.measured[node.kind] = self.measured.get(node.kind, 0.0) + seconds

    def scale(self, kind: str | None = None) -> float:
        if kind in self.estimated and self.estimated[kind] > 1.0:
            return self.measured[kind] / self.estimated[kind]
        estimated = sum(self.estimated.values())
        return sum(self.measured.values()) / estimated if estimated > 1.0 else 1.0

    def left(self, nodes) -> float:
        return sum(self.plan.seconds(node) * self.scale(node.kind) for node in nodes) + 3.0 * len(nodes)


def describe_node(node: Node) -> str:
    """A node for the progress lines: ``kd teacher (base) -> student fkl tau=2 noise=1 seed 0 [domain]``."""
    m = node.meta
    parts = [node.kind]
    if node.kind in ("kd", "val-eval", "select", "eval", "fidelity") and m.role == "student-kd":
        parts.append(
            f"{m.teacher}{' (base)' if m.teacher_kind == 'base' else ''} -> {m.student} {m.method}"
            + (f" tau={m.temperature:g}" if m.temperature is not None else "")
            + (f" noise={m.noise:g}" if m.noise else "")
            + f" seed {m.seed}"
        )
    elif m.role == "student-sft":
        parts.append(f"{m.student} SFT seed {m.seed}")
    elif m.role in ("teacher", "base-teacher"):
        parts.append(f"{m.teacher}{' (base)' if m.role == 'base-teacher' else ''}")
    elif m.teacher:
        parts.append(f"{m.teacher}{' (base)' if m.teacher_kind == 'base' else ''}")
    elif m.model:
        parts.append(m.model)
    if m.domain:
        parts.append(f"[{m.domain}]")
    return " ".join(parts)


def run_plan(
    plan: Plan,
    study_dir: Path,
    shard: tuple[int, int] = (0, 1),
    poll: float = 30.0,
    max_wait: float | None = None,
    stop_after: int | None = None,
) -> RunSummary:
    """Run this shard's unfinished nodes in dependency order; failures are recorded and their dependents skipped.

    ``stop_after`` (for tests) stops after that many nodes have run in this session.
    """
    study_dir = Path(study_dir)
    by_id = plan.by_id()
    mine = plan.shard(*shard)
    summary, clock = RunSummary(), Clock(plan)
    pending = [node for node in mine if node_status(study_dir, node) != "done"]
    summary.done = len(mine) - len(pending)
    total = len(pending)
    failed: set[str] = set()
    waited_since = None
    started = time.time()
    print(
        f"kdlab study: {plan.spec.name}: {len(mine)} runs in shard {shard[0] + 1}/{shard[1]}, {summary.done} done, "
        f"{total} to run (estimated {format_seconds(clock.left(pending))})",
        flush=True,
    )
    while pending:
        ready = None
        for node in pending:
            if any(dep in failed for dep in node.deps):
                continue
            if all(is_done(by_id[dep], study_dir) for dep in node.deps) and node_status(study_dir, node) != "running":
                ready = node
                break
        blocked = [node for node in pending if any(dep in failed for dep in node.deps)]
        for node in blocked:
            print(
                f"kdlab study: skipping {node.id}: it needs {', '.join(dep for dep in node.deps if dep in failed)}, which failed",
                flush=True,
            )
            failed.add(node.id)
            pending.remove(node)
            summary.blocked += 1
        if ready is None:
            if not pending:
                break
            waiting = sorted(
                {dep for node in pending for dep in node.deps if not is_done(by_id[dep], study_dir)}
                | {node.id for node in pending if node_status(study_dir, node) == "running"}
            )
            waited_since = waited_since or time.time()
            if max_wait is not None and time.time() - waited_since > max_wait:
                raise KdlabError(
                    f"waited {format_seconds(max_wait)} for {len(waiting)} runs of other shards or processes "
                    f"(e.g. {waiting[0]}); is their machine running `kdlab study run` on this folder?"
                )
            print(
                f"kdlab study: waiting for {len(waiting)} runs elsewhere (e.g. {waiting[0]}); checking every {poll:g} s",
                flush=True,
            )
            time.sleep(poll)
            continue
        waited_since = None
        pending.remove(ready)
        index = total - len(pending)
        print(
            f"\nkdlab study: [{index}/{total}] {describe_node(ready)}  ->  {ready.id}\n"
            f"kdlab study: this run ~{format_seconds(clock.left([ready]))}, study left ~{format_seconds(clock.left(pending + [ready]))}",
            flush=True,
        )
        begin = time.time()
        if record_run(ready, study_dir):
            summary.ran += 1
            clock.record(ready, time.time() - begin)
        else:
            failed.add(ready.id)
            summary.failed += 1
        if stop_after is not None and summary.ran + summary.failed >= stop_after:
            break
    summary.seconds = time.time() - started
    summary.done = sum(is_done(node, study_dir) for node in mine)
    print(
        f"\nkdlab study: shard {shard[0] + 1}/{shard[1]}: {summary.done}/{len(mine)} runs done "
        f"({summary.ran} run now in {format_seconds(summary.seconds)}), {summary.failed} failed, {summary.blocked} skipped",
        flush=True,
    )
    return summary


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


# ---------------------------------------------------------------- dry run and status


def format_plan(plan: Plan, study_dir: Path, shard: tuple[int, int] = (0, 1)) -> str:
    """The runs of this shard with their status and estimated time, then totals per kind."""
    nodes = plan.shard(*shard)
    lines = [
        f"study {plan.spec.name}: {len(plan.nodes)} runs"
        + (f", shard {shard[0] + 1}/{shard[1]}: {len(nodes)}" if shard[1] > 1 else "")
        + f"; estimates at {plan.spec.cost['tflops']:g} TFLOP/s effective (cost.tflops in the spec)",
        "",
    ]
    width = max((len(node.id) for node in nodes), default=10)
    lines.append(f"{'status':<12}{'run':<{width + 2}}{'est.':>9}  what")
    for node in nodes:
        lines.append(
            f"{node_status(study_dir, node):<12}{node.id:<{width + 2}}{format_seconds(plan.seconds(node)):>9}  {describe_node(node)}"
        )
    lines += ["", f"{'kind':<14}{'runs':>6}{'left':>7}{'est. left':>11}"]
    left_total = 0.0
    for kind in KIND_ORDER:
        group = [node for node in nodes if node.kind == kind]
        if not group:
            continue
        left = [node for node in group if not is_done(node, study_dir)]
        seconds = sum(plan.seconds(node) for node in left)
        left_total += seconds
        lines.append(f"{kind:<14}{len(group):>6}{len(left):>7}{format_seconds(seconds):>11}")
    flops = sum(node.flops for node in nodes if not is_done(node, study_dir))
    lines.append(
        f"{'total':<14}{len(nodes):>6}{sum(not is_done(n, study_dir) for n in nodes):>7}{format_seconds(left_total):>11}"
        f"   ({flops:.2e} FLOP left)"
    )
    return "\n".join(lines)


def study_status(plan: Plan, study_dir: Path) -> dict[str, list[Node]]:
    """Nodes grouped by status (``done``, ``running``, ``failed``, ``interrupted``, ``pending``)."""
    groups: dict[str, list[Node]] = {status: [] for status in STATUSES}
    for node in plan.nodes:
        groups[node_status(study_dir, node)].append(node)
    return groups


def format_status(plan: Plan, study_dir: Path) -> str:
    groups = study_status(plan, study_dir)
    lines = [f"study {plan.spec.name} ({study_dir}): " + ", ".join(f"{len(groups[s])} {s}" for s in STATUSES)]
    lines.append(f"{'kind':<14}" + "".join(f"{s:>13}" for s in STATUSES))
    for kind in KIND_ORDER:
        counts = [sum(node.kind == kind for node in groups[s]) for s in STATUSES]
        if sum(counts):
            lines.append(f"{kind:<14}" + "".join(f"{c:>13}" for c in counts))
    for node in groups["running"]:
        state = read_state(study_dir, node)
        lines.append(
            f"running      {node.id} on {state.get('host')} (pid {state.get('pid')}) for "
            f"{format_seconds(time.time() - float(state.get('started', time.time())))}"
        )
    for node in groups["failed"]:
        lines.append(
            f"failed       {node.id}: {read_state(study_dir, node).get('error')} (log: {state_path(study_dir, node, '.log')})"
        )
    for node in groups["interrupted"]:
        lines.append(f"interrupted  {node.id} (re-run `kdlab study run` to resume it)")
    left = [node for status in ("running", "interrupted", "pending", "failed") for node in groups[status]]
    lines.append(f"estimated time left: {format_seconds(sum(plan.seconds(node) for node in left))}")
    return "\n".join(lines)


def run_study(
    spec_path,
    out=None,
    shard: str | None = None,
    dry_run: bool = False,
    poll: float = 30.0,
    max_wait: float | None = None,
) -> tuple[Path, RunSummary | None]:
    shard_index = parse_shard(shard)
    if dry_run:
        spec = load_spec(spec_path, check_files=False)
        check_models(spec)
        study_dir = study_folder(out, spec)
        print(format_plan(build_plan(spec), study_dir, shard_index), flush=True)
        missing = [
            f"{d.name}: {path}"
            for d in spec.domains.values()
            for path in (d.train, d.data_dir)
            if path and not path.startswith("hf:") and not Path(path).exists()
        ]
        if missing:
            print(
                "\nnot on this machine (needed to run; the estimate assumes the domains' `examples` hints):\n  "
                + "\n  ".join(missing),
                flush=True,
            )
        return study_dir, None
    spec, study_dir = prepare_study(spec_path, out)
    plan = build_plan(spec)
    return study_dir, run_plan(plan, study_dir, shard_index, poll=poll, max_wait=max_wait)
