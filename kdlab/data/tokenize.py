"""Tokenisation for training: prompt + response, labels masking the prompt with -100, and padding.

Labels follow the transformers convention (unshifted): ``labels[t] = input_ids[t]`` on response tokens and -100
on prompt and padding; the loss shifts them by one position (hidden state t predicts token t + 1).
The prompt is encoded on its own (with the tokenizer's special tokens, e.g. BOS) exactly as at evaluation time;
the response is encoded without special tokens and ends with EOS.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kdlab.data.formats import Example
from kdlab.data.prompt import format_prompt
from kdlab.data.token_alignment import TeacherTokens, teacher_batch
from kdlab.errors import KdlabError

IGNORE_INDEX = -100


@dataclass
class Encoded:
    """One tokenised example: ``index`` into the source list, prompt and response token ids; ``answer_mask`` (one
    flag per response token, :mod:`kdlab.data.answer_span`) marks the decision statement when decision-level KD
    needs it; ``teacher`` holds the teacher's own tokens and their alignment when the teacher has another tokenizer
    (``kd.loss: uld | gold``, :mod:`kdlab.data.token_alignment`)."""

    index: int
    prompt_ids: list[int]
    response_ids: list[int]
    answer_mask: list[bool] | None = None
    teacher: TeacherTokens | None = None

    @property
    def input_ids(self) -> list[int]:
        return self.prompt_ids + self.response_ids


def encode_prompt(tokenizer, example: Example) -> list[int]:
    return tokenizer(format_prompt(example.instruction, example.input), add_special_tokens=True)["input_ids"]


def encode_response(tokenizer, example: Example) -> list[int]:
    """The training response's token ids: ``example.output`` stripped, without special tokens, then EOS."""
    return tokenizer(example.output.strip(), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


ON_LONG = ("truncate", "drop", "error")


def fit_length(kept: int, cuttable: int, max_length: int, on_long: str, too_long: str) -> int | None:
    """The one rule for an example longer than its limit (``--on-long``, in training and in ``kdlab eval``): how
    many of its ``cuttable`` tokens to keep beside the ``kept`` ones within ``max_length``.

    All of them when everything fits. Otherwise ``truncate`` keeps the room left (None when ``kept`` alone leaves
    no room: the example is dropped), ``drop`` returns None and ``error`` raises :class:`KdlabError` with the message
    ``too_long``. Training cuts the response (keeping its start, after the prompt); evaluation cuts the prompt
    (keeping its end, before the response): both keep the text nearest to where the response begins.
    """
    room = max_length - kept
    if cuttable <= room:
        return cuttable
    if on_long == "error":
        raise KdlabError(too_long)
    if on_long == "drop" or room <= 0:
        return None
    return room


class EncodedData(list):
    """The encoded examples (a list of :class:`Encoded`) and what did not fit in ``max_length``:
    ``total`` examples in the source, ``dropped`` (source indices of examples left out) and ``cut`` (source indices of
    examples whose response was cut, losing its end and EOS)."""

    def __init__(self, items, total: int, dropped: list[int], cut: list[int], max_length: int, on_long: str):
        super().__init__(items)
        self.total, self.dropped, self.cut, self.max_length, self.on_long = total, dropped, cut, max_length, on_long

    def summary(self) -> dict:
        """{"examples_in_data", "examples", "dropped_long", "cut_responses", "max_length", "on_long"} for result.json."""
        return {
            "examples_in_data": self.total,
            "examples": len(self),
            "dropped_long": len(self.dropped),
            "cut_responses": len(self.cut),
            "max_length": self.max_length,
            "on_long": self.on_long,
        }

    def message(self, source: str) -> str | None:
        """One progress line when examples were dropped or cut, else None."""
        if not self.dropped and not self.cut:
            return None
        return (
            f"kdlab: warning: {source}: {len(self.dropped)} of {self.total} examples dropped and {len(self.cut)} "
            f"responses cut (the end and EOS lost) to fit train.max_length={self.max_length} "
            f"(train.on_long={self.on_long}; --on-long drop|truncate|error)"
        )


def encode_examples(
    tokenizer, examples: list[Example], max_length: int, source: str = "data", on_long: str = "truncate"
) -> EncodedData:
    """Tokenise examples into at most ``max_length`` tokens each (prompt + response + EOS).

    An example that does not fit is handled by ``on_long``: ``truncate`` cuts its response to the room left
    (dropping it when the prompt alone leaves no room), ``drop`` leaves it out, ``error`` raises
    :class:`KdlabError` naming ``source``, its index and its length. The counts are on the result
    (:class:`EncodedData`). Raises :class:`KdlabError` when no example is left.
    """
    if on_long not in ON_LONG:
        raise KdlabError(f"train.on_long: {on_long!r} is not one of {', '.join(ON_LONG)}")
    encoded, dropped, cut = [], [], []
    for index, example in enumerate(examples):
        prompt_ids = encode_prompt(tokenizer, example)
        response_ids = encode_response(tokenizer, example)
        keep = fit_length(
            len(prompt_ids),
            len(response_ids),
            max_length,
            on_long,
            f"{source}: example {index} has {len(prompt_ids)} prompt + {len(response_ids)} response "
            f"tokens, more than train.max_length={max_length} (raise it, or --on-long truncate|drop)",
        )
        if keep is None:
            dropped.append(index)
            continue
        if keep < len(response_ids):
            cut.append(index)
        encoded.append(Encoded(index, prompt_ids, response_ids[:keep]))
    if not encoded:
        raise KdlabError(
            f"{source}: no example fits in max_length={max_length} tokens (the dataset is empty after tokenisation)"
        )
    return EncodedData(encoded, len(examples), dropped, cut, max_length, on_long)


def collate(items: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch: input_ids, attention_mask, labels [B, T] and the example indices [B]; with answer masks,
    also ``answer_mask`` [B, T] (bool, True on the response tokens of the decision statement, aligned like labels);
    with a teacher of another tokenizer, its tokens and the spans (:func:`kdlab.data.token_alignment.teacher_batch`)."""
    length = max(len(item.input_ids) for item in items)
    input_ids = torch.full((len(items), length), pad_id, dtype=torch.long)
    labels = torch.full((len(items), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(items), length), dtype=torch.long)
    for row, item in enumerate(items):
        ids = item.input_ids
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        labels[row, len(item.prompt_ids) : len(ids)] = torch.tensor(item.response_ids)
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "index": torch.tensor([item.index for item in items]),
    }
    if any(item.answer_mask is not None for item in items):
        answer_mask = torch.zeros((len(items), length), dtype=torch.bool)
        for row, item in enumerate(items):
            if item.answer_mask is not None:
                answer_mask[row, len(item.prompt_ids) : len(item.input_ids)] = torch.tensor(
                    item.answer_mask, dtype=torch.bool
                )
        batch["answer_mask"] = answer_mask
    if items[0].teacher is not None:
        batch.update(teacher_batch([item.response_ids for item in items], [item.teacher for item in items]))
    return batch


def count_response_tokens(labels: torch.Tensor) -> int:
    """Number of predicted (shifted) response positions in a batch: labels[:, 1:] != -100."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())
