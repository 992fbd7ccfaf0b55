"""The answer span of a training response: where the model states its decision, and rewriting it.

Responses in kdlab's data end with a decision statement: "The answer is 42." (math, synthetic data) or "the correct
answer is option2" (LLM-Adapters commonsense). Decision-level KD (:mod:`kdlab.losses`, ``kd.answer_weight``) needs
the response *tokens* of that statement, and ``kd.answer_target: teacher`` replaces the stated value by the
teacher's own answer. Both are found on the response text and mapped to tokens by character offsets.

Definitions, on the stripped response text ``r``:

- the *statement* is the last match of ``answer is`` (case-insensitive, optionally ``the``/``the correct`` before
  it); it runs from the start of that match to the end of its sentence (the first ``.`` not followed by a digit, or
  the end of the line / text), the closing period included;
- the *value* is the text after ``answer is`` inside the statement, stripped of spaces, a trailing period and
  surrounding parentheses (``42``, ``option2``, ``(D)`` -> ``D``);
- a response with no ``answer is`` (or an empty value) has no span: kdlab does not guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_STATEMENT = re.compile(r"(?i)\b(?:the\s+(?:correct\s+)?)?answer\s+is\b\s*:?")
_SENTENCE_END = re.compile(r"\n|\.(?!\d)")


@dataclass(frozen=True)
class AnswerSpan:
    """Character offsets in the response text: the statement ``[start, end)`` and its value ``[value_start, value_end)``."""

    start: int
    end: int
    value_start: int
    value_end: int

    def value(self, text: str) -> str:
        return text[self.value_start : self.value_end]


def find_answer_span(text: str) -> AnswerSpan | None:
    """The last decision statement of ``text`` (see the module docstring), or None."""
    matches = list(_STATEMENT.finditer(text))
    if not matches:
        return None
    match = matches[-1]
    end_match = _SENTENCE_END.search(text, match.end())
    end = len(text) if end_match is None else end_match.start() + (1 if end_match.group() == "." else 0)
    value_start, value_end = match.end(), end
    while value_start < value_end and text[value_start].isspace():
        value_start += 1
    while value_end > value_start and (text[value_end - 1].isspace() or text[value_end - 1] == "."):
        value_end -= 1
    if value_end - value_start >= 2 and text[value_start] == "(" and text[value_end - 1] == ")":
        value_start, value_end = value_start + 1, value_end - 1
    if value_start >= value_end:
        return None
    return AnswerSpan(match.start(), end, value_start, value_end)


def token_char_offsets(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """``tokenizer(text, add_special_tokens=False)`` ids and the character ``(start, end)`` of each in ``text``.

    Uses the fast tokenizer's offset mapping; otherwise (slow tokenizers) the lengths of the decoded prefixes.
    """
    try:
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(encoding["input_ids"]), [tuple(pair) for pair in encoding["offset_mapping"]]
    except (NotImplementedError, TypeError, ValueError, KeyError):
        pass
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    offsets, previous = [], 0
    for i in range(1, len(ids) + 1):
        length = len(tokenizer.decode(ids[:i], skip_special_tokens=True))
        offsets.append((previous, length))
        previous = length
    return ids, offsets


def answer_token_mask(tokenizer, text: str) -> list[bool]:
    """For each token of ``tokenizer(text, add_special_tokens=False)`` (a response): True when it overlaps the
    decision statement (:func:`find_answer_span`); all False when there is none. Tokens appended after them (EOS)
    are not covered: callers pad the mask with False."""
    span = find_answer_span(text)
    ids, offsets = token_char_offsets(tokenizer, text)
    if span is None:
        return [False] * len(ids)
    return [start < span.end and end > span.start and end > start for start, end in offsets]


def replace_answer_value(text: str, value: str) -> str | None:
    """``text`` with the value of its decision statement replaced by ``value`` (None when ``text`` has no statement)."""
    span = find_answer_span(text)
    if span is None:
        return None
    return text[: span.value_start] + value + text[span.value_end :]


def with_answer_masks(tokenizer, examples, encoded: list):
    """``encoded`` (:class:`kdlab.data.tokenize.Encoded`, from ``examples``) with ``answer_mask`` set from each
    example's response text; the EOS and any token cut by ``max_length`` follow the same rule (EOS: False)."""
    from dataclasses import replace

    result = []
    for item in encoded:
        mask = answer_token_mask(tokenizer, examples[item.index].output.strip()) + [False]  # + EOS
        result.append(replace(item, answer_mask=mask[: len(item.response_ids)]))
    return result
