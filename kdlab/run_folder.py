"""Run folders: one folder per run, holding its resolved config; a finished run has ``result.json``.

Re-running the same command on the same folder resumes an interrupted run or reports a finished one. A folder that
was started with a different config is refused, so results never mix. The comparison is by content: ``out`` is
ignored (a moved folder resumes) and paths compare as the files they name (``./data.json`` = ``/abs/data.json``).
A run holds the folder's lock (:mod:`kdlab.locks`) from the final settings check until it ends, so two processes
never write one folder.

Settings compare paths, not contents: a run also records what its local inputs held (``inputs.json``,
:mod:`kdlab.train.run_inputs`) and is refused, naming them, when they changed since it started.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from kdlab.config import RunConfig
from kdlab.errors import KdlabError
from kdlab.io import atomic_write_text
from kdlab.locks import is_main_rank, main_rank_lock
from kdlab.outputs import absolute_paths, check_writable, read_config_mapping, same_settings
from kdlab.train.run_inputs import check_inputs, record_inputs

PATH_SETTINGS = ("model", "adapter", "teacher", "teacher_adapter", "teacher_cache", "data")


def _with_defaults(old: dict, defaults: dict) -> dict:
    """``old`` with the settings it lacks (added to kdlab after the run started) taken from ``defaults``."""
    filled = dict(defaults)
    for key, value in old.items():
        filled[key] = (
            _with_defaults(value, defaults[key])
            if isinstance(value, dict) and isinstance(defaults.get(key), dict)
            else value
        )
    return filled


def run_state(config: RunConfig) -> str:
    """'new', 'resume' or 'done' for the run folder ``config.out``; refuses a folder holding another config."""
    run_dir = Path(config.out)
    config_path = run_dir / "config.yaml"
    check_writable(run_dir)
    if not run_dir.exists() or (run_dir.is_dir() and not any(run_dir.iterdir())):
        return "new"
    if not config_path.is_file():
        what = "a file" if not run_dir.is_dir() else "not a kdlab run folder (no config.yaml)"
        raise KdlabError(f"{run_dir}: exists and is {what}; choose another --out")
    old = _with_defaults(read_config_mapping(config_path), RunConfig(kind=config.kind).to_dict())
    diffs = same_settings(old, config.to_dict(), PATH_SETTINGS)
    if diffs:
        raise KdlabError(
            f"{run_dir}: holds a run with a different config ({'; '.join(diffs[:3])}); choose another --out"
        )
    if (run_dir / "result.json").is_file():
        return "done"
    check_inputs(run_dir, config)
    return "resume"


def start_run(config: RunConfig) -> Path:
    """Create the run folder and write its resolved config (called once all inputs have been checked)."""
    run_dir = Path(config.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(recorded_settings(config), sort_keys=False))
    record_inputs(run_dir, config)
    return run_dir


def recorded_settings(config: RunConfig) -> dict:
    """The config as written to ``config.yaml``: path settings that name a local file or folder are made absolute,
    so the folder can be resumed from another working directory (``out`` is kept as given: it is ignored)."""
    return absolute_paths(config.to_dict(), PATH_SETTINGS)


@contextmanager
def claim_run(config: RunConfig, what: str) -> Iterator[Path | None]:
    """Lock the run folder for the block, check it again under the lock and write its config.

    Yields the run folder, or None when the run is already complete (another process may have finished it
    meanwhile). A folder locked by another process, or holding another config, is a :class:`KdlabError`. Under a
    distributed launch only the main process (rank 0) locks, checks and writes; the other ranks yield the folder
    at once (they checked it before loading, and write nothing to it).
    """
    if not is_main_rank():
        yield Path(config.out)
        return
    with main_rank_lock(config.out, what):
        if run_state(config) == "done":
            print(f"kdlab: {config.out} is complete (result.json); nothing to do", flush=True)
            yield None
            return
        yield start_run(config)
