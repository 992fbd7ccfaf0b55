"""``DistillationLoss``: kdlab's training objective as a torch module, for a training loop of your own.

It computes the very objective ``kdlab distill`` trains (:func:`kdlab.losses.chunked.chunked_objective` of a
:class:`kdlab.losses.objective.KDSpec` against one teacher source: live, log-probabilities or a teacher cache), from
final (post-norm) hidden states and lm_head weights, a chunk of tokens at a time, so that no ``[B, T, V]`` logits
tensor is built.

Formula, per kept position ``n`` (student logits ``z_S = h_S @ W_S.T``, teacher logits ``z_T = h_T @ W_T.T``,
``p = softmax(z / tau)``, target token ``y_n``)::

    loss_n = (1 - w) * CE(z_S,n, y_n) + w * tau**2 * D(p_S,n, p_T,n)
    loss   = sum_n loss_n / N                         (reduction="mean"; N = number of kept positions)

with ``D`` one of :data:`kdlab.losses.TOKEN_DIVERGENCES` (fkl = KL(p_T || p_S), rkl = KL(p_S || p_T), gjsd, skl,
srkl, tvd) and CE at temperature 1. ``N`` can be given as ``num_items_in_batch`` (the token count of a whole
accumulated batch, as the transformers Trainer passes it), and ``reduction="sum"`` returns the plain sum.

Label shift (the Hugging Face causal-LM convention): ``labels`` are the input ids with -100 on ignored positions
(prompt, padding); the hidden state at position ``t`` predicts ``labels[:, t + 1]``. The kept positions are
``labels[:, 1:] != -100``; their hidden states are ``hidden[:, :-1]`` there. ``DistillationLoss(kd_weight=0)`` is
therefore exactly ``model(input_ids, labels=labels).loss`` of a transformers causal LM.

Teacher sources (one of them):

- ``teacher_hidden`` [B, T, H_t] + ``teacher_lm_head_weight`` [V_t, H_t]: a live teacher on the same tokens.
  Both output layers are cut to ``vocab_size`` rows (default ``min(V_s, V_t)``: Qwen-style padded heads).
- ``teacher_log_probs`` [B, T, V_t]: the teacher's log-probabilities (or raw logits: the loss only uses them up to a
  per-position constant) aligned like the student's logits (position t predicts ``labels[:, t + 1]``).
- ``teacher_cache`` (a :class:`kdlab.teacher_cache.TeacherCache` from :func:`kdlab.teacher_cache.load_cache`) with
  ``example_index`` [B] (the ``Encoded.index`` of each row, ``batch["index"]`` of :func:`kdlab.data.tokenize.collate`),
  or its decoded rows (:class:`kdlab.teacher_cache.CacheRows`, one per kept position, batch rows then positions).
  The divergence is then the cache's (top-k plus tail bucket, ``tail`` mode), as in ``kdlab distill --teacher-cache``.

Example::

    loss_fn = DistillationLoss(loss="fkl", temperature=2.0, kd_weight=0.5)
    student_out = student(input_ids, attention_mask=mask, output_hidden_states=True, logits_to_keep=1)
    with torch.no_grad():
        teacher_out = teacher(input_ids, attention_mask=mask, output_hidden_states=True, logits_to_keep=1)
    loss = loss_fn(student_out.hidden_states[-1], student.lm_head.weight, labels,
                   teacher_out.hidden_states[-1], teacher.lm_head.weight)
    loss.backward()
"""

from __future__ import annotations

import torch
from torch import nn

from kdlab.errors import KdlabError
from kdlab.losses.chunked import TeacherAt, chunked_objective, live_teacher_at
from kdlab.losses.objective import KDSpec, LiveTeacher
from kdlab.models.heads import response_hidden


