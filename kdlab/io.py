"""Atomic file and folder writes (readers never see a half-written result), and the strict reader of a user's YAML."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from kdlab.errors import KdlabError


class _DuplicateKey(yaml.YAMLError):
    """A mapping repeats a key: ``key``, its ``line`` and the ``first`` line it was given on (1-based)."""

    def __init__(self, key, line: int, first: int):
        super().__init__(f"duplicate key {key!r}")
        self.key, self.line, self.first = key, line, first


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping repeating a key (PyYAML silently keeps the last value)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may override keys: that is its purpose
                continue
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise _DuplicateKey(key, line, seen[key])
                seen[key] = line
            except TypeError:  # an unhashable key: SafeLoader reports it below
                continue
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path):
    """A user's YAML file (a study spec, a run's ``--config``) read through :class:`StrictLoader`.

    Malformed YAML and a repeated key are a :class:`KdlabError` naming the file (and the key and its lines:
    ``spec.yaml: line 12: duplicate key 'fkl' (first at line 8)``).
    """
    try:
        return yaml.load(Path(path).read_text(), Loader=StrictLoader)  # a SafeLoader: no arbitrary objects
    except _DuplicateKey as exc:
        raise KdlabError(f"{path}: line {exc.line}: duplicate key {exc.key!r} (first at line {exc.first})") from None
    except yaml.YAMLError as exc:
        raise KdlabError(f"{path}: malformed YAML ({str(exc).splitlines()[0]})") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename.

    The file gets the usual permissions (0666 less the umask), not mkstemp's owner-only 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, data: object) -> None:
    """Write ``data`` as JSON (:func:`json_text`: always valid, non-finite floats as null) atomically."""
    atomic_write_text(path, json_text(data, indent=2, sort_keys=True) + "\n")


def json_text(data: object, default=str, **options) -> str:
    """``json.dumps(data, **options)`` that is always valid JSON: a non-finite float (NaN, ±inf, also one that
    ``default`` makes of a value JSON cannot hold) is written as ``null``, never as the bare ``NaN`` / ``Infinity``
    that JSON parsers other than Python's reject; ``default`` (``str`` unless given) converts other values."""
    return json.dumps(_finite(data), allow_nan=False, default=lambda value: _finite(default(value)), **options)


def _finite(data: object) -> object:
    """``data`` with every non-finite float replaced by None (in nested dicts, lists and tuples)."""
    import math

    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: _finite(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(value) for value in data]
    return data


def folder_mode() -> int:
    """The mode a new folder gets under the current umask (0777 less the umask), as ``mkdir`` would give it."""
    return 0o777 & ~_umask()


def _replaceable(path: Path, marker: str | None) -> bool:
    """Whether ``atomic_dir`` may replace ``path``: missing, an empty folder, or a folder holding ``marker``."""
    if not path.exists() and not path.is_symlink():
        return True
    if not path.is_dir() or path.is_symlink():
        return False
    return not any(path.iterdir()) or (marker is not None and (path / marker).is_file())


@contextmanager
def atomic_dir(path: str | Path, marker: str | None = None, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it takes the place of ``path`` in one rename.

    An existing ``path`` is replaced only when it is an empty folder, a folder holding the file ``marker`` (a
    kdlab output of the same kind, e.g. ``fidelity.json``) or when ``replace`` is set (kdlab's own sub-folders
    such as ``checkpoints/step-N``); anything else — a user's file or folder — is refused with a
    :class:`KdlabError` before any work, and is never touched. The new folder gets ``0777 & ~umask`` like one made
    by ``mkdir`` (not mkdtemp's owner-only 0700).
    """
    path = Path(path)
    if not replace and not _replaceable(path, marker):
        raise _refusal(path, marker)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, folder_mode())
    try:
        yield tmp
        if path.exists():
            if not replace and not _replaceable(path, marker):  # appeared while we worked
                raise _refusal(path, marker)
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _refusal(path: Path, marker: str | None) -> KdlabError:
    what = "a file" if path.exists() and not path.is_dir() else "a folder that is not empty"
    kind = f" (no {marker})" if marker and what != "a file" else ""
    return KdlabError(
        f"{path}: exists and is {what}{kind}; kdlab does not replace it: choose another output path "
        "or remove it yourself"
    )
