"""Teacher cache store: build a cache folder from a teacher, read its manifest, load it and decode its rows.

The teacher's top-k distribution on a training set, computed once (:func:`build_cache`), reused by every run
(:func:`load_cache`); the stored arrays are described in :mod:`kdlab.teacher_cache.format`.

Files: a cache is a folder written atomically (:func:`kdlab.io.atomic_dir`) holding ``cache.npz`` (uncompressed
``numpy.savez`` of the arrays of :mod:`kdlab.teacher_cache.format`) and ``manifest.json`` (format version, teacher spec and weight fingerprint (256 rows of the output layer rounded to
bf16, so a teacher loaded in float32 or bfloat16 matches),
data hash, k, vocab size, quantised or not, the stored ``temperatures``, token and example counts, bytes per token
from the representation and measured from the file size, and a SHA-256 ``checksums`` entry per array, verified by
:func:`load_cache`: :mod:`kdlab.teacher_cache.integrity`). Format 2 (this one) added ``tail_lse``; a format-1 cache
(only the tau = 1 tail mass) is refused by :func:`load_cache` and by ``kdlab distill --teacher-cache`` with a
message to delete the folder, so that it is rebuilt, rather than silently trained from with the uniform tail
approximation (:mod:`kdlab.teacher_cache.loss`).

Note: rebuilding with another ``batch_size`` changes the padding and so the float rounding of the teacher pass;
a rebuild with the same settings is byte-identical.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kdlab.data.tokenize import IGNORE_INDEX, Encoded, collate
from kdlab.errors import KdlabError
from kdlab.io import atomic_dir
from kdlab.teacher_cache.format import (
    CACHE_FILE,
    DEFAULT_TEMPERATURES,
    FORMAT_VERSION,
    MANIFEST_FILE,
    bytes_per_token,
    dequantize_gaps,
    encode_logits,
    id_bytes,
    normalize_temperatures,
    temperature_index,
    unpack_ids,
)
from kdlab.teacher_cache.integrity import array_checksums, check_arrays, check_manifest, read_arrays


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def data_hash(dataset: list[Encoded]) -> str:
    """SHA-256 of the tokenised examples (index, prompt ids, response ids), in order."""
    digest = hashlib.sha256()
    for item in dataset:
        digest.update(json.dumps([item.index, list(item.prompt_ids), list(item.response_ids)]).encode())
    return digest.hexdigest()


def teacher_fingerprint(teacher) -> str:
    """A short hash of the teacher's output layer: shape plus 256 evenly spaced rows (cheap even for V = 152k)."""
    from kdlab.models.heads import output_weight

    weight = output_weight(teacher).detach()
    step = max(1, weight.shape[0] // 256)
    # rounded to bf16 first: the same teacher loaded in float32 or bfloat16 has the same fingerprint
    sample = weight[::step].to(torch.bfloat16).float().cpu().contiguous().numpy()
    return _sha(repr(tuple(weight.shape)).encode() + sample.tobytes())[:32]


def _teacher_spec(teacher) -> str:
    config = getattr(teacher, "config", None)
    return str(getattr(config, "_name_or_path", "") or type(teacher).__name__)


@dataclass
class CacheInfo:
    """What :func:`build_cache` wrote: the folder, its manifest and the number of kept tokens."""

    path: Path
    manifest: dict
    tokens: int

    @property
    def bytes_per_token(self) -> float:
        return self.manifest["bytes_per_token_file"]


def build_cache(
    teacher,
    tokenizer,
    dataset: list[Encoded],
    path,
    k: int = 64,
    batch_size: int = 8,
    vocab_size: int | None = None,
    progress: bool = True,
    quantize: bool = True,
    teacher_spec: str | None = None,
    chunk_size: int = 256,
    temperatures=DEFAULT_TEMPERATURES,
) -> CacheInfo:
    """Run ``teacher`` once over ``dataset`` and write its top-k signal to the folder ``path`` (atomically).

    ``vocab_size`` (default ``len(tokenizer)``) slices a padded lm_head to the shared tokenizer size. Logits are
    computed from the final hidden states ``chunk_size`` tokens at a time, in float32, at the kept positions only.
    ``quantize=False`` stores exact float32 log-probs (larger; for tests and error measurements).
    ``temperatures``: those whose exact tail sum is stored (``tail_lse``; 1.0 is always added; 4 bytes per token
    each); the bucket tail is exact at these, approximated at others (module docstring, "Temperature").
    """
    temperatures = normalize_temperatures(temperatures)
    vocab_size = int(vocab_size or len(tokenizer))
    _check_build(teacher, dataset, k, vocab_size)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encode = partial(encode_logits, k=k, quantize=quantize, vocab_size=vocab_size, temperatures=temperatures)
    arrays, counts = _teacher_pass(teacher, dataset, pad_id, vocab_size, batch_size, chunk_size, progress, encode)
    arrays["example_index"] = np.array([item.index for item in dataset], dtype=np.int64)
    arrays["offsets"] = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    tokens = int(sum(counts))
    per_token = sum(a.nbytes for name, a in arrays.items() if name not in ("example_index", "offsets"))
    manifest = {
        "format_version": FORMAT_VERSION,
        "teacher": teacher_spec or _teacher_spec(teacher),
        "teacher_fingerprint": teacher_fingerprint(teacher),
        "data_hash": data_hash(dataset),
        "k": k,
        "vocab_size": vocab_size,
        "quantized": quantize,
        "id_bytes": id_bytes(vocab_size),
        "temperatures": list(temperatures),
        "tokens": tokens,
        "examples": len(dataset),
        "bytes_per_token": bytes_per_token(k, vocab_size, quantize, len(temperatures)),
        "bytes_per_token_arrays": per_token / max(tokens, 1),
        "checksums": array_checksums(arrays),
    }
    path = Path(path)
    _write_cache(path, arrays, manifest, tokens)
    return CacheInfo(path=path, manifest=manifest, tokens=tokens)


def _check_build(teacher, dataset: list[Encoded], k: int, vocab_size: int) -> None:
    """Refuse a vocabulary beyond the teacher's output layer, k outside [1, V], empty data, duplicate indices."""
    from kdlab.models.heads import output_weight

    rows = output_weight(teacher).shape[0]
    if vocab_size > rows:
        raise KdlabError(f"vocab_size {vocab_size} exceeds the teacher's output layer ({rows} rows)")
    if not 1 <= k <= vocab_size:
        raise KdlabError(f"k must be in [1, {vocab_size}], got {k}")
    if not dataset:
        raise KdlabError("teacher cache: the dataset is empty")
    if len({item.index for item in dataset}) != len(dataset):
        raise KdlabError("teacher cache: duplicate example indices in the dataset")
    id_bytes(vocab_size)


def _teacher_pass(
    teacher,
    dataset: list[Encoded],
    pad_id: int,
    vocab_size: int,
    batch_size: int,
    chunk_size: int,
    progress: bool,
    encode: Callable[[torch.Tensor], dict[str, np.ndarray]],
) -> tuple[dict[str, np.ndarray], list[int]]:
    """The teacher's signal at every kept position of ``dataset``, its logits (float32, output layer cut to
    ``vocab_size`` rows) ``chunk_size`` tokens at a time through ``encode`` (:func:`encode_logits`), concatenated in
    order; and the number of kept positions of each example."""
    from kdlab.models.heads import final_hidden, output_weight

    weight = output_weight(teacher).detach()[:vocab_size]
    device = weight.device
    weight_f = weight.float()  # one float32 copy (a view when the teacher is already float32)
    was_training = teacher.training
    teacher.eval()
    parts: list[dict[str, np.ndarray]] = []
    counts: list[int] = []
    try:
        with torch.no_grad():
            for start in _progress(range(0, len(dataset), batch_size), progress):
                batch = collate(dataset[start : start + batch_size], pad_id)
                hidden = final_hidden(teacher, batch["input_ids"].to(device), batch["attention_mask"].to(device))
                keep = (batch["labels"][:, 1:] != IGNORE_INDEX).to(device)
                counts.extend(int(n) for n in keep.sum(1).tolist())
                kept = hidden[:, :-1][keep]
                for c in range(0, kept.shape[0], chunk_size):
                    logits = F.linear(kept[c : c + chunk_size].float(), weight_f).cpu()
                    parts.append(encode(logits))
    finally:
        teacher.train(was_training)
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}, counts


