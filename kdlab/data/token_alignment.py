"""Two tokenisations of one response, cut into spans of identical text, and the vocabulary two tokenizers share.

Cross-tokenizer distillation (``kd.loss: uld | gold``, :mod:`kdlab.losses.cross_tokenizer`) compares the student and
the teacher where both have predicted the same text. Each side encodes the same response (``example.output``, then
its own EOS) with its own tokenizer; every token gets its UTF-8 byte span in the response (:func:`byte_offsets`,
from the token's own bytes, so a multi-byte character split over two byte-level tokens gets two 1-byte spans, and
a special token such as EOS gets a zero-width span at the end). :func:`align_spans` then walks both offset lists
and closes a span wherever the two tokenizations end a token at the same byte: a span holds one or more tokens of
each side covering the same bytes ("12" = "1" + "2"; " apples" = " " + "apples"; EOS = EOS).

Only the response is aligned, in response-relative bytes: each side's prompt is its own (a BOS that only one
tokenizer adds, or a chat template, shifts positions but never the response's bytes). Tokens after the last common
boundary (one side's response cut by ``train.max_length``) are in no span and get no distillation term.

:func:`shared_vocabulary` pairs the entries of the two vocabularies that stand for the same bytes (byte-level ``Ġ``
and SentencePiece ``▁`` markers and ``<0x..>`` byte tokens normalised), plus the two EOS tokens by role; GOLD compares
the two distributions exactly on those pairs.
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass
from functools import lru_cache

from kdlab.errors import KdlabError

_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@lru_cache(maxsize=1)
def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's byte <-> printable character table, inverted: character -> byte (byte-level BPE pieces)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[byte] = chr(byte)
        else:
            chars[byte] = chr(256 + extra)
            extra += 1
    return {char: byte for byte, char in chars.items()}


def is_byte_level(tokenizer) -> bool:
    """Whether ``tokenizer`` is a byte-level BPE (its pieces are bytes through GPT-2's table)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and ("ByteLevel" in repr(backend.pre_tokenizer) or "ByteLevel" in repr(backend.decoder))


_TOKEN_BYTES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> its token_bytes


def token_bytes(tokenizer) -> list[bytes | None]:
    """The bytes each token id of ``tokenizer`` stands for (``len(tokenizer)`` entries); None for special tokens.

    Byte-level BPE (GPT-2, Llama 3, Qwen, SmolLM): each piece character is one byte. SentencePiece (pieces marked
    with ``▁``): ``▁`` is a space and ``<0xNN>`` the byte NN. A tokenizer whose pieces are neither is refused
    (:class:`KdlabError`): its tokens' bytes are not recoverable from its vocabulary. Computed once per tokenizer
    object (the run's alignment, on-policy samples and shared vocabulary all read it).
    """
    if tokenizer not in _TOKEN_BYTES:
        _TOKEN_BYTES[tokenizer] = _token_bytes(tokenizer)
    return _TOKEN_BYTES[tokenizer]


def _token_bytes(tokenizer) -> list[bytes | None]:
    special = set(tokenizer.all_special_ids) | {
        i for i, added in getattr(tokenizer, "added_tokens_decoder", {}).items() if added.special
    }
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    byte_level = is_byte_level(tokenizer)
    if not byte_level and not any(piece and piece.startswith("▁") for piece in pieces):
        raise KdlabError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r}: neither byte-level BPE nor SentencePiece; "
            "kd.loss uld/gold need the bytes of every token"
        )
    decoder = _byte_level_decoder()
    out: list[bytes | None] = []
    for token_id, piece in enumerate(pieces):
        if token_id in special or piece is None:
            out.append(None)
        elif byte_level:
            try:
                out.append(bytes(decoder[char] for char in piece))
            except KeyError:  # an added (non-special) token written as plain text
                out.append(piece.encode("utf-8"))
        elif match := _BYTE_TOKEN.match(piece):
            out.append(bytes([int(match.group(1), 16)]))
        else:
            out.append(piece.replace("▁", " ").encode("utf-8"))
    return out


def byte_offsets(pieces: list[bytes | None], ids: list[int], text: str, where: str) -> list[tuple[int, int]]:
    """``(start, end)`` byte span of each token of ``ids`` (a response: ``text`` then EOS) in ``text`` as UTF-8.

    Tokens with no bytes (special tokens) are zero-width. A SentencePiece space added in front of the text (the tokens
    spell ``" " + text``) is taken off the first token. Raises :class:`KdlabError` (naming ``where``) when the tokens do not spell the text byte for
    byte (a normaliser changed it): such a pair of tokenizers cannot be aligned by bytes.
    """
    raw = [pieces[i] or b"" if i < len(pieces) else b"" for i in ids]
    target = text.encode("utf-8")
    joined = b"".join(raw)
    if joined.startswith(b" ") and not target.startswith(joined) and target.startswith(joined[1:]):
        first = next(k for k, piece in enumerate(raw) if piece)
        raw[first] = raw[first][1:]
        joined = joined[1:]
    if not target.startswith(joined):
        raise KdlabError(
            f"{where}: the tokens do not spell the response byte for byte ({joined[:60]!r} vs {target[:60]!r}); "
            "kd.loss uld/gold align two tokenizations by their bytes"
        )
    return _cumulative(raw)


