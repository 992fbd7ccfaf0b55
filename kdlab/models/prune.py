"""Make smaller students from one model by keeping some of its decoder layers (depth pruning).

Which layers: ``N`` layers spread evenly over the depth, always including the first and the last:
indices ``round(i * (L - 1) / (N - 1))`` for ``i = 0 .. N - 1`` (``N = 1`` keeps layer 0). For SmolLM2 (L = 30),
N = 8 keeps layers 0, 4, 8, 12, 17, 21, 25, 29. Embeddings, final norm and lm_head are kept, so every pruned
student shares the tokenizer and the output vocabulary of the original.
"""

from __future__ import annotations

from pathlib import Path

import torch

from kdlab.errors import KdlabError
from kdlab.io import atomic_dir
from kdlab.locks import folder_lock
from kdlab.outputs import PRUNED_MODEL, check_output_dir


def layers_to_keep(num_layers: int, keep: int) -> list[int]:
    """Evenly spaced layer indices including the first and the last (see the module docstring)."""
    if not 1 <= keep <= num_layers:
        raise KdlabError(f"--keep-layers must be between 1 and {num_layers}, got {keep}")
    if keep == 1:
        return [0]
    return sorted({round(i * (num_layers - 1) / (keep - 1)) for i in range(keep)})


def prune_layers(model, keep: int):
    """Keep ``keep`` decoder layers of a transformers causal LM in place; returns (model, kept indices)."""
    decoder = model.get_decoder()
    layers = decoder.layers
    kept = layers_to_keep(len(layers), keep)
    decoder.layers = torch.nn.ModuleList([layers[index] for index in kept])
    for new_index, layer in enumerate(decoder.layers):
        for module in layer.modules():  # the KV cache is indexed by layer_idx
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    config = model.config
    config.num_hidden_layers = len(kept)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[index] for index in kept]
    return model, kept


PRUNED_MARKER = PRUNED_MODEL.marker


def prune_model(spec: str, keep: int, out_dir: str | Path) -> list[int]:
    """Load ``spec``, keep ``keep`` layers, save model and tokenizer to ``out_dir`` atomically; return kept indices.

    ``out_dir`` must be missing, empty or a pruned model written by kdlab holding nothing else, which is replaced
    (:func:`kdlab.outputs.check_output_dir`); a user's file or folder is refused before any work. The folder is
    locked while it is written.
    """
    from kdlab.models.load import load_model, load_tokenizer, quiet_loading

    out_dir = check_output_dir(out_dir, PRUNED_MODEL)
    tokenizer = load_tokenizer(spec)
    model = load_model(spec)
    layers_to_keep(model.config.num_hidden_layers, keep)  # validate before any work
    model, kept = prune_layers(model, keep)
    with folder_lock(out_dir, "kdlab models prune"), atomic_dir(out_dir, kind=PRUNED_MODEL) as tmp, quiet_loading():
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / PRUNED_MARKER).write_text(f"pruned from {spec}: kept layers {kept}\n")
    return kept
