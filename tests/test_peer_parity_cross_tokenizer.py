"""Peer parity: kdlab's cross-tokenizer losses (``uld``, ``gold``) against TRL 1.16's GOLD trainer.

The peer is ``trl/experimental/gold/gold_trainer.py``: ``ULDLoss`` (``_compute_distillation_loss``,
``_align_by_byte_offsets``, ``_merge_probabilities_with_alignment_groups``, ``_compute_hybrid_uld_loss``). TRL is a
test extra (``pip install -e .[peer]``): without it this module is skipped.

Conventions, and how they are matched here:

- **merge strategy**: kdlab's span distribution is TRL's ``uld_token_merge_strategy="bayesian"`` (the full
  distribution at the span's last token times the probabilities of its earlier tokens, each read at the position
  that predicts it). TRL's default ``"observed"`` reads the logits of the answer positions themselves, which predict
  the *next* token, one position later than the tokens they are merged with; kdlab does not implement it
  (``test_the_check_can_fail`` shows it differs).
- **EOS**: TRL drops the last answer token of each side by default (``uld_skip_*_eos``); kdlab pairs the two EOS
  tokens as a span (both zero-width at the end of the text), so the tests set ``uld_skip_*_eos=False``.
- **normalisation**: TRL averages the span losses of an example, then the examples; kdlab's objective weights each
  span by its student tokens and divides by the batch's response tokens (:mod:`kdlab.losses.cross_tokenizer`). The
  tests compare kdlab's span losses under TRL's averaging (:func:`weighted_span_loss` with weights
  ``1 / (examples * spans of the example)``), and kdlab's objective separately
  (with one tokenizer it must equal kdlab's per-token ``gjsd``).
- **temperature**: TRL softens both sides by tau without ``tau**2``; :func:`weighted_span_loss` has none either
  (kdlab's objective applies it to every KD term).
- **shared vocabulary**: TRL pairs identical token strings (``get_vocab``); kdlab pairs identical bytes and the two
  EOS tokens by role. For two byte-level tokenizers with the same EOS string the pairs are the same (asserted).

Values and gradients agree within 1e-5 relative, in float32. Gradients are taken w.r.t. the student logits: kdlab's
loss runs on hidden states and an output layer, so here ``h = z`` and ``W = I`` (its input gradient is then the
logits gradient), and once on real hidden states and lm_head weights (1e-4: the product ``dL/dz @ W`` rounds).
"""

from types import SimpleNamespace

import pytest
import torch
from kdlab_testing import distill_config

gold = pytest.importorskip("trl.experimental.gold.gold_trainer")

from kdlab.data.formats import Example  # noqa: E402
from kdlab.data.token_alignment import byte_offsets, shared_vocabulary, token_bytes  # noqa: E402
from kdlab.data.tokenize import collate, encode_examples  # noqa: E402
from kdlab.losses.chunked import chunked_distill_loss  # noqa: E402
from kdlab.losses.cross_tokenizer import CrossSpec, SharedVocab, Side, cross_tokenizer_objective, weighted_span_loss  # noqa: E402
from kdlab.models.heads import final_hidden, output_weight, response_hidden  # noqa: E402
from kdlab.models.tiny import build_tiny_model, build_tiny_tokenizer  # noqa: E402
from kdlab.train.inputs import with_teacher_tokens  # noqa: E402

RTOL = 1e-5
EXAMPLES = [
    Example(
        instruction="Tom has 3 apples and buys 14 more. How many?",
        output="Tom has 3 + 14 = 17 apples. The answer is 17.",
    ),
    Example(instruction="Ann had 9 pens and gave 5 away. Left?", output="9 - 5 = 4 pens (café). The answer is 4."),
    Example(instruction="What is 120 / 4?", output="120 / 4 = 30. The answer is 30."),
]


def rel_err(actual, expected) -> float:
    return float((actual.detach() - expected.detach()).norm() / expected.detach().norm())


