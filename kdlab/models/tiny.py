"""Tiny randomly initialised causal LMs and a small byte-level BPE tokenizer, built in code (for tests and examples).

Everything is deterministic: the tokenizer is trained on a fixed corpus (the prompt template, arithmetic
vocabulary, digits) and the weights come from ``torch.manual_seed(seed)``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from kdlab.data.prompt import PROMPT_TEMPLATE

EOS_TOKEN = "<|endoftext|>"

_CORPUS = [
    PROMPT_TEMPLATE.format(instruction="What is 12 + 7? Answer format: number"),
    "The answer is 19. the correct answer is true false answer1 answer2 option1 option2 solution1 ending1",
    "Tom has 12 apples and buys 5 more, so he has 12 + 5 = 17 apples. How many apples are left?",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000 + - * / = x ( ) . , ? ! : $ % A B C D E",
    "Answer Choices: (A) 1 (B) 2 (C) 3 (D) 4 (E) 5. Please answer the following question with true or false.",
]


def build_tiny_tokenizer(vocab_size: int = 384):
    """A byte-level BPE tokenizer (any text encodes) with ``<|endoftext|>`` as EOS and pad token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN)


def build_tiny_model(
    tokenizer, layers: int = 2, hidden: int = 32, seed: int = 0, vocab_padding: int = 0, init_std: float = 0.02
):
    """A tiny Llama model for ``tokenizer``; ``vocab_padding`` extra output rows mimic Qwen's padded lm_head.

    ``init_std`` is the weight initialisation scale: the default 0.02 gives near-uniform next-token distributions;
    a larger one (0.3) gives a model that generates varied text, useful to test generation.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer) + vocab_padding,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id,
        initializer_range=init_std,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def save_tiny_model(
    out_dir: str | Path,
    layers: int = 2,
    hidden: int = 32,
    seed: int = 0,
    tokenizer=None,
    vocab_padding: int = 0,
    init_std: float = 0.02,
) -> Path:
    """Build a tiny model (and tokenizer) and save both to ``out_dir``; returns the folder."""
    tokenizer = tokenizer or build_tiny_tokenizer()
    model = build_tiny_model(
        tokenizer, layers=layers, hidden=hidden, seed=seed, vocab_padding=vocab_padding, init_std=init_std
    )
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
