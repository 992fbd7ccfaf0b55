"""The token-level divergences, defined once on log-probabilities, their logits wrappers and their masked mean.

Notation, per token position: ``z_S`` and ``z_T`` are the student and teacher logits over the vocabulary,
``p_S = softmax(z_S / tau)`` and ``p_T = softmax(z_T / tau)`` at temperature ``tau``, and
``KL(P || Q) = sum_v P(v) * (log P(v) - log Q(v))``.

Public API (tests and outside checks call it)::

    LOSSES[name](student_logits, teacher_logits, labels, temperature=1.0, **kwargs) -> scalar tensor

with logits ``[B, T, V]`` and labels ``[B, T]`` already aligned (position t predicts ``labels[t]``). Positions whose
label is -100 are ignored. The result is ``tau**2 * mean over kept positions of divergence(p_S, p_T)``; an all-masked
batch gives 0 (with a gradient of 0), never NaN. The teacher logits are detached: gradients reach the student only.

Divergences (``TOKEN_DIVERGENCES[name](student_logits [N, V], teacher_logits [N, V], temperature, **kw) -> [N]``):

- ``fkl``  forward KL, the paper's "KD":          KL(p_T || p_S)
- ``rkl``  reverse KL, the paper's "RevKD":        KL(p_S || p_T)
- ``gjsd`` generalized JSD (GKD), kwarg ``beta``:  beta * KL(p_T || M) + (1 - beta) * KL(p_S || M),
  M = beta * p_T + (1 - beta) * p_S.  This expression vanishes at both ends (M becomes p_S or p_T); as in TRL's
  GKD, the end points are defined by their limits up to scale: beta = 0 is ``fkl`` and beta = 1 is ``rkl``.
- ``skl``  skew KL, kwarg ``alpha``:              KL(p_T || alpha * p_T + (1 - alpha) * p_S)
- ``srkl`` skew reverse KL, kwarg ``alpha``:      KL(p_S || alpha * p_S + (1 - alpha) * p_T)
- ``tvd``  total variation distance:              0.5 * sum_v |p_T(v) - p_S(v)|

Each is written once, in :data:`LOG_PROB_DIVERGENCES`, on log-probabilities over any K outcomes; the live objective
passes the full vocabulary (:func:`log_probs` of the two models' logits), the teacher cache its top-k plus a tail
bucket (:mod:`kdlab.teacher_cache.loss`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from kdlab.errors import KdlabError

IGNORE_INDEX = -100

TokenDivergence = Callable[..., torch.Tensor]


def _kl_from_log_probs(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) per row, from log-probabilities [N, V] -> [N]; terms with P(v) = 0 contribute 0."""
    p = log_p.exp()
    terms = p * (log_p - log_q)
    return terms.masked_fill_(p == 0, 0.0).sum(-1)


def _log_mixture(log_p: torch.Tensor, log_q: torch.Tensor, weight_p: float) -> torch.Tensor:
    """log(weight_p * P + (1 - weight_p) * Q) computed stably from log-probabilities; 0 < weight_p < 1."""
    return torch.logaddexp(log_p + math.log(weight_p), log_q + math.log1p(-weight_p))


def upcast(x: torch.Tensor) -> torch.Tensor:
    """Half-precision logits become float32; float32 and float64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def log_probs(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log p_S, log p_T)`` [N, V] each at temperature tau, from logits [N, V] (upcast to float32; teacher detached)."""
    student_logits, teacher_logits = upcast(student_logits), upcast(teacher_logits.detach())
    if temperature != 1:
        student_logits, teacher_logits = student_logits / temperature, teacher_logits / temperature
    log_p_s = F.log_softmax(student_logits, dim=-1)
    log_p_t = F.log_softmax(teacher_logits, dim=-1)
    return log_p_s, log_p_t


def _fkl(log_p_s, log_p_t):
    return _kl_from_log_probs(log_p_t, log_p_s)


def _rkl(log_p_s, log_p_t):
    return _kl_from_log_probs(log_p_s, log_p_t)


def _gjsd(log_p_s, log_p_t, beta=0.5):
    if beta == 0:
        return _fkl(log_p_s, log_p_t)
    if beta == 1:
        return _rkl(log_p_s, log_p_t)
    log_m = _log_mixture(log_p_t, log_p_s, beta)
    return beta * _kl_from_log_probs(log_p_t, log_m) + (1 - beta) * _kl_from_log_probs(log_p_s, log_m)


def _skl(log_p_s, log_p_t, alpha=0.1):
    if alpha == 0:
        return _fkl(log_p_s, log_p_t)
    return _kl_from_log_probs(log_p_t, _log_mixture(log_p_t, log_p_s, alpha))


def _srkl(log_p_s, log_p_t, alpha=0.1):
    if alpha == 0:
        return _rkl(log_p_s, log_p_t)
    return _kl_from_log_probs(log_p_s, _log_mixture(log_p_s, log_p_t, alpha))


def _tvd(log_p_s, log_p_t):
    return 0.5 * (log_p_t.exp() - log_p_s.exp()).abs().sum(-1)


