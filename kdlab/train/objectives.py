"""Training objectives: each returns the SUM of per-token losses over a micro-batch's response tokens.

Both models run their decoder only: the forward pass asks for the final (post-norm) hidden states and for the
logits of one position (``logits_to_keep=1``), and the loss is computed from the hidden states and the lm_head
weight in chunks of tokens (:mod:`kdlab.losses`), so no ``[B, T, V]`` logits tensor is ever built.
Positions: hidden state ``t`` predicts token ``t + 1``; the kept positions are those with ``labels[:, 1:] != -100``.
"""

from __future__ import annotations

import numpy as np
import torch
from accelerate.utils import extract_model_from_parallel

from kdlab.config import KDConfig, loss_kwargs
from kdlab.data.tokenize import IGNORE_INDEX, Encoded, collate
from kdlab.errors import KdlabError
from kdlab.generation import generate_ids, speculative_generate_ids
from kdlab.losses import LossParts, TokenWeights, chunked_ce_loss, chunked_distill_loss
from kdlab.models.heads import final_hidden, output_weight, response_hidden
from kdlab.teacher_cache import chunked_cached_distill_loss


def token_weights(batch: dict, kd: KDConfig) -> TokenWeights | None:
    """The fidelity-aware token weights of a batch (:class:`kdlab.losses.TokenWeights`), or None for plain KD.

    ``answer`` [N] is ``batch["answer_mask"]`` at the kept positions, in the order of :func:`response_hidden`
    (absent on on-policy batches: student samples have no marked statement, so only ``gamma`` applies there).
    """
    if kd.disagreement_gamma == 0 and kd.answer_weight == 1 and kd.answer_target == "gold":
        return None
    answer = None
    if "answer_mask" in batch:
        answer = batch["answer_mask"][:, 1:][batch["labels"][:, 1:] != IGNORE_INDEX]
    return TokenWeights(kd.disagreement_gamma, answer, kd.answer_weight, kd.answer_target == "teacher")


def sft_objective(chunk_size: int):
    """Cross-entropy on response tokens (summed)."""

    def objective(model, batch: dict, step: int) -> torch.Tensor:
        hidden, targets = response_hidden(
            final_hidden(model, batch["input_ids"], batch["attention_mask"]), batch["labels"]
        )
        return chunked_ce_loss(hidden, output_weight(model), targets, chunk_size)

    return objective


class DistillObjective:
    """``(1 - w) * CE + w * tau^2 * divergence(student, teacher)`` summed over response tokens.

    On on-policy batches (student-generated responses) only the KD term is used: CE on the student's own samples
    would teach it nothing about the task.
    """

    def __init__(self, teacher, kd: KDConfig, vocab_size: int, chunk_size: int, seed: int, rank: int):
        self.teacher, self.kd, self.vocab_size, self.chunk_size = teacher, kd, vocab_size, chunk_size
        self.seed, self.rank = seed, rank
        self.parts = LossParts()  # the KD and CE parts of the summed objective, read by the trainer for logging

    def __call__(self, model, batch: dict, step: int) -> torch.Tensor:
        hidden, targets = response_hidden(
            final_hidden(model, batch["input_ids"], batch["attention_mask"]), batch["labels"]
        )
        with torch.no_grad():
            teacher_hidden, _ = response_hidden(
                final_hidden(self.teacher, batch["input_ids"], batch["attention_mask"]), batch["labels"]
            )
        noise_seed = np.random.SeedSequence([self.seed, step, self.rank, int(batch["index"][0])]).generate_state(1)[0]
        on_policy = bool(batch.get("on_policy", torch.tensor(0)).item())
        return chunked_distill_loss(
            hidden,
            output_weight(model),
            teacher_hidden,
            output_weight(self.teacher),
            targets,
            loss=self.kd.loss,
            temperature=self.kd.temperature,
            kd_weight=1.0 if on_policy else self.kd.kd_weight,
            loss_kwargs=loss_kwargs(self.kd),
            vocab_size=self.vocab_size,
            teacher_noise=self.kd.teacher_noise,
            noise_generator=torch.Generator().manual_seed(int(noise_seed)),
            chunk_size=self.chunk_size,
            weights=token_weights(batch, self.kd),
            parts=self.parts,
        )


