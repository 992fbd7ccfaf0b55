"""Run folders: one folder per run, holding its resolved config; a finished run has ``result.json``.

Re-running the same command on the same folder resumes an interrupted run or reports a finished one. A folder that
was started with a different config is refused, so results never mix.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from kdlab.config import RunConfig, dump_yaml
from kdlab.errors import KdlabError
from kdlab.io import atomic_write_text


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    diffs = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return diffs


def _with_defaults(old: dict, defaults: dict) -> dict:
    """``old`` with the settings it lacks (added to kdlab after the run started) taken from ``defaults``."""
    filled = dict(defaults)
    for key, value in old.items():
        filled[key] = _with_defaults(value, defaults[key]) if isinstance(value, dict) and isinstance(defaults.get(key), dict) else value
    return filled


def run_state(config: RunConfig) -> str:
    """'new', 'resume' or 'done' for the run folder ``config.out``; refuses a folder holding another config."""
    run_dir = Path(config.out)
    config_path = run_dir / "config.yaml"
    if not run_dir.exists() or (run_dir.is_dir() and not any(run_dir.iterdir())):
        return "new"
    if not config_path.is_file():
        raise KdlabError(f"{run_dir}: exists and is not a kdlab run folder (no config.yaml); choose another --out")
    old = _with_defaults(yaml.safe_load(config_path.read_text()) or {}, RunConfig(kind=config.kind).to_dict())
    diffs = _differences(old, config.to_dict())
    if diffs:
        raise KdlabError(f"{run_dir}: holds a run with a different config ({'; '.join(diffs[:3])}); choose another --out")
    return "done" if (run_dir / "result.json").is_file() else "resume"


def start_run(config: RunConfig) -> Path:
    """Create the run folder and write its resolved config (called once all inputs have been checked)."""
    run_dir = Path(config.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", dump_yaml(config))
    return run_dir
