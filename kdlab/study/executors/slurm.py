"""``kdlab study run --executor slurm``: one SLURM job per unfinished node, submitted through submitit.

Every job runs :func:`kdlab.study.executors.node.run_node` on its node and carries ``--dependency=afterok:<ids>``
of its dependencies' jobs with ``--kill-on-invalid-dep=yes``, so SLURM starts it only after they succeeded and
cancels it when one failed (a failed node makes its job fail, after recording the failure in ``state/`` as every
executor does). Partition, account, QOS, time limit, setup lines and extra flags come from the spec's
``slurm`` section (or flags); GPUs, CPUs, memory and per-kind time limits from ``resources``. Job scripts, pickles
and logs live in ``<study>/slurm/<job id>/``; the submitted ids in ``<study>/slurm/jobs.json``.

The driver submits and returns: follow the study with ``kdlab study status`` (the state files) or ``squeue``.
``--dry-run`` prints every sbatch script it would submit, with stand-in job ids 1, 2, ... in plan order, and writes
nothing. ``cluster="local"`` (tests, a machine without SLURM) runs each job as a local process through submitit
instead; there the driver enforces the dependencies itself, since submitit's local executor has none.
"""

from __future__ import annotations

import json
import math
import shlex
import subprocess
import sys
import time
from pathlib import Path

from kdlab.errors import KdlabError
from kdlab.io import atomic_write_json
from kdlab.study.cost import format_seconds
from kdlab.study.executors.node import run_node
from kdlab.study.executors.progress import RunSummary, describe_node
from kdlab.study.folder import state_path
from kdlab.study.kinds import unfinished
from kdlab.study.nodes import Node, run_name
from kdlab.study.plan import Plan
from kdlab.study.resources import Need

JOB_FOLDER = "slurm/%j"


def slurm_job(node: Node, study_dir: str) -> dict:
    """The function a SLURM job runs: the node, or an error (so ``afterok`` dependents never start) if it failed."""
    result = run_node(node, study_dir)
    if result["status"] != "done":
        raise RuntimeError(f"{node.id}: {result['status']}: {result['error']}")
    return result


def job_parameters(node: Node, need: Need, slurm: dict, dep_ids: list[str]) -> dict:
    """submitit ``SlurmExecutor`` parameters of one node's job (``afterok`` on ``dep_ids``)."""
    params = {
        "job_name": f"kdlab-{node.kind}-{run_name(node)}"[:120],
        "time": need.time_min or slurm["time_min"],
        "cpus_per_task": max(1, math.ceil(need.cpus)),
        "setup": list(slurm["setup"]),
        "additional_parameters": dict(slurm["additional"]),
    }
    if need.gpus > 0:
        params["gpus_per_node"] = math.ceil(need.gpus)  # SLURM hands out whole GPUs
    if need.memory_gb:
        params["mem"] = f"{math.ceil(need.memory_gb)}GB"
    for key in ("partition", "account", "qos"):
        if slurm.get(key):
            params[key] = slurm[key]
    if dep_ids:
        params["additional_parameters"].update(
            {"dependency": "afterok:" + ":".join(dep_ids), "kill-on-invalid-dep": "yes"}
        )
    return params


