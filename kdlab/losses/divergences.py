"""The token-level divergences, each registered once on log-probabilities, their logits wrappers and their masked mean.

Notation, per token position: ``z_S`` and ``z_T`` are the student and teacher logits over the vocabulary,
``p_S = softmax(z_S / tau)`` and ``p_T = softmax(z_T / tau)`` at temperature ``tau``, and
``KL(P || Q) = sum_v P(v) * (log P(v) - log Q(v))``.

Public API (tests and outside checks call it)::

    LOSSES[name](student_logits, teacher_logits, labels, temperature=1.0, **kwargs) -> scalar tensor

with logits ``[B, T, V]`` and labels ``[B, T]`` already aligned (position t predicts ``labels[t]``). Positions whose
label is -100 are ignored. The result is ``tau**2 * mean over kept positions of divergence(p_S, p_T)``; an all-masked
batch gives 0 (with a gradient of 0), never NaN. The teacher logits are detached: gradients reach the student only.

The registry :data:`DIVERGENCES` (name -> :class:`Divergence`) is the one list of divergences: a function decorated
with :func:`divergence` below, on log-probabilities over any K outcomes, is a divergence everywhere. Its formula
(direction and shapes) is that function's docstring; its extra arguments (:class:`Argument`) name the ``kd.*`` config
fields that set them, their defaults and ranges. From the registry come :data:`TOKEN_DIVERGENCES` (on logits,
``[N, V]`` x2 -> ``[N]``), :data:`LOSSES`, :func:`check_loss_args`, and in :mod:`kdlab.config` the ``kd.loss``
choices and help, one ``kd.*`` field per argument, their range checks and :func:`kdlab.config.loss_kwargs` (so the
CLI flags and the study spec's loss names too). The live objective passes the full vocabulary (:func:`log_probs` of
the two models' logits), the teacher cache its top-k plus a tail bucket (:mod:`kdlab.teacher_cache.loss`).

This module imports torch only when a tensor function needs it, so that :mod:`kdlab.config` can read the registry.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kdlab.errors import KdlabError

if TYPE_CHECKING:
    import torch

IGNORE_INDEX = -100

TokenDivergence = Callable[..., "torch.Tensor"]


@dataclass(frozen=True)
class Argument:
    """An extra argument of a divergence: its keyword, the ``kd.*`` config field that sets it and the field's default,
    its range ``[low, high]`` (``high`` refused when ``high_refused`` says why), and its help text (which the config
    prefixes with the divergences taking it and follows with the range and ``note``)."""

    keyword: str
    field: str
    default: float
    help: str
    note: str = ""
    low: float = 0.0
    high: float = 1.0
    high_refused: str = ""

    @property
    def bound(self) -> str:
        """The range as the config writes it: ``in [0, 1]``, or ``in [0, 1)`` when ``high`` is refused."""
        return f"in [{self.low:g}, {self.high:g}{')' if self.high_refused else ']'}"

    def config_help(self, users: tuple[str, ...]) -> str:
        """The help of its config field: ``gjsd interpolation beta in [0, 1] (0 = fkl, 1 = rkl)``."""
        return f"{'/'.join(users)} {self.help} {self.bound}" + (f" ({self.note})" if self.note else "")

    def contains(self, value: float) -> bool:
        """Whether ``value`` is in the range (a NaN never is)."""
        return self.low <= value < self.high if self.high_refused else self.low <= value <= self.high


@dataclass(frozen=True)
class Divergence:
    """A registered divergence: ``fn(log_p_s [N, K], log_p_t [N, K], **arguments) -> [N]``, its one-line ``summary``
    (help text), its extra ``arguments`` and whether it is taken at the temperature tau (``temperature=False``: on
    the models' own distributions, tau = 1 only)."""

    name: str
    fn: Callable[..., torch.Tensor]
    summary: str
    arguments: tuple[Argument, ...] = ()
    temperature: bool = True

    @property
    def help(self) -> str:
        """The line of the ``kd.loss`` help: ``gjsd = generalized JSD (GKD), with kd.beta``."""
        arguments = "".join(f", with kd.{arg.field}" for arg in self.arguments)
        return f"{self.name} = {self.summary}{arguments}" + ("" if self.temperature else ", no temperature")

    def __call__(self, log_p_s: torch.Tensor, log_p_t: torch.Tensor, **kwargs) -> torch.Tensor:
        """The per-row divergence, the arguments not given at their defaults."""
        return self.fn(log_p_s, log_p_t, **{**{a.keyword: a.default for a in self.arguments}, **kwargs})


#: The token-level divergences, in registration order (the order of the ``kd.loss`` choices).
DIVERGENCES: dict[str, Divergence] = {}


def divergence(name: str, summary: str, arguments: tuple[Argument, ...] = (), temperature: bool = True):
    """Register the decorated function on log-probabilities as the divergence ``name`` (see :class:`Divergence`)."""

    def register(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        if name in DIVERGENCES:
            raise ValueError(f"divergence {name!r} is registered twice")
        taken = {arg.field: arg for spec in DIVERGENCES.values() for arg in spec.arguments}
        for arg in arguments:
            if taken.get(arg.field, arg) != arg:
                raise ValueError(f"{name}: kd.{arg.field} is already set up differently ({taken[arg.field]})")
        DIVERGENCES[name] = Divergence(name, fn, summary, tuple(arguments), temperature)
        return fn

    return register


def argument_fields() -> dict[str, tuple[Argument, tuple[str, ...]]]:
    """``kd.*`` field -> (the argument it sets, the divergences taking it), in registration order."""
    fields: dict[str, tuple[Argument, tuple[str, ...]]] = {}
    for spec in DIVERGENCES.values():
        for arg in spec.arguments:
            fields[arg.field] = (arg, fields.get(arg.field, (arg, ()))[1] + (spec.name,))
    return fields


def _kl_from_log_probs(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) per row, from log-probabilities [N, V] -> [N]; terms with P(v) = 0 contribute 0."""
    p = log_p.exp()
    terms = p * (log_p - log_q)
    return terms.masked_fill_(p == 0, 0.0).sum(-1)


def _log_mixture(log_p: torch.Tensor, log_q: torch.Tensor, weight_p: float) -> torch.Tensor:
    """log(weight_p * P + (1 - weight_p) * Q) computed stably from log-probabilities; 0 < weight_p < 1."""
    return (log_p + math.log(weight_p)).logaddexp(log_q + math.log1p(-weight_p))


BETA = Argument("beta", "beta", 0.5, "interpolation beta", note="0 = fkl, 1 = rkl")
SKEW_ALPHA = Argument(
    "alpha",
    "skew_alpha",
    0.1,
    "skew alpha",
    high_refused="for skew losses (alpha = 1 makes the divergence identically 0)",
)


@divergence("fkl", "forward KL(p_T || p_S), the paper's KD")
def _fkl(log_p_s, log_p_t):
    """Forward KL, the paper's "KD": KL(p_T || p_S) per row; [N, K] x2 -> [N]."""
    return _kl_from_log_probs(log_p_t, log_p_s)


@divergence("rkl", "reverse KL(p_S || p_T), the paper's RevKD")
def _rkl(log_p_s, log_p_t):
    """Reverse KL, the paper's "RevKD": KL(p_S || p_T) per row; [N, K] x2 -> [N]."""
    return _kl_from_log_probs(log_p_s, log_p_t)


@divergence("gjsd", "generalized JSD (GKD)", (BETA,))
def _gjsd(log_p_s, log_p_t, beta):
    """Generalized JSD (GKD): beta * KL(p_T || M) + (1 - beta) * KL(p_S || M), M = beta * p_T + (1 - beta) * p_S,
    per row; [N, K] x2 -> [N].

    The expression vanishes at both ends (M becomes p_S or p_T); as in TRL's GKD, the end points are defined by
    their limits up to scale: beta = 0 is forward KL(p_T || p_S) (``fkl``) and beta = 1 reverse KL(p_S || p_T)
    (``rkl``).
    """
    if beta == 0:
        return _fkl(log_p_s, log_p_t)
    if beta == 1:
        return _rkl(log_p_s, log_p_t)
    log_m = _log_mixture(log_p_t, log_p_s, beta)
    return beta * _kl_from_log_probs(log_p_t, log_m) + (1 - beta) * _kl_from_log_probs(log_p_s, log_m)


@divergence("skl", "skew KL", (SKEW_ALPHA,))
def _skl(log_p_s, log_p_t, alpha):
    """Skew KL: KL(p_T || alpha * p_T + (1 - alpha) * p_S) per row; [N, K] x2 -> [N]; alpha = 0 is forward KL."""
    if alpha == 0:
        return _fkl(log_p_s, log_p_t)
    return _kl_from_log_probs(log_p_t, _log_mixture(log_p_t, log_p_s, alpha))


@divergence("srkl", "skew reverse KL", (SKEW_ALPHA,))
def _srkl(log_p_s, log_p_t, alpha):
    """Skew reverse KL: KL(p_S || alpha * p_S + (1 - alpha) * p_T) per row; [N, K] x2 -> [N]; alpha = 0 is reverse
    KL."""
    if alpha == 0:
        return _rkl(log_p_s, log_p_t)
    return _kl_from_log_probs(log_p_s, _log_mixture(log_p_s, log_p_t, alpha))


@divergence("tvd", "total variation distance")
def _tvd(log_p_s, log_p_t):
    """Total variation distance: 0.5 * sum_v |p_T(v) - p_S(v)| per row; [N, K] x2 -> [N]."""
    return 0.5 * (log_p_t.exp() - log_p_s.exp()).abs().sum(-1)


def upcast(x: torch.Tensor) -> torch.Tensor:
    """Half-precision logits become float32; float32 and float64 stay as they are."""
    import torch

    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def log_probs(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log p_S, log p_T)`` [N, V] each at temperature tau, from logits [N, V] (upcast to float32; teacher detached)."""
    student_logits, teacher_logits = upcast(student_logits), upcast(teacher_logits.detach())
    if temperature != 1:
        student_logits, teacher_logits = student_logits / temperature, teacher_logits / temperature
    return student_logits.log_softmax(dim=-1), teacher_logits.log_softmax(dim=-1)


def divergence_from_log_probs(name: str, log_p_s: torch.Tensor, log_p_t: torch.Tensor, **kwargs) -> torch.Tensor:
    """Per-row divergence ``name`` (its formula: the docstring of its function) from log-probabilities: [N, K] x2 ->
    [N]; arguments not given take their defaults."""
    return DIVERGENCES[name](log_p_s, log_p_t, **kwargs)


def check_loss_args(name: str, temperature: float, **kwargs) -> None:
    """Raise :class:`KdlabError` for an unknown loss, tau <= 0 (tau != 1 for a divergence without temperature), an
    argument the divergence does not take or one outside its range."""
    if name not in DIVERGENCES:
        raise KdlabError(f"unknown loss '{name}' (choose from {', '.join(sorted(DIVERGENCES))})")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise KdlabError(f"temperature must be > 0, got {temperature}")
    spec = DIVERGENCES[name]
    if not spec.temperature and temperature != 1:
        raise KdlabError(f"loss '{name}' takes no temperature: it must be 1, got {temperature}")
    arguments = {arg.keyword: arg for arg in spec.arguments}
    for key, value in kwargs.items():
        if key not in arguments:
            raise KdlabError(f"loss '{name}' takes no argument '{key}' (it takes: {', '.join(arguments) or 'none'})")
        arg = arguments[key]
        if not (arg.low <= float(value) <= arg.high):
            raise KdlabError(f"{key} must be in [{arg.low:g}, {arg.high:g}], got {value}")
    for key, value in kwargs.items():
        arg = arguments[key]
        if arg.high_refused and float(value) == arg.high:
            raise KdlabError(f"{key} must be < {arg.high:g} {arg.high_refused}")


def formula(name: str) -> str:
    """The first paragraph of the docstring of divergence ``name``'s function (its formula), on one line."""
    return " ".join(DIVERGENCES[name].fn.__doc__.split("\n\n")[0].split())


def _on_logits(spec: Divergence) -> TokenDivergence:
    """``spec`` from logits: ``(student_logits [N, V], teacher_logits [N, V], temperature=1.0, **kw) -> [N]``."""

    def divergence(student_logits, teacher_logits, temperature=1.0, **kwargs):
        return spec(*log_probs(student_logits, teacher_logits, temperature), **kwargs)

    divergence.__name__ = divergence.__qualname__ = spec.name
    divergence.__doc__ = f"{formula(spec.name)} From logits [N, V] x2 at temperature tau."
    return divergence


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
    loss.__doc__ = f"tau^2 * masked mean over tokens of {formula(name)}"
    return loss


#: ``TOKEN_DIVERGENCES[name](student_logits [N, V], teacher_logits [N, V], temperature, **kw) -> [N]``.
TOKEN_DIVERGENCES: dict[str, TokenDivergence] = {name: _on_logits(spec) for name, spec in DIVERGENCES.items()}
LOSSES: dict[str, Callable[..., torch.Tensor]] = {name: _masked_mean_loss(name) for name in DIVERGENCES}

# the logits wrappers under their long names (kdlab.losses exports them)
forward_kl, reverse_kl, generalized_jsd = TOKEN_DIVERGENCES["fkl"], TOKEN_DIVERGENCES["rkl"], TOKEN_DIVERGENCES["gjsd"]
skew_kl, skew_reverse_kl, total_variation = (
    TOKEN_DIVERGENCES["skl"],
    TOKEN_DIVERGENCES["srkl"],
    TOKEN_DIVERGENCES["tvd"],
)
