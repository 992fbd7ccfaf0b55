"""On-policy sampling (GKD's ``kd.lmbda``): some optimizer steps train on responses the student samples itself."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import torch
from accelerate.utils import extract_model_from_parallel

from kdlab.config import KDConfig, RunConfig
from kdlab.data.token_alignment import is_byte_level, sampled_teacher_tokens, token_bytes
from kdlab.data.tokenize import IGNORE_INDEX, Encoded, collate
from kdlab.errors import KdlabError
from kdlab.eval.extract import strict_number
from kdlab.generation import generate_ids, speculative_generate_ids


def on_policy_sampler(
    config: RunConfig, tokenizer, teacher, vocab_size: int | None, teacher_tokenizer=None
) -> OnPolicySampler | None:
    """The run's sampler with ``kd.lmbda > 0`` (speculative when ``kd.speculative_k > 0``: needs the teacher), else
    None; ``teacher_tokenizer`` when the teacher's differs (``kd.loss: uld | gold``)."""
    if config.kd.lmbda == 0:
        return None
    return OnPolicySampler(
        tokenizer,
        config.kd,
        config.train.max_length,
        config.train.seed,
        teacher=teacher,
        vocab_size=vocab_size,
        teacher_tokenizer=teacher_tokenizer,
    )


class OnPolicySampler:
    """GKD's lambda: with probability ``lmbda`` an optimizer step trains on student-sampled responses.

    The trainer's batch hook (:data:`kdlab.train.loop.BatchHook`): called with the micro-batches of each step, it
    returns them as they are, or with their responses replaced by the student's samples (``on_policy`` set). The
    choice depends only on (seed, step), so every process makes the same one and a resumed run repeats it.
    With ``kd.speculative_k > 0`` the responses are speculative-KD samples
    (:func:`kdlab.generation.speculative_generate_ids`: student proposals, tokens outside the teacher's top-k
    replaced by teacher samples), which needs ``teacher`` and the shared ``vocab_size``. With a ``teacher_tokenizer``
    (cross-tokenizer KD) each sample also gets the teacher's tokens and the spans
    (:func:`kdlab.data.token_alignment.sampled_teacher_tokens`), after the teacher's own prompt of that row.

    It also measures what it costs and what the student samples: ``seconds`` spent sampling, and per on-policy step
    the samples whose stated answer (:func:`kdlab.eval.extract.strict_number`) equals the one of the training
    response they replace (``answers``: (step, equal, compared); rows whose training response states no number are
    not compared). :meth:`summary` reports both for result.json.
    """

    def __init__(
        self,
        tokenizer,
        kd: KDConfig,
        max_length: int,
        seed: int,
        teacher=None,
        vocab_size: int | None = None,
        teacher_tokenizer=None,
    ):
        self.tokenizer, self.kd, self.max_length, self.seed = tokenizer, kd, max_length, seed
        self.teacher, self.vocab_size, self.teacher_tokenizer = teacher, vocab_size, teacher_tokenizer
        self.on_policy_steps = 0
        self.proposed_tokens = self.replaced_tokens = 0
        self.seconds = 0.0
        self.answers: list[tuple[int, int, int]] = []
        if kd.speculative_k > 0 and (teacher is None or vocab_size is None):
            raise KdlabError("speculative KD (kd.speculative_k > 0) needs the loaded teacher")

    def is_on_policy(self, step: int) -> bool:
        return bool(np.random.default_rng([self.seed, step, 7]).random() < self.kd.lmbda)

    def __call__(self, model, batches: list[dict], step: int) -> list[dict]:
        if not self.is_on_policy(step):
            return batches
        self.on_policy_steps += 1
        student = extract_model_from_parallel(model)
        started = time.perf_counter()
        resampled = [self._resample(student, batch, step) for batch in batches]
        self.seconds += time.perf_counter() - started
        return resampled

    def summary(self) -> dict:
        """What this session sampled: on-policy steps, sampling seconds, and the samples' answer accuracy over the
        first and the last third of the on-policy steps (None where nothing was compared)."""

        def accuracy(rows) -> float | None:
            compared = sum(row[2] for row in rows)
            return sum(row[1] for row in rows) / compared if compared else None

        third = max(1, len(self.answers) // 3)
        return {
            "steps": self.on_policy_steps,
            "sampling_seconds": self.seconds,
            "sample_accuracy_first_third": accuracy(self.answers[:third]),
            "sample_accuracy_last_third": accuracy(self.answers[-third:]),
            "sample_accuracy": accuracy(self.answers),
        }

    def _count_answers(self, step: int, labels: torch.Tensor, responses: list[list[int]]) -> None:
        """Record how many ``responses`` state the answer of the training responses they replace (``labels``)."""
        equal = compared = 0
        for row, response in zip(labels, responses):
            gold = strict_number(self.tokenizer.decode(row[row != IGNORE_INDEX].tolist(), skip_special_tokens=True))
            if gold is None:
                continue
            compared += 1
            equal += strict_number(self.tokenizer.decode(response, skip_special_tokens=True)) == gold
        if self.answers and self.answers[-1][0] == step:
            _, before_equal, before_compared = self.answers.pop()
            equal, compared = equal + before_equal, compared + before_compared
        self.answers.append((step, equal, compared))

    def _teacher_tokens(self, response: list[int], batch: dict, row: int):
        """The teacher side of one sampled response: its prompt as in ``batch``, the sample's text in its tokens."""
        labels, mask = batch["teacher_labels"][row], batch["teacher_attention_mask"][row]
        prompt = batch["teacher_input_ids"][row, : int(((labels == IGNORE_INDEX) & (mask == 1)).sum())].tolist()
        return sampled_teacher_tokens(
            response,
            token_bytes(self.tokenizer),
            self.tokenizer.eos_token_id,
            self.teacher_tokenizer,
            token_bytes(self.teacher_tokenizer),
            prompt,
            strip_space=not is_byte_level(self.tokenizer),
        )

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
        self._count_answers(step, batch["labels"], responses)
        items = [
            Encoded(int(index), prompt, response or [self.tokenizer.eos_token_id])
            for index, prompt, response in zip(batch["index"].tolist(), prompts, responses)
        ]
        if self.teacher_tokenizer is not None:
            items = [
                replace(item, teacher=self._teacher_tokens(item.response_ids, batch, row))
                for row, item in enumerate(items)
            ]
        resampled = collate(items, self.tokenizer.pad_token_id)
        resampled["on_policy"] = torch.tensor(1)
        return resampled
