"""``DistillationLoss``: kdlab's training objective as a torch module, for a training loop of your own.

It computes the very objective ``kdlab distill`` trains (:func:`kdlab.losses.chunked_distill_loss`, or
:func:`kdlab.teacher_cache.chunked_cached_distill_loss` with a teacher cache), from final (post-norm) hidden states
and lm_head weights, a chunk of tokens at a time, so that no ``[B, T, V]`` logits tensor is built.

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
from kdlab.losses import LiveTeacher, check_loss_args, chunked_distill_loss, chunked_objective
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
        self.loss_kwargs = dict(loss_kwargs or {})
        check_loss_args(loss, temperature, **self.loss_kwargs)
        if not 0.0 <= kd_weight <= 1.0:
            raise KdlabError(f"kd_weight must be in [0, 1], got {kd_weight}")
        if reduction not in ("mean", "sum"):
            raise KdlabError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.loss, self.temperature, self.kd_weight = loss, temperature, kd_weight
        self.chunk_size, self.vocab_size, self.tail, self.reduction = chunk_size, vocab_size, tail, reduction

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
        if teacher_hidden is not None:
            total = self._live(hidden, student_lm_head_weight, teacher_hidden, teacher_lm_head_weight, labels, targets)
        elif teacher_log_probs is not None:
            total = self._from_log_probs(hidden, student_lm_head_weight, teacher_log_probs, labels, targets)
        else:
            total = self._cached(hidden, student_lm_head_weight, teacher_cache, example_index, targets)
        if self.reduction == "sum":
            return total
        count = num_items_in_batch if num_items_in_batch is not None else max(targets.numel(), 1)
        if torch.is_tensor(count):
            count = count.to(total.device)
        return total / count

    def _live(self, hidden, weight, teacher_hidden, teacher_weight, labels, targets) -> torch.Tensor:
        if teacher_weight is None:
            raise KdlabError("teacher_hidden needs teacher_lm_head_weight")
        teacher_rows, _ = shift_for_causal_lm(teacher_hidden, labels)
        return chunked_distill_loss(
            hidden,
            weight,
            teacher_rows,
            teacher_weight,
            targets,
            loss=self.loss,
            temperature=self.temperature,
            kd_weight=self.kd_weight,
            loss_kwargs=self.loss_kwargs,
            vocab_size=self.vocab_size,
            chunk_size=self.chunk_size,
        )

    def _from_log_probs(self, hidden, weight, teacher_log_probs, labels, targets) -> torch.Tensor:
        vocab = self.vocab_size or min(weight.shape[0], teacher_log_probs.shape[-1])
        teacher_rows, _ = shift_for_causal_lm(teacher_log_probs.detach()[..., :vocab], labels)

        def teacher_at(start: int, end: int, student_logits: torch.Tensor) -> LiveTeacher:
            # log-probabilities are logits up to a per-position constant, which the softmax removes
            return LiveTeacher(teacher_rows[start:end].to(student_logits.dtype))

        return chunked_objective(
            hidden,
            weight,
            teacher_at,
            targets,
            self.loss,
            self.temperature,
            self.kd_weight,
            self.loss_kwargs,
            vocab,
            self.chunk_size,
            None,
            None,
        )

    def _cached(self, hidden, weight, teacher_cache, example_index, targets) -> torch.Tensor:
        from kdlab.teacher_cache import CacheRows, chunked_cached_distill_loss

        if isinstance(teacher_cache, CacheRows):
            rows = teacher_cache
        else:
            if example_index is None:
                raise KdlabError("teacher_cache needs example_index (the batch's Encoded.index, batch['index'])")
            rows = teacher_cache.rows(torch.as_tensor(example_index).cpu())
        if len(rows) != hidden.shape[0]:
            raise KdlabError(
                f"teacher cache: {hidden.shape[0]} kept positions but {len(rows)} cached rows (the cache was "
                "built on other tokenisation or other examples)"
            )
        return chunked_cached_distill_loss(
            hidden,
            weight,
            rows,
            targets,
            loss=self.loss,
            temperature=self.temperature,
            kd_weight=self.kd_weight,
            loss_kwargs=self.loss_kwargs,
            tail=self.tail,
            chunk_size=self.chunk_size,
        )
