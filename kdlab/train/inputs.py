"""What a distill run reads before it writes anything: the tokenizer shared with the teacher, the examples and the
training data encoded once (by the run and by its teacher cache alike)."""

from __future__ import annotations

from dataclasses import dataclass

from kdlab.config import RunConfig
from kdlab.data.formats import Example, load_examples
from kdlab.data.tokenize import EncodedData, encode_examples
from kdlab.models.load import check_same_tokenizer, load_tokenizer


@dataclass
class DistillInputs:
    """The student's tokenizer, the vocabulary size it shares with the teacher's (checked equal), the training
    examples and their encoding (``train.max_length``, ``train.on_long``; the indices a teacher cache is keyed by)."""

    tokenizer: object
    vocab_size: int
    examples: list[Example]
    encoded: EncodedData


def distill_inputs(config: RunConfig) -> DistillInputs:
    """Load and check the inputs of ``kdlab distill`` (fails early, before any output, e.g. on empty data)."""
    examples = load_examples(config.data)
    tokenizer = load_tokenizer(config.model)
    vocab_size = check_same_tokenizer(load_tokenizer(config.teacher), tokenizer, config.teacher, config.model)
    encoded = encode_examples(
        tokenizer, examples, config.train.max_length, source=config.data, on_long=config.train.on_long
    )
    return DistillInputs(tokenizer, vocab_size, examples, encoded)


def output_vocab(vocab_size: int, *models) -> int:
    """The shared vocabulary the logits are sliced to: the tokenizer's size, cut to the smallest output layer among
    ``models`` (Qwen pads its lm_head beyond the tokenizer)."""
    return min([vocab_size] + [model.get_output_embeddings().weight.shape[0] for model in models])
