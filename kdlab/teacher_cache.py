"""Teacher signal cache: the teacher's top-k distribution on a training set, computed once, reused by every run.

A study distils several students with several losses, temperatures and noise levels from the same teacher on the
same data; the teacher forward pass is identical in all of them. :func:`build_cache` runs it once and stores, for
every kept position (hidden state t predicting a response token, ``labels[:, 1:] != -100``, the positions every KD
loss in :mod:`kdlab.losses` uses), a compact description of ``p_T = softmax(z_T)`` at temperature 1.
:func:`load_cache` reads it back and :func:`cached_divergence` evaluates the KD divergences of a student against it.

Representation (per kept token; ``z`` = raw teacher logits over the shared vocabulary ``V``, sliced like the
trainer slices a padded lm_head; ``l = log_softmax(z)``; ``i_1..i_k`` = top-k token ids, descending):

==============  ============================  =================================================================
array           dtype / shape                 meaning
==============  ============================  =================================================================
``ids``         uint16 [N, k] if V <= 65536,  top-k token ids. For V > 65536 each id is packed little-endian in
                else uint8 [N, k, 3]          3 bytes (24 bits: V < 16,777,216; larger V is refused).
``q``           uint8 [N, k]                  quantised gap to the top-1 log-prob, ``d_j = l_1 - l_j >= 0``:
                                              ``q_j = round(255 * sqrt(d_j / s))``; dequantised
                                              ``d_j ~= s * (q_j / 255)**2`` (square-root bins: finest near the
                                              most probable tokens, where errors weigh most).
``scale``       float16 [N]                   ``s`` = the largest gap ``d_k`` of that token (rounded up).
``lse``         float32 [N]                   ``logsumexp(z)`` of the raw logits: raw top-k logits are
                                              ``z_j = l_j + lse`` (kept for tools that need raw logits).
``tail_lse``    float32 [N, T]                for each stored temperature ``tau_t`` (manifest ``temperatures``,
                                              sorted, always including 1.0): ``logsumexp(l_tail / tau_t)`` over
                                              the ``V - k`` tokens outside the top-k, computed exactly from the
                                              full logits (-inf when k = V). At tau = 1 it is the log tail mass
                                              ``log(1 - sum_j p_T(i_j))``.
``example_index`` int64 [E], ``offsets`` int64 [E + 1]: rows ``offsets[e]:offsets[e+1]`` belong to
                ``Encoded.index == example_index[e]``, in position order.
==============  ============================  =================================================================

Bytes per token: ``k * (id_bytes + 1) + 2 + 4 + 4 * T`` = 274 for k = 64, V = 152k (3-byte ids) and the default
T = 3 temperatures (1, 2, 5; ``kd.cache_temperatures``), 210 for V <= 65536 (2-byte ids); each further temperature
adds 4 bytes; the per-example index is negligible. ``quantize=False`` (exact mode, meant for tests and for measuring
the quantisation error) stores ``logp`` float32 [N, k] = ``l_j`` instead of ``q`` and ``scale``:
``k * (id_bytes + 4) + 4 + 4 * T`` bytes per token.

Decoding (:class:`CacheRows`): the top-k log-probs at temperature 1 are rebuilt as
``l_j = log(1 - m) + log_softmax(-d)_j`` with the exact tail mass ``m = exp(tail_logp)`` (``tail_logp`` = the
tau = 1 column of ``tail_lse``), so the top-k part and the tail always sum to exactly 1; quantisation only perturbs
the relative weights inside the top-k.

Files: a cache is a folder written atomically (:func:`kdlab.io.atomic_dir`) holding ``cache.npz`` (uncompressed
``numpy.savez`` of the arrays above) and ``manifest.json`` (format version, teacher spec and weight fingerprint (256 rows of the output layer rounded to
bf16, so a teacher loaded in float32 or bfloat16 matches),
data hash, k, vocab size, quantised or not, the stored ``temperatures``, token and example counts, bytes per token
from the representation and measured from the file size). Format 2 (this one) added ``tail_lse``; a format-1 cache
(only the tau = 1 tail mass) is refused by :func:`load_cache` and by ``kdlab distill --teacher-cache`` with a
message to delete the folder, so that it is rebuilt, rather than silently trained from with the uniform tail below.

Divergences against the cache (``cached_divergence``), with ``tau`` the temperature and the student's full logits
``z_S`` [N, V]; as in :mod:`kdlab.losses` the result is per token [N] and does not include the ``tau**2`` factor:

- ``tail="bucket"`` (default): both distributions are coarsened to k + 1 outcomes, the k cached tokens plus one
  "rest of the vocabulary" bucket. Teacher: its top-k probabilities and its tail mass. Student:
  ``log_softmax(z_S / tau)`` gathered at the cached ids, and ``log(sum of p_S outside those ids)`` (a
  logsumexp over the masked logits, so it is exact and has a gradient). With k = V this is the full divergence; with
  k < V it is the divergence of the coarsened distributions, a lower bound of the full fkl/rkl/gjsd/skl/srkl/tvd
  (data-processing inequality).
- ``tail="renormalize"``: the teacher restricted to its top-k and renormalised to sum 1,
  ``p_T(i_j) / sum_l p_T(i_l)``, against the student restricted to the same k ids and renormalised,
  ``log_softmax(z_S[i] / tau)`` over those k entries (the student's distribution conditioned on the teacher's top-k
  set). The tail is ignored entirely; the student gets no signal about the mass it puts outside the top-k.

Temperature: the top-k part is exact at any tau (up to quantisation): ``z_j / tau`` differs from ``l_j / tau`` by a
constant. The bucket needs the tail's weight at tau, ``log sum_{v in tail} exp(l_v / tau)``, which depends on the
shape of the tail, not only on its mass: the cache stores it exactly (``tail_lse``) for each temperature in its
manifest. At a stored temperature (matched within 1e-6) the teacher's k + 1 log-probs are
``log_softmax([l_1 / tau, ..., l_k / tau, tail_lse_tau])``: the exact coarsened distribution at tau (up to the
quantisation of the top-k). At any other tau != 1 the tail is approximated by spreading its mass uniformly over the
``V - k`` tail tokens (each has tau = 1 log-prob ``log(m / (V - k))``), so its weight at tau becomes
``(V - k) * (m / (V - k)) ** (1 / tau)``; by Jensen, a uniform tail is the flattest possible, so for tau > 1 this
over-estimates the tail mass when the real tail is skewed. A :class:`TailApproximationWarning` names the temperature
and the stored ones (once per process and temperature); ``kdlab distill`` also warns when ``kd.temperature`` is not
among a reused cache's temperatures, and builds a new cache with ``kd.cache_temperatures`` plus ``kd.temperature``.
In ``renormalize`` mode the tail plays no part, so temperature handling is exact up to quantisation.

How much the tail matters with a real LM (SmolLM2-135M-Instruct, V = 49152, k = 64, 4 synthetic arithmetic answers,
316 tokens): it holds 0.8% of the teacher's mass at tau = 1, but 47% at tau = 2 (the uniform approximation said 70%)
and 98% at tau = 5 (approximation: 99%); at tau >= 2 a top-64 cache describes only about half of the softened
teacher, the rest as one bucket. Measured before the exact tail sums existed, on one batch of 8 (490 tokens) with
SmolLM2 pruned to 8 layers as the student, fp32, against the live objective: at tau = 1 the bucket loss was 17.55 vs
17.66 per token (x tau^2 included) and the student's gradient had cosine 1.000 and norm ratio 0.997 with the live
one; at tau = 2, with the uniform tail, the loss was 11.5 vs 26.9, cosine 0.977, norm ratio 0.48 (renormalize:
cosine 0.85 at tau = 1, 0.87 at tau = 2), and in ``benchmarks/teacher_cache.py`` (fkl, tau = 2, 12 steps) the cached
students ended 0.38 nats per token worse in held-out NLL. With the stored tail sums the tau = 2 teacher bucket is now
exact (tested against full logits coarsened to the same k + 1 outcomes); the bucket divergence remains a lower bound
of the full one (the student is not told how the tail mass is spread), so a larger k still brings it closer.

Use in training (``kdlab distill --teacher-cache DIR``, :func:`kdlab.train.run.ensure_teacher_cache`): the folder is
built on first use with ``k = kd.cache_k`` and the tail sums of ``kd.cache_temperatures`` plus ``kd.temperature``
from the data encoded exactly as the trainer encodes it (the student's tokenizer, ``train.max_length``, the same
example indices), then checked on every later use against the teacher spec (model, adapter folder and a hash of the
adapter weights), the data hash, k and the format version, without loading any model (a ``kd.temperature`` the
cache does not store is a warning, not a rebuild); the weight fingerprint is compared too whenever the teacher is
loaded anyway. The objective
(:class:`kdlab.train.objectives.CachedDistillObjective`, :func:`chunked_cached_distill_loss`) computes the
student's logits from its hidden states a chunk of ``train.chunk_size`` tokens at a time, sliced to the cache's
``vocab_size``, and evaluates :func:`cached_divergence` with ``tail = kd.cache_tail`` against the rows of the batch
(``TeacherCache.rows(batch["index"])``): ``(1 - w) * CE + w * tau**2 * divergence``, summed over response tokens,
as the live objective. No teacher forward pass runs on these batches, and with ``kd.lmbda = 0`` the teacher is not
even loaded. On-policy batches (GKD, ``kd.lmbda > 0``: student-sampled responses, which the cache cannot hold) use
the live teacher.

Teacher noise (``kd.teacher_noise`` sigma, the paper's noise ablation): the live objective adds
``sigma * randn(C, V)`` to each chunk's teacher logits; the cached objective draws the very same matrix (same
generator, same seed, same chunks) and passes it as ``logit_noise``. The k cached tokens get their own entries
exactly (``l_j + eps_j``). The tail tokens' individual logits are not stored, so the tail gets no per-token noise:
it is modelled as ``V - k`` tokens that share its weight at tau, ``W_tau = exp(tail_lse_tau)`` (exact at a stored
temperature, the uniform approximation above otherwise), equally, each perturbed by one of the draws of the
non-cached columns, i.e. its weight at tau becomes ``(W_tau / (V - k)) * sum_v exp(eps_v / tau)``. With zero noise
this is the noiseless bucket; at k = V it is the live objective exactly; at tau = 1 (and, approximately, at
temperatures that are not stored) it is the same as modelling the tail as ``V - k`` tokens of equal probability
``m / (V - k)``. For k < V it keeps the expected unnormalised weight of the noisy tail at a stored tau
(``W_tau * exp(sigma^2 / (2 tau^2))``, the real tail's, whatever its shape) and the effect of large sigma (a tail
token whose draw is far above the others can take most of the mass), but not which tail tokens receive the mass
nor the correlation of the draws with the tail's own shape: the student is only told the total. In ``renormalize``
mode the tail, noisy or not, plays no part (the noise can no longer push a tail token into the top-k).

Measured (tiny teacher, init_std 0.3, V = k = 384, 634 tokens, bucket): quantised vs exact-teacher fkl at tau = 1
differs by 2.3e-3 nats per token on average (max 1.4e-2) on a mean fkl of 3.85 nats; rkl 3.0e-3 (max 1.4e-2);
gjsd 1.4e-4; at tau = 2 about 6e-4. Exact mode matches :data:`kdlab.losses.TOKEN_DIVERGENCES` to float precision.
Note: rebuilding with another ``batch_size`` changes the padding and so the float rounding of the teacher pass;
a rebuild with the same settings is byte-identical.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kdlab.data.tokenize import IGNORE_INDEX, Encoded, collate
from kdlab.errors import KdlabError
from kdlab.io import atomic_dir
from kdlab.losses import check_loss_args, divergence_from_log_probs

FORMAT_VERSION = 2  # 2: per-temperature tail sums (tail_lse); 1 (tail_logp only) is refused
CACHE_FILE = "cache.npz"
MANIFEST_FILE = "manifest.json"
TAIL_MODES = ("bucket", "renormalize")
DEFAULT_TEMPERATURES = (1.0, 2.0, 5.0)
TEMPERATURE_TOLERANCE = 1e-6
_MAX_VOCAB = 1 << 24


class TailApproximationWarning(UserWarning):
    """The bucket tail at a temperature the cache does not store: approximated by a uniform tail."""


_warned_temperatures: set = set()


def normalize_temperatures(temperatures) -> tuple[float, ...]:
    """The stored temperatures: sorted, duplicates (within 1e-6) dropped, 1.0 always included; each must be a
    finite number > 0."""
    values = []
    for value in list(temperatures) + [1.0]:
        try:
            tau = float(value)
        except (TypeError, ValueError):
            raise KdlabError(f"teacher cache temperatures: expected numbers, got {value!r}") from None
        if not (math.isfinite(tau) and tau > 0):
            raise KdlabError(f"teacher cache temperatures must be finite and > 0, got {value!r}")
        values.append(tau)
    out: list[float] = []
    for tau in sorted(values):
        if not out or tau - out[-1] > TEMPERATURE_TOLERANCE:
            out.append(tau)
    return tuple(out)


def temperature_index(temperatures, temperature: float) -> int | None:
    """Index of ``temperature`` among the stored ``temperatures`` (within 1e-6), or None."""
    for i, tau in enumerate(temperatures):
        if abs(float(tau) - float(temperature)) <= TEMPERATURE_TOLERANCE:
            return i
    return None


def id_bytes(vocab_size: int) -> int:
    """Bytes per stored token id: 2 for V <= 65536, 3 (packed 24-bit) for larger V."""
    if vocab_size > _MAX_VOCAB:
        raise KdlabError(f"vocabulary of {vocab_size} tokens is too large for the teacher cache (at most {_MAX_VOCAB})")
    return 2 if vocab_size <= 1 << 16 else 3


def bytes_per_token(k: int, vocab_size: int, quantize: bool = True, n_temperatures: int = len(DEFAULT_TEMPERATURES)) -> int:
    """Storage per kept token of the representation documented in the module docstring (``n_temperatures`` tail
    sums, tau = 1 included)."""
    if quantize:
        return k * (id_bytes(vocab_size) + 1) + 2 + 4 + 4 * n_temperatures
    return k * (id_bytes(vocab_size) + 4) + 4 + 4 * n_temperatures


def _pack_ids(ids: np.ndarray, vocab_size: int) -> np.ndarray:
    ids = ids.astype(np.uint32)
    if id_bytes(vocab_size) == 2:
        return ids.astype(np.uint16)
    return ids.astype("<u4").view(np.uint8).reshape(*ids.shape, 4)[..., :3].copy()


def _unpack_ids(packed: np.ndarray) -> np.ndarray:
    if packed.dtype == np.uint16:
        return packed.astype(np.int64)
    full = np.zeros((*packed.shape[:-1], 4), dtype=np.uint8)
    full[..., :3] = packed
    return full.view("<u4")[..., 0].astype(np.int64)


def _quantize(logp: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Top-k log-probs [N, k] (descending) -> (q uint8 [N, k], scale float16 [N]); see the module docstring."""
    gaps = (logp[:, :1] - logp).clamp_min(0.0).double()
    largest = gaps[:, -1].numpy().clip(0.0, 60000.0)
    scale16 = largest.astype(np.float16)
    low = scale16.astype(np.float64) < largest
    scale16[low] = np.nextafter(scale16[low], np.float16(np.inf))  # round up, so every gap fits in [0, s]
    scale = torch.from_numpy(scale16.astype(np.float64))
    safe = scale.clamp_min(1e-12).unsqueeze(1)
    q = torch.round(255.0 * torch.sqrt((gaps / safe).clamp(0.0, 1.0)))
    q = torch.where(scale.unsqueeze(1) > 0, q, torch.zeros_like(q))
    return q.to(torch.uint8).numpy(), scale16


