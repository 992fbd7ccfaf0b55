"""Distillation losses: a registry of token-level divergences, their masked mean, and a chunked form.

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

:func:`chunked_distill_loss` computes the training objective ``(1 - w) * CE + w * tau**2 * divergence`` from hidden
states and lm_head weights, a chunk of tokens at a time, so that the full ``[N, V]`` logits of the two models are
never held at once (see ``benchmarks/kd_loss.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

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


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """Half-precision logits become float32; float32 and float64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _log_probs(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float):
    student_logits, teacher_logits = _upcast(student_logits), _upcast(teacher_logits.detach())
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
    "fkl": _fkl, "rkl": _rkl, "gjsd": _gjsd, "skl": _skl, "srkl": _srkl, "tvd": _tvd,
}


def divergence_from_log_probs(name: str, log_p_s: torch.Tensor, log_p_t: torch.Tensor, **kwargs) -> torch.Tensor:
    """Per-row divergence ``name`` (directions as in the module docstring) from log-probabilities: [N, K] x2 -> [N]."""
    return LOG_PROB_DIVERGENCES[name](log_p_s, log_p_t, **kwargs)


def forward_kl(student_logits, teacher_logits, temperature=1.0):
    """KL(p_T || p_S) per token: [N, V], [N, V] -> [N]."""
    return _fkl(*_log_probs(student_logits, teacher_logits, temperature))


def reverse_kl(student_logits, teacher_logits, temperature=1.0):
    """KL(p_S || p_T) per token: [N, V], [N, V] -> [N]."""
    return _rkl(*_log_probs(student_logits, teacher_logits, temperature))


def generalized_jsd(student_logits, teacher_logits, temperature=1.0, beta=0.5):
    """beta * KL(p_T || M) + (1 - beta) * KL(p_S || M), M = beta * p_T + (1 - beta) * p_S, per token -> [N].

    beta = 0 returns forward KL(p_T || p_S) and beta = 1 reverse KL(p_S || p_T) (the GKD convention).
    """
    return _gjsd(*_log_probs(student_logits, teacher_logits, temperature), beta=beta)


def skew_kl(student_logits, teacher_logits, temperature=1.0, alpha=0.1):
    """KL(p_T || alpha * p_T + (1 - alpha) * p_S) per token -> [N]; alpha = 0 is forward KL."""
    return _skl(*_log_probs(student_logits, teacher_logits, temperature), alpha=alpha)


def skew_reverse_kl(student_logits, teacher_logits, temperature=1.0, alpha=0.1):
    """KL(p_S || alpha * p_S + (1 - alpha) * p_T) per token -> [N]; alpha = 0 is reverse KL."""
    return _srkl(*_log_probs(student_logits, teacher_logits, temperature), alpha=alpha)


def total_variation(student_logits, teacher_logits, temperature=1.0):
    """0.5 * sum_v |p_T(v) - p_S(v)| per token -> [N]."""
    return _tvd(*_log_probs(student_logits, teacher_logits, temperature))


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
            raise KdlabError(f"loss '{name}' takes no argument '{key}' (it takes: {', '.join(LOSS_KWARGS[name]) or 'none'})")
        if not (0.0 <= float(value) <= 1.0):
            raise KdlabError(f"{key} must be in [0, 1], got {value}")
    if name in ("skl", "srkl") and float(kwargs.get("alpha", 0.1)) == 1.0:
        raise KdlabError("alpha must be < 1 for skew losses (alpha = 1 makes the divergence identically 0)")


