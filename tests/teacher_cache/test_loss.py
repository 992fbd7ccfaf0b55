"""Teacher cache loss: exactness at k = V, quantisation error, the tail at each temperature, teacher noise, and the
cached objective against the live teacher."""

import warnings

import pytest
import torch

from kdlab.data.tokenize import collate
from kdlab.errors import KdlabError
from kdlab.losses import TOKEN_DIVERGENCES
from kdlab.teacher_cache import TailApproximationWarning, build_cache, cached_divergence, load_cache


def _cache(setup, path, **kw):
    build_cache(setup["teacher"], setup["tok"], setup["data"], path, progress=False, **kw)
    return load_cache(path, teacher=setup["teacher"], dataset=setup["data"])


@pytest.mark.parametrize(
    "loss,kw", [("fkl", {}), ("rkl", {}), ("gjsd", {"beta": 0.5}), ("gjsd", {"beta": 0.0}), ("tvd", {})]
)
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_full_vocab_exact_and_quantised(setup, tmp_path, loss, kw, tau):
    S, T, V = setup["S"], setup["T"], setup["V"]
    ref = TOKEN_DIVERGENCES[loss](S, T, tau, **kw)
    exact = _cache(setup, tmp_path / "exact", k=V, quantize=False)
    rows = exact.rows(setup["batch"]["index"])
    assert rows.ids.shape == (S.shape[0], V)
    for tail in ("bucket", "renormalize"):  # identical when the tail is empty
        torch.testing.assert_close(cached_divergence(S, rows, loss, tau, tail=tail, **kw), ref, atol=2e-5, rtol=1e-5)
    quant = _cache(setup, tmp_path / "quant", k=V)
    got = cached_divergence(S, quant.rows(setup["batch"]["index"]), loss, tau, **kw)
    err = (got - ref).abs()
    # measured: fkl tau=1 mean 2.3e-3 / max 1.4e-2 nats on a mean of 3.85 nats
    assert err.mean() < 5e-3 * max(1.0, ref.mean().item()) and err.max() < 5e-2


def test_topk_smaller_than_vocab(setup, tmp_path):
    S, T = setup["S"], setup["T"]
    cache = _cache(setup, tmp_path / "k64", k=64, quantize=False)
    rows = cache.rows(setup["batch"]["index"])
    # ids are the teacher's top-64, log-probs exact
    top = torch.topk(T, 64).indices
    assert torch.equal(rows.ids, top)
    torch.testing.assert_close(rows.logp, torch.log_softmax(T, -1).gather(1, top), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rows.raw_logits, T.gather(1, top), atol=1e-4, rtol=1e-5)
    ref = TOKEN_DIVERGENCES["fkl"](S, T, 1.0)
    bucket = cached_divergence(S, rows, "fkl", 1.0, tail="bucket")
    assert (bucket <= ref + 1e-5).all()  # coarsening cannot increase KL
    assert ((ref - bucket).mean() / ref.mean()) < 0.1
    renorm = cached_divergence(S, rows, "fkl", 1.0, tail="renormalize")
    assert torch.isfinite(renorm).all() and (renorm >= -1e-6).all()
    from kdlab.teacher_cache.loss import _teacher_log_probs

    for tau in (0.5, 2.0, 5.0):  # stored (2, 5): exact tail mass; not stored (0.5): uniform approximation
        true_tail = 1 - torch.softmax(T / tau, -1).gather(1, top).sum(-1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TailApproximationWarning)
            got_tail = _teacher_log_probs(rows, tau, "bucket")[:, -1].exp()
            assert torch.isfinite(cached_divergence(S, rows, "fkl", tau)).all()
        assert (got_tail - true_tail).abs().max() < (0.15 if tau == 0.5 else 1e-5)
    quant = _cache(setup, tmp_path / "k64q", k=64)
    q = cached_divergence(S, quant.rows(setup["batch"]["index"]), "fkl", 1.0)
    assert (q - bucket).abs().mean() < 5e-3