def _dequantize_gaps(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return scale.float().unsqueeze(1) * (q.float() / 255.0) ** 2


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


@torch.no_grad()
def _encode_batch(logits: torch.Tensor, k: int, quantize: bool, vocab_size: int,
                  temperatures: tuple[float, ...] = (1.0,)) -> dict[str, np.ndarray]:
    """Raw logits [N, V] (float32) -> the stored per-token arrays."""
    lse = torch.logsumexp(logits, dim=-1)
    top_logits, top_ids = torch.topk(logits, k, dim=-1, sorted=True)
    logp = top_logits - lse.unsqueeze(1)
    if k < logits.shape[1]:
        tail = (logits - lse.unsqueeze(1)).scatter(1, top_ids, float("-inf"))  # l = log_softmax(z) outside the top-k
        tail_lse = torch.stack([torch.logsumexp(tail / tau if tau != 1 else tail, dim=-1) for tau in temperatures], dim=1)
    else:
        tail_lse = torch.full((logits.shape[0], len(temperatures)), float("-inf"))
    out = {
        "ids": _pack_ids(top_ids.numpy(), vocab_size),
        "lse": lse.numpy().astype(np.float32),
        "tail_lse": tail_lse.numpy().astype(np.float32),
    }
    if quantize:
        out["q"], out["scale"] = _quantize(logp)
    else:
        out["logp"] = logp.numpy().astype(np.float32)
    return out


def build_cache(teacher, tokenizer, dataset: list[Encoded], path, k: int = 64, batch_size: int = 8, vocab_size: int | None = None,
                progress: bool = True, quantize: bool = True, teacher_spec: str | None = None, chunk_size: int = 256,
                temperatures=DEFAULT_TEMPERATURES) -> CacheInfo:
    """Run ``teacher`` once over ``dataset`` and write its top-k signal to the folder ``path`` (atomically).

    ``vocab_size`` (default ``len(tokenizer)``) slices a padded lm_head to the shared tokenizer size. Logits are
    computed from the final hidden states ``chunk_size`` tokens at a time, in float32, at the kept positions only.
    ``quantize=False`` stores exact float32 log-probs (larger; for tests and error measurements).
    ``temperatures``: those whose exact tail sum is stored (``tail_lse``; 1.0 is always added; 4 bytes per token
    each); the bucket tail is exact at these, approximated at others (module docstring, "Temperature").
    """
    temperatures = normalize_temperatures(temperatures)
    from kdlab.models.heads import final_hidden, output_weight

    vocab_size = int(vocab_size or len(tokenizer))
    weight = output_weight(teacher).detach()
    if vocab_size > weight.shape[0]:
        raise KdlabError(f"vocab_size {vocab_size} exceeds the teacher's output layer ({weight.shape[0]} rows)")
    if not 1 <= k <= vocab_size:
        raise KdlabError(f"k must be in [1, {vocab_size}], got {k}")
    if not dataset:
        raise KdlabError("teacher cache: the dataset is empty")
    if len({item.index for item in dataset}) != len(dataset):
        raise KdlabError("teacher cache: duplicate example indices in the dataset")
    id_bytes(vocab_size)
    weight = weight[:vocab_size]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = weight.device
    weight_f = weight.float()  # one float32 copy (a view when the teacher is already float32)
    was_training = teacher.training
    teacher.eval()
    parts: list[dict[str, np.ndarray]] = []
    counts: list[int] = []
    batches = range(0, len(dataset), batch_size)
    if progress:
        try:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="teacher cache", unit="batch")
        except ImportError:  # pragma: no cover
            pass
    try:
        with torch.no_grad():
            for start in batches:
                items = dataset[start : start + batch_size]
                batch = collate(items, pad_id)
                hidden = final_hidden(teacher, batch["input_ids"].to(device), batch["attention_mask"].to(device))
                keep = (batch["labels"][:, 1:] != IGNORE_INDEX).to(device)
                counts.extend(int(n) for n in keep.sum(1).tolist())
                kept = hidden[:, :-1][keep]
                for c in range(0, kept.shape[0], chunk_size):
                    logits = F.linear(kept[c : c + chunk_size].float(), weight_f).cpu()
                    parts.append(_encode_batch(logits, k, quantize, vocab_size, temperatures))
    finally:
        teacher.train(was_training)
    arrays = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    tokens = int(sum(counts))
    arrays["example_index"] = np.array([item.index for item in dataset], dtype=np.int64)
    arrays["offsets"] = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
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
    }
    path = Path(path)
    with atomic_dir(path) as tmp:
        np.savez(tmp / CACHE_FILE, **arrays)
        manifest["file_bytes"] = (tmp / CACHE_FILE).stat().st_size
        manifest["bytes_per_token_file"] = manifest["file_bytes"] / max(tokens, 1)
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return CacheInfo(path=path, manifest=manifest, tokens=tokens)


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

    def to(self, device) -> "CacheRows":
        tail_lse = self.tail_lse.to(device) if self.tail_lse is not None else None
        return CacheRows(self.ids.to(device), self.logp.to(device), self.tail_logp.to(device), self.lse.to(device), self.vocab_size,
                         tail_lse, self.temperatures)

    def __len__(self) -> int:
        return self.ids.shape[0]

    def slice(self, start: int, end: int) -> "CacheRows":
        """Rows ``start:end`` (views, no copy)."""
        tail_lse = self.tail_lse[start:end] if self.tail_lse is not None else None
        return CacheRows(self.ids[start:end], self.logp[start:end], self.tail_logp[start:end], self.lse[start:end], self.vocab_size,
                         tail_lse, self.temperatures)

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
        ids = torch.from_numpy(_unpack_ids(a["ids"][rows]))
        tail_lse = torch.from_numpy(a["tail_lse"][rows].astype(np.float32))
        tail_logp = tail_lse[:, self._tau1]  # at tau = 1 the tail sum is the log tail mass
        if "logp" in a:
            rel = torch.from_numpy(a["logp"][rows].astype(np.float32))
        else:
            rel = -_dequantize_gaps(torch.from_numpy(a["q"][rows]), torch.from_numpy(a["scale"][rows].astype(np.float32)))
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
        raise KdlabError(f"{path}: teacher cache format {version} was written by an older kdlab (no per-temperature tail sums; "
                         f"this kdlab reads format {FORMAT_VERSION}); delete the folder to rebuild it")
    raise KdlabError(f"{path}: teacher cache format_version {version!r} (expected {FORMAT_VERSION})")


