"""Every loss against its formula, computed independently here with explicit probabilities."""

import math
import re

import pytest
import torch

from kdlab.errors import KdlabError
from kdlab.losses import (
    DIVERGENCES,
    LOSSES,
    check_loss_args,
    chunked_ce_loss,
    chunked_distill_loss,
    naive_distill_loss,
    token_objective,
)
from kdlab.losses.divergences import Argument, Divergence, divergence

pytestmark = pytest.mark.usefixtures("float64_by_default")  # tests/conftest.py


def _kl(p, q):
    return (p * (p.log() - q.log())).sum(-1)


def reference_divergence(name, zs, zt, tau, beta=0.5, alpha=0.1):
    """Per-token divergence from probabilities (float64), straight from the formulas in the docstring."""
    ps, pt = torch.softmax(zs / tau, -1), torch.softmax(zt / tau, -1)
    if name == "fkl":
        return _kl(pt, ps)
    if name == "rkl":
        return _kl(ps, pt)
    if name == "gjsd":
        m = beta * pt + (1 - beta) * ps
        return beta * _kl(pt, m) + (1 - beta) * _kl(ps, m)
    if name == "skl":
        return _kl(pt, alpha * pt + (1 - alpha) * ps)
    if name == "srkl":
        return _kl(ps, alpha * ps + (1 - alpha) * pt)
    if name == "tvd":
        return 0.5 * (pt - ps).abs().sum(-1)
    raise AssertionError(name)


def make_batch(seed=0, batch=3, time=5, vocab=11, masked=((0, 0), (1, 3), (2, 4))):
    gen = torch.Generator().manual_seed(seed)
    zs = torch.randn(batch, time, vocab, generator=gen) * 2
    zt = torch.randn(batch, time, vocab, generator=gen) * 2
    labels = torch.randint(0, vocab, (batch, time), generator=gen)
    for b, t in masked:
        labels[b, t] = -100
    return zs, zt, labels


KWARGS = {"fkl": {}, "rkl": {}, "gjsd": {"beta": 0.3}, "skl": {"alpha": 0.2}, "srkl": {"alpha": 0.4}, "tvd": {}}


@pytest.mark.parametrize("name", sorted(KWARGS))
@pytest.mark.parametrize("tau", [1.0, 2.0, 5.0])
def test_loss_matches_formula_with_temperature_and_mask(name, tau):
    zs, zt, labels = make_batch()
    got = LOSSES[name](zs, zt, labels, temperature=tau, **KWARGS[name])
    keep = labels != -100
    per_token = reference_divergence(name, zs[keep], zt[keep], tau, **KWARGS[name])
    expected = per_token.sum() / keep.sum() * tau**2
    assert got.shape == ()
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_masked_positions_do_not_matter():
    zs, zt, labels = make_batch()
    changed = zs.clone()
    changed[labels == -100] = 100.0
    for name, kwargs in KWARGS.items():
        assert torch.equal(LOSSES[name](zs, zt, labels, **kwargs), LOSSES[name](changed, zt, labels, **kwargs))


def test_gjsd_end_points_are_forward_and_reverse_kl():
    zs, zt, labels = make_batch(seed=1)
    for tau in (1.0, 2.0):
        torch.testing.assert_close(LOSSES["gjsd"](zs, zt, labels, tau, beta=0.0), LOSSES["fkl"](zs, zt, labels, tau))
        torch.testing.assert_close(LOSSES["gjsd"](zs, zt, labels, tau, beta=1.0), LOSSES["rkl"](zs, zt, labels, tau))
    # Interior values approach the end points up to the scale beta (resp. 1 - beta).
    small = LOSSES["gjsd"](zs, zt, labels, beta=1e-6) / 1e-6
    torch.testing.assert_close(small, LOSSES["fkl"](zs, zt, labels), rtol=1e-4, atol=0)
    large = LOSSES["gjsd"](zs, zt, labels, beta=1 - 1e-6) / 1e-6
    torch.testing.assert_close(large, LOSSES["rkl"](zs, zt, labels), rtol=1e-4, atol=0)