class CachedDistillObjective:
    """:class:`DistillObjective` with the teacher read from a :class:`kdlab.teacher_cache.TeacherCache`.

    Off-policy batches (the training data the cache was built on) run no teacher forward pass: the rows of the
    batch's examples (``cache.rows(batch["index"])``, batch rows then positions, the order of
    :func:`response_hidden`) go to :func:`kdlab.teacher_cache.chunked_cached_distill_loss`, with the tail mode
    ``kd.cache_tail``. Same objective, same sum over response tokens, same noise seeds as :class:`DistillObjective`.
    With ``kd.teacher_noise`` sigma > 0 the top-k teacher logits get the very noise draws of the live objective;
    the tail gets the draws of the other columns as if its tokens had equal probability (see
    :mod:`kdlab.teacher_cache`, "Teacher noise"). On-policy batches (student samples, GKD ``lmbda > 0``) are not in
    the cache: they go to ``live``, a :class:`DistillObjective` with the loaded teacher.
    """

    def __init__(
        self, cache, kd: KDConfig, chunk_size: int, seed: int, rank: int, live: DistillObjective | None = None
    ):
        self.cache, self.kd, self.chunk_size, self.seed, self.rank, self.live = cache, kd, chunk_size, seed, rank, live
        self.parts = live.parts if live is not None else LossParts()  # one running sum for cached and live batches

    def __call__(self, model, batch: dict, step: int) -> torch.Tensor:
        if bool(batch.get("on_policy", torch.tensor(0)).item()):
            if self.live is None:
                raise KdlabError("an on-policy batch needs the live teacher, and none was loaded (kd.lmbda is 0?)")
            return self.live(model, batch, step)
        hidden, targets = response_hidden(
            final_hidden(model, batch["input_ids"], batch["attention_mask"]), batch["labels"]
        )
        rows = self.cache.rows(batch["index"].cpu())
        if len(rows) != hidden.shape[0]:
            raise KdlabError(
                f"teacher cache: the batch of examples {batch['index'].tolist()} has {hidden.shape[0]} response "
                f"tokens but {len(rows)} cached rows (the cache was built on other tokenisation)"
            )
        noise_seed = np.random.SeedSequence([self.seed, step, self.rank, int(batch["index"][0])]).generate_state(1)[0]
        return chunked_cached_distill_loss(
            hidden,
            output_weight(model),
            rows,
            targets,
            loss=self.kd.loss,
            temperature=self.kd.temperature,
            kd_weight=self.kd.kd_weight,
            loss_kwargs=loss_kwargs(self.kd),
            tail=self.kd.cache_tail,
            teacher_noise=self.kd.teacher_noise,
            noise_generator=torch.Generator().manual_seed(int(noise_seed)),
            chunk_size=self.chunk_size,
            weights=token_weights(batch, self.kd),
            parts=self.parts,
        )


class OnPolicyWindows:
    """GKD's lambda: with probability ``lmbda`` an optimizer step trains on student-sampled responses.

    The choice depends only on (seed, step), so every process makes the same one and a resumed run repeats it.
    With ``kd.speculative_k > 0`` the responses are speculative-KD samples
    (:func:`kdlab.generation.speculative_generate_ids`: student proposals, tokens outside the teacher's top-k
    replaced by teacher samples), which needs ``teacher`` and the shared ``vocab_size``.
    """

    def __init__(
        self, tokenizer, kd: KDConfig, max_length: int, seed: int, teacher=None, vocab_size: int | None = None
    ):
        self.tokenizer, self.kd, self.max_length, self.seed = tokenizer, kd, max_length, seed
        self.teacher, self.vocab_size = teacher, vocab_size
        self.on_policy_steps = 0
        self.proposed_tokens = self.replaced_tokens = 0
        if kd.speculative_k > 0 and (teacher is None or vocab_size is None):
            raise KdlabError("speculative KD (kd.speculative_k > 0) needs the loaded teacher")

    def is_on_policy(self, step: int) -> bool:
        return bool(np.random.default_rng([self.seed, step, 7]).random() < self.kd.lmbda)

    def __call__(self, model, batches: list[dict], step: int) -> list[dict]:
        if not self.is_on_policy(step):
            return batches
        self.on_policy_steps += 1
        student = extract_model_from_parallel(model)
        return [self._resample(student, batch, step) for batch in batches]

    def _resample(self, student, batch: dict, step: int) -> dict:
        prompts = []
        for row in range(batch["input_ids"].shape[0]):
            length = int((batch["labels"][row] == IGNORE_INDEX).logical_and(batch["attention_mask"][row] == 1).sum())
            prompts.append(batch["input_ids"][row, :length].tolist())
        room = max(1, min(self.kd.max_new_tokens, self.max_length - max(len(p) for p in prompts)))
        seed = int(np.random.SeedSequence([self.seed, step]).generate_state(1)[0])
        if self.kd.speculative_k > 0:
            responses, proposed, replaced = speculative_generate_ids(
                student,
                self.teacher,
                self.tokenizer,
                prompts,
                room,
                self.kd.speculative_k,
                self.vocab_size,
                temperature=self.kd.sample_temperature,
                seed=seed,
            )
            self.proposed_tokens += proposed
            self.replaced_tokens += replaced
        else:
            responses = generate_ids(
                student,
                self.tokenizer,
                prompts,
                room,
                batch_size=len(prompts),
                do_sample=True,
                temperature=self.kd.sample_temperature,
                seed=seed,
            )
        items = [
            Encoded(int(index), prompt, response or [self.tokenizer.eos_token_id])
            for index, prompt, response in zip(batch["index"].tolist(), prompts, responses)
        ]
        resampled = collate(items, self.tokenizer.pad_token_id)
        resampled["on_policy"] = torch.tensor(1)
        return resampled