def load_cache(path, teacher=None, dataset: list[Encoded] | None = None, teacher_spec: str | None = None) -> TeacherCache:
    """Load a cache folder; with ``teacher`` / ``teacher_spec`` / ``dataset`` given, refuse (KdlabError) a cache
    built from another teacher (fingerprint or spec) or other data (hash)."""
    path = Path(path)
    manifest_path, cache_path = path / MANIFEST_FILE, path / CACHE_FILE
    if not manifest_path.is_file() or not cache_path.is_file():
        raise KdlabError(f"{path}: not a teacher cache (expected {MANIFEST_FILE} and {CACHE_FILE})")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise KdlabError(f"{manifest_path}: invalid JSON ({exc})") from None
    check_format(manifest, path)
    if teacher is not None and teacher_fingerprint(teacher) != manifest["teacher_fingerprint"]:
        raise KdlabError(f"{path}: teacher cache was built from another teacher ({manifest['teacher']}); rebuild it")
    if teacher_spec is not None and teacher_spec != manifest["teacher"]:
        raise KdlabError(f"{path}: teacher cache was built from teacher '{manifest['teacher']}', not '{teacher_spec}'")
    if dataset is not None and data_hash(dataset) != manifest["data_hash"]:
        raise KdlabError(f"{path}: teacher cache was built on other data (data hash differs); rebuild it")
    with np.load(cache_path) as data:
        arrays = {name: data[name] for name in data.files}
    if int(arrays["offsets"][-1]) != manifest["tokens"] or len(arrays["example_index"]) != manifest["examples"]:
        raise KdlabError(f"{cache_path}: contents do not match {MANIFEST_FILE} (token or example count)")
    return TeacherCache(arrays, manifest)