def _coarsened_reference(S, T, ids, tau, loss):
    """The k + 1 bucket divergence from full logits, written independently: softmax at tau over V for both models,
    the probabilities of the k ids plus the sum of all the others, then KL over those k + 1 outcomes."""
    p_t, p_s = torch.softmax(T.double() / tau, -1), torch.softmax(S.double() / tau, -1)
    coarse = []
    for p in (p_t, p_s):
        top = p.gather(1, ids)
        coarse.append(torch.cat([top, (p.sum(-1) - top.sum(-1)).unsqueeze(1)], dim=1))
    q_t, q_s = coarse
    if loss == "rkl":
        q_t, q_s = q_s, q_t
    return (q_t * (q_t.log() - q_s.log())).sum(-1)


@pytest.mark.parametrize("loss", ["fkl", "rkl"])
def test_bucket_tail_is_exact_at_a_stored_temperature(setup, tmp_path, loss):
    """k < V, exact cache: at tau = 2 (stored) the bucket divergence and its gradient equal the full logits coarsened
    to the same k + 1 outcomes."""
    S, T, _V = setup["S"], setup["T"], setup["V"]
    cache = _cache(setup, tmp_path / "k16", k=16, quantize=False, temperatures=[2.0])
    assert cache.temperatures == (1.0, 2.0) and cache.manifest["temperatures"] == [1.0, 2.0]
    rows = cache.rows(setup["batch"]["index"])
    tau = 2.0
    tail_mass = 1 - torch.softmax(T / tau, -1).gather(1, rows.ids).sum(-1)
    assert tail_mass.mean() > 0.2  # the tail matters at this temperature: a test the uniform approximation fails
    student = S.double().clone().requires_grad_(True)
    ref = _coarsened_reference(student, T, rows.ids, tau, loss)
    (ref_grad,) = torch.autograd.grad(ref.sum(), student)
    student = S.clone().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TailApproximationWarning)  # no approximation at a stored temperature
        got = cached_divergence(student, rows, loss, tau, tail="bucket")
    (grad,) = torch.autograd.grad(got.sum(), student)
    torch.testing.assert_close(got.double(), ref.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad.double(), ref_grad, atol=1e-5, rtol=1e-5)
    # within 1e-6 of a stored temperature counts as stored
    torch.testing.assert_close(cached_divergence(S, rows, loss, tau + 5e-7), got.detach(), atol=1e-5, rtol=1e-5)


def test_unstored_temperature_uses_the_uniform_tail_and_warns_once(setup, tmp_path, monkeypatch):
    import kdlab.teacher_cache.loss as tc

    monkeypatch.setattr(tc, "_warned_temperatures", set())
    S, V = setup["S"], setup["V"]
    rows = _cache(setup, tmp_path / "k16", k=16, quantize=False).rows(setup["batch"]["index"])
    tau, k = 3.0, 16
    with pytest.warns(TailApproximationWarning, match=r"temperature 3 \(stored: 1, 2, 5\)"):
        got = tc._teacher_log_probs(rows, tau, "bucket")
    n = V - k
    uniform_tail = torch.log(torch.tensor(float(n))) + (rows.tail_logp - torch.log(torch.tensor(float(n)))) / tau
    expected = torch.log_softmax(torch.cat([rows.logp / tau, uniform_tail.unsqueeze(1)], 1), -1)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TailApproximationWarning)  # once per process and temperature
        cached_divergence(S, rows, "fkl", tau)


