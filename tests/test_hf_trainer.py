"""DistillationTrainer: the transformers Trainer computes kdlab's own objective, and trains, on tiny models (CPU)."""

import pytest
import torch

from kdlab.config import KDConfig
from kdlab.data.formats import load_examples
from kdlab.data.tokenize import collate, count_response_tokens, encode_examples
from kdlab.distillation_loss import DistillationLoss
from kdlab.errors import KdlabError
from kdlab.hf_trainer import DistillationTrainer
from kdlab.models.load import load_model, load_tokenizer
from kdlab.train.objectives import DistillObjective, kd_spec

KD = KDConfig(loss="fkl", temperature=2.0, kd_weight=0.5)


@pytest.fixture
def setup(tiny_models, synth_train):
    tokenizer = load_tokenizer(str(tiny_models["student"]))
    data = encode_examples(tokenizer, load_examples(synth_train)[:4], max_length=512)
    return {
        "tok": tokenizer,
        "data": data,
        "student": load_model(str(tiny_models["student"])),
        "teacher": load_model(str(tiny_models["teacher"])),
        "batch": collate(list(data), tokenizer.pad_token_id),
    }


def trainer(setup, tmp_path, batch_size=4, grad_accum=1, **kwargs) -> DistillationTrainer:
    from transformers import TrainingArguments

    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=5,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=grad_accum,
        learning_rate=1e-2,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        remove_unused_columns=False,
        lr_scheduler_type="constant",
        seed=0,
    )
    pad = setup["tok"].pad_token_id
    return DistillationTrainer(
        model=setup["student"],
        args=args,
        train_dataset=setup["data"],
        data_collator=lambda items: collate(items, pad),
        loss_fn=DistillationLoss(KD.loss, KD.temperature, KD.kd_weight),
        **kwargs,
    )


def kdlab_loss(objective, model, batch) -> torch.Tensor:
    """kdlab's own loop: the objective's sum over response tokens / the step's response tokens."""
    return objective(model, batch, 0) / count_response_tokens(batch["labels"])


def train_losses(trainer: DistillationTrainer) -> list[float]:
    trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def test_first_step_equals_kdlabs_loop_and_the_loss_falls(setup, tmp_path):
    t = trainer(setup, tmp_path, teacher=setup["teacher"])
    batch = setup["batch"]
    vocab = len(setup["tok"])
    want = kdlab_loss(
        DistillObjective(kd_spec(KD, 256), seed=0, rank=0, teacher=setup["teacher"], vocab_size=vocab),
        setup["student"],
        batch,
    )
    got = t.compute_loss(
        setup["student"], dict(batch), num_items_in_batch=torch.tensor(count_response_tokens(batch["labels"]))
    )
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    curve = train_losses(t)
    assert len(curve) == 5
    assert curve[0] == pytest.approx(want.item(), rel=1e-3)  # the logged loss of step 1, before any update
    assert curve[-1] < curve[0]


def test_gradient_accumulation_keeps_the_per_token_mean(setup, tmp_path):
    """2 micro-batches of 2: the first step's loss is still the mean over all 4 examples' response tokens."""
    t = trainer(setup, tmp_path, batch_size=2, grad_accum=2, teacher=setup["teacher"])
    vocab = len(setup["tok"])
    want = kdlab_loss(
        DistillObjective(kd_spec(KD, 256), seed=0, rank=0, teacher=setup["teacher"], vocab_size=vocab),
        setup["student"],
        setup["batch"],
    )
    curve = train_losses(t)
    assert curve[0] == pytest.approx(want.item(), rel=1e-3) and curve[-1] < curve[0]
    metrics = t.evaluate(eval_dataset=setup["data"])
    assert 0 < metrics["eval_loss"] < curve[0]


def test_teacher_cache_equals_the_cached_objective(setup, tmp_path):
    from kdlab.teacher_cache import build_cache, load_cache

    vocab = len(setup["tok"])
    build_cache(
        setup["teacher"], setup["tok"], setup["data"], tmp_path / "cache", k=16, vocab_size=vocab, progress=False
    )
    cache = load_cache(tmp_path / "cache", teacher=setup["teacher"], dataset=setup["data"])
    t = trainer(setup, tmp_path, teacher_cache=cache)
    batch = setup["batch"]
    want = kdlab_loss(DistillObjective(kd_spec(KD, 256), seed=0, rank=0, cache=cache), setup["student"], batch)
    got = t.compute_loss(
        setup["student"], dict(batch), num_items_in_batch=torch.tensor(count_response_tokens(batch["labels"]))
    )
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    hidden = setup["student"](
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
    ).hidden_states[-1]
    from_rows = t.loss_fn(
        hidden, setup["student"].lm_head.weight, batch["labels"], teacher_cache=cache.rows(batch["index"])
    )
    torch.testing.assert_close(from_rows, want, rtol=1e-6, atol=1e-7)
    curve = train_losses(t)
    assert len(curve) == 5 and curve[-1] < curve[0]


def test_needs_exactly_one_teacher_source(setup, tmp_path):
    with pytest.raises(KdlabError, match="either teacher"):
        trainer(setup, tmp_path)
