"""Text similarity of a student output (hypothesis) to the teacher output (reference): ROUGE-L and sacrebleu BLEU."""

from __future__ import annotations


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two token lists.

    Bit-parallel (Allison & Dix 1986; Hyyroe 2004): bit i of ``v`` is 0 where row i of the LCS table steps up;
    one big-integer update per token of ``b``, so O(len(b) * len(a) / wordsize).
    """
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for token in b:
        u = v & masks.get(token, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def rouge_l(hypothesis: str, reference: str) -> float:
    """ROUGE-L F1 of ``hypothesis`` against ``reference`` over lowercased whitespace tokens.

    With ``L = LCS(hyp, ref)``: precision ``L / len(hyp)``, recall ``L / len(ref)``, F1 their harmonic mean; 0 when
    either text has no token (as rouge-score). No stemming, punctuation stays attached to its word.
    """
    hyp, ref = hypothesis.lower().split(), reference.lower().split()
    common = lcs_length(ref, hyp)
    if common == 0:
        return 0.0
    precision, recall = common / len(hyp), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def sentence_bleu(hypothesis: str, reference: str) -> float:
    """sacrebleu's sentence BLEU (0-100) with its defaults (13a tokenisation, exp smoothing, effective order)."""
    import sacrebleu

    return float(sacrebleu.sentence_bleu(hypothesis, [reference]).score)


def corpus_bleu(hypotheses: list[str], references: list[str]) -> float:
    """sacrebleu's corpus BLEU (0-100) with its defaults (13a tokenisation, exp smoothing)."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)