def _cumulative(raw: list[bytes]) -> list[tuple[int, int]]:
    offsets, cursor = [], 0
    for piece in raw:
        offsets.append((cursor, cursor + len(piece)))
        cursor += len(piece)
    return offsets


def _regular_first(tokenizer, pieces: list[bytes | None]) -> list[int]:
    """Token ids with SentencePiece byte-fallback tokens (``<0xNN>``) last."""
    names = tokenizer.convert_ids_to_tokens(list(range(len(pieces))))
    fallback = [bool(name and _BYTE_TOKEN.match(name)) for name in names]
    return sorted(range(len(pieces)), key=lambda token_id: fallback[token_id])


@dataclass(frozen=True)
class SpanAlignment:
    """Spans of identical bytes over one response: span ``g`` holds the student's response tokens
    ``student_ends[g-1]:student_ends[g]`` and the teacher's ``teacher_ends[g-1]:teacher_ends[g]`` (exclusive ends,
    the first span starting at 0)."""

    student_ends: tuple[int, ...]
    teacher_ends: tuple[int, ...]

    def spans(self) -> list[tuple[range, range]]:
        """The spans as ``(student positions, teacher positions)`` ranges (for tests and for reading)."""
        if not self.student_ends:
            return []
        s_starts, t_starts = (0, *self.student_ends[:-1]), (0, *self.teacher_ends[:-1])
        return [
            (range(s0, s1), range(t0, t1))
            for s0, s1, t0, t1 in zip(s_starts, self.student_ends, t_starts, self.teacher_ends, strict=True)
        ]


def align_spans(student: list[tuple[int, int]], teacher: list[tuple[int, int]]) -> SpanAlignment:
    """Walk two byte-offset lists (:func:`byte_offsets`), advancing the side whose token ends first; a span closes
    when both sides end a token at the same byte (zero-width tokens at the same place pair up: EOS with EOS). Tokens
    after the last common end are left out (one side was cut)."""
    s_ends, t_ends = [], []
    s = t = 0
    while s < len(student) and t < len(teacher):
        s_end, t_end = student[s][1], teacher[t][1]
        if s_end < t_end:
            s += 1
        elif s_end > t_end:
            t += 1
        else:
            s, t = s + 1, t + 1
            s_ends.append(s)
            t_ends.append(t)
    return SpanAlignment(tuple(s_ends), tuple(t_ends))


def shared_vocabulary(student_tokenizer, teacher_tokenizer) -> tuple[list[int], list[int]]:
    """The vocabulary entries the two tokenizers share: ``(student_ids, teacher_ids)``, pair ``i`` standing for the
    same bytes (:func:`token_bytes`), in teacher-id order; the two EOS tokens are paired by role, other special
    tokens by their text. Each id is in at most one pair; where two entries of one vocabulary stand for the same
    byte (SentencePiece's ``A`` and its byte-fallback ``<0x41>``), the regular piece is paired first."""
    student_index: dict[object, int] = {}
    student_pieces = token_bytes(student_tokenizer)
    for token_id in _regular_first(student_tokenizer, student_pieces):
        piece = student_pieces[token_id]
        key = piece if piece is not None else ("special", student_tokenizer.convert_ids_to_tokens(token_id))
        student_index.setdefault(key, token_id)
    student_index[("eos",)] = student_tokenizer.eos_token_id
    pairs: dict[int, int] = {}
    used: set[int] = set()
    teacher_pieces = token_bytes(teacher_tokenizer)
    for token_id in _regular_first(teacher_tokenizer, teacher_pieces):
        piece = teacher_pieces[token_id]
        if token_id == teacher_tokenizer.eos_token_id:
            key = ("eos",)
        else:
            key = piece if piece is not None else ("special", teacher_tokenizer.convert_ids_to_tokens(token_id))
        student_id = student_index.get(key)
        if student_id is None or student_id in used:
            continue
        if key != ("eos",) and student_id == student_tokenizer.eos_token_id:
            continue  # the student's EOS pairs with the teacher's EOS only
        pairs[token_id] = student_id
        used.add(student_id)
    teacher_ids = sorted(pairs)
    return [pairs[t] for t in teacher_ids], teacher_ids


