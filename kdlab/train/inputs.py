"""What a distill run reads before it writes anything: the tokenizer shared with the teacher (or, for the
cross-tokenizer losses, both tokenizers and the alignment of their responses), the examples and the training data
encoded once (by the run and by its teacher cache alike)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from kdlab.config import RunConfig
from kdlab.data.formats import Example, load_examples
from kdlab.data.token_alignment import TeacherTokens, align_spans, byte_offsets, token_bytes
from kdlab.data.tokenize import EncodedData, encode_examples, encode_prompt, encode_response, fit_length
from kdlab.errors import KdlabError
from kdlab.losses.cross_tokenizer import CROSS_TOKENIZER_LOSSES
from kdlab.models.load import check_same_tokenizer, load_tokenizer


@dataclass
class DistillInputs:
    """The student's tokenizer, the vocabulary size it shares with the teacher's (checked equal; the student's own
    with a cross-tokenizer loss), the training examples and their encoding (``train.max_length``, ``train.on_long``;
    the indices a teacher cache is keyed by); ``teacher_tokenizer`` only when the teacher's differs (``kd.loss:
    uld | gold``: every encoded example then carries the teacher's tokens and their alignment)."""

    tokenizer: object
    vocab_size: int
    examples: list[Example]
    encoded: EncodedData
    teacher_tokenizer: object | None = None


def distill_inputs(config: RunConfig) -> DistillInputs:
    """Load and check the inputs of ``kdlab distill`` (fails early, before any output, e.g. on empty data)."""
    examples = load_examples(config.data)
    tokenizer, teacher_tokenizer = load_tokenizer(config.model), load_tokenizer(config.teacher)
    encoded = encode_examples(
        tokenizer, examples, config.train.max_length, source=config.data, on_long=config.train.on_long
    )
    if config.kd.loss not in CROSS_TOKENIZER_LOSSES:
        try:
            vocab_size = check_same_tokenizer(teacher_tokenizer, tokenizer, config.teacher, config.model)
        except KdlabError as exc:
            raise KdlabError(f"{exc} (across tokenizers: kd.loss uld or gold)") from None
        return DistillInputs(tokenizer, vocab_size, examples, encoded)
    encoded = with_teacher_tokens(encoded, examples, tokenizer, teacher_tokenizer, config)
    return DistillInputs(tokenizer, len(tokenizer), examples, encoded, teacher_tokenizer)


def with_teacher_tokens(encoded: EncodedData, examples: list[Example], tokenizer, teacher_tokenizer, config):
    """Every encoded example with the teacher's own tokens (its prompt; its response fitted to ``train.max_length``
    by ``train.on_long`` like the student's: ``error`` raises, ``truncate`` cuts it, ``drop`` and a prompt that leaves
    no room give it no response, so no spans, the example's student side staying) and the spans of identical bytes of
    the two responses (:func:`kdlab.data.token_alignment.align_spans`)."""
    pieces, teacher_pieces = token_bytes(tokenizer), token_bytes(teacher_tokenizer)
    items = []
    for item in encoded:
        example, where = examples[item.index], f"{config.data}: example {item.index}"
        text = example.output.strip()
        prompt = encode_prompt(teacher_tokenizer, example)
        response = encode_response(teacher_tokenizer, example)
        keep = fit_length(
            len(prompt),
            len(response),
            config.train.max_length,
            config.train.on_long,
            f"{where}: teacher '{config.teacher}' has {len(prompt)} prompt + {len(response)} response tokens, more "
            f"than train.max_length={config.train.max_length} (raise it, or --on-long truncate|drop)",
        )
        response = response[: keep or 0]  # None (drop, or no room): no spans; the student side stays
        alignment = align_spans(
            byte_offsets(pieces, item.response_ids, text, f"{where} (student '{config.model}')"),
            byte_offsets(teacher_pieces, response, text, f"{where} (teacher '{config.teacher}')"),
        )
        items.append(replace(item, teacher=TeacherTokens(prompt, response, alignment)))
    return EncodedData(items, encoded.total, encoded.dropped, encoded.cut, encoded.max_length, encoded.on_long)


def alignment_summary(encoded: EncodedData) -> dict:
    """How the two tokenizations of the training responses line up: spans, the student's and the teacher's response
    tokens, the tokens in no span (a response cut by ``train.max_length`` on one side only) and the examples with no
    span at all."""
    spans = sum(len(item.teacher.alignment.student_ends) for item in encoded)
    student = sum(len(item.response_ids) for item in encoded)
    teacher = sum(len(item.teacher.response_ids) for item in encoded)
    covered = sum(item.teacher.alignment.student_ends[-1] for item in encoded if item.teacher.alignment.student_ends)
    no_spans = sum(1 for item in encoded if not item.teacher.alignment.student_ends)
    return {
        "examples_without_spans": no_spans,
        "spans": spans,
        "student_tokens": student,
        "teacher_tokens": teacher,
        "student_tokens_in_no_span": student - covered,
    }


def output_vocab(vocab_size: int, *models) -> int:
    """The shared vocabulary the logits are sliced to: the tokenizer's size, cut to the smallest output layer among
    ``models`` (Qwen pads its lm_head beyond the tokenizer)."""
    return min([vocab_size] + [model.get_output_embeddings().weight.shape[0] for model in models])
