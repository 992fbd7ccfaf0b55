"""Train/test overlap: exact and 13-gram counts on a hand-made pair and on the paper's gsm8k data."""

import json

import pytest

from kdlab.data.overlap import format_reports, normalise_question, overlap_report
from kdlab.errors import KdlabError

TRAIN_QUESTION = (
    "A farmer has 12 cows and 7 goats on his farm near the river and he buys "
    "3 more cows every spring before the rains come. How many cows does he have after two springs?"
)


def _write(path, questions):
    path.write_text(json.dumps([{"instruction": q, "input": "", "output": "x", "answer": "1"} for q in questions]))
    return path


def test_normalise_question():
    assert normalise_question("  How MANY\tcows?\n\n Two  ") == "how many cows? two"


def test_hand_made_counts(tmp_path):
    train = _write(tmp_path / "train.json", [TRAIN_QUESTION, "What is 2 plus 2?"])
    words = TRAIN_QUESTION.split()
    test_questions = [
        # exact after normalisation (case and whitespace differ): counts in both columns
        "  " + TRAIN_QUESTION.upper().replace(" ", "  \n"),
        # short exact duplicate (4 words < 13): exact only
        "what is 2   plus 2?",
        # near duplicate: first 13 words shared, then different -> 13-gram, not exact
        " ".join(words[:13]) + " and sells all the goats at the market. How many animals are left?",
        # only a 12-word run shared, surrounded by new words -> must NOT count
        "Yesterday morning " + " ".join(words[1:13]) + " but she never sells them to anybody at all.",
        # unrelated
        "A train leaves the station at noon and travels for three hours at sixty miles per hour today.",
    ]
    test = _write(tmp_path / "test.json", test_questions)
    (report,) = overlap_report(train, [test])
    assert (report.n_test, report.exact, report.ngram, report.n) == (5, 2, 2, 13)
    assert report.test_file == str(test)

    (report12,) = overlap_report(train, [test], n=12)
    assert report12.ngram == 3  # the 12-word run counts for 12-grams

    table = format_reports([report])
    assert "13-gram" in table and str(test) in table and "40.0%" in table


def test_input_field_is_part_of_the_question(tmp_path):
    train = tmp_path / "train.json"
    train.write_text(json.dumps([{"instruction": "Solve:", "input": "x + 1 = 3", "output": "x = 2"}]))
    test = tmp_path / "test.json"
    test.write_text(
        json.dumps(
            [
                {"instruction": "Solve:", "input": "", "output": "?"},
                {"instruction": "solve:", "input": "x + 1 = 3", "output": "?"},
            ]
        )
    )
    (report,) = overlap_report(train, [test])
    assert report.exact == 1


def test_bad_n_raises(tmp_path):
    train = _write(tmp_path / "train.json", ["What is 2 plus 2?"])
    with pytest.raises(KdlabError, match="got 0"):
        overlap_report(train, [train], n=0)


@pytest.mark.shared
def test_gsm8k_is_80_percent_in_math_data(shared_dir):
    data = shared_dir / "data" / "paper-kd-generalization"
    if not data.is_dir():
        pytest.skip(f"../shared data not available: {data} does not exist")
    (report,) = overlap_report(data / "train" / "math_data.json", [data / "eval" / "gsm8k" / "test.json"])
    assert (report.exact, report.n_test) == (1055, 1319)
