"""Final hidden states and the output layer of a causal LM, for losses and scores computed without full logits."""

from __future__ import annotations

import torch
from accelerate.utils import extract_model_from_parallel

from kdlab.data.tokenize import IGNORE_INDEX


def final_hidden(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Final (post-norm) hidden states [B, T, H] through the model's own forward (so DDP hooks run).

    ``logits_to_keep=1`` makes the model compute logits for one position only; callers apply the lm_head weight
    to the positions they need.
    """
    output = model(
        input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, logits_to_keep=1, use_cache=False
    )
    return output.hidden_states[-1]


def response_hidden(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states [N, H] of the positions that predict response tokens, and those tokens [N].

    The causal-LM shift: position ``t`` predicts ``labels[:, t + 1]``; kept are ``labels[:, 1:] != -100`` (the
    prompt and padding carry -100), batch rows then positions. ``hidden`` [B, T, ...] (hidden states or per-token
    log-probabilities) and ``labels`` [B, T].
    """
    keep = labels[:, 1:] != IGNORE_INDEX
    return hidden[:, :-1][keep], labels[:, 1:][keep]


def output_weight(model) -> torch.Tensor:
    """The lm_head weight [V, H] of a (possibly DDP- or PEFT-wrapped) causal LM."""
    head = extract_model_from_parallel(model).get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise NotImplementedError("lm_head with a bias is not supported by the chunked loss")
    return head.weight
