"""Batched generation: left padding with an attention mask, KV cache, length-sorted batches.

Used for on-policy student samples (GKD), SeqKD teacher answers and evaluation. Prompts are sorted by length so
that a batch holds prompts of similar length; outputs come back in the original order.
"""

from __future__ import annotations

from typing import Callable

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
        sampling = {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0} if do_sample else {"do_sample": False}
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
