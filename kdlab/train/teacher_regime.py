"""The regime a distillation runs in: how peaked a teacher is on the students' training responses.

A teacher that puts almost all its mass on the gold token of every response token gives forward KL little beyond
the labels (KD at tau 1 is then SFT with a few tokens relabelled); what it can add sits in the mass off its top
token. :func:`token_peakedness` measures that, teacher-forced on the gold responses (response tokens only), with
the same tokenisation as training (:func:`kdlab.data.tokenize.encode_examples`).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from kdlab.data.formats import load_examples
from kdlab.data.tokenize import collate, encode_examples
from kdlab.models.heads import final_hidden, output_weight, response_hidden
from kdlab.models.load import load_model, load_tokenizer


@torch.no_grad()
def token_peakedness(
    model_spec: str,
    adapter: str | None,
    data: str | Path,
    max_length: int = 192,
    batch_size: int = 8,
    temperatures: tuple[float, ...] = (1.0, 2.0),
) -> dict:
    """Means over the response tokens of ``data`` of the model's next-token distribution ``p = softmax(z / tau)``
    (``z`` [N, V] at the N response positions, V the tokenizer's size), in fp32:

    - ``ce_gold`` = -log p_1(gold), ``argmax_is_gold`` = [argmax z = gold] (tau 1);
    - per tau in ``temperatures``: ``entropy_t{tau}`` = -sum p log p, ``off_top1_t{tau}`` = 1 - max p,
      ``off_gold_t{tau}`` = 1 - p(gold), ``off_top64_t{tau}`` = 1 - (sum of the 64 largest p);

    plus ``tokens`` (N) and ``examples``.
    """
    tokenizer = load_tokenizer(model_spec)
    dataset = encode_examples(tokenizer, load_examples(str(data)), max_length, source=str(data))
    model = load_model(model_spec, adapter=adapter, merge_adapter=True).eval()
    weight = output_weight(model)[: len(tokenizer)].float()
    sums: dict[str, float] = {}
    tokens = 0
    for start in range(0, len(dataset), batch_size):
        batch = collate(dataset[start : start + batch_size], tokenizer.pad_token_id)
        hidden, gold = response_hidden(
            final_hidden(model, batch["input_ids"], batch["attention_mask"]), batch["labels"]
        )
        logits = F.linear(hidden.float(), weight)
        logp1 = torch.log_softmax(logits, dim=-1)
        values = {
            "ce_gold": -logp1.gather(1, gold[:, None])[:, 0],
            "argmax_is_gold": (logits.argmax(-1) == gold).float(),
        }
        for tau in temperatures:
            logp = torch.log_softmax(logits / tau, dim=-1)
            p = logp.exp()
            values[f"entropy_t{tau:g}"] = -(p * logp).sum(-1)
            values[f"off_top1_t{tau:g}"] = 1 - p.max(-1).values
            values[f"off_gold_t{tau:g}"] = 1 - p.gather(1, gold[:, None])[:, 0]
            values[f"off_top64_t{tau:g}"] = 1 - p.topk(min(64, p.shape[-1]), dim=-1).values.sum(-1)
        for key, value in values.items():
            sums[key] = sums.get(key, 0.0) + float(value.double().sum())
        tokens += int(gold.numel())
    return {**{key: total / max(tokens, 1) for key, total in sums.items()}, "tokens": tokens, "examples": len(dataset)}
