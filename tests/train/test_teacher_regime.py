"""The teacher's peakedness on the students' data, against a float64 computation from the full logits."""

import math

import torch

from kdlab.data.formats import load_examples
from kdlab.data.tokenize import collate, encode_examples
from kdlab.models.load import load_model, load_tokenizer
from kdlab.train.teacher_regime import token_peakedness


def test_peakedness_equals_the_full_logits_in_float64(tiny_models, synth_train):
    teacher = str(tiny_models["talker"])  # varied distributions, so every statistic is away from its bound
    got = token_peakedness(teacher, None, synth_train, max_length=128, batch_size=3)

    tokenizer = load_tokenizer(teacher)
    dataset = encode_examples(tokenizer, load_examples(str(synth_train)), 128, source="t")
    model = load_model(teacher).eval()
    rows = []
    with torch.no_grad():
        for item in dataset:
            batch = collate([item], tokenizer.pad_token_id)
            logits = model(input_ids=batch["input_ids"]).logits[0, :-1, : len(tokenizer)].double()
            labels = batch["labels"][0, 1:]
            keep = labels != -100
            rows.append((logits[keep], labels[keep]))
    logits = torch.cat([r[0] for r in rows])
    gold = torch.cat([r[1] for r in rows])
    assert got["tokens"] == len(gold) and got["examples"] == len(dataset)
    logp = torch.log_softmax(logits, -1)
    assert math.isclose(got["ce_gold"], float(-logp[torch.arange(len(gold)), gold].mean()), rel_tol=1e-4)
    assert math.isclose(got["argmax_is_gold"], float((logits.argmax(-1) == gold).double().mean()), abs_tol=1e-9)
    for tau in (1, 2):
        p = torch.softmax(logits / tau, -1)
        assert math.isclose(got[f"entropy_t{tau}"], float(-(p * p.log()).sum(-1).mean()), rel_tol=1e-4)
        assert math.isclose(got[f"off_top1_t{tau}"], float((1 - p.max(-1).values).mean()), rel_tol=1e-4)
        assert math.isclose(got[f"off_gold_t{tau}"], float((1 - p[torch.arange(len(gold)), gold]).mean()), rel_tol=1e-4)
        top64 = 1 - p.topk(64, -1).values.sum(-1)
        assert math.isclose(got[f"off_top64_t{tau}"], float(top64.mean()), rel_tol=1e-3, abs_tol=1e-6)
    assert 0 < got["off_top1_t1"] < got["off_top1_t2"] < 1  # softening moves mass off the top token
