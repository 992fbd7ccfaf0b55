"""``kdlab study run|status|results|stats|report``: the command-line side of :mod:`kdlab.study`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kdlab.errors import KdlabError


def _study(args: argparse.Namespace):
    """(spec, study_dir) from a study folder, or from a spec file plus ``--out`` (default runs/<name>)."""
    from kdlab.study.folder import load_study, study_folder
    from kdlab.study.spec import load_spec

    target = Path(args.study)
    if target.is_dir():
        return load_study(target)
    if target.is_file():
        spec = load_spec(target)
        return spec, study_folder(getattr(args, "study_dir", None), spec)
    raise KdlabError(f"{target}: neither a study folder nor a spec file")


def _results_frame(args: argparse.Namespace):
    """(spec, study folder, results table, selection table) of a study with finished evaluations."""
    from kdlab.study.publish import finished_results

    spec, study_dir = _study(args)
    return spec, study_dir, *finished_results(spec, study_dir)


def cmd_run(args: argparse.Namespace) -> None:
    if args.executor != "local":
        from kdlab.study.executors import SLURM_FLAGS, run_with_executor

        if args.shard:
            raise KdlabError(
                f"--shard is for --executor local; --executor {args.executor} schedules the whole plan itself"
            )
        study_dir, summary = run_with_executor(
            args.executor,
            args.spec,
            args.out,
            dry_run=args.dry_run,
            address=args.address,
            max_retries=args.max_retries,
            slurm_overrides={key: getattr(args, key) for key in SLURM_FLAGS},
            submitit_local=args.submitit_local,
        )
    else:
        from kdlab.study.executors.local import run_study

        study_dir, summary = run_study(
            args.spec, args.out, shard=args.shard, dry_run=args.dry_run, poll=args.poll, max_wait=args.max_wait
        )
    if summary is not None and (summary.failed or summary.blocked):
        print(
            f"kdlab study: {summary.failed} runs failed, {summary.blocked} skipped; see `kdlab study status {study_dir}`",
            file=sys.stderr,
        )
        sys.exit(1)


def cmd_status(args: argparse.Namespace) -> None:
    from kdlab.study.executors.progress import format_status
    from kdlab.study.plan import build_plan

    spec, study_dir = _study(args)
    print(format_status(build_plan(spec), study_dir))


def cmd_results(args: argparse.Namespace) -> None:
    from kdlab.stats.results import format_results, write_results

    _, study_dir, frame, selection = _results_frame(args)
    paths = write_results(frame, args.out or study_dir / "results", selection)
    print(format_results(frame))
    print(f"kdlab: wrote {', '.join(map(str, paths))} ({len(frame)} rows)")


def cmd_stats(args: argparse.Namespace) -> None:
    from kdlab.stats.study import compute_stats

    _, study_dir, frame, selection = _results_frame(args)
    out = Path(args.out or study_dir / "stats")
    compute_stats(study_dir, frame, out, selection)
    print((out / "stats.md").read_text())
    print(
        f"kdlab: wrote {study_dir / 'results'} and {out}/hypotheses.csv, paired.csv, seeds.csv, stats.md (and "
        "paper_temperature.csv, fidelity_plane.csv, agreement.csv when the study has those tables)"
    )


def cmd_report(args: argparse.Namespace) -> None:
    from kdlab.study.publish import write_study_report

    spec, study_dir = _study(args)
    html, markdown = write_study_report(spec, study_dir, Path(args.out) if args.out else None)
    print(f"kdlab: wrote {html} and {markdown}")


def add_study_commands(commands) -> None:
    study = commands.add_parser(
        "study",
        help="a whole KD grid from one spec: run, status, results, stats, report",
        description="Declare a study once (YAML spec, see configs/studies/), run it resumably "
        "(optionally sharded over machines), then collect its tables and report.",
    )
    sub = study.add_subparsers(dest="study_command", required=True, metavar="STUDY_COMMAND")
    run = sub.add_parser(
        "run", help="run the study's runs in dependency order (re-running resumes; finished runs are kept)"
    )
    run.add_argument("spec", help="study spec (YAML)")
    run.add_argument("--out", help="study folder (default runs/<name>)")
    run.add_argument(
        "--dry-run",
        dest="dry_run",
        action="store_true",
        help="print the plan with status and cost estimate; run nothing",
    )
    run.add_argument(
        "--shard",
        help="K/N: run the K-th of N deterministic shares (local executor; machines sharing a study folder "
        "without Ray or SLURM)",
    )
    run.add_argument(
        "--poll", type=float, default=30.0, help="seconds between checks while waiting for other shards (default 30)"
    )
    run.add_argument(
        "--max-wait",
        dest="max_wait",
        type=float,
        help="give up after waiting this many seconds for other shards (default: wait as long as needed)",
    )
    run.add_argument(
        "--executor",
        choices=("local", "ray", "slurm"),
        default="local",
        help="where the runs go: local (this process, default), ray (a Ray cluster: one task per run), "
        "slurm (one SLURM job per run, through submitit); see docs/distributed.md",
    )
    run.add_argument(
        "--address", help="ray: address of an existing Ray cluster (default: $RAY_ADDRESS, else start a local one)"
    )
    run.add_argument(
        "--max-retries",
        dest="max_retries",
        type=int,
        default=3,
        help="ray: times a run is retried when its worker process or machine is lost (default 3)",
    )
    run.add_argument("--partition", help="slurm: partition (default: slurm.partition in the spec)")
    run.add_argument("--account", help="slurm: account (default: slurm.account in the spec)")
    run.add_argument("--qos", help="slurm: quality of service (default: slurm.qos in the spec)")
    run.add_argument(
        "--time-min",
        dest="time_min",
        type=int,
        help="slurm: time limit of a job in minutes (overrides slurm.time_min "
        "of the spec, default 240; resources.<kind>.time_min still wins)",
    )
    run.add_argument(
        "--submitit-local",
        dest="submitit_local",
        action="store_true",
        help="slurm: run each job as a local process through submitit instead (a machine without SLURM)",
    )
    run.set_defaults(func=cmd_run)
    for name, func, help_text in (
        ("status", cmd_status, "done, running, failed, interrupted and pending runs"),
        ("results", cmd_results, "one tidy table (CSV and Parquet): a row per run x task"),
        ("stats", cmd_stats, "hypothesis tests H1-H5, paired McNemar/bootstrap, Holm, seed CIs, fidelity tables"),
        ("report", cmd_report, "self-contained HTML report (and Markdown) with figures"),
    ):
        command = sub.add_parser(name, help=help_text)
        command.add_argument("study", help="study folder (or spec file; then --study-dir or runs/<name>)")
        command.add_argument("--study-dir", dest="study_dir", help="study folder when STUDY is a spec file")
        if name != "status":
            command.add_argument("--out", help=f"output folder (default <study>/{name})")
        command.set_defaults(func=func)