def sbatch_script(study_dir: Path, params: dict, python: str | None = None) -> str:
    """The sbatch script submitit writes for a job with ``params`` (the same function it uses to submit)."""
    from submitit.slurm.slurm import _make_sbatch_string

    folder = Path(study_dir) / JOB_FOLDER
    command = " ".join([python or shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    return _make_sbatch_string(command=command, folder=folder, **params)


def job_scripts(plan: Plan, study_dir: Path, slurm: dict) -> str:
    """Every sbatch script the SLURM executor would submit now, with stand-in ids 1, 2, ... in plan order."""
    study_dir = Path(study_dir).resolve()
    ids: dict[str, str] = {}
    parts = []
    for node in unfinished(plan.nodes, study_dir):
        ids[node.id] = str(len(ids) + 1)
        params = job_parameters(node, plan.spec.resources[node.kind], slurm, [ids[d] for d in node.deps if d in ids])
        parts.append(f"##### job {ids[node.id]} (dry run): {node.id}\n{sbatch_script(study_dir, params)}")
    return "\n".join(parts) if parts else "nothing to submit: every run is done"


def _active_jobs(study_dir: Path) -> list[str]:
    """Jobs of an earlier submission to this study that SLURM still lists (queued or running)."""
    path = study_dir / "slurm" / "jobs.json"
    if not path.is_file():
        return []
    ids = list(json.loads(path.read_text()).values())
    try:
        out = subprocess.run(
            ["squeue", "-h", "-o", "%i", "-j", ",".join(ids)], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip() in ids]


def submit_slurm(plan: Plan, study_dir: Path, slurm: dict) -> dict[str, str]:
    """Submit one job per unfinished node with ``afterok`` dependencies; returns node id -> job id."""
    try:
        from submitit import SlurmExecutor
    except ImportError:
        raise KdlabError(
            "--executor slurm needs submitit: pip install 'kdlab[distributed]' (submitit==1.5.4)"
        ) from None
    study_dir = Path(study_dir).resolve()
    active = _active_jobs(study_dir)
    if active:
        raise KdlabError(
            f"{study_dir}: {len(active)} jobs of an earlier submission are still queued or running "
            f"(e.g. {active[0]}); wait for them or `scancel` them before submitting again"
        )
    ids: dict[str, str] = {}
    for node in unfinished(plan.nodes, study_dir):
        try:
            executor = SlurmExecutor(folder=study_dir / JOB_FOLDER)
        except RuntimeError as exc:
            raise KdlabError(f"--executor slurm: {exc} (use --dry-run to see the job scripts)") from None
        executor.update_parameters(
            **job_parameters(node, plan.spec.resources[node.kind], slurm, [ids[d] for d in node.deps if d in ids])
        )
        ids[node.id] = executor.submit(slurm_job, node, str(study_dir)).job_id
        atomic_write_json(
            study_dir / "slurm" / "jobs.json", ids
        )  # after each job: a failed submission keeps the record
    print(
        f"kdlab study: {plan.spec.name}: submitted {len(ids)} SLURM jobs (ids in {study_dir / 'slurm' / 'jobs.json'}, "
        f"logs in {study_dir / 'slurm'}/<job id>/); follow them with `kdlab study status {study_dir}`",
        flush=True,
    )
    return ids


def _start_ready(
    pending: list[Node],
    running: dict,
    outcomes: dict,
    summary: RunSummary,
    study_dir: Path,
    plan: Plan,
    slurm: dict,
    parallel: int,
) -> None:
    """Submit (up to ``parallel`` running jobs) the pending nodes whose dependencies have finished; skip those whose
    dependencies failed."""
    from submitit import LocalExecutor

    unfinished = {node.id for node in pending} | set(running)
    for node in list(pending):
        if any(dep in unfinished for dep in node.deps):
            continue
        blocked = [dep for dep in node.deps if dep in outcomes and outcomes[dep]["status"] != "done"]
        if blocked:
            pending.remove(node)
            outcomes[node.id] = {"id": node.id, "status": "skipped", "error": f"it needs {', '.join(blocked)}"}
            summary.blocked += 1
            print(f"kdlab study: skipping {node.id}: it needs {', '.join(blocked)}, which did not finish", flush=True)
        elif len(running) < parallel:
            pending.remove(node)
            executor = LocalExecutor(folder=study_dir / JOB_FOLDER)
            executor.update_parameters(timeout_min=plan.spec.resources[node.kind].time_min or slurm["time_min"])
            running[node.id] = executor.submit(slurm_job, node, str(study_dir))


def _collect_finished(
    running: dict, outcomes: dict, summary: RunSummary, study_dir: Path, plan: Plan, total: int
) -> None:
    """Record the outcome of every finished job and print a line for it."""
    by_id = plan.by_id()
    for node_id, job in list(running.items()):
        if not job.done():
            continue
        del running[node_id]
        try:
            result = job.result()
        except Exception as error:  # the job failed: its node is recorded in state/ (or its process died)
            result = {"id": node_id, "status": "failed", "error": str(error).strip().splitlines()[-1]}
        outcomes[node_id] = result
        summary.ran += result["status"] == "done" and bool(result.get("ran"))
        summary.failed += result["status"] == "failed"
        detail = (
            f"in {format_seconds(result['seconds'])}"
            if result["status"] == "done"
            else f"FAILED (see {state_path(study_dir, by_id[node_id], '.log')})"
        )
        print(
            f"kdlab study: [{len(outcomes)}/{total}] {describe_node(by_id[node_id])}  ->  {node_id}: {detail}",
            flush=True,
        )


def run_plan_submitit_local(
    plan: Plan, study_dir: Path, slurm: dict, parallel: int = 2, poll: float = 0.2
) -> RunSummary:
    """Run the plan with submitit's local executor: each node a local process, at most ``parallel`` at a time (the
    driver enforces the dependencies)."""
    study_dir = Path(study_dir).resolve()
    summary, begin = RunSummary(), time.time()
    pending = unfinished(plan.nodes, study_dir)
    summary.done, total = len(plan.nodes) - len(pending), len(pending)
    outcomes: dict[str, dict] = {}
    running: dict = {}
    while pending or running:
        _start_ready(pending, running, outcomes, summary, study_dir, plan, slurm, parallel)
        time.sleep(poll)
        _collect_finished(running, outcomes, summary, study_dir, plan, total)
    return summary.finish("submitit (local)", plan.nodes, study_dir, begin)