class Pair:
    """A fixed batch of :data:`EXAMPLES` for a student and a teacher with different tokenizers: kdlab's collated
    batch (with the teacher's tokens and the spans), both models' final hidden states [B, T, H] (detached), their
    output layers, and each row's response byte offsets laid out as TRL takes them ([B, T, 2], zeros elsewhere)."""

    def __init__(self, student_tok, teacher_tok, student, teacher):
        config = distill_config(256)
        encoded = with_teacher_tokens(
            encode_examples(student_tok, EXAMPLES, 256), EXAMPLES, student_tok, teacher_tok, config
        )
        self.batch = b = collate(encoded, student_tok.pad_token_id)
        self.student_tok, self.teacher_tok = student_tok, teacher_tok
        with torch.no_grad():
            self.hidden_s = final_hidden(student.eval(), b["input_ids"], b["attention_mask"])
            self.hidden_t = final_hidden(teacher.eval(), b["teacher_input_ids"], b["teacher_attention_mask"])
        self.weight_s, self.weight_t = output_weight(student).detach(), output_weight(teacher).detach()
        self.offsets_s = self._offsets(
            student_tok, b["input_ids"], [e.response_ids for e in encoded], [len(e.prompt_ids) for e in encoded]
        )
        self.offsets_t = self._offsets(
            teacher_tok,
            b["teacher_input_ids"],
            [e.teacher.response_ids for e in encoded],
            [len(e.teacher.prompt_ids) for e in encoded],
        )
        self.rows = torch.tensor([len(e.response_ids) for e in encoded]).cumsum(0)

    @staticmethod
    def _offsets(tokenizer, input_ids, responses, prompts):
        pieces, out = token_bytes(tokenizer), torch.zeros((*input_ids.shape, 2), dtype=torch.long)
        for row, (response, prompt) in enumerate(zip(responses, prompts, strict=True)):
            spans = byte_offsets(pieces, response, EXAMPLES[row].output.strip(), "parity")
            out[row, prompt : prompt + len(response)] = torch.tensor(spans)
        return out

    def logits(self):
        """(student logits [B, T_S, V_S] requiring grad, teacher logits [B, T_T, V_T])."""
        return (self.hidden_s @ self.weight_s.T).requires_grad_(True), self.hidden_t @ self.weight_t.T

    def trl_weights(self):
        """TRL's averaging as span weights [G]: ``1 / (examples * spans of the span's example)``."""
        row = torch.searchsorted(self.rows, self.batch["span_student_last"], right=True)
        return 1.0 / (len(self.rows) * torch.bincount(row).float()[row])

    def kdlab_spans(self, spec, z_s, z_t, shared):
        """kdlab's span losses with ``h = z`` and ``W = I``, under TRL's averaging (spans, then examples)."""
        b = self.batch
        h_s, y_s = response_hidden(z_s, b["labels"])
        h_t, y_t = response_hidden(z_t, b["teacher_labels"])
        student = Side(h_s, torch.eye(z_s.shape[-1]), y_s, b["span_student_last"], b["span_student_of"])
        teacher = Side(h_t, torch.eye(z_t.shape[-1]), y_t, b["span_teacher_last"], b["span_teacher_of"])
        return weighted_span_loss(spec, student, teacher, shared, self.trl_weights())

    def trl(self, hybrid: bool, tau: float, beta=0.5, matched=None, strategy="bayesian"):
        config = SimpleNamespace(
            uld_crossentropy_weight=0.0,
            uld_distillation_weight=1.0,
            uld_student_temperature=tau,
            uld_teacher_temperature=tau,
            uld_skip_student_eos=False,
            uld_skip_teacher_eos=False,
            use_extended_uld=True,
            uld_token_merge_strategy=strategy,
            uld_use_hybrid_loss=hybrid,
            uld_hybrid_matched_weight=matched,
            uld_hybrid_unmatched_weight=None if matched is None else 1 - matched,
            beta=beta,
        )
        loss = gold.ULDLoss(config, student_tokenizer=self.student_tok, teacher_tokenizer=self.teacher_tok)
        b = self.batch

        def run(z_s, z_t):
            return loss(
                z_s,
                z_t,
                b["labels"],
                b["teacher_labels"],
                b["input_ids"],
                b["teacher_input_ids"],
                self.offsets_s,
                self.offsets_t,
            )

        return run, loss

    def shared(self):
        student_ids, teacher_ids = shared_vocabulary(self.student_tok, self.teacher_tok)
        return SharedVocab.build(student_ids, teacher_ids, self.weight_s.shape[0], self.weight_t.shape[0])


