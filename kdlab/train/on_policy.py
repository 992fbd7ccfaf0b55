"""On-policy sampling (GKD's ``kd.lmbda``): some optimizer steps train on responses the student samples itself."""

from __future__ import annotations

import numpy as np
import torch
from accelerate.utils import extract_model_from_parallel

from kdlab.config import KDConfig, RunConfig
from kdlab.data.tokenize import IGNORE_INDEX, Encoded, collate
from kdlab.errors import KdlabError
from kdlab.generation import generate_ids, speculative_generate_ids


def on_policy_sampler(config: RunConfig, tokenizer, teacher, vocab_size: int | None) -> OnPolicySampler | None:
    """The run's sampler with ``kd.lmbda > 0`` (speculative when ``kd.speculative_k > 0``: needs the teacher), else
    None."""
    if config.kd.lmbda == 0:
        return None
    return OnPolicySampler(
        tokenizer, config.kd, config.train.max_length, config.train.seed, teacher=teacher, vocab_size=vocab_size
    )


class OnPolicySampler:
    """GKD's lambda: with probability ``lmbda`` an optimizer step trains on student-sampled responses.

    The trainer's batch hook (:data:`kdlab.train.loop.BatchHook`): called with the micro-batches of each step, it
    returns them as they are, or with their responses replaced by the student's samples (``on_policy`` set). The
    choice depends only on (seed, step), so every process makes the same one and a resumed run repeats it.
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
