"""The objective over many tokens, a chunk of tokens at a time, from hidden states and lm_head weights.

:func:`chunked_distill_loss` computes the training objective ``(1 - w) * CE + w * tau**2 * divergence``
(:func:`kdlab.losses.objective.token_objective`) from the two models' final hidden states and output layers, so that
the full ``[N, V]`` logits of the two models are never held at once (see ``benchmarks/kd_loss.py``);
:func:`naive_distill_loss` is the same sum from full logits, the reference it is tested against.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from kdlab.losses.divergences import upcast
from kdlab.losses.objective import (
    KDSpec,
    LiveTeacher,
    LossParts,
    TeacherSignal,
    TokenWeights,
    chunk_weights,
    token_objective,
)

#: token_loss(logits [C, V], start, end) -> [C]; with per-row inputs: token_loss(logits, start, end, rows [C]) -> [C]
TokenLoss = Callable[..., torch.Tensor]
#: teacher_at(start, end, student_logits [C, V], noise [C, V] or None) -> the teacher signal of rows start:end
TeacherAt = Callable[[int, int, torch.Tensor, "torch.Tensor | None"], TeacherSignal]


class _ChunkedTokenLoss(torch.autograd.Function):
    """Sum over tokens of ``token_loss(logits, start, end) -> [end - start]`` with ``logits = hidden @ weight.T``
    (with ``rows`` [N] given: ``token_loss(logits, start, end, rows[start:end])``, a per-row input that also gets its
    gradient).

    Forward computes, chunk by chunk, the logits, the loss and its gradient ``g = d loss / d logits`` [C, V];
    then ``d hidden = g @ weight`` and ``d weight += g.T @ hidden`` (accumulated in place). Only one chunk's
    logits exist at a time; backward only scales the stored gradients.
    """

    @staticmethod
    def forward(ctx, hidden_states, weight, token_loss, chunk_size, rows=None):
        weight_needs_grad = weight.requires_grad
        rows_need_grad = rows is not None and rows.requires_grad
        weight = weight.detach()
        grad_hidden = torch.empty_like(hidden_states)
        grad_weight = torch.zeros_like(weight) if weight_needs_grad else None
        grad_rows = torch.zeros_like(rows) if rows_need_grad else None
        total = None
        for start in range(0, hidden_states.shape[0], chunk_size):
            end = min(start + chunk_size, hidden_states.shape[0])
            hidden = hidden_states[start:end].detach()
            logits = upcast(F.linear(hidden, weight)).requires_grad_(True)
            inputs = [logits]
            with torch.enable_grad():
                if rows is None:
                    chunk_sum = token_loss(logits, start, end).sum()
                else:
                    chunk_rows = rows[start:end].detach().requires_grad_(rows_need_grad)
                    inputs += [chunk_rows] if rows_need_grad else []
                    chunk_sum = token_loss(logits, start, end, chunk_rows).sum()
            grad_logits, *grad_chunk_rows = torch.autograd.grad(chunk_sum, inputs)
            del logits
            if rows_need_grad:
                grad_rows[start:end] = grad_chunk_rows[0]
            grad_logits = grad_logits.to(weight.dtype)
            grad_hidden[start:end] = grad_logits @ weight
            if weight_needs_grad:
                grad_weight.addmm_(grad_logits.T, hidden.to(weight.dtype))
            total = chunk_sum.detach() if total is None else total + chunk_sum.detach()
        ctx.weight_needs_grad, ctx.rows_need_grad = weight_needs_grad, rows_need_grad
        ctx.save_for_backward(grad_hidden, *(g for g in (grad_weight, grad_rows) if g is not None))
        return total

    @staticmethod
    def backward(ctx, grad_output):
        saved = list(ctx.saved_tensors)  # used once: scale in place
        grad_hidden = saved.pop(0).mul_(grad_output)
        grad_weight = saved.pop(0).mul_(grad_output) if ctx.weight_needs_grad else None
        grad_rows = saved.pop(0).mul_(grad_output) if ctx.rows_need_grad else None
        return grad_hidden, grad_weight, None, None, grad_rows


def chunked_token_loss(
    hidden_states: torch.Tensor,
    weight: torch.Tensor,
    token_loss: TokenLoss,
    chunk_size: int = 256,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sum over tokens of ``token_loss`` applied to ``hidden_states [N, H] @ weight[V, H].T``, chunk by chunk; with
    ``rows`` [N], ``token_loss`` also gets ``rows[start:end]`` (and ``rows`` its gradient)."""
    if hidden_states.shape[0] == 0:
        empty = (hidden_states.sum() + weight.sum()) * 0.0
        return empty if rows is None else empty + rows.sum() * 0.0
    return _ChunkedTokenLoss.apply(hidden_states, weight, token_loss, chunk_size, rows)


