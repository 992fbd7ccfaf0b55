"""The teacher cache of a distill run (``kdlab distill --teacher-cache DIR``): checked, or built on first use.

The folder is built on first use with ``k = kd.cache_k`` and the tail sums of ``kd.cache_temperatures`` plus
``kd.temperature`` from the data encoded exactly as the trainer encodes it (:func:`kdlab.train.inputs.distill_inputs`:
the student's tokenizer, ``train.max_length``, the same example indices), then checked on every later use against
the teacher spec (model, adapter folder and a hash of the adapter weights), the data hash, k and the format version,
without loading any model (a ``kd.temperature`` the cache does not store is a warning, not a rebuild); the weight
fingerprint is compared too whenever the teacher is loaded anyway. ``kdlab distill`` then loads a reused cache before
it creates the run folder (:mod:`kdlab.train.teacher_signal`): its arrays are verified against the manifest's
checksums (:mod:`kdlab.teacher_cache.integrity`), so a damaged or altered cache is refused in one line naming the
file and the array, and leaves no run folder (delete the cache folder to rebuild it). The objective
(:class:`kdlab.train.objectives.DistillObjective` with the cache) computes the student's logits from its hidden states
a chunk of ``train.chunk_size`` tokens at a time, sliced to the cache's ``vocab_size``, against the rows of the batch
(``TeacherCache.rows(batch["index"])``) with ``tail = kd.cache_tail``: ``(1 - w) * CE + w * tau**2 * divergence``,
summed over response tokens, as the live objective. No teacher forward pass runs on these batches, and with
``kd.lmbda = 0`` the teacher is not even loaded. On-policy batches (GKD, ``kd.lmbda > 0``: student-sampled
responses, which the cache cannot hold) use the live teacher.

The cache format, store and loss are :mod:`kdlab.teacher_cache` (which knows nothing of runs and configs).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from kdlab.config import RunConfig
from kdlab.errors import KdlabError
from kdlab.locks import folder_lock
from kdlab.outputs import check_writable
from kdlab.teacher_cache.format import CACHE_FILE, MANIFEST_FILE, normalize_temperatures, temperature_index
from kdlab.teacher_cache.store import build_cache, data_hash, read_manifest
from kdlab.train.inputs import DistillInputs, distill_inputs, output_vocab
from kdlab.train.teachers import load_teacher, teacher_spec


def teacher_cache_ready(path) -> bool:
    """True for a complete cache folder, False for a missing or empty one; a folder holding anything else is refused
    (building a cache there would replace it)."""
    path = Path(path)
    if (path / MANIFEST_FILE).is_file() and (path / CACHE_FILE).is_file():
        return True
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise KdlabError(
            f"{path}: exists and is not a teacher cache (no {MANIFEST_FILE} and {CACHE_FILE}); choose another --teacher-cache"
        )
    return False


def _check_cache_manifest(config: RunConfig, dataset) -> dict:
    """Refuse a complete cache of an older format, or built for another teacher, other data (tokenisation,
    max_length) or another k; return its manifest (read once, by :func:`read_manifest`)."""
    path = Path(config.teacher_cache)
    manifest = read_manifest(path)
    diffs, spec = [], teacher_spec(config)
    if manifest.get("teacher") != spec:
        diffs.append(f"teacher '{manifest.get('teacher')}', this run '{spec}'")
    if manifest.get("data_hash") != data_hash(dataset):
        tokens = sum(len(item.response_ids) for item in dataset)
        diffs.append(
            f"other data: built on {manifest.get('examples')} examples / {manifest.get('tokens')} response tokens, "
            f"this run has {len(dataset)} / {tokens} (data file, tokenizer or max_length)"
        )
    if manifest.get("k") != config.kd.cache_k:
        diffs.append(f"k = {manifest.get('k')}, this run kd.cache_k = {config.kd.cache_k}")
    if diffs:
        raise KdlabError(
            f"{path}: teacher cache does not match this run ({'; '.join(diffs)}); delete it or choose another --teacher-cache"
        )
    return manifest


def _warn_cache_temperature(config: RunConfig, manifest: dict) -> None:
    """A reused cache without the exact tail sum at ``kd.temperature``: warn (the bucket tail is approximated)."""
    stored = manifest.get("temperatures", [])
    if config.kd.cache_tail == "bucket" and temperature_index(stored, config.kd.temperature) is None:
        print(
            f"kdlab: warning: teacher cache {config.teacher_cache} stores the exact tail mass at temperatures "
            f"{', '.join(f'{tau:g}' for tau in stored)}, not at kd.temperature = {config.kd.temperature:g}: the bucket tail "
            "is approximated as uniform (over-estimates the softened tail); delete the folder to rebuild it with this "
            "temperature",
            file=sys.stderr,
            flush=True,
        )


def check_teacher_cache(config: RunConfig, inputs: DistillInputs) -> dict | None:
    """The manifest of a complete cache, checked against the run without loading any model (:func:`_check_cache_manifest`,
    and a warning for a ``kd.temperature`` it does not store), or None when the cache is still to be built."""
    if not teacher_cache_ready(config.teacher_cache):
        return None
    manifest = _check_cache_manifest(config, inputs.encoded)
    _warn_cache_temperature(config, manifest)
    return manifest


def ensure_teacher_cache(config: RunConfig, progress: bool = True) -> Path:
    """Make ``config.teacher_cache`` hold the teacher's top-``kd.cache_k`` signal on ``config.data``; return it
    (standalone: a study's cache node, benchmarks; ``kdlab distill`` checks and builds through
    :mod:`kdlab.train.teacher_signal`).

    A complete cache is checked against the run without loading any model (tokenizers only,
    :func:`check_teacher_cache`): the teacher spec (:func:`kdlab.train.teachers.teacher_spec`: model, adapter folder
    and adapter weights hash), the hash of the data encoded with the student's tokenizer and ``train.max_length``
    (the examples and indices run_distill trains on), k and the format version (a cache of an older format must be
    deleted and rebuilt); a mismatch is a :class:`KdlabError` naming the folder and what differs. A
    ``kd.temperature`` without an exact tail sum in the cache is a warning (the bucket tail is then approximated),
    not a rebuild. A missing cache is built (:func:`build_teacher_cache`).
    """
    if not config.teacher_cache:
        raise KdlabError("no teacher cache folder set (--teacher-cache DIR)")
    inputs = distill_inputs(config)
    if check_teacher_cache(config, inputs) is not None:
        return Path(config.teacher_cache)
    return build_teacher_cache(config, inputs, progress=progress)


def build_teacher_cache(
    config: RunConfig, inputs: DistillInputs, teacher=None, vocab_size: int | None = None, progress: bool = True
) -> Path:
    """Build the missing cache ``config.teacher_cache`` (atomically, with a progress bar) from ``teacher``, loaded
    with :func:`kdlab.train.teachers.load_teacher` when not given, with the exact tail sums at
    ``kd.cache_temperatures`` plus ``kd.temperature``; ``vocab_size``: the run's shared vocabulary (default: the
    tokenizer's, cut to the teacher's output layer). Safe from several processes at once: the build holds the
    folder's lock (:mod:`kdlab.locks`); another process waits for it, then checks and reuses the cache."""
    path = Path(config.teacher_cache)
    with folder_lock(path, "building a teacher cache", wait=True):  # another process building it: wait, then reuse
        if check_teacher_cache(config, inputs) is not None:
            return path
        check_writable(path)
        if teacher is None:
            teacher = load_teacher(config)
            teacher.to("cuda" if torch.cuda.is_available() else "cpu")
        vocab_size = vocab_size or output_vocab(inputs.vocab_size, teacher)
        temperatures = normalize_temperatures([*config.kd.cache_temperatures, config.kd.temperature])
        print(
            f"kdlab: building the teacher cache {path} (k = {config.kd.cache_k}, tail sums at tau = "
            f"{', '.join(f'{tau:g}' for tau in temperatures)}, {len(inputs.encoded)} examples)",
            flush=True,
        )
        info = build_cache(
            teacher,
            inputs.tokenizer,
            inputs.encoded,
            path,
            k=config.kd.cache_k,
            batch_size=config.train.batch_size,
            vocab_size=vocab_size,
            progress=progress,
            teacher_spec=teacher_spec(config),
            chunk_size=config.train.chunk_size,
            temperatures=temperatures,
        )
        print(f"kdlab: teacher cache {path}: {info.tokens} tokens, {info.bytes_per_token:.0f} bytes/token", flush=True)
    return path