#: The one home of every divergence: ``LOG_PROB_DIVERGENCES[name](log_p_s [N, K], log_p_t [N, K], **kw) -> [N]`` on
#: log-probabilities over any K outcomes (the full vocabulary, or the teacher cache's top-k plus tail bucket).
LOG_PROB_DIVERGENCES: dict[str, Callable[..., torch.Tensor]] = {
    "fkl": _fkl,
    "rkl": _rkl,
    "gjsd": _gjsd,
    "skl": _skl,
    "srkl": _srkl,
    "tvd": _tvd,
}


def divergence_from_log_probs(name: str, log_p_s: torch.Tensor, log_p_t: torch.Tensor, **kwargs) -> torch.Tensor:
    """Per-row divergence ``name`` (directions as in the module docstring) from log-probabilities: [N, K] x2 -> [N]."""
    return LOG_PROB_DIVERGENCES[name](log_p_s, log_p_t, **kwargs)


def forward_kl(student_logits, teacher_logits, temperature=1.0):
    """KL(p_T || p_S) per token: [N, V], [N, V] -> [N]."""
    return _fkl(*log_probs(student_logits, teacher_logits, temperature))


def reverse_kl(student_logits, teacher_logits, temperature=1.0):
    """KL(p_S || p_T) per token: [N, V], [N, V] -> [N]."""
    return _rkl(*log_probs(student_logits, teacher_logits, temperature))


def generalized_jsd(student_logits, teacher_logits, temperature=1.0, beta=0.5):
    """beta * KL(p_T || M) + (1 - beta) * KL(p_S || M), M = beta * p_T + (1 - beta) * p_S, per token -> [N].

    beta = 0 returns forward KL(p_T || p_S) and beta = 1 reverse KL(p_S || p_T) (the GKD convention).
    """
    return _gjsd(*log_probs(student_logits, teacher_logits, temperature), beta=beta)


def skew_kl(student_logits, teacher_logits, temperature=1.0, alpha=0.1):
    """KL(p_T || alpha * p_T + (1 - alpha) * p_S) per token -> [N]; alpha = 0 is forward KL."""
    return _skl(*log_probs(student_logits, teacher_logits, temperature), alpha=alpha)


def skew_reverse_kl(student_logits, teacher_logits, temperature=1.0, alpha=0.1):
    """KL(p_S || alpha * p_S + (1 - alpha) * p_T) per token -> [N]; alpha = 0 is reverse KL."""
    return _srkl(*log_probs(student_logits, teacher_logits, temperature), alpha=alpha)


def total_variation(student_logits, teacher_logits, temperature=1.0):
    """0.5 * sum_v |p_T(v) - p_S(v)| per token -> [N]."""
    return _tvd(*log_probs(student_logits, teacher_logits, temperature))


TOKEN_DIVERGENCES: dict[str, TokenDivergence] = {
    "fkl": forward_kl,
    "rkl": reverse_kl,
    "gjsd": generalized_jsd,
    "skl": skew_kl,
    "srkl": skew_reverse_kl,
    "tvd": total_variation,
}

#: Keyword arguments each divergence takes (validated by :func:`check_loss_args`).
LOSS_KWARGS: dict[str, tuple[str, ...]] = {
    "fkl": (),
    "rkl": (),
    "gjsd": ("beta",),
    "skl": ("alpha",),
    "srkl": ("alpha",),
    "tvd": (),
}


def check_loss_args(name: str, temperature: float, **kwargs) -> None:
    """Raise :class:`KdlabError` for an unknown loss, tau <= 0 or a kwarg outside [0, 1]."""
    if name not in TOKEN_DIVERGENCES:
        raise KdlabError(f"unknown loss '{name}' (choose from {', '.join(sorted(TOKEN_DIVERGENCES))})")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise KdlabError(f"temperature must be > 0, got {temperature}")
    for key, value in kwargs.items():
        if key not in LOSS_KWARGS[name]:
            raise KdlabError(
                f"loss '{name}' takes no argument '{key}' (it takes: {', '.join(LOSS_KWARGS[name]) or 'none'})"
            )
        if not (0.0 <= float(value) <= 1.0):
            raise KdlabError(f"{key} must be in [0, 1], got {value}")
    if name in ("skl", "srkl") and float(kwargs.get("alpha", 0.1)) == 1.0:
        raise KdlabError("alpha must be < 1 for skew losses (alpha = 1 makes the divergence identically 0)")


def _masked_mean_loss(name: str) -> Callable[..., torch.Tensor]:
    divergence = TOKEN_DIVERGENCES[name]

    def loss(student_logits, teacher_logits, labels, temperature=1.0, **kwargs):
        check_loss_args(name, temperature, **kwargs)
        if student_logits.shape != teacher_logits.shape:
            raise KdlabError(
                f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ in shape"
            )
        vocab = student_logits.shape[-1]
        keep = labels.reshape(-1) != IGNORE_INDEX
        student = student_logits.reshape(-1, vocab)[keep]
        teacher = teacher_logits.reshape(-1, vocab)[keep]
        if student.shape[0] == 0:
            return student_logits.sum() * 0.0
        per_token = divergence(student, teacher, temperature, **kwargs)
        return per_token.mean() * temperature**2

    loss.__name__ = f"{name}_loss"
    loss.__doc__ = f"tau^2 * masked mean over tokens of {divergence.__doc__.splitlines()[0]}"
    return loss


LOSSES: dict[str, Callable[..., torch.Tensor]] = {name: _masked_mean_loss(name) for name in TOKEN_DIVERGENCES}
