"""Training objectives: each returns the SUM of per-token losses over a micro-batch's response tokens.

Both models run their decoder only: the forward pass asks for the final (post-norm) hidden states and for the
logits of one position (``logits_to_keep=1``), and the loss is computed from the hidden states and the lm_head
weight in chunks of tokens (:func:`kdlab.losses.chunked.chunked_objective`), so no ``[B, T, V]`` logits tensor is
ever built. Positions: hidden state ``t`` predicts token ``t + 1``; the kept positions are those with
``labels[:, 1:] != -100``.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import torch

from kdlab.config import KDConfig, loss_kwargs
from kdlab.data.tokenize import IGNORE_INDEX
from kdlab.errors import KdlabError
from kdlab.losses.chunked import TeacherAt, chunked_ce_loss, chunked_objective, live_teacher_at
from kdlab.losses.cross_tokenizer import CrossSpec, SharedVocab, Side, cross_tokenizer_objective
from kdlab.losses.objective import KDSpec, LossParts, TokenWeights
from kdlab.models.heads import final_hidden, output_weight, response_hidden
from kdlab.teacher_cache.loss import cached_teacher_at
from kdlab.teacher_cache.store import TeacherCache


def kd_spec(kd: KDConfig, chunk_size: int) -> KDSpec:
    """The run's KD objective (:class:`kdlab.losses.objective.KDSpec`), built once from ``config.kd`` and
    ``train.chunk_size``."""
    return KDSpec(
        loss=kd.loss,
        temperature=kd.temperature,
        kd_weight=kd.kd_weight,
        loss_kwargs=loss_kwargs(kd),
        teacher_noise=kd.teacher_noise,
        tail=kd.cache_tail,
        chunk_size=chunk_size,
        gamma=kd.disagreement_gamma,
        answer_weight=kd.answer_weight,
        answer_hard=kd.answer_target == "teacher",
    )


def cross_spec(kd: KDConfig, chunk_size: int) -> CrossSpec:
    """The run's cross-tokenizer objective (``kd.loss: uld | gold``), from ``config.kd`` and ``train.chunk_size``."""
    return CrossSpec(kd.loss, kd.temperature, kd.kd_weight, kd.beta, kd.shared_weight, chunk_size)


def token_weights(batch: dict, spec: KDSpec) -> TokenWeights | None:
    """The fidelity-aware token weights of a batch (:class:`kdlab.losses.TokenWeights`), or None for plain KD.

    ``answer`` [N] is ``batch["answer_mask"]`` at the kept positions, in the order of :func:`response_hidden`
    (absent on on-policy batches: student samples have no marked statement, so only ``gamma`` applies there).
    """
    if not spec.weighted:
        return None
    answer = None
    if "answer_mask" in batch:
        answer = batch["answer_mask"][:, 1:][batch["labels"][:, 1:] != IGNORE_INDEX]
    return TokenWeights(spec.gamma, answer, spec.answer_weight, spec.answer_hard)


def sft_objective(chunk_size: int):
    """Cross-entropy on response tokens (summed)."""

    def objective(model, batch: dict, step: int) -> torch.Tensor:
        hidden, targets = response_hidden(
            final_hidden(model, batch["input_ids"], batch["attention_mask"]), batch["labels"]
        )
        return chunked_ce_loss(hidden, output_weight(model), targets, chunk_size)

    return objective


