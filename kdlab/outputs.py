"""Output paths: what kdlab may write to, checked before any work, and folder ownership by kdlab's own record.

Rules (every kdlab command that writes):

- an output **folder** is kdlab's only when it holds kdlab's manifest ``.kdlab-output.json`` (:data:`MANIFEST`:
  the kind of output, the kdlab version, and the files and folders kdlab wrote there, as relative paths), written by
  every command that writes an output folder (:func:`record_output`, :func:`kdlab.io.atomic_dir`). A file's name
  proves nothing: a folder holding ``fidelity.json`` or ``PRUNED.txt`` beside a user's files is the user's;
- an output folder may be missing, empty, or a kdlab output of the same kind (:func:`check_output_dir`). A command
  that **replaces** its folder (fidelity, pruning, export, stats paper, ...) replaces it only when everything in it
  is listed in the manifest, and removes only what the manifest lists: a folder that also holds anything else is
  refused (move those files away, or choose another ``--out``), so kdlab never deletes a file it did not write;
- a folder from an older kdlab (its kind's old marker file, e.g. ``fidelity.json``, but no manifest) is refused for
  replacement with one line telling the user to remove it or choose another ``--out``; commands that **resume** in
  place and only add or rewrite their own files (``kdlab eval``, which compares the saved settings first) accept it
  and record the manifest from then on;
- an output **file** may be missing or, with the command's overwrite flag, replaced; a folder in its place is
  refused (:func:`check_output_file`);
- the place must be writable: the folder itself when it exists, else its nearest existing parent
  (:func:`check_writable`), so a read-only location is one ``kdlab: error:`` line before any model is loaded.

Settings saved in an output folder are compared by content, not by path strings (:func:`same_settings`): ``out``
is ignored (a moved folder resumes) and path-valued settings are equal when they name the same file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from kdlab.errors import KdlabError
from kdlab.io import atomic_write_text


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


@dataclass(frozen=True)
class OutputKind:
    """A kind of output folder kdlab writes: ``name`` (recorded in the manifest), ``what`` (named in messages) and
    ``marker``, the file that identified such a folder before kdlab wrote manifests (None for newer kinds).

    Its methods are what :func:`kdlab.io.atomic_dir` needs to write such a folder (so that ``kdlab.io`` need not
    import this module): :meth:`check`, :meth:`seal` and :meth:`owned`.
    """

    name: str
    what: str
    marker: str | None = None

    def check(self, path: str | Path) -> Path:
        """:func:`check_output_dir` for replacing ``path`` with a new folder of this kind."""
        return check_output_dir(path, self)

    def seal(self, folder: Path) -> None:
        """Write the manifest of ``folder``, a new folder of this kind: everything in it is kdlab's."""
        (folder / MANIFEST).write_text(manifest_text(self, folder_entries(folder)))

    def owned(self, folder: Path) -> list[str]:
        """What kdlab may remove from ``folder``: the entries its manifest lists, and the manifest (none without)."""
        manifest = read_manifest(folder)
        return [*manifest["entries"], MANIFEST] if manifest else []


EVALUATION = OutputKind("evaluation", "kdlab evaluation", "config.yaml")
FIDELITY = OutputKind("fidelity", "fidelity", "fidelity.json")
PRUNED_MODEL = OutputKind("pruned-model", "pruned model (kdlab models prune)", "PRUNED.txt")
RETOKENIZED_MODEL = OutputKind("retokenized-model", "retokenized model (kdlab.models.retokenize)")
CONVERTED_MODEL = OutputKind("converted-model", "converted GGUF model", "config.json")
PAPER_STATS = OutputKind("paper-stats", "kdlab stats paper output", "hypotheses.csv")
EXPORT = OutputKind("export", "kdlab export")
TEACHER_ANSWERS = OutputKind("teacher-answers", "teacher answers (study)", "train.json")

MANIFEST = ".kdlab-output.json"
"""kdlab's record of an output folder it wrote (see the module docstring)."""


def _safe_entry(entry) -> bool:
    """A manifest entry is a relative POSIX path inside the folder (a folder entry ends with ``/``)."""
    if not isinstance(entry, str) or not entry or entry.startswith("/") or "\\" in entry:
        return False
    parts = entry.rstrip("/").split("/")
    return all(part not in ("", ".", "..") for part in parts) and entry != MANIFEST


