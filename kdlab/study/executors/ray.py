"""``kdlab study run --executor ray``: the plan's dependency graph handed to Ray whole.

Each unfinished node becomes one Ray task (:func:`kdlab.study.executors.node.run_node`) with the resources of its
kind (``resources`` in the spec), its dependencies passed as object references (Ray starts it once they have
finished) and ``max_retries`` for lost workers (a killed process or machine: the retry resumes the node from its
folder, and a node whose done file exists is never run again). A node that raises is recorded as failed in
``state/`` as by every executor (not retried in this session; the next ``study run`` retries it) and its
dependents are skipped. Tasks that use a GPU run in a fresh worker process each (Ray's rule for GPU tasks: a CUDA
context does not follow a worker to another GPU); CPU tasks reuse workers.

The study folder must be on storage that every Ray node sees, with the same path; before submitting anything the
driver writes a probe file there and asks one task on each node to read it back (and report its kdlab version).
"""

from __future__ import annotations

import socket
import time
import uuid
from pathlib import Path

from kdlab.errors import KdlabError
from kdlab.study.cost import format_seconds
from kdlab.study.executors.node import run_node
from kdlab.study.executors.progress import Clock, RunSummary, describe_node
from kdlab.study.folder import record_lost, state_path
from kdlab.study.kinds import unfinished
from kdlab.study.nodes import Node
from kdlab.study.plan import Plan
from kdlab.study.resources import Need
from kdlab.version import __version__

PROBE_TIMEOUT = 120.0


def task_options(need: Need, max_retries: int, use_gpus: bool = True) -> dict:
    """Ray task options for a node that needs ``need`` (GPUs dropped when the cluster has none)."""
    options = {
        "num_cpus": need.cpus,
        "num_gpus": need.gpus if use_gpus else 0.0,
        "max_retries": max_retries,
        "retry_exceptions": False,
    }
    if need.memory_gb:
        options["memory"] = int(need.memory_gb * 2**30)
    return options


def connect(address: str | None) -> bool:
    """Join the Ray cluster at ``address`` (or the one this process already joined), or start a local one.

    Returns whether this call started or joined it (so :func:`run_plan_ray` shuts it down at the end).
    """
    import ray

    if ray.is_initialized():
        return False
    try:
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise KdlabError(f"--address {address}: cannot join a Ray cluster there ({str(exc).splitlines()[0]})") from None
    return True


def _probe(path: str, token: str) -> dict:
    """Run on a Ray node: can it read the driver's probe file, and which kdlab does it import?"""
    import kdlab.version as version

    try:
        seen = Path(path).read_text() == token
    except OSError:
        seen = False
    return {"seen": seen, "version": version.__version__, "file": version.__file__, "host": socket.gethostname()}


