"""ROUGE-L and the bit-parallel LCS (kdlab.fidelity_metrics.text)."""

import random

import pytest

from kdlab.fidelity_metrics import lcs_length, rouge_l


def test_rouge_l_on_hand_computed_examples():
    # LCS("the cat sat on the mat", "the cat lay on a mat") = the cat on mat = 4: P = R = 4/6
    assert rouge_l("The cat lay on a mat", "the cat sat on the mat") == pytest.approx(2 / 3)
    # LCS = 2 ("the cat"; "mat" comes first in the hypothesis): P = 2/3, R = 2/6 -> F1 = 2 * (2/9) / 1 = 4/9
    assert rouge_l("mat the cat", "the cat sat on the mat") == pytest.approx(4 / 9)
    assert rouge_l("cat the mat", "the cat sat on the mat") == pytest.approx(2 / 3)  # LCS 3: P = 1, R = 1/2
    assert rouge_l("same words here", "Same words here") == 1.0
    assert rouge_l("", "x") == 0.0 and rouge_l("", "") == 0.0 and rouge_l("a b", "c d") == 0.0


def test_bit_parallel_lcs_matches_dynamic_programming():
    def reference(a, b):
        table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i in range(len(a)):
            for j in range(len(b)):
                table[i + 1][j + 1] = table[i][j] + 1 if a[i] == b[j] else max(table[i][j + 1], table[i + 1][j])
        return table[-1][-1]

    rng = random.Random(0)
    for _ in range(200):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 70))]
        b = [rng.choice("abcd") for _ in range(rng.randint(0, 70))]
        assert lcs_length(a, b) == reference(a, b)