def _progress(batches: range, progress: bool):
    """``batches`` with a progress bar when asked for (and tqdm is there)."""
    if progress:
        try:
            from tqdm.auto import tqdm

            return tqdm(batches, desc="teacher cache", unit="batch")
        except ImportError:  # pragma: no cover
            pass
    return batches


def _write_cache(path: Path, arrays: dict[str, np.ndarray], manifest: dict, tokens: int) -> None:
    """Write ``cache.npz`` and ``manifest.json`` (with the file's size) to ``path``, atomically."""
    with atomic_dir(path) as tmp:
        np.savez(tmp / CACHE_FILE, **arrays)
        manifest["file_bytes"] = (tmp / CACHE_FILE).stat().st_size
        manifest["bytes_per_token_file"] = manifest["file_bytes"] / max(tokens, 1)
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")


@dataclass
class CacheRows:
    """Decoded cache rows for N kept tokens: ids [N, k] long, ``logp`` [N, k] (tau = 1, top-k + tail sum to 1),
    ``tail_logp`` [N] (log teacher tail mass, -inf when empty), ``lse`` [N], the vocabulary size, and the tail sums
    ``tail_lse`` [N, T] (``logsumexp(l_tail / tau)`` for each of the stored ``temperatures``; ``None``: none stored,
    the tail at tau != 1 is then approximated)."""

    ids: torch.Tensor
    logp: torch.Tensor
    tail_logp: torch.Tensor
    lse: torch.Tensor
    vocab_size: int
    tail_lse: torch.Tensor | None = None
    temperatures: tuple = field(default_factory=tuple)

    def to(self, device) -> CacheRows:
        tail_lse = self.tail_lse.to(device) if self.tail_lse is not None else None
        return CacheRows(
            self.ids.to(device),
            self.logp.to(device),
            self.tail_logp.to(device),
            self.lse.to(device),
            self.vocab_size,
            tail_lse,
            self.temperatures,
        )

    def __len__(self) -> int:
        return self.ids.shape[0]

    def slice(self, start: int, end: int) -> CacheRows:
        """Rows ``start:end`` (views, no copy)."""
        tail_lse = self.tail_lse[start:end] if self.tail_lse is not None else None
        return CacheRows(
            self.ids[start:end],
            self.logp[start:end],
            self.tail_logp[start:end],
            self.lse[start:end],
            self.vocab_size,
            tail_lse,
            self.temperatures,
        )

    @property
    def raw_logits(self) -> torch.Tensor:
        """The teacher's raw top-k logits ``z_j = l_j + lse`` [N, k]."""
        return self.logp + self.lse.unsqueeze(1)