def _masked_mean_loss(name: str) -> Callable[..., torch.Tensor]:
    divergence = TOKEN_DIVERGENCES[name]

    def loss(student_logits, teacher_logits, labels, temperature=1.0, **kwargs):
        check_loss_args(name, temperature, **kwargs)
        if student_logits.shape != teacher_logits.shape:
            raise KdlabError(f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ in shape")
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


@dataclass
class TokenWeights:
    """Fidelity-aware weights of the KD objective over N kept positions (all optional; the defaults give plain KD).

    - ``gamma`` (disagreement weighting, ``kd.disagreement_gamma``): the divergence of token n is multiplied by
      ``1 + gamma * [argmax z_S,n != argmax p_T,n] * max_v p_T,n(v)``, with ``p_T`` the teacher at temperature 1
      without noise; the weight carries no gradient (argmax is piecewise constant). gamma = 0 is plain KD.
    - ``answer`` [N] bool and ``answer_weight`` a (decision-level KD, ``kd.answer_weight``): the divergence of the
      tokens of the decision statement (:mod:`kdlab.data.answer_span`) is multiplied by a.
    - ``answer_hard`` (``kd.answer_target: teacher``): the statement tokens are trained by ``a * CE`` on their
      targets (the teacher's own answer, written into the response) instead of the divergence.

    Normalisation: every weight multiplies a term of the summed objective, which the trainer divides by the number
    of response tokens (as for plain KD), so a weight of 1 everywhere is exactly the plain objective.
    """

    gamma: float = 0.0
    answer: torch.Tensor | None = None
    answer_weight: float = 1.0
    answer_hard: bool = False

    def slice(self, start: int, end: int) -> "TokenWeights":
        answer = None if self.answer is None else self.answer[start:end]
        return TokenWeights(self.gamma, answer, self.answer_weight, self.answer_hard)

    @property
    def plain(self) -> bool:
        return self.gamma == 0 and (self.answer is None or (self.answer_weight == 1 and not self.answer_hard))


def disagreement_weight(student_logits: torch.Tensor, teacher_top1: torch.Tensor, teacher_top1_prob: torch.Tensor,
                        gamma: float) -> torch.Tensor:
    """``1 + gamma * [argmax z_S != argmax p_T] * max p_T`` per token: [N, V], [N], [N] -> [N] (no gradient)."""
    with torch.no_grad():
        disagree = student_logits.argmax(-1) != teacher_top1.to(student_logits.device)
        return 1.0 + gamma * disagree.to(teacher_top1_prob.dtype) * teacher_top1_prob.to(student_logits.device)


def teacher_top1(teacher_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's argmax token [N] and its probability at temperature 1 [N], from logits [N, V]."""
    with torch.no_grad():
        log_p = F.log_softmax(_upcast(teacher_logits), dim=-1)
        top_logp, top_id = log_p.max(-1)
        return top_id, top_logp.exp()


def mix_objective(divergence: torch.Tensor, student_logits: torch.Tensor, targets: torch.Tensor, temperature: float,
                  kd_weight: float, weights: TokenWeights | None = None, top1: tuple | None = None) -> torch.Tensor:
    """Per-token training objective [N] from a per-token divergence [N] (no tau^2 in it):

    ``(1 - w) * CE(z_S, y) + w * tau^2 * g * divergence`` with ``g`` from :class:`TokenWeights` (1 without), and on
    hard answer tokens ``a * CE(z_S, y)``. CE is at temperature 1 on ``targets`` [N] (token ids, no -100).
    ``top1`` = :func:`teacher_top1` (needed when ``weights.gamma > 0``).
    """
    scale = kd_weight * temperature**2
    if weights is not None and weights.gamma > 0:
        if top1 is None:
            raise KdlabError("disagreement weighting needs the teacher's top-1 token and probability")
        scale = scale * disagreement_weight(student_logits, top1[0], top1[1], weights.gamma)
    answer = None if weights is None or weights.answer is None else weights.answer.to(divergence.device)
    if answer is not None and weights.answer_weight != 1 and not weights.answer_hard:
        scale = scale * torch.where(answer, weights.answer_weight, 1.0).to(divergence.dtype)
    objective = scale * divergence
    hard = answer is not None and weights.answer_hard
    if kd_weight < 1 or hard:
        ce = F.cross_entropy(_upcast(student_logits), targets, reduction="none")
        if kd_weight < 1:
            objective = objective + (1 - kd_weight) * ce
        if hard:
            objective = torch.where(answer, weights.answer_weight * ce, objective)
    return objective


def token_objective(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    loss: str,
    temperature: float,
    kd_weight: float,
    loss_kwargs: dict,
    weights: TokenWeights | None = None,
    top1: tuple | None = None,
) -> torch.Tensor:
    """Per-token training objective [N]: ``(1 - w) * CE(z_S, y) + w * tau^2 * g * divergence(p_S, p_T)``
    (:func:`mix_objective`; ``g`` = 1 without ``weights``).

    CE is at temperature 1 on the target token; ``targets`` [N] holds token ids (no -100 here). ``top1`` defaults to
    the argmax of ``teacher_logits`` (pass the noise-free teacher's when the logits carry noise).
    """
    divergence = TOKEN_DIVERGENCES[loss](student_logits, teacher_logits, temperature, **loss_kwargs)
    if weights is not None and weights.gamma > 0 and top1 is None:
        top1 = teacher_top1(teacher_logits)
    return mix_objective(divergence, student_logits, targets, temperature, kd_weight, weights, top1)


TokenLoss = Callable[[torch.Tensor, int, int], torch.Tensor]


class _ChunkedTokenLoss(torch.autograd.Function):
    """Sum over tokens of ``token_loss(logits, start, end) -> [end - start]`` with ``logits = hidden @ weight.T``.

    Forward computes, chunk by chunk, the logits, the loss and its gradient ``g = d loss / d logits`` [C, V];
    then ``d hidden = g @ weight`` and ``d weight += g.T @ hidden`` (accumulated in place). Only one chunk's
    logits exist at a time; backward only scales the stored gradients.
    """

    @staticmethod
    def forward(ctx, hidden_states, weight, token_loss, chunk_size):
        weight_needs_grad = weight.requires_grad
        weight = weight.detach()
        grad_hidden = torch.empty_like(hidden_states)
        grad_weight = torch.zeros_like(weight) if weight_needs_grad else None
        total = None
        for start in range(0, hidden_states.shape[0], chunk_size):
            end = min(start + chunk_size, hidden_states.shape[0])
            hidden = hidden_states[start:end].detach()
            logits = _upcast(F.linear(hidden, weight)).requires_grad_(True)
            with torch.enable_grad():
                chunk_sum = token_loss(logits, start, end).sum()
            (grad_logits,) = torch.autograd.grad(chunk_sum, logits)
            del logits
            grad_logits = grad_logits.to(weight.dtype)
            grad_hidden[start:end] = grad_logits @ weight
            if weight_needs_grad:
                grad_weight.addmm_(grad_logits.T, hidden.to(weight.dtype))
            total = chunk_sum.detach() if total is None else total + chunk_sum.detach()
        ctx.weight_needs_grad = weight_needs_grad
        ctx.save_for_backward(grad_hidden, *((grad_weight,) if weight_needs_grad else ()))
        return total

    @staticmethod
    def backward(ctx, grad_output):
        saved = ctx.saved_tensors  # used once: scale in place
        grad_weight = saved[1].mul_(grad_output) if ctx.weight_needs_grad else None
        return saved[0].mul_(grad_output), grad_weight, None, None


def chunked_token_loss(hidden_states: torch.Tensor, weight: torch.Tensor, token_loss: TokenLoss, chunk_size: int = 256) -> torch.Tensor:
    """Sum over tokens of ``token_loss`` applied to ``hidden_states [N, H] @ weight[V, H].T``, chunk by chunk."""
    if hidden_states.shape[0] == 0:
        return (hidden_states.sum() + weight.sum()) * 0.0
    return _ChunkedTokenLoss.apply(hidden_states, weight, token_loss, chunk_size)


def chunked_ce_loss(hidden_states, weight, targets, chunk_size: int = 256) -> torch.Tensor:
    """Sum over tokens of cross-entropy(hidden_states @ weight.T, targets), computed in chunks: [N, H] -> scalar."""
    return chunked_token_loss(hidden_states, weight, lambda logits, s, e: F.cross_entropy(logits, targets[s:e], reduction="none"), chunk_size)


def chunked_distill_loss(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    loss: str = "fkl",
    temperature: float = 1.0,
    kd_weight: float = 1.0,
    loss_kwargs: dict | None = None,
    vocab_size: int | None = None,
    teacher_noise: float = 0.0,
    noise_generator: torch.Generator | None = None,
    chunk_size: int = 256,
    weights: TokenWeights | None = None,
) -> torch.Tensor:
    """Sum over tokens of the distillation objective, computed in chunks of ``chunk_size`` tokens.

    Args:
        student_hidden: [N, H_s] final (post-norm) student hidden states of the kept (response) positions.
        student_weight: [V_s, H_s] student lm_head weight (gradients flow to it when it requires grad).
        teacher_hidden: [N, H_t] teacher hidden states at the same positions (no gradient).
        teacher_weight: [V_t, H_t] teacher lm_head weight.
        targets: [N] target token ids (used by the CE term).
        vocab_size: logits of both models are sliced to this many entries (the shared tokenizer size; Qwen pads
            its output layer); default ``min(V_s, V_t)``.
        teacher_noise: standard deviation of Gaussian noise added to the teacher logits (before temperature).
        weights: fidelity-aware token weights (:class:`TokenWeights`; ``answer`` [N] aligned with the rows); the
            disagreement weight uses the noise-free teacher.

    Returns a scalar: ``sum_n (1 - w) * CE_n + w * tau^2 * g_n * divergence_n`` (:func:`mix_objective`). Divide by the number of response
    tokens (over the whole accumulated batch) to get the mean.
    """
    loss_kwargs = dict(loss_kwargs or {})
    check_loss_args(loss, temperature, **loss_kwargs)
    vocab = vocab_size or min(student_weight.shape[0], teacher_weight.shape[0])
    teacher_weight = teacher_weight.detach()[:vocab]  # a view: no copy
    teacher_hidden = teacher_hidden.detach()

    def token_loss(student_logits: torch.Tensor, start: int, end: int) -> torch.Tensor:
        chunk_weights = None if weights is None or weights.plain else weights.slice(start, end)
        with torch.no_grad():
            teacher_logits = _upcast(F.linear(teacher_hidden[start:end], teacher_weight))
            top1 = teacher_top1(teacher_logits) if chunk_weights is not None and chunk_weights.gamma > 0 else None
            if teacher_noise > 0:
                noise = torch.randn(teacher_logits.shape, generator=noise_generator)
                teacher_logits = teacher_logits + teacher_noise * noise.to(teacher_logits.device)
        return token_objective(student_logits, teacher_logits, targets[start:end], loss, temperature, kd_weight, loss_kwargs,
                               chunk_weights, top1)

    if vocab < student_weight.shape[0]:  # slicing always adds a backward step that fills a full-size gradient
        student_weight = student_weight[:vocab]
    return chunked_token_loss(student_hidden, student_weight, token_loss, chunk_size)


def naive_distill_loss(student_logits, teacher_logits, targets, *, loss="fkl", temperature=1.0, kd_weight=1.0, loss_kwargs=None,
                       weights: TokenWeights | None = None):
    """Reference for :func:`chunked_distill_loss` from full logits [N, V]: the same sum over tokens, in one piece."""
    return token_objective(_upcast(student_logits), _upcast(teacher_logits.detach()), targets, loss, temperature, kd_weight,
                           dict(loss_kwargs or {}), weights).sum()