def test_gradient_reaches_student(setup, tmp_path):
    cache = _cache(setup, tmp_path / "c", k=32)
    S = setup["S"].clone().requires_grad_(True)
    for loss in ("fkl", "rkl", "gjsd"):
        for tail in ("bucket", "renormalize"):
            value = cached_divergence(S, cache.rows(setup["batch"]["index"]), loss, 2.0, tail=tail).mean()
            (grad,) = torch.autograd.grad(value, S)
            assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_bad_arguments(setup, tmp_path):
    cache = _cache(setup, tmp_path / "c", k=8)
    rows = cache.rows(setup["batch"]["index"])
    with pytest.raises(KdlabError):
        cached_divergence(setup["S"], rows, "fkl", 1.0, tail="drop")
    with pytest.raises(KdlabError):
        cached_divergence(setup["S"], rows, "nope", 1.0)
    with pytest.raises(KdlabError):
        cached_divergence(setup["S"][:3], rows, "fkl", 1.0)
    with pytest.raises(KdlabError):
        build_cache(setup["teacher"], setup["tok"], setup["data"], tmp_path / "d", k=0, progress=False)


def _loss_and_grads(objective, student, batch):
    student.zero_grad(set_to_none=True)
    loss = objective(student, batch, 3)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in student.named_parameters()}


@pytest.mark.parametrize(
    "loss,tau,w,noise",
    [
        ("fkl", 1.0, 1.0, 0.0),
        ("fkl", 2.0, 1.0, 0.0),
        ("rkl", 1.0, 1.0, 0.0),
        ("rkl", 2.0, 0.5, 0.0),
        ("fkl", 2.0, 1.0, 1.0),
        ("gjsd", 2.0, 1.0, 0.0),
    ],
)
def test_cached_objective_equals_the_live_teacher(objective_setup, loss, tau, w, noise):
    """Exact cache with k = V: one step's loss and gradients equal the live teacher's, noise draws included."""
    from kdlab.config import KDConfig
    from kdlab.train.objectives import DistillObjective, kd_spec

    s = objective_setup
    kd = KDConfig(loss=loss, temperature=tau, kd_weight=w, teacher_noise=noise)
    batch = collate([s["data"][i] for i in (5, 0, 3, 6)], s["tok"].pad_token_id)
    live = DistillObjective(kd_spec(kd, 64), seed=0, rank=0, teacher=s["teacher"], vocab_size=s["V"])
    cached = DistillObjective(kd_spec(kd, 64), seed=0, rank=0, cache=s["cache"])
    ref_loss, ref_grads = _loss_and_grads(live, s["student"], batch)
    got_loss, got_grads = _loss_and_grads(cached, s["student"], batch)
    assert batch["labels"][:, 1:].ne(-100).sum() > 64  # several chunks
    torch.testing.assert_close(got_loss, ref_loss, rtol=1e-5, atol=1e-5)
    for name, ref in ref_grads.items():
        scale = max(1.0, ref.abs().max().item())
        assert (got_grads[name] - ref).abs().max().item() <= 1e-5 * scale, name


def test_cached_noise_reaches_the_tail_as_a_uniform_bucket(objective_setup, tmp_path):
    """k < V with noise: the top-k get the live draws, the tail bucket the logsumexp of the other draws."""
    from kdlab.teacher_cache.loss import _teacher_log_probs

    s = objective_setup
    build_cache(s["teacher"], s["tok"], s["data"], tmp_path / "k8", k=8, quantize=False, progress=False)
    rows = load_cache(tmp_path / "k8").rows(torch.tensor([s["data"][0].index]))
    noise = 2.0 * torch.randn(len(rows), s["V"], generator=torch.Generator().manual_seed(0))
    log_p = _teacher_log_probs(rows, 1.0, "bucket", noise)
    assert torch.allclose(log_p.exp().sum(-1), torch.ones(len(rows)), atol=1e-5)
    # top-k relative weights are exactly the noisy ones
    top = rows.logp + noise.gather(1, rows.ids)
    torch.testing.assert_close(log_p[:, :8] - log_p[:, :1], top - top[:, :1], atol=1e-5, rtol=1e-5)
    # zero noise gives the noiseless teacher, at a stored temperature (exact tail) and at another (uniform tail)
    for tau in (2.0, 3.0):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TailApproximationWarning)
            torch.testing.assert_close(
                _teacher_log_probs(rows, tau, "bucket", torch.zeros_like(noise)),
                _teacher_log_probs(rows, tau, "bucket"),
                atol=1e-5,
                rtol=1e-5,
            )
    # at a stored tau the tail's weight is the exact tail sum shared over the V - k tail tokens, each with its draw
    tau = 2.0
    log_p = _teacher_log_probs(rows, tau, "bucket", noise)
    tail_noise = noise.scatter(1, rows.ids, float("-inf"))
    tail = rows.tail_lse[:, 1] - torch.log(torch.tensor(s["V"] - 8.0)) + torch.logsumexp(tail_noise / tau, -1)
    ref = torch.log_softmax(torch.cat([(rows.logp + noise.gather(1, rows.ids)) / tau, tail.unsqueeze(1)], 1), -1)
    torch.testing.assert_close(log_p, ref, atol=1e-5, rtol=1e-5)