def teacher_pass(teacher, input_ids, attention_mask, labels) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The live teacher's forward pass (no gradient): its hidden states [N, H] predicting the response tokens, those
    tokens [N] (:func:`response_hidden`) and the seconds it took (on a GPU, after its kernels finished)."""
    started = time.perf_counter()
    with torch.no_grad():
        hidden, targets = response_hidden(final_hidden(teacher, input_ids, attention_mask), labels)
    if hidden.is_cuda:  # kernels run asynchronously: wait for them to time the pass
        torch.cuda.synchronize(hidden.device)
    return hidden, targets, time.perf_counter() - started


class DistillObjective:
    """``(1 - w) * CE + w * tau^2 * divergence(student, teacher)`` summed over response tokens (``spec``), against
    the live ``teacher`` or the teacher ``cache``.

    Off-policy batches (the training data) read the ``cache`` when there is one: the rows of the batch's examples
    (``cache.rows(batch["index"])``, batch rows then positions, the order of :func:`response_hidden`) with the tail
    mode ``spec.tail``, and no teacher forward pass; without a cache the teacher runs its forward pass. On-policy
    batches (student samples, GKD ``kd.lmbda > 0``) are not in the cache: they always use the live teacher, with the
    KD term only (CE on the student's own samples would teach it nothing about the task). Live logits are cut to
    ``vocab_size`` (default: the smaller output layer), cached ones to the cache's.

    Teacher noise (``spec.teacher_noise``): the draws of a batch come from a generator seeded with (seed, step, rank,
    the batch's first example), so that the cached objective adds the very noise of the live one to its top-k
    teacher logits (the tail gets the draws of the other columns: :mod:`kdlab.teacher_cache.loss`).
    """

    def __init__(
        self,
        spec: KDSpec,
        seed: int,
        rank: int,
        teacher=None,
        cache: TeacherCache | None = None,
        vocab_size: int | None = None,
    ):
        if teacher is None and cache is None:
            raise KdlabError("a distillation objective needs the teacher or its cache")
        self.spec, self.on_policy_spec = spec, replace(spec, kd_weight=1.0)
        self.seed, self.rank, self.teacher, self.cache, self.vocab_size = seed, rank, teacher, cache, vocab_size
        self.parts = LossParts()  # the KD and CE parts of the summed objective, read by the trainer for logging
        self.teacher_seconds = 0.0  # time in the live teacher's forward passes (the run's time split)

    def __call__(self, model, batch: dict, step: int) -> torch.Tensor:
        hidden, targets = response_hidden(
            final_hidden(model, batch["input_ids"], batch["attention_mask"]), batch["labels"]
        )
        weight = output_weight(model)
        on_policy = bool(batch.get("on_policy", torch.tensor(0)).item())
        if self.cache is not None and not on_policy:
            vocab = self.cache.vocab_size
            teacher_at = cached_teacher_at(self.cache.rows(batch["index"].cpu()), hidden, weight, self.spec.tail)
        else:
            vocab, teacher_at = self._live(batch, weight)
        noise_seed = np.random.SeedSequence([self.seed, step, self.rank, int(batch["index"][0])]).generate_state(1)[0]
        return chunked_objective(
            hidden,
            weight,
            teacher_at,
            targets,
            self.on_policy_spec if on_policy else self.spec,
            vocab,
            token_weights(batch, self.spec),
            self.parts,
            torch.Generator().manual_seed(int(noise_seed)),
        )

    def _live(self, batch: dict, student_weight: torch.Tensor) -> tuple[int, TeacherAt]:
        """The live teacher's forward pass on the batch (no gradient), as a teacher source."""
        if self.teacher is None:
            raise KdlabError("an on-policy batch needs the live teacher, and none was loaded (kd.lmbda is 0?)")
        teacher_hidden, _, seconds = teacher_pass(
            self.teacher, batch["input_ids"], batch["attention_mask"], batch["labels"]
        )
        self.teacher_seconds += seconds  # its output layer runs in the loss (student time)
        teacher_weight = output_weight(self.teacher)
        vocab = self.vocab_size or min(student_weight.shape[0], teacher_weight.shape[0])
        return vocab, live_teacher_at(teacher_hidden, teacher_weight, vocab)


class CrossTokenizerObjective:
    """``kd.loss: uld | gold`` against a live teacher with its own tokenizer
    (:func:`kdlab.losses.cross_tokenizer.cross_tokenizer_objective`): the batch carries the teacher's tokens and the
    spans of identical text (:func:`kdlab.data.token_alignment.teacher_batch`; on-policy batches, the KD term only:
    :mod:`kdlab.train.on_policy`); each model's logits are cut to its own
    vocabulary (``student_vocab``, ``teacher_vocab``); ``shared`` is the vocabulary pairs (gold)."""

    def __init__(self, spec: CrossSpec, teacher, student_vocab: int, teacher_vocab: int, shared: SharedVocab | None):
        self.spec, self.on_policy_spec, self.teacher, self.shared = spec, replace(spec, kd_weight=1.0), teacher, shared
        self.student_vocab, self.teacher_vocab = student_vocab, teacher_vocab
        self.parts = LossParts()
        self.teacher_seconds = 0.0

    def __call__(self, model, batch: dict, step: int) -> torch.Tensor:
        hidden, targets = response_hidden(
            final_hidden(model, batch["input_ids"], batch["attention_mask"]), batch["labels"]
        )
        teacher_hidden, teacher_targets, seconds = teacher_pass(
            self.teacher, batch["teacher_input_ids"], batch["teacher_attention_mask"], batch["teacher_labels"]
        )
        self.teacher_seconds += seconds
        student = Side(
            hidden,
            output_weight(model)[: self.student_vocab],
            targets,
            batch["span_student_last"],
            batch["span_student_of"],
        )
        teacher = Side(
            teacher_hidden,
            output_weight(self.teacher)[: self.teacher_vocab],
            teacher_targets,
            batch["span_teacher_last"],
            batch["span_teacher_of"],
        )
        on_policy = bool(batch.get("on_policy", torch.tensor(0)).item())  # student samples: the KD term only
        spec = self.on_policy_spec if on_policy else self.spec
        return cross_tokenizer_objective(spec, student, teacher, batch["span_tokens"], self.shared, self.parts)
