"""Peer parity: kdlab's fkl / rkl / gjsd objectives against TRL's ``GKDTrainer.generalized_jsd_loss`` (trl==1.16.0).

TRL is a test/benchmark extra (``pip install -e .[peer]``), not a runtime dependency: without it this module is
skipped. Everything runs in float32, on fixed batches from (a) tiny Llama models built in code and (b) the embedded
SmolLM2-135M-Instruct as teacher with a copy pruned to 20 of its 30 layers as student (two short sequences).

TRL's conventions (``trl/experimental/gkd/gkd_trainer.py``), with ``p_S = softmax(z_S / tau)``,
``p_T = softmax(z_T / tau)``:

- **beta**: ``JSD_beta = beta * KL(p_T || M) + (1 - beta) * KL(p_S || M)`` with the mixture
  ``M = beta * p_T + (1 - beta) * p_S`` (computed as ``logsumexp(log p_S + log(1 - beta), log p_T + log beta)``).
  The end points are special-cased: ``beta = 0`` is forward KL ``KL(p_T || p_S)`` (``F.kl_div(log p_S, log p_T)``)
  and ``beta = 1`` is reverse KL ``KL(p_S || p_T)``. kdlab's ``gjsd`` uses the same beta and the same mixture, so
  kdlab ``fkl`` == TRL beta 0, kdlab ``rkl`` == TRL beta 1, kdlab ``gjsd(beta)`` == TRL ``beta``.
- **reduction** ``"batchmean"`` with labels: the per-vocabulary terms ``[B, T, V]`` are kept where
  ``labels != -100`` and summed, then divided by the number of kept tokens: ``sum over kept tokens / N``, a mean
  per token (not per sequence, despite the name). Labels are aligned with the logits (TRL's ``compute_loss``
  shifts: ``logits[:, :-1]`` with ``labels[:, 1:]``), as for ``kdlab.losses.LOSSES``.
- **temperature**: both distributions are softened by tau, but TRL does not multiply by ``tau**2``; kdlab does.
  So ``kdlab == tau**2 * TRL``, and the tests compare exactly that. (``GKDTrainer.compute_loss`` does not even pass
  ``GKDConfig.temperature`` to the loss: in the trainer that temperature only sets the on-policy sampling.)

kdlab's two forms are checked: ``LOSSES[name](z_S, z_T, labels, tau)`` (logits ``[B, T, V]``) and the chunked
training form ``chunked_distill_loss(h_S, W_S, h_T, W_T, y)`` (hidden states ``[N, H]``, lm_head weights ``[V, H]``,
a SUM over the N kept tokens, divided by N here). Values must agree within 1e-5 relative, and so must the gradients
w.r.t. the student logits (relative error of the whole gradient tensor in the 2-norm); for the tiny models the
chunked form is also run with ``h = z`` and ``W = I``, so that its input gradient *is* the logits gradient. The
chunked form's gradients w.r.t. its real inputs ``h_S`` and ``W_S`` are checked within 1e-4: they pass through the
product ``dL/dz @ W_S``, a sum of V = 49152 terms that cancel (``dL/dz`` sums to 0 over the vocabulary), whose fp32
rounding alone is ~1e-5 (measured on the SmolLM2 batch: TRL's own fp32 ``dL/dh`` is 8e-6 from float64, and
kdlab's, computed chunk by chunk, 1.5e-5 with 16-token chunks, 3e-5 with 7-token ones: small matrix products
round worse). ``test_parity_check_catches_mistakes`` shows the same check fails for a
swapped KL direction, a missing ``tau**2`` and a wrong beta.
"""

import copy

import pytest
import torch

gkd = pytest.importorskip("trl.experimental.gkd")

from kdlab.data.formats import Example  # noqa: E402
from kdlab.data.tokenize import collate, encode_examples  # noqa: E402
from kdlab.losses import LOSSES, chunked_distill_loss  # noqa: E402
from kdlab.models.heads import final_hidden, output_weight  # noqa: E402