def test_cached_objective_refuses_misaligned_rows(objective_setup):
    from kdlab.config import KDConfig
    from kdlab.train.objectives import DistillObjective, kd_spec

    s = objective_setup
    batch = collate([s["data"][0], s["data"][1]], s["tok"].pad_token_id)
    batch["labels"][0, len(s["data"][0].input_ids) - 1] = -100  # one response token fewer than the cache holds
    with pytest.raises(KdlabError, match="cached rows"):
        DistillObjective(kd_spec(KDConfig(), 64), seed=0, rank=0, cache=s["cache"])(s["student"], batch, 1)


@pytest.mark.parametrize(
    "settings",
    [
        {"disagreement_gamma": 2.0},
        {"answer_weight": 5.0},
        {"answer_weight": 3.0, "disagreement_gamma": 1.0, "kd_weight": 0.5, "temperature": 2.0},
        {"answer_weight": 2.0, "answer_target": "teacher", "loss": "rkl"},
    ],
)
def test_cached_fidelity_weights_equal_the_live_teacher(objective_setup, settings):
    """Decision-level and disagreement weights: the cached objective (exact cache, k = V) equals the live one."""
    from kdlab.config import KDConfig
    from kdlab.data.answer_span import with_answer_masks
    from kdlab.data.formats import load_examples
    from kdlab.train.objectives import DistillObjective, kd_spec

    s = objective_setup
    data = with_answer_masks(s["tok"], load_examples(s["synth_train"]), s["data"])
    assert sum(any(item.answer_mask) for item in data) >= 4  # long ones lose the statement to max_length
    kd = KDConfig(**settings)
    batch = collate([data[i] for i in (5, 0, 3, 6)], s["tok"].pad_token_id)
    live = DistillObjective(kd_spec(kd, 64), seed=0, rank=0, teacher=s["teacher"], vocab_size=s["V"])
    cached = DistillObjective(kd_spec(kd, 64), seed=0, rank=0, cache=s["cache"])
    ref_loss, ref_grads = _loss_and_grads(live, s["student"], batch)
    got_loss, got_grads = _loss_and_grads(cached, s["student"], batch)
    plain = KDConfig(loss=kd.loss, temperature=kd.temperature, kd_weight=kd.kd_weight)
    plain_loss, _ = _loss_and_grads(
        DistillObjective(kd_spec(plain, 64), 0, 0, teacher=s["teacher"], vocab_size=s["V"]), s["student"], batch
    )
    assert abs(ref_loss - plain_loss) > 1e-3 * plain_loss  # the weights change the objective
    torch.testing.assert_close(got_loss, ref_loss, rtol=1e-5, atol=1e-5)
    for name, ref in ref_grads.items():
        scale = max(1.0, ref.abs().max().item())
        assert (got_grads[name] - ref).abs().max().item() <= 1e-5 * scale, name
