"""Where a study's plan runs: ``local`` (this process, :mod:`kdlab.study.executors.local`), ``ray`` (a Ray cluster,
:mod:`kdlab.study.executors.ray`) or ``slurm`` (one SLURM job per run through submitit,
:mod:`kdlab.study.executors.slurm`). Every executor keeps the run folders, done files and state files of
:mod:`kdlab.study.folder`, so a study can move between them and a finished run is never redone; every executor's
``--dry-run`` is :func:`print_dry_run`."""

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


def print_dry_run(
    executor: str, spec_path, out, shard: tuple[int, int] = (0, 1), slurm_overrides: dict | None = None
) -> Path:
    """Print the plan (this shard's runs) with each run's status and estimate, then: for the local executor, the
    domains' data missing on this machine; for Ray and SLURM, the expected wall time on 1/4/8/32 GPUs and, for SLURM,
    every job script. Writes nothing; returns the study folder."""
    from kdlab.study.executors.progress import format_plan
    from kdlab.study.folder import study_folder
    from kdlab.study.plan import build_plan
    from kdlab.study.spec import check_models, load_spec

    spec = load_spec(spec_path, check_files=False)
    if executor == "local":
        check_models(spec)
    study_dir = study_folder(out, spec)
    plan = build_plan(spec)
    print(format_plan(plan, study_dir, shard), flush=True)
    if executor == "local":
        _print_missing_data(spec)
        return study_dir
    from kdlab.study.kinds import unfinished
    from kdlab.study.schedule import format_estimates

    print("\n" + format_estimates(plan, unfinished(plan.nodes, study_dir)), flush=True)
    if executor == "slurm":
        from kdlab.study.executors.slurm import job_scripts

        print("\n" + job_scripts(plan, study_dir, slurm_settings(spec, slurm_overrides or {})), flush=True)
    return study_dir


def _print_missing_data(spec) -> None:
    """The domains' local training files and data folders that are not on this machine."""
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
        return print_dry_run(executor, spec_path, out, slurm_overrides=slurm_overrides), None
    from kdlab.study.folder import prepare_study
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
