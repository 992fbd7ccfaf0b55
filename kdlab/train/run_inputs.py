"""What a run's local inputs held: content fingerprints in ``inputs.json``, checked before a run resumes.

Settings compare paths, not contents, so the file at a run's ``data`` path could change between a kill and the
re-run and the resumed run would train on two datasets. ``inputs.json`` (written with config.yaml) holds a content
fingerprint (:func:`fingerprint`) of the data file and of the model, adapter, teacher, teacher adapter and teacher
answers where they name a local file or folder (Hub ids, ``hf:`` datasets and embedded model names are not hashed;
a teacher cache checks its own teacher and data). A run whose inputs changed is refused with one line naming them;
a run folder from a kdlab without ``inputs.json`` resumes unchecked, and gets the record.
"""

from __future__ import annotations

import hashlib
import json
import time
from functools import lru_cache
from pathlib import Path

from kdlab.config import RunConfig
from kdlab.errors import KdlabError
from kdlab.io import atomic_write_json

INPUTS_FILE = "inputs.json"
#: the settings whose local files are fingerprinted
HASHED_SETTINGS = ("data", "model", "adapter", "teacher", "teacher_adapter", "teacher_answers")
#: the files of a model or adapter folder that are fingerprinted (top level): weights, configs, tokenizer files
MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".gguf", ".json", ".model", ".txt")
FULL_HASH_BYTES = 1 << 30  # files up to 1 GiB are hashed whole; larger ones by their size and 64 samples of 1 MiB


def record_inputs(run_dir: Path, config: RunConfig) -> None:
    """Write ``inputs.json`` unless the folder has it (a new run, or one started by a kdlab that did not record)."""
    if not (run_dir / INPUTS_FILE).is_file():
        atomic_write_json(run_dir / INPUTS_FILE, {"inputs": input_fingerprints(config)})


def input_fingerprints(config: RunConfig) -> dict[str, dict]:
    """``{setting: {"path", "sha256"}}`` for each of :data:`HASHED_SETTINGS` that names a local file or folder."""
    settings = config.to_dict()
    found = {}
    for key in HASHED_SETTINGS:
        value = settings.get(key)
        path = Path(value).expanduser() if isinstance(value, str) and value else None
        if path is not None and path.exists():
            found[key] = {"path": str(path.absolute()), "sha256": fingerprint(path)}
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
    """:func:`_digest` of a file, cached while its size and mtime stay the same (a run checks its inputs twice); a
    file modified in the last seconds is read again (a rewrite within one mtime tick keeps the mtime)."""
    stat = path.stat()
    if time.time_ns() - stat.st_mtime_ns < 5_000_000_000:
        return _digest(str(path), stat.st_size)
    return _cached_digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)


@lru_cache(maxsize=256)
def _cached_digest(path: str, size: int, mtime_ns: int, inode: int) -> str:
    return _digest(path, size)


def _digest(path: str, size: int) -> str:
    """The file's sha256; over FULL_HASH_BYTES, the sha256 of its size and 64 evenly spaced 1 MiB samples (which
    any re-saved weights file changes)."""
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