def test_skew_losses_at_alpha_zero_are_plain_kl():
    zs, zt, labels = make_batch(seed=2)
    torch.testing.assert_close(LOSSES["skl"](zs, zt, labels, alpha=0.0), LOSSES["fkl"](zs, zt, labels))
    torch.testing.assert_close(LOSSES["srkl"](zs, zt, labels, alpha=0.0), LOSSES["rkl"](zs, zt, labels))


def test_identical_distributions_give_zero_and_divergences_are_positive():
    zs, zt, labels = make_batch(seed=3)
    for name, kwargs in KWARGS.items():
        assert LOSSES[name](zs, zs.clone(), labels, **kwargs).abs() < 1e-12
        assert LOSSES[name](zs, zt, labels, **kwargs) > 0


def test_all_masked_batch_gives_zero_with_zero_gradient():
    zs, zt, labels = make_batch()
    zs.requires_grad_(True)
    labels[:] = -100
    for name, kwargs in KWARGS.items():
        loss = LOSSES[name](zs, zt, labels, **kwargs)
        assert loss.item() == 0.0
        (grad,) = torch.autograd.grad(loss, zs)
        assert torch.equal(grad, torch.zeros_like(zs))


def test_gradients_reach_student_only():
    zs, zt, labels = make_batch()
    zs.requires_grad_(True)
    zt.requires_grad_(True)
    for name, kwargs in KWARGS.items():
        LOSSES[name](zs, zt, labels, **kwargs).backward()
    assert zs.grad is not None and zs.grad.abs().sum() > 0
    assert zt.grad is None


def test_forward_kl_gradient_is_scaled_softmax_difference():
    """d/dz_S [tau^2 KL(p_T || p_S)] = tau * (p_S - p_T) per kept token, divided by the token count."""
    zs, zt, labels = make_batch(seed=4)
    zs.requires_grad_(True)
    tau = 2.0
    LOSSES["fkl"](zs, zt, labels, temperature=tau).backward()
    keep = labels != -100
    expected = tau * (torch.softmax(zs / tau, -1) - torch.softmax(zt / tau, -1)).detach() / keep.sum()
    expected[~keep] = 0
    torch.testing.assert_close(zs.grad, expected)


@pytest.mark.parametrize(
    "name,tau,kwargs,message",
    [
        ("nope", 1.0, {}, "unknown loss 'nope'"),
        ("fkl", 0.0, {}, "temperature must be > 0"),
        ("fkl", -1.0, {}, "temperature must be > 0"),
        ("gjsd", 1.0, {"beta": 1.5}, "beta must be in [0, 1]"),
        ("gjsd", 1.0, {"beta": -0.1}, "beta must be in [0, 1]"),
        ("skl", 1.0, {"alpha": 1.0}, "alpha must be < 1"),
        ("fkl", 1.0, {"beta": 0.5}, "takes no argument 'beta'"),
    ],
)
def test_bad_arguments_raise_clear_errors(name, tau, kwargs, message):
    with pytest.raises(KdlabError, match=re.escape(message)):
        check_loss_args(name, tau, **kwargs)
    if name in LOSSES:  # the public API validates too
        zs, zt, labels = make_batch()
        with pytest.raises(KdlabError, match=re.escape(message)):
            LOSSES[name](zs, zt, labels, temperature=tau, **kwargs)


def test_registry_checks_temperature_and_refuses_clashing_registrations(monkeypatch):
    """A divergence without temperature takes tau = 1 only; a name, or a config field set up differently, twice is an
    error (the registry is the one list that the config, the CLI and the study spec read)."""
    fn = DIVERGENCES["tvd"].fn
    monkeypatch.setitem(DIVERGENCES, "notau", Divergence("notau", fn, "test", temperature=False))
    check_loss_args("notau", 1.0)
    with pytest.raises(KdlabError, match=re.escape("loss 'notau' takes no temperature: it must be 1, got 2.0")):
        check_loss_args("notau", 2.0)
    with pytest.raises(ValueError, match="registered twice"):
        divergence("tvd", "again")(fn)
    clash = Argument("alpha", "skew_alpha", 0.2, "skew alpha")
    with pytest.raises(ValueError, match=re.escape("kd.skew_alpha is already set up differently")):
        divergence("skl2", "skew KL again", (clash,))(fn)
    assert "skl2" not in DIVERGENCES