def check_cluster(study_dir: Path, kinds: dict[str, Need], use_gpus: bool) -> list[dict]:
    """Refuse to start unless every alive Ray node sees the study folder and runs this kdlab version, and each kind
    of run fits on some node. Returns the nodes' probe answers."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [node for node in ray.nodes() if node.get("Alive")]
    for kind, need in kinds.items():
        gpus = need.gpus if use_gpus else 0.0
        if not any(
            node["Resources"].get("GPU", 0.0) >= gpus and node["Resources"].get("CPU", 0.0) >= need.cpus
            for node in nodes
        ):
            largest = max(nodes, key=lambda n: (n["Resources"].get("GPU", 0.0), n["Resources"].get("CPU", 0.0)))
            raise KdlabError(
                f"resources.{kind}: asks for {gpus:g} GPU(s) and {need.cpus:g} CPU(s) per run; no Ray node "
                f"has that (largest: {largest['Resources'].get('GPU', 0):g} GPUs, "
                f"{largest['Resources'].get('CPU', 0):g} CPUs)"
            )
    probe_path = study_dir / "state" / f".probe-{uuid.uuid4().hex}"
    token = uuid.uuid4().hex
    probe_path.parent.mkdir(parents=True, exist_ok=True)
    probe_path.write_text(token)
    remote = ray.remote(_probe)
    try:
        refs = [
            remote.options(
                num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            ).remote(str(probe_path), token)
            for node in nodes
        ]
        ready, missing = ray.wait(refs, num_returns=len(refs), timeout=PROBE_TIMEOUT)
        if missing:
            raise KdlabError(
                f"{len(missing)} Ray node(s) did not answer within {PROBE_TIMEOUT:g} s; is kdlab installed there?"
            )
        answers = ray.get(ready)
    finally:
        probe_path.unlink(missing_ok=True)
    for answer in answers:
        if not answer["seen"]:
            raise KdlabError(
                f"{study_dir}: the study folder is not visible from Ray node {answer['host']}; put it on "
                "storage every node mounts at the same path (NFS, Lustre, ...) and pass that path to --out"
            )
        if answer["version"] != __version__:
            raise KdlabError(
                f"Ray node {answer['host']} runs kdlab {answer['version']} ({answer['file']}), this driver "
                f"{__version__}: install the same kdlab on every node"
            )
    return answers


def _has_gpus() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0.0) > 0


def submit(plan: Plan, study_dir: Path, pending: list[Node], max_retries: int, use_gpus: bool) -> dict:
    """One Ray task per pending node, dependencies as object references; returns node id -> object reference."""
    import ray

    gpu_task, cpu_task = ray.remote(max_calls=1)(run_node), ray.remote(run_node)
    refs: dict = {}
    for node in pending:  # plan order: dependencies first
        options = task_options(plan.spec.resources[node.kind], max_retries, use_gpus)
        task = gpu_task if options["num_gpus"] > 0 else cpu_task
        deps = [refs[dep] for dep in node.deps if dep in refs]  # the others were done before the study started
        refs[node.id] = task.options(name=node.id, **options).remote(node, str(study_dir), *deps)
    return refs


def _lost(node: Node, study_dir: Path, error: Exception, outcomes: dict) -> dict:
    """The outcome of a task that Ray gave up on: skipped if a dependency did not finish, else failed (recorded)."""
    blocked = [dep for dep in node.deps if dep in outcomes and outcomes[dep]["status"] != "done"]
    if blocked:
        return {"id": node.id, "status": "skipped", "error": f"it needs {', '.join(blocked)}, which did not finish"}
    message = f"Ray gave up on it: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    record_lost(node, study_dir, message, host="ray")
    return {"id": node.id, "status": "failed", "error": message}


def follow(plan: Plan, study_dir: Path, refs: dict, summary: RunSummary) -> dict:
    """Wait for the tasks, printing a line as each node finishes; returns node id -> outcome."""
    import ray

    by_id, clock = plan.by_id(), Clock(plan)
    order = list(refs)
    waiting = [refs[node_id] for node_id in order]
    node_of = {ref: node_id for node_id, ref in refs.items()}
    outcomes: dict[str, dict] = {}
    while waiting:
        (ref,), waiting = ray.wait(waiting, num_returns=1)
        node = by_id[node_of[ref]]
        try:
            result = ray.get(ref)
        except ray.exceptions.RayError as error:
            result = _lost(node, study_dir, error, outcomes)
        outcomes[node.id] = result
        if result["status"] == "done" and result.get("ran"):
            summary.ran += 1
            clock.record(node, result["seconds"])
        summary.failed += result["status"] == "failed"
        summary.blocked += result["status"] == "skipped"
        left = [by_id[node_of[r]] for r in waiting]
        detail = {
            "done": f"in {format_seconds(result.get('seconds', 0.0))} on {result.get('host')}",
            "failed": f"FAILED: {result.get('error')} (traceback: {state_path(study_dir, node, '.log')})",
            "skipped": f"skipped: {result.get('error')}",
        }[result["status"]]
        print(
            f"kdlab study: [{len(outcomes)}/{len(order)}] {describe_node(node)}  ->  {node.id}: {detail}; "
            f"{len(left)} left (~{format_seconds(clock.left(left))} of run time)",
            flush=True,
        )
    return outcomes


def run_plan_ray(plan: Plan, study_dir: Path, address: str | None = None, max_retries: int = 3) -> RunSummary:
    """Run the plan's unfinished nodes on a Ray cluster (``address``, or a local one) and wait for them."""
    try:
        import ray
    except ImportError:
        raise KdlabError("--executor ray needs Ray: pip install 'kdlab[distributed]' (ray==2.60.0)") from None
    study_dir = Path(study_dir).resolve()
    started = connect(address)
    summary, begin = RunSummary(), time.time()
    refs: dict = {}
    try:
        pending = unfinished(plan.nodes, study_dir)
        summary.done = len(plan.nodes) - len(pending)
        use_gpus = _has_gpus()
        answers = check_cluster(study_dir, {node.kind: plan.spec.resources[node.kind] for node in pending}, use_gpus)
        resources = ray.cluster_resources()
        print(
            f"kdlab study: {plan.spec.name}: {len(plan.nodes)} runs, {summary.done} done, {len(pending)} to run on Ray "
            f"({len(answers)} node(s), {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs"
            + ("" if use_gpus else "; no GPUs: every run uses CPUs")
            + ")",
            flush=True,
        )
        refs = submit(plan, study_dir, pending, max_retries, use_gpus)
        follow(plan, study_dir, refs, summary)
    except KeyboardInterrupt:
        for ref in refs.values():
            ray.cancel(ref, force=True)
        raise
    finally:
        if started:
            ray.shutdown()
    return summary.finish("Ray", plan.nodes, study_dir, begin)
