"""Batched generation: left padding with an attention mask, KV cache, length-sorted batches.

Used for on-policy student samples (GKD), SeqKD teacher answers and evaluation. Prompts are sorted by length so
that a batch holds prompts of similar length; outputs come back in the original order.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm


@torch.no_grad()
def generate_ids(
    model,
    tokenizer,
    prompt_ids: list[list[int]],
    max_new_tokens: int,
    batch_size: int = 16,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int | None = None,
    progress: str | None = None,
    stop_strings: list[str] | None = None,
    on_batch: Callable[[list[int], list[list[int]]], None] | None = None,
) -> list[list[int]]:
    """Generate a response for each tokenised prompt; each response is cut after its first EOS (kept).

    Greedy by default. ``stop_strings`` end a sequence early (the string stays in the output: cut it with
    :func:`cut_at_stop`). ``on_batch(indices, responses)`` is called after each batch (for incremental writes).
    Returns response token ids (without the prompt), in the order of ``prompt_ids``.
    """
    was_training = model.training
    model.eval()
    pad_id = tokenizer.pad_token_id
    eos_id = tokenizer.eos_token_id
    device = next(model.parameters()).device
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    results: list[list[int]] = [[] for _ in prompt_ids]
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    if seed is not None:
        torch.manual_seed(seed)
    for batch in tqdm(batches, desc=progress, disable=progress is None, leave=False):
        length = max(len(prompt_ids[i]) for i in batch)
        input_ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), length), dtype=torch.long)
        for row, i in enumerate(batch):
            ids = prompt_ids[i]
            input_ids[row, length - len(ids) :] = torch.tensor(ids)
            attention_mask[row, length - len(ids) :] = 1
        sampling = (
            {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0}
            if do_sample
            else {"do_sample": False}
        )
        output = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            max_new_tokens=max_new_tokens,
            pad_token_id=pad_id,
            eos_token_id=eos_id,
            use_cache=True,
            **({"stop_strings": list(stop_strings), "tokenizer": tokenizer} if stop_strings else {}),
            **sampling,
        )
        for row, i in enumerate(batch):
            results[i] = cut_at_eos(output[row, length:].tolist(), eos_id)
        if on_batch is not None:
            on_batch(batch, [results[i] for i in batch])
    model.train(was_training)
    return results


def cut_at_stop(text: str, stop_strings: list[str] | tuple[str, ...]) -> str:
    """``text`` up to the first occurrence of any stop string."""
    positions = [text.find(stop) for stop in stop_strings if stop and stop in text]
    return text[: min(positions)] if positions else text


def cut_at_eos(ids: list[int], eos_id: int) -> list[int]:
    """Token ids up to and including the first EOS (all of them when there is none)."""
    return ids[: ids.index(eos_id) + 1] if eos_id in ids else ids


def _left_pad(prompt_ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(ids) for ids in prompt_ids)
    input_ids = torch.full((len(prompt_ids), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompt_ids), length), dtype=torch.long)
    for row, ids in enumerate(prompt_ids):
        input_ids[row, length - len(ids) :] = torch.tensor(ids)
        attention_mask[row, length - len(ids) :] = 1
    return input_ids, attention_mask


class _Stepper:
    """One causal LM decoding a left-padded batch token by token with its KV cache; ``logits`` [B, V] predict the
    next token of every row."""

    def __init__(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor, vocab_size: int):
        self.model, self.vocab_size = model, vocab_size
        self.device = next(model.parameters()).device
        self.attention_mask = attention_mask.to(self.device)
        self.positions = (self.attention_mask.cumsum(-1) - 1).clamp(min=0)
        out = model(
            input_ids=input_ids.to(self.device),
            attention_mask=self.attention_mask,
            position_ids=self.positions,
            use_cache=True,
            logits_to_keep=1,
        )
        self.past, self.logits = out.past_key_values, out.logits[:, -1, :vocab_size].float()
        self.positions = self.positions[:, -1:]

    def step(self, tokens: torch.Tensor) -> None:
        self.attention_mask = torch.cat([self.attention_mask, torch.ones_like(self.attention_mask[:, :1])], dim=1)
        self.positions = self.positions + 1
        out = self.model(
            input_ids=tokens.to(self.device)[:, None],
            attention_mask=self.attention_mask,
            position_ids=self.positions,
            past_key_values=self.past,
            use_cache=True,
        )
        self.past, self.logits = out.past_key_values, out.logits[:, -1, : self.vocab_size].float()


def speculative_token(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    top_k: int,
    temperature: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of speculative KD sampling (Xu et al., ICLR 2025), for a batch: logits [B, V] -> (tokens [B], replaced [B]).

    The student proposes ``y ~ softmax(z_S / temperature)``; when ``y`` is not among the teacher's ``top_k`` tokens
    it is replaced by a teacher sample from its top-k, ``softmax(z_T[top-k] / temperature)`` (renormalised over the
    top-k; the paper samples the full teacher distribution, the restriction guarantees every token of the result
    lies in the teacher's top-k). ``replaced`` marks the rows whose proposal was rejected.
    """
    proposal = torch.multinomial(torch.softmax(student_logits / temperature, dim=-1).cpu(), 1, generator=generator)[
        :, 0
    ]
    top = teacher_logits.topk(min(top_k, teacher_logits.shape[-1]), dim=-1)
    top_ids = top.indices.cpu()
    accepted = (top_ids == proposal[:, None]).any(-1)
    pick = torch.multinomial(torch.softmax(top.values / temperature, dim=-1).cpu(), 1, generator=generator)
    replacement = top_ids.gather(1, pick)[:, 0]
    return torch.where(accepted, proposal, replacement), ~accepted


@torch.no_grad()
def speculative_generate_ids(
    student,
    teacher,
    tokenizer,
    prompt_ids: list[list[int]],
    max_new_tokens: int,
    top_k: int,
    vocab_size: int,
    temperature: float = 1.0,
    seed: int | None = None,
) -> tuple[list[list[int]], int, int]:
    """Speculative-KD responses for a batch of tokenised prompts (one batch; both models step in lockstep with their
    KV caches): each token is :func:`speculative_token` of the two models' next-token logits (sliced to the shared
    ``vocab_size``). Responses stop after EOS (kept) or ``max_new_tokens``.

    Returns (responses, proposed tokens, replaced tokens); the counts cover tokens up to each row's EOS.
    """
    was_training = student.training
    student.eval()
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    input_ids, attention_mask = _left_pad(prompt_ids, tokenizer.pad_token_id)
    s, t = (
        _Stepper(student, input_ids, attention_mask, vocab_size),
        _Stepper(teacher, input_ids, attention_mask, vocab_size),
    )
    eos = tokenizer.eos_token_id
    done = torch.zeros(len(prompt_ids), dtype=torch.bool)
    tokens_out, proposed, replaced_total = [], 0, 0
    for _ in range(max_new_tokens):
        tokens, replaced = speculative_token(s.logits, t.logits, top_k, temperature, generator)
        tokens = torch.where(done, torch.full_like(tokens, eos), tokens)
        proposed += int((~done).sum())
        replaced_total += int((replaced & ~done).sum())
        tokens_out.append(tokens)
        done = done | (tokens == eos)
        if bool(done.all()):
            break
        s.step(tokens)
        t.step(tokens)
    student.train(was_training)
    matrix = torch.stack(tokens_out, dim=1).tolist() if tokens_out else [[] for _ in prompt_ids]
    return [cut_at_eos(row, eos) for row in matrix], proposed, replaced_total
