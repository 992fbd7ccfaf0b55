"""The distillation objective against a teacher cache: the live objective with the teacher read from the cache.

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
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from kdlab.errors import KdlabError
from kdlab.losses.chunked import TeacherAt, chunked_objective
from kdlab.losses.divergences import divergence_from_log_probs, upcast
from kdlab.losses.objective import KDSpec, LossParts, TokenWeights
from kdlab.teacher_cache.format import TAIL_MODES, temperature_index
from kdlab.teacher_cache.store import CacheRows


class TailApproximationWarning(UserWarning):
    """The bucket tail at a temperature the cache does not store: approximated by a uniform tail."""


_warned_temperatures: set = set()


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
            warnings.warn(
                f"teacher cache: no exact tail sum stored for temperature {temperature:g} (stored: {stored}); "
                "the bucket tail is approximated as uniform, which over-estimates the softened tail mass "
                "(rebuild the cache with this temperature in kd.cache_temperatures)",
                TailApproximationWarning,
                stacklevel=3,
            )
    log_n = math.log(n_tail)
    tail_logp = rows.tail_logp.clamp_min(-80.0)  # an underflowed tail keeps a tiny, finite mass
    return log_n + (tail_logp - log_n) / temperature


def _teacher_log_probs(
    rows: CacheRows, temperature: float, tail: str, noise: torch.Tensor | None = None
) -> torch.Tensor:
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


def _student_log_probs(
    student_logits: torch.Tensor, ids: torch.Tensor, temperature: float, tail: str, vocab_size: int
) -> torch.Tensor:
    """The student's log-probs over the same outcomes as :func:`_teacher_log_probs`: [N, V] logits -> [N, k] or
    [N, k + 1] (bucket: the cached ids, then ``log`` of the student's mass outside them, exact, with a gradient)."""
    logits = upcast(student_logits)
    if logits.shape[1] != vocab_size:
        raise KdlabError(
            f"student logits have {logits.shape[1]} columns; the teacher cache has vocab_size {vocab_size}"
        )
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


def _check_tail(tail: str) -> None:
    if tail not in TAIL_MODES:
        raise KdlabError(f"unknown tail mode '{tail}' (choose from {', '.join(TAIL_MODES)})")


def _check_rows(rows: CacheRows, positions: int) -> None:
    """The cached rows must be the student's kept positions, one row each, in the same order."""
    if len(rows) != positions:
        raise KdlabError(
            f"teacher cache: {positions} student positions but {len(rows)} cached rows (the cache was built on other "
            "tokenisation or other examples)"
        )


@dataclass
class CachedTeacher:
    """The teacher signal (:class:`kdlab.losses.TeacherSignal`) of N cached rows: the k cached tokens plus the tail
    bucket (``tail="bucket"``) or the renormalised top-k (``"renormalize"``); ``noise`` [N, V] (vocabulary order)
    is added to the teacher's raw logits (module docstring, "Teacher noise")."""

    rows: CacheRows
    tail: str = "bucket"
    noise: torch.Tensor | None = None

    def log_probs(self, student_logits: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        log_p_s = _student_log_probs(student_logits, self.rows.ids, temperature, self.tail, self.rows.vocab_size)
        log_p_t = _teacher_log_probs(self.rows, temperature, self.tail, self.noise).to(log_p_s.dtype)
        return log_p_s, log_p_t

    def top1(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The first cached column: the top-1 id and its probability at tau = 1 (noise-free)."""
        return self.rows.ids[:, 0], self.rows.logp[:, 0].exp()


def cached_divergence(
    student_logits: torch.Tensor,
    cache_rows: CacheRows,
    loss: str,
    temperature: float = 1.0,
    tail: str = "bucket",
    logit_noise: torch.Tensor | None = None,
    **kwargs,
) -> torch.Tensor:
    """Per-token divergence [N] between the student (full logits [N, V]) and the cached teacher rows.

    Same names and directions as :data:`kdlab.losses.TOKEN_DIVERGENCES` (fkl = KL(p_T || p_S), rkl =
    KL(p_S || p_T), gjsd with ``beta``, skl/srkl with ``alpha``, tvd), evaluated on the k + 1 buckets
    (``tail="bucket"``) or the renormalised top-k (``tail="renormalize"``); see the module docstring. No tau**2.
    ``logit_noise`` [N, V]: noise added to the teacher's raw logits, in vocabulary order (module docstring,
    "Teacher noise").
    """
    KDSpec(loss, temperature, loss_kwargs=kwargs, tail=tail)  # the divergence's arguments, checked
    _check_tail(tail)
    _check_rows(cache_rows, student_logits.shape[0])
    if logit_noise is not None and tuple(logit_noise.shape) != (student_logits.shape[0], cache_rows.vocab_size):
        raise KdlabError(
            f"logit_noise has shape {tuple(logit_noise.shape)}; expected {(student_logits.shape[0], cache_rows.vocab_size)}"
        )
    teacher = CachedTeacher(cache_rows.to(student_logits.device), tail, logit_noise)
    return divergence_from_log_probs(loss, *teacher.log_probs(student_logits, temperature), **kwargs)


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
    weights: TokenWeights | None = None,
    parts: LossParts | None = None,
) -> torch.Tensor:
    """:func:`kdlab.losses.chunked_distill_loss` with the teacher read from the cache instead of computed.

    ``sum_n`` :func:`kdlab.losses.token_objective` ``(z_S,n, CachedTeacher(row_n))`` ``= (1 - w) * CE_n + w * tau^2 *
    g_n * cached_divergence_n`` over the N kept positions: ``student_hidden`` [N, H] and ``cache_rows`` (N rows, same
    order), ``targets`` [N]. The student's logits are computed from the hidden states and ``student_weight``
    [V_s, H] (sliced to the cache's ``vocab_size``) ``chunk_size`` tokens at a time
    (:func:`kdlab.losses.chunked_token_loss`), so one chunk's [C, V] logits exist at a time.
    ``teacher_noise`` sigma > 0: per chunk, ``sigma * randn(C, V, generator=noise_generator)``, the very draws
    the live objective adds to the teacher logits (same generator, same chunks).
    ``weights`` (:class:`kdlab.losses.TokenWeights`): as in the live loss; the disagreement weight takes the
    teacher's argmax and its probability from the cache's first column (:meth:`CachedTeacher.top1`).
    """
    spec = KDSpec(loss, temperature, kd_weight, loss_kwargs or {}, teacher_noise, tail, chunk_size)
    teacher_at = cached_teacher_at(cache_rows, student_hidden, student_weight, tail)
    return chunked_objective(
        student_hidden,
        student_weight,
        teacher_at,
        targets,
        spec,
        cache_rows.vocab_size,
        weights,
        parts,
        noise_generator,
    )


def cached_teacher_at(
    cache_rows: CacheRows, student_hidden: torch.Tensor, student_weight: torch.Tensor, tail: str
) -> TeacherAt:
    """The cached teacher as :func:`kdlab.losses.chunked.chunked_objective`'s ``teacher_at``: rows ``start:end``
    as a :class:`CachedTeacher` with the chunk's noise. Checks, once: the tail mode, one row per student position
    (``student_hidden`` [N, H]) and a student output layer (``student_weight`` [V_s, H]) that covers the cache's
    ``vocab_size``."""
    _check_tail(tail)
    _check_rows(cache_rows, student_hidden.shape[0])
    if student_weight.shape[0] < cache_rows.vocab_size:
        raise KdlabError(
            f"the student's output layer has {student_weight.shape[0]} rows; the teacher cache has vocab_size "
            f"{cache_rows.vocab_size}"
        )
    rows = cache_rows.to(student_hidden.device)

    def teacher_at(start: int, end: int, student_logits: torch.Tensor, noise: torch.Tensor | None) -> CachedTeacher:
        return CachedTeacher(rows.slice(start, end), tail, None if noise is None else noise.to(student_logits.device))

    return teacher_at