def teacher_tokenizer():
    """A byte-level BPE tokenizer trained on the batch's own responses (merges such as " 14" and "apples" that the
    tiny tokenizer splits, while it splits some the tiny one merges), with the tiny tokenizer's EOS string."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from kdlab.models.tiny import EOS_TOKEN

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=290, special_tokens=[EOS_TOKEN], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator([e.output for e in EXAMPLES] * 3, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN)


@pytest.fixture(scope="module")
def pair():
    """Student: 1 layer over the 384-token tiny tokenizer; teacher: 2 layers over :func:`teacher_tokenizer` (other
    merges, same EOS string); init_std 0.3 gives peaked, varied distributions."""
    student_tok, teacher_tok = build_tiny_tokenizer(), teacher_tokenizer()
    student = build_tiny_model(student_tok, layers=1, hidden=32, seed=2, init_std=0.3)
    teacher = build_tiny_model(teacher_tok, layers=2, hidden=64, seed=1, init_std=0.3)
    return Pair(student_tok, teacher_tok, student, teacher)


def test_the_batch_has_spans_of_several_tokens(pair):
    """The fixed batch exercises the merge: spans of more than one token on each side, and every EOS paired."""
    b = pair.batch
    s_sizes = torch.bincount(b["span_student_of"][b["span_student_of"] >= 0])
    t_sizes = torch.bincount(b["span_teacher_of"][b["span_teacher_of"] >= 0])
    assert (s_sizes > 1).any() and (t_sizes > 1).any() and (s_sizes != t_sizes).any()
    assert int((b["span_student_of"] < 0).sum()) == 0 and int((b["span_teacher_of"] < 0).sum()) == 0


def test_shared_vocabulary_is_trls_for_byte_level_pairs(pair):
    _, trl_loss = pair.trl(hybrid=True, tau=1.0)
    shared = pair.shared()
    teacher_ids = sorted(trl_loss._teacher_matched_ids)
    assert shared.teacher_ids.tolist() == teacher_ids
    assert shared.student_ids.tolist() == [trl_loss._vocab_mapping[t] for t in teacher_ids]


@pytest.mark.parametrize("tau", [1.0, 2.0])
@pytest.mark.parametrize(
    ("loss", "beta", "matched"),
    [("uld", 0.5, None), ("gold", 0.5, None), ("gold", 0.1, 0.3), ("gold", 0.0, 0.7), ("gold", 1.0, 0.5)],
    ids=["uld", "gold-adaptive", "gold-b0.1-w0.3", "gold-fkl-w0.7", "gold-rkl-w0.5"],
)
def test_span_losses_match_trl(pair, loss, beta, matched, tau):
    """kdlab's span losses under TRL's averaging == TRL ``ULDLoss`` (bayesian merge, extended ULD), value and
    gradient w.r.t. the student logits."""
    run, _ = pair.trl(hybrid=loss == "gold", tau=tau, beta=beta, matched=matched)
    spec = CrossSpec(loss, tau, 1.0, beta, -1.0 if matched is None else matched, chunk_size=5)
    z_s, z_t = pair.logits()
    theirs = run(z_s, z_t)
    (grad_theirs,) = torch.autograd.grad(theirs, z_s)
    z_s, _ = pair.logits()
    ours = pair.kdlab_spans(spec, z_s, z_t, pair.shared() if loss == "gold" else None)
    (grad_ours,) = torch.autograd.grad(ours, z_s)
    assert float(theirs.detach()) > 0.01
    assert rel_err(ours, theirs) < RTOL
    assert rel_err(grad_ours, grad_theirs) < RTOL


def test_span_losses_match_trl_through_real_hidden_states(pair):
    """The same on the models' own hidden states and lm_head weights: gradients w.r.t. h_S and W_S (1e-4, see
    the module docstring)."""
    run, _ = pair.trl(hybrid=True, tau=1.0, matched=0.5)
    b = pair.batch
    h_s, w_s = pair.hidden_s.clone().requires_grad_(True), pair.weight_s.clone().requires_grad_(True)
    theirs = run(h_s @ w_s.T, pair.hidden_t @ pair.weight_t.T)
    grads_theirs = torch.autograd.grad(theirs, (h_s, w_s))
    h_s, w_s = pair.hidden_s.clone().requires_grad_(True), pair.weight_s.clone().requires_grad_(True)
    rows_s, y_s = response_hidden(h_s, b["labels"])
    rows_t, y_t = response_hidden(pair.hidden_t, b["teacher_labels"])
    student = Side(rows_s, w_s, y_s, b["span_student_last"], b["span_student_of"])
    teacher = Side(rows_t, pair.weight_t, y_t, b["span_teacher_last"], b["span_teacher_of"])
    spec = CrossSpec("gold", shared_weight=0.5, chunk_size=4)
    ours = weighted_span_loss(spec, student, teacher, pair.shared(), pair.trl_weights())
    grads_ours = torch.autograd.grad(ours, (h_s, w_s))
    assert rel_err(ours, theirs) < RTOL
    for mine, peer in zip(grads_ours, grads_theirs, strict=True):
        assert rel_err(mine, peer) < 1e-4


def test_the_check_can_fail(pair):
    """The parity check is sharp: TRL's "observed" merge, a wrong temperature and a wrong beta all fail it."""
    z_s, z_t = pair.logits()
    ours = pair.kdlab_spans(CrossSpec("gold", 1.0, beta=0.5, shared_weight=0.5), z_s, z_t, pair.shared())
    observed, _ = pair.trl(hybrid=True, tau=1.0, matched=0.5, strategy="observed")
    hotter, _ = pair.trl(hybrid=True, tau=2.0, matched=0.5)
    other_beta, _ = pair.trl(hybrid=True, tau=1.0, beta=0.1, matched=0.5)
    for peer in (observed, hotter, other_beta):
        assert rel_err(ours, peer(z_s, z_t)) > 1e-3