def shift_for_causal_lm(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`kdlab.models.heads.response_hidden` (the rows that predict a kept label, and those labels), after
    checking that ``hidden`` [B, T, ...] and ``labels`` [B, T] have the same batch and length."""
    if hidden.shape[:2] != labels.shape:
        raise KdlabError(
            f"hidden states {tuple(hidden.shape)} and labels {tuple(labels.shape)} differ in (batch, length)"
        )
    return response_hidden(hidden, labels)


class DistillationLoss(nn.Module):
    """``(1 - w) * CE + w * tau^2 * divergence(p_S, p_T)``, mean over kept tokens (module docstring).

    Args:
        loss: divergence name (fkl, rkl, gjsd, skl, srkl, tvd).
        temperature: ``tau`` on both distributions (the KD term is scaled by ``tau**2``).
        kd_weight: ``w``; 1 is pure KD, 0 pure cross-entropy.
        chunk_size: tokens per chunk of logits.
        loss_kwargs: the divergence's arguments (``{"beta": 0.5}`` for gjsd, ``{"alpha": 0.1}`` for skl/srkl).
        vocab_size: shared vocabulary size (default: the smaller output layer / the cache's).
        tail: teacher-cache tail mode, ``bucket`` or ``renormalize`` (:mod:`kdlab.teacher_cache`).
        reduction: ``mean`` (divide by the number of kept tokens or ``num_items_in_batch``) or ``sum``.

    The settings of the objective are one :class:`kdlab.losses.objective.KDSpec`, ``self.spec`` (checked once, here).
    """

    def __init__(
        self,
        loss: str = "fkl",
        temperature: float = 2.0,
        kd_weight: float = 0.5,
        chunk_size: int = 256,
        loss_kwargs: dict | None = None,
        vocab_size: int | None = None,
        tail: str = "bucket",
        reduction: str = "mean",
    ):
        super().__init__()
        self.spec = KDSpec(loss, temperature, kd_weight, loss_kwargs or {}, tail=tail, chunk_size=chunk_size)
        if not 0.0 <= kd_weight <= 1.0:
            raise KdlabError(f"kd_weight must be in [0, 1], got {kd_weight}")
        if reduction not in ("mean", "sum"):
            raise KdlabError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.vocab_size, self.reduction = vocab_size, reduction

    loss = property(lambda self: self.spec.loss)
    temperature = property(lambda self: self.spec.temperature)
    kd_weight = property(lambda self: self.spec.kd_weight)
    loss_kwargs = property(lambda self: self.spec.loss_kwargs)
    chunk_size = property(lambda self: self.spec.chunk_size)
    tail = property(lambda self: self.spec.tail)

    def extra_repr(self) -> str:
        return f"loss={self.loss!r}, temperature={self.temperature}, kd_weight={self.kd_weight}, loss_kwargs={self.loss_kwargs}"

    def forward(
        self,
        student_hidden: torch.Tensor,
        student_lm_head_weight: torch.Tensor,
        labels: torch.Tensor,
        teacher_hidden: torch.Tensor | None = None,
        teacher_lm_head_weight: torch.Tensor | None = None,
        *,
        teacher_log_probs: torch.Tensor | None = None,
        teacher_cache=None,
        example_index: torch.Tensor | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scalar loss from ``student_hidden`` [B, T, H_s], ``student_lm_head_weight`` [V_s, H_s], ``labels`` [B, T]
        and one teacher source (module docstring); gradients reach the student's hidden states and weight only."""
        hidden, targets = shift_for_causal_lm(student_hidden, labels)
        sources = sum(source is not None for source in (teacher_hidden, teacher_log_probs, teacher_cache))
        if sources != 1:
            raise KdlabError(
                "give exactly one teacher source: teacher_hidden (+ teacher_lm_head_weight), teacher_log_probs "
                "or teacher_cache"
            )
        weight = student_lm_head_weight
        if teacher_hidden is not None:
            vocab, teacher_at = self._live(weight, teacher_hidden, teacher_lm_head_weight, labels)
        elif teacher_log_probs is not None:
            vocab, teacher_at = self._from_log_probs(weight, teacher_log_probs, labels)
        else:
            vocab, teacher_at = self._cached(hidden, weight, teacher_cache, example_index)
        total = chunked_objective(hidden, weight, teacher_at, targets, self.spec, vocab)
        if self.reduction == "sum":
            return total
        count = num_items_in_batch if num_items_in_batch is not None else max(targets.numel(), 1)
        if torch.is_tensor(count):
            count = count.to(total.device)
        return total / count

    def _live(self, weight, teacher_hidden, teacher_weight, labels) -> tuple[int, TeacherAt]:
        if teacher_weight is None:
            raise KdlabError("teacher_hidden needs teacher_lm_head_weight")
        teacher_rows, _ = shift_for_causal_lm(teacher_hidden, labels)
        vocab = self.vocab_size or min(weight.shape[0], teacher_weight.shape[0])
        return vocab, live_teacher_at(teacher_rows, teacher_weight, vocab)

    def _from_log_probs(self, weight, teacher_log_probs, labels) -> tuple[int, TeacherAt]:
        vocab = self.vocab_size or min(weight.shape[0], teacher_log_probs.shape[-1])
        teacher_rows, _ = shift_for_causal_lm(teacher_log_probs.detach()[..., :vocab], labels)

        def teacher_at(start: int, end: int, student_logits: torch.Tensor, noise) -> LiveTeacher:
            # log-probabilities are logits up to a per-position constant, which the softmax removes
            return LiveTeacher(teacher_rows[start:end].to(student_logits.dtype))

        return vocab, teacher_at

    def _cached(self, hidden, weight, teacher_cache, example_index) -> tuple[int, TeacherAt]:
        from kdlab.teacher_cache import CacheRows
        from kdlab.teacher_cache.loss import cached_teacher_at

        if isinstance(teacher_cache, CacheRows):
            rows = teacher_cache
        else:
            if example_index is None:
                raise KdlabError("teacher_cache needs example_index (the batch's Encoded.index, batch['index'])")
            rows = teacher_cache.rows(torch.as_tensor(example_index).cpu())
        return rows.vocab_size, cached_teacher_at(rows, hidden, weight, self.spec.tail)