def _tail_weight(rows: CacheRows, temperature: float, n_tail: int) -> torch.Tensor:
    """``log sum_{v in tail} exp(l_v / tau)`` [N]: stored exactly at the cache's temperatures; elsewhere the
    uniform-tail approximation ``log n + (log m - log n) / tau`` (one warning per process and temperature)."""
    column = temperature_index(rows.temperatures, temperature) if rows.tail_lse is not None else None
    if column is not None:
        return rows.tail_lse[:, column].clamp_min(-80.0)  # an underflowed tail keeps a tiny, finite weight
    if temperature != 1:
        key = (float(temperature), tuple(rows.temperatures))
        if key not in _warned_temperatures:
            _warned_temperatures.add(key)
            stored = ", ".join(f"{tau:g}" for tau in rows.temperatures) or "none"
            warnings.warn(f"teacher cache: no exact tail sum stored for temperature {temperature:g} (stored: {stored}); "
                          "the bucket tail is approximated as uniform, which over-estimates the softened tail mass "
                          "(rebuild the cache with this temperature in kd.cache_temperatures)", TailApproximationWarning, stacklevel=3)
    log_n = math.log(n_tail)
    tail_logp = rows.tail_logp.clamp_min(-80.0)  # an underflowed tail keeps a tiny, finite mass
    return log_n + (tail_logp - log_n) / temperature


