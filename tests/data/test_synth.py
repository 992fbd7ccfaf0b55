"""Synthetic arithmetic problems: determinism, disjoint splits, correct rationales, errors."""

import re

import pytest

from kdlab.data.formats import load_json_examples
from kdlab.data.overlap import normalise_question
from kdlab.data.synth import generate_arith, is_test_question, write_synth
from kdlab.errors import KdlabError

EQUATION = re.compile(r"(\d+) ([-+x/]) (\d+) = (\d+)")
APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "x": lambda a, b: a * b, "/": lambda a, b: a / b}


def test_same_seed_gives_identical_bytes(tmp_path):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    write_synth(first, 200, seed=7, split="train")
    write_synth(second, 200, seed=7, split="train")
    assert first.read_bytes() == second.read_bytes()
    assert len(load_json_examples(first)) == 200


def test_different_seeds_differ():
    assert generate_arith(50, seed=1) != generate_arith(50, seed=2)


def test_train_and_test_are_disjoint_across_seeds():
    train = {normalise_question(e.instruction) for seed in range(4) for e in generate_arith(300, seed, "train")}
    test = {normalise_question(e.instruction) for seed in range(4) for e in generate_arith(300, seed, "test")}
    assert train and test and not train & test
    assert not any(is_test_question(q) for q in train) and all(is_test_question(q) for q in test)


def test_no_duplicate_questions_within_a_file():
    examples = generate_arith(500, seed=3, split="test", max_steps=1)
    assert len({normalise_question(e.instruction) for e in examples}) == 500


@pytest.mark.parametrize("split", ["train", "test"])
def test_rationales_are_correct(split):
    for example in generate_arith(400, seed=11, split=split):
        assert example.input == ""
        assert example.instruction.endswith("?")
        match = re.search(r"The answer is (\d+)\.$", example.output)
        assert match, example.output
        assert match.group(1) == example.answer
        equations = EQUATION.findall(example.output)
        assert 1 <= len(equations) <= 3
        for a, op, b, c in equations:
            assert APPLY[op](int(a), int(b)) == int(c), (example.output, a, op, b, c)
            assert int(c) >= 0
        assert equations[-1][3] == example.answer  # the last step gives the answer


@pytest.mark.parametrize("min_steps,max_steps", [(1, 1), (2, 2), (3, 3), (2, 3)])
def test_step_counts_in_range(min_steps, max_steps):
    counts = {len(EQUATION.findall(e.output)) for e in generate_arith(150, 0, "train", max_steps, min_steps)}
    assert counts == set(range(min_steps, max_steps + 1))


@pytest.mark.parametrize(
    "kwargs,culprit",
    [
        ({"n": 5, "seed": 0, "split": "dev"}, "'dev'"),
        ({"n": 0, "seed": 0}, "0"),
        ({"n": -3, "seed": 0}, "-3"),
        ({"n": 5, "seed": 0, "max_steps": 4}, "max_steps=4"),
        ({"n": 5, "seed": 0, "min_steps": 0}, "min_steps=0"),
        ({"n": 5, "seed": 0, "min_steps": 3, "max_steps": 2}, "min_steps=3"),
    ],
)
def test_bad_arguments_raise(kwargs, culprit):
    with pytest.raises(KdlabError, match=re.escape(culprit)):
        generate_arith(**kwargs)


def test_small_scale_uses_small_numbers_and_correct_rationales():
    import re

    examples = generate_arith(200, seed=0, split="train", max_steps=1, scale="small")
    for example in examples:
        assert max(int(n) for n in re.findall(r"\d+", example.instruction)) <= 20, example.instruction
        for a, op, b, c in re.findall(r"(\d+) ([-+x/]) (\d+) = (\d+)", example.output):
            assert {"+": int(a) + int(b), "-": int(a) - int(b), "x": int(a) * int(b), "/": int(a) / int(b)}[op] == int(
                c
            )
    standard = generate_arith(50, seed=0, split="train", max_steps=1)
    assert [e.instruction for e in standard] != [e.instruction for e in examples[:50]]
    assert max(int(n) for e in standard for n in re.findall(r"\d+", e.instruction)) > 20
    with pytest.raises(KdlabError, match="unknown scale 'huge'"):
        generate_arith(5, seed=0, scale="huge")


def test_standard_scale_output_is_unchanged():
    """The default ranges are pinned: files written by earlier versions stay reproducible."""
    import hashlib
    import json

    digest = hashlib.sha256(
        json.dumps(
            [e.__dict__ for e in generate_arith(300, 0, "train")]
            + [e.__dict__ for e in generate_arith(100, 3, "test", max_steps=1)]
        ).encode()
    ).hexdigest()
    assert digest == "c28dc4247e9e6b6d2276d318768a221d0357f67ae6db3c1cf444786c10f69282"