@dataclass(frozen=True)
class TeacherTokens:
    """The teacher's tokens of one training example: its ``prompt_ids`` and ``response_ids`` (its own tokenizer) and
    the ``alignment`` of its response with the student's."""

    prompt_ids: list[int]
    response_ids: list[int]
    alignment: SpanAlignment


def teacher_batch(student_responses: list[list[int]], teachers: list[TeacherTokens]) -> dict:
    """The teacher side of a collated batch (rows in the same order as the student's), as tensors:

    - ``teacher_input_ids``, ``teacher_attention_mask``, ``teacher_labels`` [B, T_T] (right-padded; labels -100 on
      the prompt and padding, like the student's);
    - ``span_student_last`` and ``span_teacher_last`` [G]: the row of each span's last token among each side's
      predicted response positions (batch rows then positions: the order of :func:`kdlab.models.heads.response_hidden`);
    - ``span_student_of`` [N_S] and ``span_teacher_of`` [N_T]: the span of each such position (-1: in no span);
    - ``span_tokens`` [G]: the student tokens of each span.
    """
    import torch

    length = max(len(t.prompt_ids) + len(t.response_ids) for t in teachers)
    input_ids = torch.zeros((len(teachers), length), dtype=torch.long)
    labels = torch.full((len(teachers), length), -100, dtype=torch.long)
    attention = torch.zeros((len(teachers), length), dtype=torch.long)
    s_last, t_last, s_of, t_of, tokens = [], [], [], [], []
    s_base = t_base = 0
    for row, (response, teacher) in enumerate(zip(student_responses, teachers, strict=True)):
        ids = teacher.prompt_ids + teacher.response_ids
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention[row, : len(ids)] = 1
        labels[row, len(teacher.prompt_ids) : len(ids)] = torch.tensor(teacher.response_ids)
        row_s_of, row_t_of = [-1] * len(response), [-1] * len(teacher.response_ids)
        for span, (s_range, t_range) in enumerate(teacher.alignment.spans(), start=len(s_last)):
            s_last.append(s_base + s_range[-1])
            t_last.append(t_base + t_range[-1])
            tokens.append(len(s_range))
            for k in s_range:
                row_s_of[k] = span
            for k in t_range:
                row_t_of[k] = span
        s_of += row_s_of
        t_of += row_t_of
        s_base, t_base = s_base + len(response), t_base + len(teacher.response_ids)
    return {
        "teacher_input_ids": input_ids,
        "teacher_attention_mask": attention,
        "teacher_labels": labels,
        "span_student_last": torch.tensor(s_last, dtype=torch.long),
        "span_teacher_last": torch.tensor(t_last, dtype=torch.long),
        "span_student_of": torch.tensor(s_of, dtype=torch.long),
        "span_teacher_of": torch.tensor(t_of, dtype=torch.long),
        "span_tokens": torch.tensor(tokens, dtype=torch.long),
    }


def sampled_teacher_tokens(
    response: list[int],
    pieces: list[bytes | None],
    eos_id: int,
    teacher_tokenizer,
    teacher_pieces,
    prompt: list[int],
    strip_space: bool = False,
) -> TeacherTokens:
    """The teacher's tokens of a response the student sampled (on-policy steps): the sampled tokens' bytes (``pieces``,
    the student's :func:`token_bytes`; with ``strip_space``, a SentencePiece student's leading space taken off, as
    for the training responses) up to the first byte that is not valid UTF-8, encoded by the teacher (special-token
    text read as text; its EOS added when the sample ended with the student's ``eos_id``), and the alignment of the
    two; the teacher's ``prompt`` as given. Sampled tokens after the text the teacher read are in no span, and so is
    a whole sample the teacher's tokens do not spell byte for byte (a normaliser)."""
    raw = [pieces[i] or b"" if i < len(pieces) else b"" for i in response]
    first = next((k for k, piece in enumerate(raw) if piece), None)
    if strip_space and first is not None and raw[first].startswith(b" "):
        raw[first] = raw[first][1:]
    joined = b"".join(raw)
    try:
        text = joined.decode("utf-8")
    except UnicodeDecodeError as exc:  # a character cut by the end of the sample, or bytes no text has
        text = joined[: exc.start].decode("utf-8")
    ids = teacher_tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    if response and response[-1] == eos_id and len(text.encode("utf-8")) == len(joined):
        ids = ids + [teacher_tokenizer.eos_token_id]
    try:
        teacher = byte_offsets(teacher_pieces, ids, text, "an on-policy sample (teacher)")
    except KdlabError:
        return TeacherTokens(prompt, ids, SpanAlignment((), ()))
    return TeacherTokens(prompt, ids, align_spans(_cumulative(raw), teacher))