def read_manifest(folder: str | Path) -> dict | None:
    """The manifest of ``folder``, or None when it has none or the file is not a well-formed kdlab manifest."""
    path = Path(folder) / MANIFEST
    if path.is_symlink() or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not (isinstance(data, dict) and data.get("written_by") == "kdlab" and isinstance(data.get("kind"), str)):
        return None
    entries = data.get("entries")
    return data if isinstance(entries, list) and all(_safe_entry(entry) for entry in entries) else None


def manifest_text(kind: OutputKind, entries) -> str:
    """The manifest recording ``entries`` (relative paths; folders end with ``/``) as kdlab's ``kind`` output."""
    from kdlab.version import __version__

    record = {"written_by": "kdlab", "kind": kind.name, "kdlab_version": __version__, "entries": sorted(set(entries))}
    return json.dumps(record, indent=2) + "\n"


def record_output(folder: str | Path, kind: OutputKind, entries) -> None:
    """Claim ``folder`` (created if needed) as kdlab's ``kind`` output that writes ``entries`` in place; entries
    already recorded are kept. For commands that resume in their folder (``kdlab eval``)."""
    folder = Path(folder)
    old = read_manifest(folder)
    kept = old["entries"] if old and old["kind"] == kind.name else []
    atomic_write_text(folder / MANIFEST, manifest_text(kind, [*kept, *entries]))


def folder_entries(folder: str | Path) -> list[str]:
    """Everything below ``folder`` as manifest entries: files and links, and empty folders (``name/``), sorted;
    the manifest itself excepted."""
    folder, entries = Path(folder), []
    for root, dirs, files in os.walk(folder):
        base = Path(root).relative_to(folder)
        links = [name for name in dirs if os.path.islink(os.path.join(root, name))]
        dirs[:] = [name for name in dirs if name not in links]
        entries += [(base / name).as_posix() for name in files + links]
        if not dirs and not files and not links and root != str(folder):
            entries.append(base.as_posix() + "/")
    return sorted(entry for entry in entries if entry != MANIFEST)


def foreign_entries(folder: str | Path, manifest: dict) -> list[str]:
    """What ``folder`` holds that ``manifest`` does not list (nor a folder it lists), sorted."""
    listed = set(manifest["entries"])
    folders = tuple(entry for entry in listed if entry.endswith("/"))
    return [entry for entry in folder_entries(folder) if entry not in listed and not entry.startswith(folders)]


def check_output_dir(path: str | Path, kind: OutputKind, option: str = "--out", resume: bool = False) -> Path:
    """Refuse an output folder kdlab must not write (see the module docstring); returns it as a Path.

    Allowed: missing, empty, or a ``kind`` folder by its manifest holding nothing else. With ``resume`` (a command
    that only adds or rewrites its own files in place) other files may lie beside, and a folder of an older kdlab
    (``kind.marker``, no manifest) is accepted. Everything else is a :class:`KdlabError` naming the path.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise KdlabError(f"{path}: exists and is a file, not a {kind.what} folder; choose another {option}")
    if path.is_symlink() and not resume:
        raise KdlabError(f"{path}: is a symbolic link; kdlab does not replace it: give the folder it points to")
    if path.is_dir() and any(path.iterdir()):
        _check_owned(path, kind, option, resume)
    check_writable(path)
    return path


def _check_owned(path: Path, kind: OutputKind, option: str, resume: bool) -> None:
    """Refuse a non-empty folder that is not kdlab's ``kind`` output, or (unless ``resume``) holds other files."""
    manifest = read_manifest(path)
    if manifest is None:
        if kind.marker and (path / kind.marker).is_file():
            if resume:
                return
            raise KdlabError(
                f"{path}: a {kind.what} folder from an older kdlab (no {MANIFEST}); kdlab does not replace it: "
                f"remove it yourself or choose another {option}"
            )
        raise KdlabError(
            f"{path}: exists and is not a {kind.what} folder (no {MANIFEST}); kdlab does not write into it: "
            f"choose another {option}"
        )
    if manifest["kind"] != kind.name:
        raise KdlabError(f"{path}: is a kdlab {manifest['kind']} output, not a {kind.what}; choose another {option}")
    if not resume:
        foreign = foreign_entries(path, manifest)
        if foreign:
            more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
            raise KdlabError(
                f"{path}: holds {foreign[0]}{more}, which kdlab did not write; kdlab replaces only its own files: "
                f"move them away or choose another {option}"
            )


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
