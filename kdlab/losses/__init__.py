"""Distillation losses: token-level divergences, the per-token training objective, and its chunked form.

- :mod:`kdlab.losses.divergences`: every divergence defined once on log-probabilities (``LOG_PROB_DIVERGENCES``),
  the logits wrappers ``TOKEN_DIVERGENCES`` and the masked-mean ``LOSSES`` (the public API below);
- :mod:`kdlab.losses.objective`: ``(1 - w) * CE + w * tau^2 * g * divergence`` per token (:func:`token_objective`),
  from any teacher signal: the live teacher's logits or the teacher cache (:mod:`kdlab.teacher_cache`);
- :mod:`kdlab.losses.chunked`: that objective summed over tokens from hidden states, a chunk of tokens at a time.

Public API (tests and outside checks call it)::

    LOSSES[name](student_logits, teacher_logits, labels, temperature=1.0, **kwargs) -> scalar tensor
"""

from kdlab.losses.chunked import (
    chunked_ce_loss,
    chunked_distill_loss,
    chunked_objective,
    chunked_token_loss,
    naive_distill_loss,
    noise_draw,
)
from kdlab.losses.divergences import (
    IGNORE_INDEX,
    LOG_PROB_DIVERGENCES,
    LOSS_KWARGS,
    LOSSES,
    TOKEN_DIVERGENCES,
    check_loss_args,
    divergence_from_log_probs,
    forward_kl,
    generalized_jsd,
    log_probs,
    reverse_kl,
    skew_kl,
    skew_reverse_kl,
    total_variation,
    upcast,
)
from kdlab.losses.objective import (
    LiveTeacher,
    LossParts,
    TeacherSignal,
    TokenWeights,
    chunk_weights,
    disagreement_weight,
    mix_objective,
    teacher_top1,
    token_objective,
)

__all__ = [
    "IGNORE_INDEX",
    "LOG_PROB_DIVERGENCES",
    "LOSSES",
    "LOSS_KWARGS",
    "TOKEN_DIVERGENCES",
    "LiveTeacher",
    "LossParts",
    "TeacherSignal",
    "TokenWeights",
    "check_loss_args",
    "chunk_weights",
    "chunked_ce_loss",
    "chunked_distill_loss",
    "chunked_objective",
    "chunked_token_loss",
    "disagreement_weight",
    "divergence_from_log_probs",
    "forward_kl",
    "generalized_jsd",
    "log_probs",
    "mix_objective",
    "naive_distill_loss",
    "noise_draw",
    "reverse_kl",
    "skew_kl",
    "skew_reverse_kl",
    "teacher_top1",
    "token_objective",
    "total_variation",
    "upcast",
]
