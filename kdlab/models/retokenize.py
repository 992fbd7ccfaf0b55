"""A student with another tokenizer: a model's layers under a new byte-level BPE vocabulary (a vocabulary transplant).

Used to try cross-tokenizer distillation (``kd.loss: uld | gold``) where only one model family is at hand: the new
tokenizer is trained on a task corpus (numbers merged into multi-digit tokens where the original splits every digit;
its own EOS ``</s>`` and a BOS ``<s>`` the original does not add), and each new token's embedding is the mean of the
original embeddings of the pieces the original tokenizer cuts it into (the usual initialisation of a transplanted
vocabulary, e.g. FOCUS and WECHSEL start from it). The output layer stays tied to the embeddings.
"""

from __future__ import annotations

from pathlib import Path

import torch

from kdlab.io import atomic_dir
from kdlab.locks import folder_lock
from kdlab.outputs import RETOKENIZED_MODEL, check_output_dir

BOS, EOS = "<s>", "</s>"


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on ``texts`` (at most ``vocab_size`` entries; digits not split apart), with
    ``</s>`` as EOS and pad token and ``<s>`` added in front of every encoded text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, BOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tokenizer.token_to_id(BOS))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=EOS)


def transplant_embeddings(model, old_tokenizer, new_tokenizer) -> torch.Tensor:
    """The new input embeddings [V_new, H]: per new token, the mean of the old embeddings of its old-tokenizer pieces
    (BOS and EOS: the old BOS, or EOS, row; a byte the old vocabulary lacks, such as 0xC0 or 0xFF that never occur
    in UTF-8 text: the mean of all old rows)."""
    old = model.get_input_embeddings().weight.detach()
    everything = old.float().mean(0)
    bpe = old_tokenizer.backend_tokenizer.model
    rows = []
    for token_id, piece in enumerate(new_tokenizer.convert_ids_to_tokens(list(range(len(new_tokenizer))))):
        if token_id == new_tokenizer.eos_token_id:
            ids = [old_tokenizer.eos_token_id]
        elif token_id == new_tokenizer.bos_token_id:
            ids = [old_tokenizer.bos_token_id if old_tokenizer.bos_token_id is not None else old_tokenizer.eos_token_id]
        else:
            ids = [token.id for token in bpe.tokenize(piece)]
        rows.append(old[ids].float().mean(0) if ids else everything)
    return torch.stack(rows).to(old.dtype)


def retokenize_model(spec: str, texts: list[str], vocab_size: int, out_dir: str | Path, keep_layers: int | None = None):
    """Load ``spec`` (optionally pruned to ``keep_layers``), put it under a tokenizer trained on ``texts``
    (:func:`train_tokenizer`, :func:`transplant_embeddings`) and save model and tokenizer to ``out_dir`` atomically;
    returns the new tokenizer."""
    from kdlab.models.load import load_model, load_tokenizer, quiet_loading
    from kdlab.models.prune import prune_layers

    out_dir = check_output_dir(out_dir, RETOKENIZED_MODEL)
    old_tokenizer, model = load_tokenizer(spec), load_model(spec)
    if keep_layers is not None:
        model, _ = prune_layers(model, keep_layers)
    tokenizer = train_tokenizer(texts, vocab_size)
    embeddings = transplant_embeddings(model, old_tokenizer, tokenizer)
    model.resize_token_embeddings(len(tokenizer))
    model.get_input_embeddings().weight.data.copy_(embeddings)
    model.tie_weights()
    model.config.update(
        {
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
    )
    if model.generation_config is not None:
        model.generation_config.bos_token_id = tokenizer.bos_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    with folder_lock(out_dir, "kdlab retokenize"), atomic_dir(out_dir, kind=RETOKENIZED_MODEL) as tmp, quiet_loading():
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "RETOKENIZED.txt").write_text(
            f"{spec}{f' pruned to {keep_layers} layers' if keep_layers else ''} under a {len(tokenizer)}-token "
            "byte-level BPE tokenizer trained on the task corpus (kdlab.models.retokenize)\n"
        )
    return tokenizer
