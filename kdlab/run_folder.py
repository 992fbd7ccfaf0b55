"""Run folders: one folder per run, holding its resolved config; a finished run has ``result.json``.

Re-running the same command on the same folder resumes an interrupted run or reports a finished one. A folder that
was started with a different config is refused, so results never mix. The comparison is by content: ``out`` is
ignored (a moved folder resumes) and paths compare as the files they name (``./data.json`` = ``/abs/data.json``).
A run holds the folder's lock (:mod:`kdlab.locks`) from the final settings check until it ends, so two processes
never write one folder.

Settings compare paths, not contents, so a run also records what its local inputs held: ``inputs.json`` (written
with config.yaml) holds a content fingerprint (:func:`fingerprint`) of its data file and of its model, adapter,
teacher and teacher adapter where they name a local file or folder (Hub ids and embedded model names are not
hashed). A run whose inputs changed since it started is refused, naming them, instead of resuming on other data or
weights; a run folder from a kdlab without ``inputs.json`` resumes unchecked (and gets the record).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import yaml

from kdlab.config import RunConfig
from kdlab.errors import KdlabError
from kdlab.io import atomic_write_json, atomic_write_text
from kdlab.locks import is_main_rank, main_rank_lock
from kdlab.outputs import absolute_paths, check_writable, same_settings

PATH_SETTINGS = ("model", "adapter", "teacher", "teacher_adapter", "teacher_cache", "data")
INPUTS_FILE = "inputs.json"
#: the path settings whose local files are fingerprinted (a teacher cache checks its own teacher and data)
HASHED_SETTINGS = ("data", "model", "adapter", "teacher", "teacher_adapter")
#: the files of a model or adapter folder that are fingerprinted: weights, configs, tokenizer files
MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".gguf", ".json", ".model", ".txt")
FULL_HASH_BYTES = 1 << 30  # files up to 1 GiB are hashed whole; larger ones by their size and 64 samples of 1 MiB


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
    old = _with_defaults(yaml.safe_load(config_path.read_text()) or {}, RunConfig(kind=config.kind).to_dict())
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
    if not (run_dir / INPUTS_FILE).is_file():  # a new run, or one started by a kdlab that did not record it
        atomic_write_json(run_dir / INPUTS_FILE, {"inputs": input_fingerprints(config)})
    return run_dir


def recorded_settings(config: RunConfig) -> dict:
    """The config as written to ``config.yaml``: path settings that name a local file or folder are made absolute,
    so the folder can be resumed from another working directory (``out`` is kept as given: it is ignored)."""
    return absolute_paths(config.to_dict(), PATH_SETTINGS)


def input_fingerprints(config: RunConfig) -> dict[str, dict]:
    """``{setting: {"path", "sha256"}}`` for each of :data:`HASHED_SETTINGS` that names a local file or folder."""
    settings = recorded_settings(config)
    found = {}
    for key in HASHED_SETTINGS:
        value = settings.get(key)
        if isinstance(value, str) and value and Path(value).exists():
            found[key] = {"path": value, "sha256": fingerprint(Path(value))}
    return found


def check_inputs(run_dir: Path, config: RunConfig) -> None:
    """Refuse to resume a run whose recorded inputs (``inputs.json``) changed since it started; no record: no check."""
    path = run_dir / INPUTS_FILE
    if not path.is_file():
        return
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))["inputs"]
        recorded = {key: (entry["path"], entry["sha256"]) for key, entry in recorded.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise KdlabError(
            f"{path}: unreadable ({type(exc).__name__}); restore it, or remove it to resume without checking the inputs"
        ) from None
    current = input_fingerprints(config)
    changed = [
        f"{key} {old_path} {'changed' if key in current else 'missing'}"
        for key, (old_path, digest) in sorted(recorded.items())
        if current.get(key, {}).get("sha256") != digest
    ]
    if changed:
        raise KdlabError(
            f"{run_dir}: inputs changed since the run started ({'; '.join(changed)}); resuming would mix them: "
            "restore them or choose another --out"
        )


def fingerprint(path: Path) -> str:
    """A file's sha256, or for a folder the sha256 over the names and sha256s of its weight, config and tokenizer
    files (:data:`MODEL_FILE_SUFFIXES`, top level); a file over :data:`FULL_HASH_BYTES` is sampled."""
    if path.is_file():
        return _file_digest(path)
    digest = hashlib.sha256()
    for item in sorted(path.iterdir()):
        if item.is_file() and item.suffix in MODEL_FILE_SUFFIXES:
            digest.update(f"{item.name}\0{_file_digest(item)}\0".encode())
    return digest.hexdigest()


def _file_digest(path: Path) -> str:
    stat = path.stat()
    return _cached_digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=256)
def _cached_digest(path: str, size: int, mtime_ns: int) -> str:
    """The file's sha256 (cached per size and mtime: a run checks its inputs twice); over FULL_HASH_BYTES, the sha256
    of its size and 64 evenly spaced 1 MiB samples (any re-saved weights file changes them)."""
    chunk = 1 << 20
    with open(path, "rb") as handle:
        if size <= FULL_HASH_BYTES:
            digest = hashlib.sha256()
            while block := handle.read(chunk):
                digest.update(block)
            return digest.hexdigest()
        digest = hashlib.sha256(f"{size} bytes, sampled\0".encode())
        for i in range(64):
            handle.seek((size - chunk) * i // 63)
            digest.update(handle.read(chunk))
    return digest.hexdigest()


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
