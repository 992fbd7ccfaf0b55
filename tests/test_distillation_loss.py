"""DistillationLoss: kdlab's training objective as a module, checked against the plain losses in float64."""

import pytest
import torch
import torch.nn.functional as F

from kdlab.distillation_loss import DistillationLoss
from kdlab.errors import KdlabError
from kdlab.losses import LOSSES, naive_distill_loss

B, T, H_S, H_T, V = 3, 7, 5, 6, 13
CASES = [("fkl", 2.0, 0.5, {}), ("rkl", 1.0, 1.0, {}), ("gjsd", 2.0, 0.3, {"beta": 0.5}), ("fkl", 1.0, 0.0, {})]


def batch(seed: int = 0, teacher_vocab: int = V):
    """Random hidden states and weights (float64) and labels with -100 on a prompt of 2 tokens and some padding,
    in DistillationLoss's argument order."""
    g = torch.Generator().manual_seed(seed)
    student_hidden = torch.randn(B, T, H_S, generator=g, requires_grad=True)
    student_weight = torch.randn(V, H_S, generator=g, requires_grad=True)
    teacher_hidden = torch.randn(B, T, H_T, generator=g)
    teacher_weight = torch.randn(teacher_vocab, H_T, generator=g)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[:, :2] = -100
    labels[1, 5:] = -100  # padding
    return student_hidden, student_weight, labels, teacher_hidden, teacher_weight


def reference(student_hidden, student_weight, labels, teacher_hidden, teacher_weight, loss, tau, w, kwargs):
    """Full logits, shifted like a transformers causal LM, then kdlab's naive (unchunked) objective / N."""
    student_logits = (student_hidden @ student_weight.T)[:, :-1]
    teacher_logits = (teacher_hidden @ teacher_weight[:V].T)[:, :-1]
    keep = labels[:, 1:] != -100
    total = naive_distill_loss(
        student_logits[keep],
        teacher_logits[keep],
        labels[:, 1:][keep],
        loss=loss,
        temperature=tau,
        kd_weight=w,
        loss_kwargs=kwargs,
    )
    return total / keep.sum()


@pytest.mark.parametrize("loss,tau,w,kwargs", CASES)
def test_equals_the_naive_loss_in_value_and_gradient(float64_by_default, loss, tau, w, kwargs):
    inputs = batch()
    got = DistillationLoss(loss, temperature=tau, kd_weight=w, chunk_size=4, loss_kwargs=kwargs)(*inputs)
    got_grads = torch.autograd.grad(got, inputs[:2])
    want = reference(*inputs, loss, tau, w, kwargs)
    want_grads = torch.autograd.grad(want, inputs[:2])
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for g, r in zip(got_grads, want_grads):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("loss,tau,kwargs", [("fkl", 2.0, {}), ("rkl", 2.0, {}), ("gjsd", 1.0, {"beta": 0.5})])
def test_is_the_ce_kd_mix_of_the_plain_losses(float64_by_default, loss, tau, kwargs):
    """(1 - w) * CE + w * LOSSES[name] on logits shifted the transformers way (position t predicts labels[t + 1])."""
    student_hidden, student_weight, labels, teacher_hidden, teacher_weight = batch(1)
    w = 0.5
    got = DistillationLoss(loss, temperature=tau, kd_weight=w, loss_kwargs=kwargs)(
        student_hidden, student_weight, labels, teacher_hidden, teacher_weight
    )
    student_logits, teacher_logits = student_hidden @ student_weight.T, teacher_hidden @ teacher_weight.T
    ce = F.cross_entropy(student_logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)
    kd = LOSSES[loss](student_logits[:, :-1], teacher_logits[:, :-1], labels[:, 1:], temperature=tau, **kwargs)
    torch.testing.assert_close(got, (1 - w) * ce + w * kd, rtol=1e-10, atol=1e-12)


def test_kd_weight_0_is_the_transformers_causal_lm_loss(float64_by_default):
    from kdlab.models.tiny import build_tiny_model, build_tiny_tokenizer

    model = build_tiny_model(build_tiny_tokenizer(), layers=1, hidden=32, seed=0).double()
    input_ids = torch.randint(0, 300, (2, 9), generator=torch.Generator().manual_seed(0))
    labels = input_ids.clone()
    labels[:, :3] = -100
    out = model(input_ids=input_ids, labels=labels, output_hidden_states=True)
    teacher_log_probs = torch.randn(out.logits.shape)
    got = DistillationLoss(kd_weight=0.0)(
        out.hidden_states[-1], model.lm_head.weight, labels, teacher_log_probs=teacher_log_probs
    )
    torch.testing.assert_close(got.float(), out.loss, rtol=1e-5, atol=1e-6)  # transformers computes its CE in float32


def test_teacher_log_probs_give_the_live_teachers_loss(float64_by_default):
    student_hidden, student_weight, labels, teacher_hidden, teacher_weight = batch(
        2, teacher_vocab=V + 3
    )  # padded head
    loss_fn = DistillationLoss("gjsd", temperature=2.0, kd_weight=0.7, loss_kwargs={"beta": 0.2}, chunk_size=5)
    live = loss_fn(student_hidden, student_weight, labels, teacher_hidden, teacher_weight)
    log_probs = torch.log_softmax(teacher_hidden @ teacher_weight[:V].T, dim=-1)
    from_log_probs = loss_fn(student_hidden, student_weight, labels, teacher_log_probs=log_probs)
    torch.testing.assert_close(from_log_probs, live, rtol=1e-10, atol=1e-12)
    grads = torch.autograd.grad(live, student_hidden), torch.autograd.grad(from_log_probs, student_hidden)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-12)


def test_sum_reduction_and_num_items_in_batch(float64_by_default):
    inputs = batch(3)
    n = int((inputs[2][:, 1:] != -100).sum())
    total = DistillationLoss(reduction="sum")(*inputs)
    torch.testing.assert_close(DistillationLoss()(*inputs), total / n)
    torch.testing.assert_close(DistillationLoss()(*inputs, num_items_in_batch=torch.tensor(4 * n)), total / (4 * n))


def test_refuses_bad_arguments(float64_by_default):
    student_hidden, student_weight, labels, teacher_hidden, teacher_weight = batch()
    with pytest.raises(KdlabError, match="unknown loss"):
        DistillationLoss("nope")
    with pytest.raises(KdlabError, match="exactly one teacher source"):
        DistillationLoss()(student_hidden, student_weight, labels)
    with pytest.raises(KdlabError, match="teacher_lm_head_weight"):
        DistillationLoss()(student_hidden, student_weight, labels, teacher_hidden)
    with pytest.raises(KdlabError, match="differ in"):
        DistillationLoss()(student_hidden, student_weight, labels[:, 1:], teacher_hidden, teacher_weight)
