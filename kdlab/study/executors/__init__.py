"""Where a study's plan runs: ``local`` (this process, :mod:`kdlab.study.executors.local`), ``ray`` (a Ray cluster,
:mod:`kdlab.study.executors.ray`) or ``slurm`` (one SLURM job per run through submitit,
:mod:`kdlab.study.executors.slurm`). Every executor keeps the run folders, completion markers and state files of
the local runner, so a study can move between them and a finished run is never redone."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from kdlab.errors import KdlabError

EXECUTORS = ("local", "ray", "slurm")
SLURM_FLAGS = ("partition", "account", "qos", "time_min")


def slurm_settings(spec, overrides: dict) -> dict:
    """The spec's ``slurm`` section with the command line's non-empty settings on top."""
    return {**spec.slurm, **{key: value for key, value in overrides.items() if value is not None}}


def _dry_run(executor: str, spec_path, out, slurm_overrides: dict) -> Path:
    """Print the plan, its expected wall time on 1/4/8/32 GPUs and, for SLURM, every job script; write nothing."""
    from kdlab.study.executors.local import format_plan, study_folder
    from kdlab.study.kinds import is_done
    from kdlab.study.plan import build_plan
    from kdlab.study.schedule import format_estimates
    from kdlab.study.spec import load_spec

    spec = load_spec(spec_path, check_files=False)
    study_dir = study_folder(out, spec)
    plan = build_plan(spec)
    print(format_plan(plan, study_dir), flush=True)
    print("\n" + format_estimates(plan, [node for node in plan.nodes if not is_done(node, study_dir)]), flush=True)
    if executor == "slurm":
        from kdlab.study.executors.slurm import dry_run

        print("\n" + dry_run(plan, study_dir, slurm_settings(spec, slurm_overrides)), flush=True)
    return study_dir


def run_with_executor(
    executor: str,
    spec_path,
    out=None,
    dry_run: bool = False,
    address: str | None = None,
    max_retries: int = 3,
    slurm_overrides: dict | None = None,
    submitit_local: bool = False,
):
    """``kdlab study run --executor ray|slurm``: returns (study folder, run summary or None)."""
    if executor not in EXECUTORS[1:]:
        raise KdlabError(f"--executor {executor!r}: expected one of {', '.join(EXECUTORS)}")
    slurm_overrides = slurm_overrides or {}
    if dry_run:
        return _dry_run(executor, spec_path, out, slurm_overrides), None
    from kdlab.study.executors.local import prepare_study
    from kdlab.study.plan import build_plan

    if executor == "slurm" and not submitit_local and shutil.which("sbatch") is None:
        raise KdlabError(
            "--executor slurm: no `sbatch` on this machine; run on a SLURM login node "
            "(--dry-run prints the job scripts, --submitit-local runs them as local processes)"
        )
    spec, study_dir = prepare_study(spec_path, out)
    plan = build_plan(spec)
    if executor == "ray":
        from kdlab.study.executors.ray import run_plan_ray

        return study_dir, run_plan_ray(plan, study_dir, address or os.environ.get("RAY_ADDRESS"), max_retries)
    from kdlab.study.executors import slurm

    settings = slurm_settings(spec, slurm_overrides)
    if submitit_local:
        return study_dir, slurm.run_plan_submitit_local(plan, study_dir, settings, parallel=os.cpu_count() or 1)
    slurm.submit_slurm(plan, study_dir, settings)
    return study_dir, None