@pytest.mark.parametrize(("kd_weight", "tau", "beta"), [(1.0, 1.0, 0.5), (0.5, 2.0, 0.1)])
def test_gold_with_one_tokenizer_is_kdlabs_token_level_gjsd(kd_weight, tau, beta):
    """With the same tokenizer on both sides every span is one token and all of it is shared: ``gold`` with
    shared_weight 1 is kdlab's per-token gjsd objective (normalisation, tau^2 and CE mix included)."""
    tokenizer = build_tiny_tokenizer()
    student = build_tiny_model(tokenizer, layers=1, hidden=32, seed=2)
    teacher = build_tiny_model(tokenizer, layers=2, hidden=64, seed=1)
    pair = Pair(tokenizer, tokenizer, student, teacher)
    b = pair.batch
    assert torch.equal(b["span_tokens"], torch.ones_like(b["span_tokens"]))
    h_s = response_hidden(pair.hidden_s, b["labels"])
    h_t = response_hidden(pair.hidden_t, b["teacher_labels"])
    spec = CrossSpec("gold", tau, kd_weight, beta, shared_weight=1.0, chunk_size=7)

    def ours(hidden, weight):
        student = Side(hidden, weight, h_s[1], b["span_student_last"], b["span_student_of"])
        teacher = Side(h_t[0], pair.weight_t, h_t[1], b["span_teacher_last"], b["span_teacher_of"])
        return cross_tokenizer_objective(spec, student, teacher, b["span_tokens"], pair.shared())

    def reference(hidden, weight):
        return chunked_distill_loss(
            hidden,
            weight,
            h_t[0],
            pair.weight_t,
            h_s[1],
            loss="gjsd",
            temperature=tau,
            kd_weight=kd_weight,
            loss_kwargs={"beta": beta},
        )

    results = []
    for fn in (ours, reference):
        hidden, weight = h_s[0].clone().requires_grad_(True), pair.weight_s.clone().requires_grad_(True)
        value = fn(hidden, weight)
        results.append((value, *torch.autograd.grad(value, (hidden, weight))))
    for mine, ref in zip(*results, strict=True):
        assert rel_err(mine, ref) < RTOL


def test_chunk_size_changes_nothing(pair):
    """Chunks of 3 spans / tokens or all at once: the same values and gradients (uld and gold)."""
    for loss in ("uld", "gold"):
        results = []
        for chunk in (3, 10_000):
            z_s, z_t = pair.logits()
            value = pair.kdlab_spans(CrossSpec(loss, 2.0, shared_weight=0.4, chunk_size=chunk), z_s, z_t, pair.shared())
            results.append((value, *torch.autograd.grad(value, z_s)))
        for small, whole in zip(*results, strict=True):
            assert rel_err(small, whole) < 1e-6
