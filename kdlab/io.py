"""Atomic file and folder writes (readers never see a half-written result), and the strict reader of a user's YAML."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
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


def set_modes(folder: Path) -> None:
    """Give everything below ``folder`` the usual permissions: files ``0666 & ~umask``, folders ``0777 & ~umask``.

    Some writers create files owner-only whatever the umask (safetensors writes ``*.safetensors`` 0600 through a
    temporary file), which other users of a shared folder then cannot read. Links are left alone.
    """
    file_mode, dir_mode = 0o666 & ~_umask(), folder_mode()
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), dir_mode)
        for name in files:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), file_mode)


def _check_replaceable(path: Path, kind) -> None:
    """Refuse (before any work and again before the rename) a ``path`` that ``atomic_dir`` may not replace."""
    if kind is not None:
        kind.check(path)
    elif path.is_symlink() or (path.exists() and (not path.is_dir() or any(path.iterdir()))):
        what = "a file" if path.exists() and not path.is_dir() else "a folder that is not empty"
        raise KdlabError(
            f"{path}: exists and is {what}; kdlab does not replace it: choose another output path or remove it yourself"
        )


@contextmanager
def atomic_dir(path: str | Path, kind=None, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it takes the place of ``path`` in one rename.

    ``kind`` (a :class:`kdlab.outputs.OutputKind`, used through its ``check``, ``seal`` and ``owned`` methods): the
    folder is that kdlab output; it gets kdlab's manifest listing everything written in it, and an existing ``path``
    is replaced only under the rules of :func:`kdlab.outputs.check_output_dir` (a ``kind`` output by its manifest
    holding nothing else), and only what its manifest lists is removed. Without ``kind`` an existing ``path`` must be an empty folder, unless ``replace``
    is set (kdlab's own sub-folders of a locked run, such as ``final/`` and ``checkpoints/step-N``). Anything else —
    a user's file or folder — is refused with a :class:`KdlabError` before any work, and is never touched. Files get
    ``0666 & ~umask`` and folders ``0777 & ~umask`` (:func:`set_modes`), not mkdtemp's or safetensors' owner-only.
    """
    path = Path(path)
    if not replace:
        _check_replaceable(path, kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if kind is not None:
            kind.seal(tmp)
        set_modes(tmp)
        os.chmod(tmp, folder_mode())
        if not replace:
            _check_replaceable(path, kind)  # again: something may have appeared while we worked
        _swap(tmp, path, kind, replace)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap(tmp: Path, path: Path, kind, replace: bool) -> None:
    """Rename ``tmp`` to ``path``; an existing ``path`` is first renamed aside, then removed (see :func:`atomic_dir`)."""
    if not path.exists():
        os.replace(tmp, path)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))  # a name of our own
    if path.is_symlink() or not path.is_dir():  # only with replace: a file is renamed to the name, not over it
        old.rmdir()
    os.replace(path, old)  # a folder may be renamed over an empty one
    os.replace(tmp, path)
    if replace and (old.is_symlink() or not old.is_dir()):
        old.unlink()
    elif replace:
        shutil.rmtree(old, ignore_errors=True)
    else:
        _remove_owned(old, kind.owned(old) if kind is not None else [], path)


def _remove_owned(old: Path, entries: list[str], path: Path) -> None:
    """Remove from ``old`` (the replaced ``path``) only ``entries`` (kdlab's), then the folder when empty."""
    for entry in entries:
        target = old / entry
        if entry.endswith("/") and target.is_dir() and not target.is_symlink():
            shutil.rmtree(target, ignore_errors=True)
        elif target.is_symlink() or target.is_file():
            target.unlink()
    for root, _, _ in sorted(os.walk(old), key=lambda item: -len(item[0])):  # the deepest folders first
        with contextlib.suppress(OSError):
            os.rmdir(root)
    if old.exists():  # something kdlab did not write appeared in the folder between the check and the rename
        print(f"kdlab: {path}: kept what kdlab did not write in {old}", file=sys.stderr, flush=True)
