"""Output paths: what kdlab may write to, checked before any work, and folder identity by content.

Rules (every kdlab command that writes):

- an output **folder** may be missing, empty, or a kdlab output of the same kind (recognised by its marker file,
  e.g. ``config.yaml`` of a run, ``fidelity.json``); an existing file, or a folder holding anything else, is refused
  (:func:`check_output_dir`) — kdlab never deletes or replaces what a user put there;
- an output **file** may be missing or, with the command's overwrite flag, replaced; a folder in its place is
  refused (:func:`check_output_file`);
- the place must be writable: the folder itself when it exists, else its nearest existing parent
  (:func:`check_writable`), so a read-only location is one ``kdlab: error:`` line before any model is loaded.

Settings saved in an output folder are compared by content, not by path strings (:func:`same_settings`): ``out``
is ignored (a moved folder resumes) and path-valued settings are equal when they name the same file.
"""

from __future__ import annotations

import os
from pathlib import Path

from kdlab.errors import KdlabError


def check_writable(path: str | Path) -> None:
    """Refuse (naming it) a ``path`` that cannot be created or written: checks the nearest existing ancestor."""
    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        if probe != path:
            raise KdlabError(f"{path}: cannot be created: {probe} is a file, not a folder")
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise KdlabError(f"{path}: cannot write there ({probe} is not writable)")


def check_output_dir(path: str | Path, marker: str, what: str, option: str = "--out") -> Path:
    """Refuse an output folder kdlab must not write into; returns it as a Path.

    Allowed: missing, empty, or a folder holding ``marker`` (a kdlab ``what`` folder). Refused with a
    :class:`KdlabError` naming the path: an existing file, a non-empty folder without ``marker``, an unwritable place.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise KdlabError(f"{path}: exists and is a file, not a {what} folder; choose another {option}")
    if path.is_dir() and any(path.iterdir()) and not (path / marker).is_file():
        raise KdlabError(
            f"{path}: exists and is not a {what} folder (no {marker}); kdlab does not write into it: "
            f"choose another {option}"
        )
    check_writable(path)
    return path


def check_output_file(
    path: str | Path, option: str = "--out", overwrite: bool = False, flag: str = "--overwrite"
) -> Path:
    """Refuse an output file kdlab must not write: a folder, an existing file (unless ``overwrite``), an unwritable place."""
    path = Path(path)
    if path.is_dir():
        raise KdlabError(f"{path}: is a folder; {option} takes a file name")
    if path.exists() and not overwrite:
        raise KdlabError(f"{path}: exists; kdlab does not replace it without {flag}")
    check_writable(path)
    return path


def _same_path(a, b) -> bool:
    """Two path-valued settings name the same thing: equal strings, or both existing and the same file."""
    if a == b:
        return True
    if not (isinstance(a, str) and isinstance(b, str)):
        return False
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    try:
        return pa.exists() and pb.exists() and os.path.samefile(pa, pb)
    except OSError:
        return False


def same_settings(old: dict, new: dict, paths: tuple[str, ...], ignore: tuple[str, ...] = ("out",)) -> list[str]:
    """The differences ``key: old -> new`` between two flat settings dicts; ``ignore`` keys are skipped and ``paths``
    keys compare as paths (:func:`_same_path`). Nested dicts are compared with dotted keys."""
    diffs = []
    for key in sorted(set(old) | set(new)):
        if key in ignore:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += [f"{key}.{diff}" for diff in same_settings(a, b, (), ())]
        elif key in paths and _same_path(a, b):
            continue
        elif a != b:
            diffs.append(f"{key}: {a!r} -> {b!r}")
    return diffs


def absolute_paths(settings: dict, paths: tuple[str, ...]) -> dict:
    """``settings`` with the ``paths`` keys that name a local file or folder made absolute (as recorded in an
    output folder, so that it can be resumed from another working directory)."""
    recorded = dict(settings)
    for key in paths:
        value = recorded.get(key)
        if isinstance(value, str) and value and Path(value).expanduser().exists():
            recorded[key] = str(Path(value).expanduser().absolute())
    return recorded


def read_config_mapping(path: str | Path) -> dict:
    """The settings saved in an output folder's ``config.yaml`` (an empty file: ``{}``); invalid YAML, or YAML that
    is not a mapping (a list, a scalar), is a one-line :class:`KdlabError` naming the file."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise KdlabError(
            f"{path}: not valid YAML{where} ({getattr(exc, 'problem', None) or type(exc).__name__}), "
            "not the settings of a kdlab output folder"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise KdlabError(
            f"{path}: holds a YAML {type(data).__name__}, not a mapping of settings (not the settings of a kdlab "
            "output folder)"
        )
    return data