class TeacherCache:
    """A loaded cache: :meth:`rows` gives decoded rows for examples, aligned with the kept positions."""

    def __init__(self, arrays: dict[str, np.ndarray], manifest: dict):
        self.arrays = arrays
        self.manifest = manifest
        self.k = int(manifest["k"])
        self.vocab_size = int(manifest["vocab_size"])
        self.temperatures = tuple(float(tau) for tau in manifest["temperatures"])
        self._tau1 = temperature_index(self.temperatures, 1.0)
        self.offsets = arrays["offsets"]
        self._slot = {int(index): slot for slot, index in enumerate(arrays["example_index"])}

    @property
    def tokens(self) -> int:
        return int(self.offsets[-1])

    def __len__(self) -> int:
        return len(self._slot)

    def _decode(self, rows: np.ndarray) -> CacheRows:
        a = self.arrays
        ids = torch.from_numpy(unpack_ids(a["ids"][rows]))
        tail_lse = torch.from_numpy(a["tail_lse"][rows].astype(np.float32))
        tail_logp = tail_lse[:, self._tau1]  # at tau = 1 the tail sum is the log tail mass
        if "logp" in a:
            rel = torch.from_numpy(a["logp"][rows].astype(np.float32))
        else:
            rel = -dequantize_gaps(
                torch.from_numpy(a["q"][rows]), torch.from_numpy(a["scale"][rows].astype(np.float32))
            )
        # top-k mass = 1 - m, exact; quantisation only moves weight inside the top-k
        head = torch.log1p(-tail_logp.double().exp().clamp(max=1.0)).float()
        logp = head.unsqueeze(1) + torch.log_softmax(rel, dim=-1)
        lse = torch.from_numpy(a["lse"][rows].astype(np.float32))
        return CacheRows(ids, logp, tail_logp, lse, self.vocab_size, tail_lse, self.temperatures)

    def example_rows(self, index: int) -> CacheRows:
        """Rows of one example (by ``Encoded.index``), one per kept position, in position order."""
        if int(index) not in self._slot:
            raise KdlabError(f"example index {index} is not in the teacher cache")
        slot = self._slot[int(index)]
        return self._decode(np.arange(self.offsets[slot], self.offsets[slot + 1]))

    def rows(self, indices) -> CacheRows:
        """Rows for a batch of examples (``batch["index"]``), concatenated in batch order: the same order as
        ``hidden[:, :-1][labels[:, 1:] != -100]`` for the collated batch."""
        rows = []
        for index in torch.as_tensor(indices).tolist():
            if int(index) not in self._slot:
                raise KdlabError(f"example index {index} is not in the teacher cache")
            slot = self._slot[int(index)]
            rows.append(np.arange(self.offsets[slot], self.offsets[slot + 1]))
        return self._decode(np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64))