# --- chunked objective ---------------------------------------------------------------------------------------


def make_hidden(seed=0, n=37, hidden=8, vocab=23, teacher_hidden=6, teacher_vocab=29):
    gen = torch.Generator().manual_seed(seed)
    hs = torch.randn(n, hidden, generator=gen, dtype=torch.float32)
    ws = torch.randn(vocab, hidden, generator=gen, dtype=torch.float32)
    ht = torch.randn(n, teacher_hidden, generator=gen, dtype=torch.float32)
    wt = torch.randn(teacher_vocab, teacher_hidden, generator=gen, dtype=torch.float32)
    targets = torch.randint(0, 20, (n,), generator=gen)
    return hs, ws, ht, wt, targets


@pytest.mark.parametrize("name", sorted(KWARGS))
@pytest.mark.parametrize("kd_weight", [1.0, 0.4])
def test_chunked_matches_naive_values_and_gradients(name, kd_weight):
    hs, ws, ht, wt, targets = make_hidden()
    vocab = 20  # slice both vocabularies (the teacher pads beyond the tokenizer)
    spec = {"loss": name, "temperature": 2.0, "kd_weight": kd_weight, "loss_kwargs": KWARGS[name]}

    hs1, ws1 = hs.clone().requires_grad_(True), ws.clone().requires_grad_(True)
    naive = naive_distill_loss(hs1 @ ws1[:vocab].T, ht @ wt[:vocab].T, targets, **spec)
    naive.backward()

    hs2, ws2 = hs.clone().requires_grad_(True), ws.clone().requires_grad_(True)
    chunked = chunked_distill_loss(hs2, ws2, ht, wt, targets, vocab_size=vocab, chunk_size=8, **spec)
    chunked.backward()

    torch.testing.assert_close(chunked, naive.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hs2.grad, hs1.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ws2.grad, ws1.grad, rtol=1e-5, atol=1e-5)
    assert ws2.grad[vocab:].abs().sum() == 0


def test_token_objective_mixes_ce_and_kd():
    zs, zt, labels = make_batch()
    zs, zt, targets = zs.reshape(-1, zs.shape[-1]), zt.reshape(-1, zt.shape[-1]), labels.reshape(-1).clamp(min=0)
    tau, w = 2.0, 0.25
    got = token_objective(zs, zt, targets, "fkl", tau, w, {})
    ce = torch.nn.functional.cross_entropy(zs, targets, reduction="none")
    expected = (1 - w) * ce + w * tau**2 * reference_divergence("fkl", zs, zt, tau)
    torch.testing.assert_close(got, expected)


def test_chunked_ce_matches_cross_entropy_and_frozen_weight_gets_no_gradient():
    hs, ws, _, _, targets = make_hidden(seed=5)
    hs.requires_grad_(True)
    got = chunked_ce_loss(hs, ws, targets, chunk_size=5)
    expected = torch.nn.functional.cross_entropy(hs @ ws.T, targets, reduction="sum")
    torch.testing.assert_close(got, expected)
    got.backward()
    assert ws.grad is None and hs.grad is not None


def test_teacher_noise_is_reproducible_and_changes_the_loss():
    hs, ws, ht, wt, targets = make_hidden(seed=6)

    def run(sigma, seed):
        gen = torch.Generator().manual_seed(seed)
        return chunked_distill_loss(hs, ws, ht, wt, targets, teacher_noise=sigma, noise_generator=gen, chunk_size=10)

    assert torch.equal(run(2.0, 0), run(2.0, 0))
    assert not torch.equal(run(2.0, 0), run(2.0, 1))
    assert not torch.equal(run(2.0, 0), run(0.0, 0))
    assert math.isfinite(run(5.0, 0).item())
