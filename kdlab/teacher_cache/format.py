"""Teacher cache format: what is stored per kept token, its quantisation and its size.

A study distils several students with several losses, temperatures and noise levels from the same teacher on the
same data; the teacher forward pass is identical in all of them. :func:`kdlab.teacher_cache.build_cache` runs it once and stores, for
every kept position (hidden state t predicting a response token, ``labels[:, 1:] != -100``, the positions every KD
loss in :mod:`kdlab.losses` uses), a compact description of ``p_T = softmax(z_T)`` at temperature 1.
:func:`kdlab.teacher_cache.load_cache` reads it back and :func:`kdlab.teacher_cache.cached_divergence` evaluates the KD divergences of a student against it.

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
"""

from __future__ import annotations

import math

import numpy as np
import torch

from kdlab.errors import KdlabError

FORMAT_VERSION = 2  # 2: per-temperature tail sums (tail_lse); 1 (tail_logp only) is refused
CACHE_FILE = "cache.npz"
MANIFEST_FILE = "manifest.json"
TAIL_MODES = ("bucket", "renormalize")
DEFAULT_TEMPERATURES = (1.0, 2.0, 5.0)
TEMPERATURE_TOLERANCE = 1e-6
_MAX_VOCAB = 1 << 24


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


def bytes_per_token(
    k: int, vocab_size: int, quantize: bool = True, n_temperatures: int = len(DEFAULT_TEMPERATURES)
) -> int:
    """Storage per kept token of the representation documented in the module docstring (``n_temperatures`` tail
    sums, tau = 1 included)."""
    if quantize:
        return k * (id_bytes(vocab_size) + 1) + 2 + 4 + 4 * n_temperatures
    return k * (id_bytes(vocab_size) + 4) + 4 + 4 * n_temperatures


def pack_ids(ids: np.ndarray, vocab_size: int) -> np.ndarray:
    ids = ids.astype(np.uint32)
    if id_bytes(vocab_size) == 2:
        return ids.astype(np.uint16)
    return ids.astype("<u4").view(np.uint8).reshape(*ids.shape, 4)[..., :3].copy()


def unpack_ids(packed: np.ndarray) -> np.ndarray:
    if packed.dtype == np.uint16:
        return packed.astype(np.int64)
    full = np.zeros((*packed.shape[:-1], 4), dtype=np.uint8)
    full[..., :3] = packed
    return full.view("<u4")[..., 0].astype(np.int64)


def quantize_log_probs(logp: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
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


def dequantize_gaps(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return scale.float().unsqueeze(1) * (q.float() / 255.0) ** 2


@torch.no_grad()
def encode_logits(
    logits: torch.Tensor, k: int, quantize: bool, vocab_size: int, temperatures: tuple[float, ...] = (1.0,)
) -> dict[str, np.ndarray]:
    """Raw logits [N, V] (float32) -> the stored per-token arrays."""
    lse = torch.logsumexp(logits, dim=-1)
    top_logits, top_ids = torch.topk(logits, k, dim=-1, sorted=True)
    logp = top_logits - lse.unsqueeze(1)
    if k < logits.shape[1]:
        tail = (logits - lse.unsqueeze(1)).scatter(1, top_ids, float("-inf"))  # l = log_softmax(z) outside the top-k
        tail_lse = torch.stack(
            [torch.logsumexp(tail / tau if tau != 1 else tail, dim=-1) for tau in temperatures], dim=1
        )
    else:
        tail_lse = torch.full((logits.shape[0], len(temperatures)), float("-inf"))
    out = {
        "ids": pack_ids(top_ids.numpy(), vocab_size),
        "lse": lse.numpy().astype(np.float32),
        "tail_lse": tail_lse.numpy().astype(np.float32),
    }
    if quantize:
        out["q"], out["scale"] = quantize_log_probs(logp)
    else:
        out["logp"] = logp.numpy().astype(np.float32)
    return out
