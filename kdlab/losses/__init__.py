"""Distillation losses: token-level divergences, the per-token training objective, and its chunked form.

- :mod:`kdlab.losses.divergences`: the registry of divergences (``DIVERGENCES``, each registered once on
  log-probabilities), the logits wrappers ``TOKEN_DIVERGENCES`` and the masked-mean ``LOSSES`` (the public API below);
- :mod:`kdlab.losses.objective`: ``(1 - w) * CE + w * tau^2 * g * divergence`` per token (:func:`token_objective`),
  from any teacher signal: the live teacher's logits or the teacher cache (:mod:`kdlab.teacher_cache`);
- :mod:`kdlab.losses.chunked`: that objective summed over tokens from hidden states, a chunk of tokens at a time;
- :mod:`kdlab.losses.cross_tokenizer`: ULD and the GOLD hybrid for a teacher with another tokenizer, on spans of
  identical text (:mod:`kdlab.data.token_alignment`), a chunk of spans at a time.

Public API (tests and outside checks call it)::

    LOSSES[name](student_logits, teacher_logits, labels, temperature=1.0, **kwargs) -> scalar tensor

The names below are imported on first use, so that :mod:`kdlab.config` reads the registry without torch.
"""

import importlib

_HOMES = {
    "chunked": (
        "chunked_ce_loss",
        "chunked_distill_loss",
        "chunked_objective",
        "chunked_token_loss",
        "naive_distill_loss",
        "noise_draw",
    ),
    "cross_tokenizer": (
        "CROSS_TOKENIZER_LOSSES",
        "CrossSpec",
        "SharedVocab",
        "Side",
        "cross_tokenizer_objective",
        "sorted_l1",
        "weighted_span_loss",
    ),
    "divergences": (
        "DIVERGENCES",
        "IGNORE_INDEX",
        "LOSSES",
        "TOKEN_DIVERGENCES",
        "check_loss_args",
        "divergence",
        "divergence_from_log_probs",
        "forward_kl",
        "generalized_jsd",
        "log_probs",
        "reverse_kl",
        "skew_kl",
        "skew_reverse_kl",
        "total_variation",
        "upcast",
    ),
    "objective": (
        "LiveTeacher",
        "LossParts",
        "TeacherSignal",
        "TokenWeights",
        "chunk_weights",
        "disagreement_weight",
        "mix_objective",
        "teacher_top1",
        "token_objective",
    ),
}
_HOME = {name: module for module, names in _HOMES.items() for name in names}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'kdlab.losses' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"kdlab.losses.{_HOME[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
