"""Teacher-forced token KL and top-1 agreement on tiny models (kdlab.fidelity_metrics.distribution)."""

import json

import pytest
import torch

from kdlab.errors import KdlabError
from kdlab.fidelity_metrics import distribution_fidelity


def test_identical_models_have_zero_kl_and_full_agreement(tiny_models, talker_eval):
    talker = str(tiny_models["talker"])
    result = distribution_fidelity(talker, talker, talker_eval, batch_size=3)["arith"]
    assert result["tokens"] > 4
    assert abs(result["kl_teacher_student"]) < 1e-5 and abs(result["kl_student_teacher"]) < 1e-5
    assert result["top1_agreement"] == 1.0


def test_different_models_diverge(tiny_models, talker_eval):
    result = distribution_fidelity(str(tiny_models["talker"]), str(tiny_models["teacher"]), talker_eval)["arith"]
    assert result["kl_teacher_student"] > 0 and result["kl_student_teacher"] > 0
    assert result["top1_agreement"] < 1


def test_token_kl_equals_full_logits_computation(tiny_models, talker_eval):
    from kdlab.models.load import load_model, load_tokenizer

    talker, teacher = str(tiny_models["talker"]), str(tiny_models["teacher"])  # teacher's lm_head is padded by 7 rows
    result = distribution_fidelity(talker, teacher, talker_eval, limit=1)["arith"]
    record = json.loads((talker_eval / "predictions" / "arith.jsonl").read_text().splitlines()[0])
    assert record["id"] == 0
    tokenizer = load_tokenizer(talker)
    prompt = tokenizer(record["prompt"], add_special_tokens=True)["input_ids"]
    response = tokenizer(record["output"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = torch.tensor([prompt + response])
    vocab = len(tokenizer)
    with torch.no_grad():
        p_logits = load_model(talker)(input_ids=ids).logits[0, len(prompt) - 1 : -1, :vocab].double()
        q_logits = load_model(teacher)(input_ids=ids).logits[0, len(prompt) - 1 : -1, :vocab].double()
    log_t, log_s = p_logits.log_softmax(-1), q_logits.log_softmax(-1)  # "teacher" = talker here
    fkl = (log_t.exp() * (log_t - log_s)).sum(-1)
    rkl = (log_s.exp() * (log_s - log_t)).sum(-1)
    assert result["tokens"] == len(response)
    assert result["kl_teacher_student"] == pytest.approx(float(fkl.mean()), rel=1e-4)
    assert result["kl_student_teacher"] == pytest.approx(float(rkl.mean()), rel=1e-4)
    assert result["top1_agreement"] == pytest.approx(
        float((p_logits.argmax(-1) == q_logits.argmax(-1)).double().mean())
    )


def test_different_tokenizers_are_refused(tiny_models, talker_eval):
    with pytest.raises(KdlabError, match=r"'.*talker'.*'.*other'.*different tokenizers"):
        distribution_fidelity(str(tiny_models["talker"]), str(tiny_models["other"]), talker_eval)
