"""The per-token training objective, shared by the live teacher and the teacher cache.

``objective_n = (1 - w) * CE(z_S,n, y_n) + w * tau^2 * g_n * divergence_n`` (:func:`mix_objective`), where the
divergence is :func:`kdlab.losses.divergences.divergence_from_log_probs` on the log-probabilities that a *teacher
signal* gives for the student's logits:

- :class:`LiveTeacher`: the teacher's full logits [N, V] (optionally with noise): K = V outcomes;
- :class:`kdlab.teacher_cache.CachedTeacher`: the cached top-k and tail bucket: K = k or k + 1 outcomes.

:func:`token_objective` takes either, so the cached loss is this same objective with another source of teacher
log-probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F

from kdlab.errors import KdlabError
from kdlab.losses.divergences import check_loss_args, divergence_from_log_probs, log_probs, upcast


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

    def slice(self, start: int, end: int) -> TokenWeights:
        answer = None if self.answer is None else self.answer[start:end]
        return TokenWeights(self.gamma, answer, self.answer_weight, self.answer_hard)

    @property
    def plain(self) -> bool:
        return self.gamma == 0 and (self.answer is None or (self.answer_weight == 1 and not self.answer_hard))


def chunk_weights(weights: TokenWeights | None, start: int, end: int) -> TokenWeights | None:
    """The weights of rows ``start:end``, or None when they change nothing (plain KD)."""
    return None if weights is None or weights.plain else weights.slice(start, end)


@dataclass
class LossParts:
    """Running sums of the two parts of the objective, for logging (detached; summed on the device, read once per
    step): ``kd`` = the weighted KD terms ``w * tau^2 * g_n * divergence_n``; the CE part is the rest of the
    objective (``(1 - w) * CE_n``, and ``a * CE_n`` on hard answer tokens). :meth:`take` returns
    ``(kd, ce)`` as floats and starts again."""

    kd: torch.Tensor | float = 0.0
    total: torch.Tensor | float = 0.0

    def add(self, objective: torch.Tensor, kd_terms: torch.Tensor) -> None:
        self.kd = self.kd + kd_terms.detach().sum()
        self.total = self.total + objective.detach().sum()

    def take(self) -> tuple[float, float]:
        kd, total = float(self.kd), float(self.total)
        self.kd = self.total = 0.0
        return kd, total - kd


@dataclass(frozen=True)
class KDSpec:
    """What the KD objective computes, fixed once per run or loss module (its divergence arguments are checked here,
    once, by :func:`kdlab.losses.divergences.check_loss_args`).

    ``loss`` with ``loss_kwargs`` at temperature ``temperature``, weighted ``kd_weight`` against CE; ``teacher_noise``
    sigma of the Gaussian noise on the teacher logits; ``tail``: the teacher cache's tail mode
    (:mod:`kdlab.teacher_cache.loss`); ``chunk_size`` tokens of logits at a time; the fidelity-aware weights
    (:class:`TokenWeights`): ``gamma``, ``answer_weight``, ``answer_hard``.
    """

    loss: str = "fkl"
    temperature: float = 1.0
    kd_weight: float = 1.0
    loss_kwargs: dict = field(default_factory=dict)
    teacher_noise: float = 0.0
    tail: str = "bucket"
    chunk_size: int = 256
    gamma: float = 0.0
    answer_weight: float = 1.0
    answer_hard: bool = False

    def __post_init__(self):
        object.__setattr__(self, "loss_kwargs", dict(self.loss_kwargs or {}))
        check_loss_args(self.loss, self.temperature, **self.loss_kwargs)

    @property
    def weighted(self) -> bool:
        """Whether the fidelity-aware token weights change anything (else plain KD: no :class:`TokenWeights`)."""
        return self.gamma != 0 or self.answer_weight != 1 or self.answer_hard


class TeacherSignal(Protocol):
    """Where the teacher's distribution comes from, for N kept positions."""

    def log_probs(self, student_logits: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log p_S, log p_T)`` [N, K] each over the same K outcomes, at temperature tau, from the student's
        logits [N, V]; gradients flow to the student's only."""

    def top1(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The noise-free teacher's argmax token [N] and its probability at temperature 1 [N]."""


def teacher_top1(teacher_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's argmax token [N] and its probability at temperature 1 [N], from logits [N, V]."""
    with torch.no_grad():
        log_p = F.log_softmax(upcast(teacher_logits), dim=-1)
        top_logp, top_id = log_p.max(-1)
        return top_id, top_logp.exp()


@dataclass
class LiveTeacher:
    """The teacher signal from its logits [N, V]; ``noise`` [N, V] (or None) is added to them before the
    temperature (the paper's noise ablation); :meth:`top1` ignores it."""

    logits: torch.Tensor
    noise: torch.Tensor | None = None

    def log_probs(self, student_logits: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        teacher_logits = self.logits if self.noise is None else self.logits + self.noise.to(self.logits.device)
        return log_probs(student_logits, teacher_logits, temperature)

    def top1(self) -> tuple[torch.Tensor, torch.Tensor]:
        return teacher_top1(self.logits)


def disagreement_weight(
    student_logits: torch.Tensor, teacher_top1: torch.Tensor, teacher_top1_prob: torch.Tensor, gamma: float
) -> torch.Tensor:
    """``1 + gamma * [argmax z_S != argmax p_T] * max p_T`` per token: [N, V], [N], [N] -> [N] (no gradient)."""
    with torch.no_grad():
        disagree = student_logits.argmax(-1) != teacher_top1.to(student_logits.device)
        return 1.0 + gamma * disagree.to(teacher_top1_prob.dtype) * teacher_top1_prob.to(student_logits.device)


def mix_objective(
    divergence: torch.Tensor,
    student_logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    kd_weight: float,
    weights: TokenWeights | None = None,
    top1: tuple | None = None,
    parts: LossParts | None = None,
) -> torch.Tensor:
    """Per-token training objective [N] from a per-token divergence [N] (no tau^2 in it):

    ``(1 - w) * CE(z_S, y) + w * tau^2 * g * divergence`` with ``g`` from :class:`TokenWeights` (1 without), and on
    hard answer tokens ``a * CE(z_S, y)``. CE is at temperature 1 on ``targets`` [N] (token ids, no -100).
    ``top1`` = :func:`teacher_top1` (needed when ``weights.gamma > 0``); ``parts`` (optional) accumulates the KD
    and CE parts for logging.
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
        ce = F.cross_entropy(upcast(student_logits), targets, reduction="none")
        if kd_weight < 1:
            objective = objective + (1 - kd_weight) * ce
        if hard:
            objective = torch.where(answer, weights.answer_weight * ce, objective)
    if parts is not None:
        kd_terms = scale * divergence
        parts.add(objective, torch.where(answer, 0.0, kd_terms) if hard else kd_terms)
    return objective


def token_objective(
    student_logits: torch.Tensor,
    teacher: torch.Tensor | TeacherSignal,
    targets: torch.Tensor,
    loss: str,
    temperature: float,
    kd_weight: float,
    loss_kwargs: dict,
    weights: TokenWeights | None = None,
    top1: tuple | None = None,
    parts: LossParts | None = None,
) -> torch.Tensor:
    """Per-token training objective [N]: ``(1 - w) * CE(z_S, y) + w * tau^2 * g * divergence(p_S, p_T)``
    (:func:`mix_objective`; ``g`` = 1 without ``weights``).

    ``teacher``: the teacher's logits [N, V] (a :class:`LiveTeacher`) or any :class:`TeacherSignal` (e.g. the teacher
    cache's rows). CE is at temperature 1 on the target token; ``targets`` [N] holds token ids (no -100 here).
    ``top1`` defaults to the teacher signal's own (the noise-free teacher's argmax); ``parts``: see
    :func:`mix_objective`.
    """
    if isinstance(teacher, torch.Tensor):
        teacher = LiveTeacher(teacher)
    divergence = divergence_from_log_probs(loss, *teacher.log_probs(student_logits, temperature), **loss_kwargs)
    if weights is not None and weights.gamma > 0 and top1 is None:
        top1 = teacher.top1()
    return mix_objective(divergence, student_logits, targets, temperature, kd_weight, weights, top1, parts)