trl_loss = gkd.GKDTrainer.generalized_jsd_loss
RTOL = 1e-5
RTOL_THROUGH_MATMUL = 1e-4  # gradients w.r.t. hidden states and lm_head weight (see the module docstring)
TEMPERATURES = [1.0, 2.0]
# (kdlab loss, its kwargs, TRL beta)
CASES = [("fkl", {}, 0.0), ("rkl", {}, 1.0)] + [("gjsd", {"beta": b}, b) for b in (0.0, 0.1, 0.5, 0.9, 1.0)]
CASE_IDS = ["fkl", "rkl"] + [f"gjsd{b}" for b in (0.0, 0.1, 0.5, 0.9, 1.0)]

EXAMPLES = [
    Example(
        instruction="Tom has 3 apples and buys 4 more. How many apples does he have?",
        output="Tom has 3 + 4 = 7 apples. The answer is 7.",
    ),
    Example(instruction="Ann had 9 pens and gave away 5. How many are left?", output="9 - 5 = 4. The answer is 4."),
]


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected||_2 / ||expected||_2 (a scalar's relative error, or a whole gradient tensor's)."""
    return float((actual.detach() - expected.detach()).norm() / expected.detach().norm())


class Batch:
    """One fixed batch through a teacher and a student, detached (each test builds its own graph from it).

    kdlab's right-padded batch of ``EXAMPLES`` (``batch``: input_ids, attention_mask, labels [B, T], unshifted),
    and, already shifted and aligned as the losses take them (position t predicts token t + 1):
    ``hidden_s [B, T-1, H_s]``, ``hidden_t [B, T-1, H_t]`` final hidden states of positions 0..T-2,
    ``labels [B, T-1] = batch["labels"][:, 1:]`` and ``keep = labels != -100``; ``weight_s [V, H_s]``,
    ``weight_t [V, H_t]``: the lm_head weights.
    """

    def __init__(self, teacher, student, tokenizer):
        encoded = encode_examples(tokenizer, EXAMPLES, max_length=128)
        batch = collate(encoded, tokenizer.pad_token_id)
        with torch.no_grad():
            self.hidden_s = final_hidden(student.eval(), batch["input_ids"], batch["attention_mask"])[:, :-1]
            self.hidden_t = final_hidden(teacher.eval(), batch["input_ids"], batch["attention_mask"])[:, :-1]
        self.weight_s, self.weight_t = output_weight(student).detach(), output_weight(teacher).detach()
        self.labels = batch["labels"][:, 1:]
        self.keep = self.labels != -100
        self.batch, self.teacher, self.student = batch, teacher, student

    def logits(self):
        """(student logits [B, T-1, V] requiring grad, teacher logits [B, T-1, V])."""
        z_s = (self.hidden_s @ self.weight_s.T).requires_grad_(True)
        return z_s, self.hidden_t @ self.weight_t.T


@pytest.fixture(scope="module")
def tiny_batch():
    """Tiny Llama teacher (2 layers, hidden 64) and student (1 layer, hidden 32) on one byte-level BPE tokenizer;
    init_std 0.3 gives peaked distributions, far apart (a well-conditioned divergence)."""
    from kdlab.models.tiny import build_tiny_model, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    teacher = build_tiny_model(tokenizer, layers=2, hidden=64, seed=1, init_std=0.3)
    student = build_tiny_model(tokenizer, layers=1, hidden=32, seed=2, init_std=0.3)
    return Batch(teacher, student, tokenizer)


@pytest.fixture(scope="module")
def smollm2_batch():
    """SmolLM2-135M-Instruct as teacher, a copy pruned to 20 of its 30 layers as student (V = 49152)."""
    from kdlab.models.load import load_model, load_tokenizer
    from kdlab.models.prune import prune_layers

    teacher = load_model("smollm2-135m")
    student, _ = prune_layers(copy.deepcopy(teacher), 20)
    return Batch(teacher, student, load_tokenizer("smollm2-135m"))


@pytest.fixture(params=["tiny", "smollm2"])
def fixed_batch(request) -> Batch:
    return request.getfixturevalue(f"{request.param}_batch")


@pytest.mark.parametrize("tau", TEMPERATURES)
@pytest.mark.parametrize(("name", "kwargs", "beta"), CASES, ids=CASE_IDS)
def test_kdlab_losses_match_trl(fixed_batch, name, kwargs, beta, tau):
    """kdlab == tau^2 * TRL generalized_jsd_loss(beta, batchmean), values and gradients, for both kdlab forms.

    TRL's gradient is taken w.r.t. the student logits ``z_S = h_S @ W_S.T`` [B, T-1, V]; the reference gradients of
    the chunked form's inputs follow by the chain rule: ``dL/dh_S = dL/dz_S @ W_S`` [N, H] and
    ``dL/dW_S = dL/dz_S^T @ h_S`` [V, H] (over the N kept positions; masked ones have dL/dz_S = 0).
    """
    b = fixed_batch
    z_s, z_t = b.logits()
    theirs = tau**2 * trl_loss(z_s, z_t, labels=b.labels, beta=beta, temperature=tau)
    (grad_z,) = torch.autograd.grad(theirs, z_s)
    assert grad_z[~b.keep].abs().max() == 0  # masked positions get no gradient

    # LOSSES[name]: logits [B, T-1, V] and aligned labels, mean over kept tokens
    ours = LOSSES[name](z_s, z_t, b.labels, temperature=tau, **kwargs)
    assert rel_err(ours, theirs) < RTOL, (ours.item(), theirs.item())
    (grad_ours,) = torch.autograd.grad(ours, z_s)
    assert rel_err(grad_ours, grad_z) < RTOL

    # chunked_distill_loss, as in training: hidden states of the N kept positions, a sum divided by N here
    keep, n = b.keep, int(b.keep.sum())
    h_s = b.hidden_s[keep].clone().requires_grad_(True)  # [N, H_s]
    w_s = b.weight_s.clone().requires_grad_(True)  # [V, H_s]
    chunked = (
        chunked_distill_loss(
            h_s,
            w_s,
            b.hidden_t[keep],
            b.weight_t,
            b.labels[keep],
            loss=name,
            temperature=tau,
            kd_weight=1.0,
            loss_kwargs=kwargs,
            chunk_size=16,
        )
        / n
    )
    assert rel_err(chunked, theirs) < RTOL, (chunked.item(), theirs.item())
    grad_h, grad_w = torch.autograd.grad(chunked, (h_s, w_s))
    assert rel_err(grad_h, grad_z[keep] @ b.weight_s) < RTOL_THROUGH_MATMUL
    assert rel_err(grad_w, grad_z[keep].T @ b.hidden_s[keep]) < RTOL_THROUGH_MATMUL


@pytest.mark.parametrize("tau", TEMPERATURES)
@pytest.mark.parametrize(("name", "kwargs", "beta"), CASES, ids=CASE_IDS)
def test_chunked_logit_gradient_matches_trl(tiny_batch, name, kwargs, beta, tau):
    """The chunked form fed with the logits themselves (h = z [N, V], W = identity [V, V]): its input gradient is the
    gradient w.r.t. the student logits (tiny vocabulary only: a 49152^2 identity would not fit)."""
    z_s, z_t = tiny_batch.logits()
    keep, vocab = tiny_batch.keep, z_s.shape[-1]
    eye = torch.eye(vocab)
    ours = chunked_distill_loss(
        z_s[keep],
        eye,
        z_t[keep],
        eye,
        tiny_batch.labels[keep],
        loss=name,
        temperature=tau,
        loss_kwargs=kwargs,
        chunk_size=5,
    ) / int(keep.sum())
    theirs = tau**2 * trl_loss(z_s, z_t, labels=tiny_batch.labels, beta=beta, temperature=tau)
    assert rel_err(ours, theirs) < RTOL
    (grad_ours,) = torch.autograd.grad(ours, z_s)
    (grad_theirs,) = torch.autograd.grad(theirs, z_s)
    assert rel_err(grad_ours, grad_theirs) < RTOL


@pytest.mark.parametrize(("name", "kwargs", "beta"), CASES, ids=CASE_IDS)
def test_gkd_trainer_compute_loss_matches_kdlab_objective(tiny_batch, name, kwargs, beta):
    """TRL's own training-step loss (GKDTrainer.compute_loss: full model forwards, its shift, labels as the mask,
    num_items_in_batch = kept tokens) equals kdlab's training objective (DistillObjective: sum / N) at tau 1.

    compute_loss is called unbound on a stand-in for the trainer holding what it reads (teacher_model, beta)."""
    from types import SimpleNamespace

    from kdlab.config import KDConfig
    from kdlab.train.objectives import DistillObjective, kd_spec

    b = tiny_batch
    n = int(b.keep.sum())
    inputs = {key: b.batch[key] for key in ("input_ids", "attention_mask", "labels")}
    trainer = SimpleNamespace(teacher_model=b.teacher, beta=beta, generalized_jsd_loss=trl_loss)
    theirs = gkd.GKDTrainer.compute_loss(trainer, b.student, inputs, num_items_in_batch=torch.tensor(n))
    kd = KDConfig(loss=name, temperature=1.0, kd_weight=1.0, **({"beta": kwargs["beta"]} if kwargs else {}))
    objective = DistillObjective(kd_spec(kd, 16), seed=0, rank=0, teacher=b.teacher, vocab_size=b.weight_s.shape[0])
    ours = objective(b.student, b.batch, step=1) / n
    assert rel_err(ours, theirs) < RTOL, (ours.item(), theirs.item())


@pytest.mark.parametrize("batch_name", ["tiny_batch", "smollm2_batch"])
def test_parity_check_catches_mistakes(request, batch_name):
    """The comparison above is sharp: a swapped KL direction, a missing tau^2 or another beta all fail it by orders of
    magnitude more than the tolerance. (Not every mistake would: on the tiny batch, whose two distributions are
    nearly symmetric, gjsd(0.1) and TRL's beta 0.9 differ by only 1.7e-4 relative.)"""
    b = request.getfixturevalue(batch_name)
    z_s, z_t = b.logits()
    fkl = LOSSES["fkl"](z_s, z_t, b.labels)
    assert rel_err(fkl, trl_loss(z_s, z_t, labels=b.labels, beta=1.0)) > 1000 * RTOL  # fkl is TRL's beta 0, not 1
    rkl = LOSSES["rkl"](z_s, z_t, b.labels)
    assert rel_err(rkl, trl_loss(z_s, z_t, labels=b.labels, beta=0.0)) > 1000 * RTOL
    fkl2 = LOSSES["fkl"](z_s, z_t, b.labels, temperature=2.0)
    without_tau2 = trl_loss(z_s, z_t, labels=b.labels, beta=0.0, temperature=2.0)
    assert rel_err(fkl2, without_tau2) > 1000 * RTOL  # kdlab = tau^2 * TRL: off by 4 without the factor
    assert rel_err(fkl2, 4 * without_tau2) < RTOL
    gjsd = LOSSES["gjsd"](z_s, z_t, b.labels, beta=0.1)
    assert rel_err(gjsd, trl_loss(z_s, z_t, labels=b.labels, beta=0.5)) > 1000 * RTOL  # another beta
    # gradients too: a swapped direction gives another gradient
    (g_fkl,) = torch.autograd.grad(fkl, z_s)
    (g_rev,) = torch.autograd.grad(trl_loss(z_s, z_t, labels=b.labels, beta=1.0), z_s)
    assert rel_err(g_fkl, g_rev) > 1000 * RTOL