def chunked_ce_loss(hidden_states, weight, targets, chunk_size: int = 256) -> torch.Tensor:
    """Sum over tokens of cross-entropy(hidden_states @ weight.T, targets), computed in chunks: [N, H] -> scalar."""
    return chunked_token_loss(
        hidden_states, weight, lambda logits, s, e: F.cross_entropy(logits, targets[s:e], reduction="none"), chunk_size
    )


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
    parts: LossParts | None = None,
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
        parts: a :class:`LossParts` to which the KD and CE parts of the sum are added (for logging).

    Returns a scalar: ``sum_n (1 - w) * CE_n + w * tau^2 * g_n * divergence_n`` (:func:`mix_objective`). Divide by the number of response
    tokens (over the whole accumulated batch) to get the mean. A thin wrapper: :class:`KDSpec`, :func:`live_teacher_at`
    and :func:`chunked_objective`.
    """
    spec = KDSpec(loss, temperature, kd_weight, loss_kwargs or {}, teacher_noise, chunk_size=chunk_size)
    vocab = vocab_size or min(student_weight.shape[0], teacher_weight.shape[0])
    teacher_at = live_teacher_at(teacher_hidden, teacher_weight, vocab)
    return chunked_objective(
        student_hidden, student_weight, teacher_at, targets, spec, vocab, weights, parts, noise_generator
    )


def live_teacher_at(teacher_hidden: torch.Tensor, teacher_weight: torch.Tensor, vocab: int) -> TeacherAt:
    """The live teacher as :func:`chunked_objective`'s ``teacher_at``: its logits of rows ``start:end`` from its
    hidden states [N, H_t] and output layer [V_t, H_t] cut to ``vocab`` rows (no gradient), plus the chunk's noise."""
    teacher_weight = teacher_weight.detach()[:vocab]  # a view: no copy
    teacher_hidden = teacher_hidden.detach()

    def teacher_at(start: int, end: int, student_logits: torch.Tensor, noise: torch.Tensor | None) -> LiveTeacher:
        with torch.no_grad():
            teacher_logits = upcast(F.linear(teacher_hidden[start:end], teacher_weight))
        return LiveTeacher(teacher_logits, noise)

    return teacher_at


def noise_draw(sigma: float, rows: int, vocab: int, generator: torch.Generator | None) -> torch.Tensor | None:
    """The teacher-logit noise of one chunk: ``sigma * randn(rows, vocab)`` from ``generator`` (on the CPU), or None
    for sigma = 0. The live and the cached loss draw the same numbers chunk by chunk."""
    return sigma * torch.randn((rows, vocab), generator=generator) if sigma > 0 else None


def chunked_objective(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_at: TeacherAt,
    targets: torch.Tensor,
    spec: KDSpec,
    vocab: int,
    weights: TokenWeights | None = None,
    parts: LossParts | None = None,
    noise_generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``sum_n`` :func:`token_objective` ``(z_S,n, teacher_n)`` over N positions, ``spec.chunk_size`` at a time: the
    one chunked KD sum behind the live teacher, the teacher cache, :class:`kdlab.distillation_loss.DistillationLoss`
    and the training objective.

    ``teacher_at(start, end, student_logits [C, V], noise)`` gives the teacher signal of rows ``start:end``;
    ``noise`` is the chunk's :func:`noise_draw` (``spec.teacher_noise`` from ``noise_generator``, [C, vocab], or
    None). The student's output layer is cut to ``vocab`` rows (the shared vocabulary).
    """

    def token_loss(student_logits: torch.Tensor, start: int, end: int) -> torch.Tensor:
        noise = noise_draw(spec.teacher_noise, end - start, vocab, noise_generator)
        return token_objective(
            student_logits,
            teacher_at(start, end, student_logits, noise),
            targets[start:end],
            spec.loss,
            spec.temperature,
            spec.kd_weight,
            spec.loss_kwargs,
            chunk_weights(weights, start, end),
            parts=parts,
        )

    if vocab < student_weight.shape[0]:  # slicing always adds a backward step that fills a full-size gradient
        student_weight = student_weight[:vocab]
    return chunked_token_loss(student_hidden, student_weight, token_loss, spec.chunk_size)


def naive_distill_loss(
    student_logits,
    teacher_logits,
    targets,
    *,
    loss="fkl",
    temperature=1.0,
    kd_weight=1.0,
    loss_kwargs=None,
    weights: TokenWeights | None = None,
):
    """Reference for :func:`chunked_distill_loss` from full logits [N, V]: the same sum over tokens, in one piece."""
    return token_objective(
        upcast(student_logits),
        upcast(teacher_logits.detach()),
        targets,
        loss,
        temperature,
        kd_weight,
        dict(loss_kwargs or {}),
        weights,
    ).sum()