def _teacher_log_probs(rows: CacheRows, temperature: float, tail: str, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Teacher log-probs over k (renormalize) or k + 1 (bucket) outcomes at ``temperature``.

    Bucket: unnormalised log-weights ``l_j / tau`` for the top-k and the tail sum ``log sum_tail exp(l_v / tau)``
    for the bucket (exact at a stored temperature, uniform-tail approximation otherwise), then a log_softmax.
    ``noise`` [N, V] (vocabulary order) is added to the teacher's logits: the top-k get their own entries; the tail
    is modelled as ``V - k`` tokens sharing its weight at tau equally, each perturbed by one of the draws of the other
    ``V - k`` columns (see the module docstring, "Teacher noise").
    """
    top = rows.logp
    if noise is not None:
        noise = noise.to(device=top.device, dtype=top.dtype)
        top = top + noise.gather(1, rows.ids)
    scaled = top / temperature
    if tail == "renormalize":
        return torch.log_softmax(scaled, dim=-1)
    n_tail = rows.vocab_size - rows.ids.shape[1]
    if n_tail == 0:
        return torch.log_softmax(scaled, dim=-1)
    tail_term = _tail_weight(rows, temperature, n_tail).to(top.dtype)
    if noise is not None:  # log sum over the tail tokens of (W_tau / n) * exp(noise_v / tau)
        tail_noise = noise.scatter(1, rows.ids, float("-inf"))
        tail_term = tail_term - math.log(n_tail) + torch.logsumexp(tail_noise / temperature, dim=-1)
    return torch.log_softmax(torch.cat([scaled, tail_term.unsqueeze(1)], dim=1), dim=-1)


def _student_log_probs(student_logits: torch.Tensor, ids: torch.Tensor, temperature: float, tail: str, vocab_size: int) -> torch.Tensor:
    logits = student_logits.float() if student_logits.dtype in (torch.float16, torch.bfloat16) else student_logits
    if logits.shape[1] != vocab_size:
        raise KdlabError(f"student logits have {logits.shape[1]} columns; the teacher cache has vocab_size {vocab_size}")
    logits = logits / temperature if temperature != 1 else logits
    ids = ids.to(logits.device)
    if tail == "renormalize":
        return torch.log_softmax(logits.gather(1, ids), dim=-1)
    log_p = torch.log_softmax(logits, dim=-1)
    top = log_p.gather(1, ids)
    if ids.shape[1] == vocab_size:
        return top
    rest = torch.logsumexp(log_p.scatter(1, ids, float("-inf")), dim=-1, keepdim=True)
    return torch.cat([top, rest], dim=1)


def cached_divergence(student_logits: torch.Tensor, cache_rows: CacheRows, loss: str, temperature: float = 1.0,
                      tail: str = "bucket", logit_noise: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
    """Per-token divergence [N] between the student (full logits [N, V]) and the cached teacher rows.

    Same names and directions as :data:`kdlab.losses.TOKEN_DIVERGENCES` (fkl = KL(p_T || p_S), rkl =
    KL(p_S || p_T), gjsd with ``beta``, skl/srkl with ``alpha``, tvd), evaluated on the k + 1 buckets
    (``tail="bucket"``) or the renormalised top-k (``tail="renormalize"``); see the module docstring. No tau**2.
    ``logit_noise`` [N, V]: noise added to the teacher's raw logits, in vocabulary order (module docstring,
    "Teacher noise").
    """
    check_loss_args(loss, temperature, **kwargs)
    if tail not in TAIL_MODES:
        raise KdlabError(f"unknown tail mode '{tail}' (choose from {', '.join(TAIL_MODES)})")
    if student_logits.shape[0] != cache_rows.ids.shape[0]:
        raise KdlabError(f"{student_logits.shape[0]} student positions but {cache_rows.ids.shape[0]} cached teacher rows")
    if logit_noise is not None and tuple(logit_noise.shape) != (student_logits.shape[0], cache_rows.vocab_size):
        raise KdlabError(f"logit_noise has shape {tuple(logit_noise.shape)}; expected {(student_logits.shape[0], cache_rows.vocab_size)}")
    rows = cache_rows.to(student_logits.device)
    log_p_s = _student_log_probs(student_logits, rows.ids, temperature, tail, rows.vocab_size)
    log_p_t = _teacher_log_probs(rows, temperature, tail, logit_noise).to(log_p_s.dtype)
    return divergence_from_log_probs(loss, log_p_s, log_p_t, **kwargs)


def chunked_cached_distill_loss(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    cache_rows: CacheRows,
    targets: torch.Tensor,
    *,
    loss: str = "fkl",
    temperature: float = 1.0,
    kd_weight: float = 1.0,
    loss_kwargs: dict | None = None,
    tail: str = "bucket",
    teacher_noise: float = 0.0,
    noise_generator: torch.Generator | None = None,
    chunk_size: int = 256,
    weights=None,
) -> torch.Tensor:
    """:func:`kdlab.losses.chunked_distill_loss` with the teacher read from the cache instead of computed.

    ``sum_n (1 - w) * CE_n + w * tau^2 * cached_divergence_n`` over the N kept positions: ``student_hidden``
    [N, H] and ``cache_rows`` (N rows, same order), ``targets`` [N]. The student's logits are computed from the
    hidden states and ``student_weight`` [V_s, H] (sliced to the cache's ``vocab_size``) ``chunk_size`` tokens at
    a time (:func:`kdlab.losses.chunked_token_loss`), so one chunk's [C, V] logits exist at a time.
    ``teacher_noise`` sigma > 0: per chunk, ``sigma * randn(C, V, generator=noise_generator)``, the very draws
    the live objective adds to the teacher logits (same generator, same chunks), goes to ``cached_divergence``.
    ``weights`` (:class:`kdlab.losses.TokenWeights`): as in the live loss; the disagreement weight takes the
    teacher's argmax and its probability from the cache's first column (top-1 id, its log-prob at tau = 1).
    The per-token mix is :func:`kdlab.losses.mix_objective`, shared with the live loss.
    """
    from kdlab.losses import chunked_token_loss, mix_objective

    loss_kwargs = dict(loss_kwargs or {})
    check_loss_args(loss, temperature, **loss_kwargs)
    if tail not in TAIL_MODES:
        raise KdlabError(f"unknown tail mode '{tail}' (choose from {', '.join(TAIL_MODES)})")
    vocab = cache_rows.vocab_size
    if len(cache_rows) != student_hidden.shape[0]:
        raise KdlabError(f"{student_hidden.shape[0]} student positions but {len(cache_rows)} cached teacher rows")
    if student_weight.shape[0] < vocab:
        raise KdlabError(f"the student's output layer has {student_weight.shape[0]} rows; the teacher cache has vocab_size {vocab}")
    rows = cache_rows.to(student_hidden.device)

    def token_loss(student_logits: torch.Tensor, start: int, end: int) -> torch.Tensor:
        noise = None
        if teacher_noise > 0:
            noise = teacher_noise * torch.randn((end - start, vocab), generator=noise_generator).to(student_logits.device)
        chunk = rows.slice(start, end)
        divergence = cached_divergence(student_logits, chunk, loss, temperature, tail, noise, **loss_kwargs)
        chunk_weights = None if weights is None or weights.plain else weights.slice(start, end)
        top1 = (chunk.ids[:, 0], chunk.logp[:, 0].exp()) if chunk_weights is not None and chunk_weights.gamma > 0 else None
        return mix_objective(divergence, student_logits, targets[start:end], temperature, kd_weight, chunk_weights, top1)

    if vocab < student_weight.shape[0]:
        student_weight = student_weight[:vocab]
    return chunked_token_loss(student_hidden, student_weight, token_loss, chunk_size)