def check_format(manifest: dict, path) -> None:
    """Refuse (KdlabError) a manifest of another format version, e.g. a cache built before the per-temperature tail
    sums existed (format 1): it must be rebuilt."""
    version = manifest.get("format_version")
    if version == FORMAT_VERSION:
        return
    if isinstance(version, int) and version < FORMAT_VERSION:
        raise KdlabError(
            f"{path}: teacher cache format {version} was written by an older kdlab (no per-temperature tail sums; "
            f"this kdlab reads format {FORMAT_VERSION}); delete the folder to rebuild it"
        )
    raise KdlabError(f"{path}: teacher cache format_version {version!r} (expected {FORMAT_VERSION})")


def read_manifest(path) -> dict:
    """The manifest of the cache folder ``path``, of this format version (else :class:`KdlabError`, see
    :func:`check_format`); an unreadable or invalid manifest (:func:`kdlab.teacher_cache.integrity.check_manifest`)
    is a :class:`KdlabError` naming the file."""
    manifest_path = Path(path) / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KdlabError(f"{manifest_path}: unreadable teacher cache manifest ({exc})") from None
    if isinstance(manifest, dict):
        check_format(manifest, path)  # an older format first: it has its own message
    check_manifest(manifest, manifest_path)
    return manifest


def load_cache(
    path,
    teacher=None,
    dataset: list[Encoded] | None = None,
    teacher_spec: str | None = None,
    manifest: dict | None = None,
) -> TeacherCache:
    """Load a cache folder; with ``teacher`` / ``teacher_spec`` / ``dataset`` given, refuse (KdlabError) a cache
    built from another teacher (fingerprint or spec) or other data (hash). ``manifest``: the folder's manifest when
    the caller has already read it (:func:`read_manifest`), so that it is parsed once."""
    path = Path(path)
    cache_path = path / CACHE_FILE
    if not (path / MANIFEST_FILE).is_file() or not cache_path.is_file():
        raise KdlabError(f"{path}: not a teacher cache (expected {MANIFEST_FILE} and {CACHE_FILE})")
    manifest = manifest if manifest is not None else read_manifest(path)
    if teacher is not None and teacher_fingerprint(teacher) != manifest["teacher_fingerprint"]:
        raise KdlabError(f"{path}: teacher cache was built from another teacher ({manifest['teacher']}); rebuild it")
    if teacher_spec is not None and teacher_spec != manifest["teacher"]:
        raise KdlabError(f"{path}: teacher cache was built from teacher '{manifest['teacher']}', not '{teacher_spec}'")
    if dataset is not None and data_hash(dataset) != manifest["data_hash"]:
        raise KdlabError(f"{path}: teacher cache was built on other data (data hash differs); rebuild it")
    arrays = read_arrays(cache_path)
    check_arrays(arrays, manifest, cache_path)  # readable, shaped as the manifest says, checksums match
    return TeacherCache(arrays, manifest)
