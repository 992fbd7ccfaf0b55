"""Teacher cache integrity: per-array checksums recorded at build time, checked whenever a cache is loaded.

:func:`kdlab.teacher_cache.build_cache` records in ``manifest.json`` ``checksums``: for each array of ``cache.npz``
the SHA-256 of its dtype, shape and bytes (:func:`array_checksums`). :func:`read_arrays` reads the archive back and
:func:`check_arrays` verifies it before any row is used:

- an archive that cannot be read (truncated, not a zip file, a member that fails its CRC) or an array that is
  missing is refused, naming the file (and the array);
- every array must have the dtype and shape the manifest implies (k, token and example counts, id bytes, stored
  temperatures, quantised or exact) and the offsets must run from 0 to the token count without going back;
- every recorded checksum must match: an archive re-saved with altered values is refused, naming the array.

Each failure is one :class:`kdlab.errors.KdlabError` line that ends "delete the folder to rebuild it". A cache
written before checksums existed (same format version, no ``checksums`` key) gets the structural checks only and a
one-line note on stderr that its values cannot be verified; it is used as before (it is not rebuilt: a rebuild needs
the teacher and may differ in float rounding, e.g. with another batch size).

Cost: one SHA-256 pass over the arrays per load, that is once per run and process (``kdlab distill`` loads the
cache once). Measured on a Xeon core with SHA-NI: 0.20 s for a 1M-token cache at 274 bytes/token (274 MB, k = 64,
V = 152k), about 1.4 GB/s, as long as ``numpy.load`` of the file takes (0.21 s).
"""

from __future__ import annotations

import hashlib
import sys
import zipfile
from pathlib import Path

import numpy as np

from kdlab.errors import KdlabError
from kdlab.teacher_cache.format import MANIFEST_FILE, id_bytes, temperature_index

_DAMAGED = "the teacher cache is damaged; delete the folder to rebuild it"


def array_checksum(array: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and bytes (C order)."""
    digest = hashlib.sha256(f"{array.dtype.str}{tuple(array.shape)}".encode())
    digest.update(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)
    return digest.hexdigest()


def array_checksums(arrays: dict[str, np.ndarray]) -> dict[str, str]:
    """The manifest's ``checksums``: :func:`array_checksum` of every array, by name."""
    return {name: array_checksum(array) for name, array in sorted(arrays.items())}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_arrays(cache_path: Path) -> dict[str, np.ndarray]:
    """Every array of the archive ``cache_path``; an unreadable archive or array is a :class:`KdlabError` naming
    the file (and the array)."""
    try:
        data = np.load(cache_path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise KdlabError(f"{cache_path}: not a readable archive ({_first_line(exc)}); {_DAMAGED}") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise KdlabError(f"{cache_path}: not an .npz archive; {_DAMAGED}")
    arrays = {}
    with data:
        for name in data.files:
            try:
                arrays[name] = data[name]
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
                raise KdlabError(
                    f"{cache_path}: array '{name}' cannot be read ({_first_line(exc)}); {_DAMAGED}"
                ) from None
    return arrays


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_temperatures(value) -> bool:
    numbers = isinstance(value, list) and all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in value)
    return numbers and temperature_index(value, 1.0) is not None


#: What the loader reads from a manifest: key -> (what it must be, test).
_MANIFEST_FIELDS = {
    **dict.fromkeys(("k", "vocab_size", "tokens", "examples"), ("a count", _is_count)),
    **{key: ("a string", lambda v: isinstance(v, str)) for key in ("teacher", "teacher_fingerprint", "data_hash")},
    "quantized": ("true or false", lambda v: isinstance(v, bool)),
    "temperatures": ("a list of numbers including 1.0", _is_temperatures),
}


def check_manifest(manifest, manifest_path: Path) -> None:
    """Refuse a manifest that is not a JSON object holding what the loader reads (:data:`_MANIFEST_FIELDS`); one
    line naming the file and the key."""
    if not isinstance(manifest, dict):
        raise KdlabError(f"{manifest_path}: not a teacher cache manifest (expected a JSON object); {_DAMAGED}")
    for key, (what, test) in _MANIFEST_FIELDS.items():
        if not test(manifest.get(key)):
            raise KdlabError(f"{manifest_path}: '{key}' must be {what}, got {manifest.get(key)!r}; {_DAMAGED}")


def expected_layout(manifest: dict) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """The dtype and shape of every array of a cache with this manifest (:mod:`kdlab.teacher_cache.format`)."""
    n, k, e = manifest["tokens"], manifest["k"], manifest["examples"]
    two_bytes = id_bytes(manifest["vocab_size"]) == 2
    ids = (np.dtype(np.uint16), (n, k)) if two_bytes else (np.dtype(np.uint8), (n, k, 3))
    layout = {
        "ids": ids,
        "lse": (np.dtype(np.float32), (n,)),
        "tail_lse": (np.dtype(np.float32), (n, len(manifest["temperatures"]))),
        "example_index": (np.dtype(np.int64), (e,)),
        "offsets": (np.dtype(np.int64), (e + 1,)),
    }
    if manifest["quantized"]:
        layout.update(q=(np.dtype(np.uint8), (n, k)), scale=(np.dtype(np.float16), (n,)))
    else:
        layout["logp"] = (np.dtype(np.float32), (n, k))
    return layout


def check_arrays(arrays: dict[str, np.ndarray], manifest: dict, cache_path: Path) -> None:
    """Refuse (:class:`KdlabError`, naming the file and the array) arrays that are missing, of another dtype or
    shape than ``manifest`` implies, with offsets out of order, or that do not match their recorded checksum; note
    on stderr a cache without checksums (module docstring)."""
    for name, (dtype, shape) in expected_layout(manifest).items():
        if name not in arrays:
            raise KdlabError(f"{cache_path}: array '{name}' is missing; {_DAMAGED}")
        got = arrays[name]
        if got.dtype != dtype or tuple(got.shape) != shape:
            raise KdlabError(
                f"{cache_path}: array '{name}' is {got.dtype} {tuple(got.shape)}, {MANIFEST_FILE} implies "
                f"{dtype} {shape}; {_DAMAGED}"
            )
    offsets = arrays["offsets"]
    if offsets[0] != 0 or offsets[-1] != int(manifest["tokens"]) or (np.diff(offsets) < 0).any():
        raise KdlabError(
            f"{cache_path}: array 'offsets' does not run from 0 to {manifest['tokens']} tokens in order; {_DAMAGED}"
        )
    recorded = manifest.get("checksums")
    if recorded is None:
        print(
            f"kdlab: note: teacher cache {cache_path.parent} has no checksums (built by an older kdlab): its shapes "
            "were checked, its values cannot be; delete the folder to rebuild it with checksums",
            file=sys.stderr,
            flush=True,
        )
        return
    if not isinstance(recorded, dict):
        raise KdlabError(f"{cache_path.parent / MANIFEST_FILE}: 'checksums' is not a mapping; {_DAMAGED}")
    for name in sorted(set(recorded) ^ set(arrays)):
        where = "is not in the archive" if name in recorded else f"has no checksum in {MANIFEST_FILE}"
        raise KdlabError(f"{cache_path}: array '{name}' {where}; {_DAMAGED}")
    for name in sorted(arrays):
        if array_checksum(arrays[name]) != recorded[name]:
            raise KdlabError(
                f"{cache_path}: array '{name}' does not match its checksum in {MANIFEST_FILE} (damaged or altered); "
                f"{_DAMAGED}"
            )
