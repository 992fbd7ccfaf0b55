"""The decision statement of a response: found on real outputs, mapped to tokens, rewritten."""

import pytest

from kdlab.data.answer_span import answer_token_mask, find_answer_span, replace_answer_value, with_answer_masks
from kdlab.data.formats import Example
from kdlab.data.tokenize import collate, encode_examples

# (response text, statement, value): outputs of the synthetic generator, LLM-Adapters commonsense and math files,
# and model generations seen in kdlab's evaluation logs
CASES = [
    ("Tom has 12 apples and buys 5 more, so he has 12 + 5 = 17 apples. The answer is 17.", "The answer is 17.", "17"),
    ("the correct answer is option2", "the correct answer is option2", "option2"),
    ("Sentence 1 fits better. the correct answer is answer1", "the correct answer is answer1", "answer1"),
    ("So the price is 3.5 dollars. The answer is 3.5.", "The answer is 3.5.", "3.5"),
    ("48 / 2 = 24 clips in May. 48 + 24 = 72. The answer is 1,272.", "The answer is 1,272.", "1,272"),
    ("The speed is 60 km/h. The answer is (D).", "The answer is (D).", "D"),
    ("First, the answer is 3. Then we add 4. The answer is 7.\n", "The answer is 7.", "7"),
    ("The answer is: 12\nExplanation follows", "The answer is: 12", "12"),
    ("answer is 5", "answer is 5", "5"),
]


@pytest.mark.parametrize("text,statement,value", CASES)
def test_statement_and_value_on_real_outputs(text, statement, value):
    span = find_answer_span(text)
    assert text[span.start : span.end] == statement
    assert span.value(text) == value


@pytest.mark.parametrize("text", ["12 + 5 = 17 apples.", "", "The answer is .", "I do not know the answer"])
def test_no_statement_no_span(text):
    assert find_answer_span(text) is None
    assert replace_answer_value(text, "3") is None


def test_replace_value():
    assert replace_answer_value("So 2 + 2 = 4. The answer is 4.", "5") == "So 2 + 2 = 4. The answer is 5."
    assert replace_answer_value("the correct answer is option2", "option1") == "the correct answer is option1"
    assert replace_answer_value("The answer is (D).", "B") == "The answer is (B)."


def _tokenizers(tiny_models):
    from kdlab.models.load import load_tokenizer

    return {"tiny": load_tokenizer(str(tiny_models["student"])), "smollm2": load_tokenizer("smollm2-135m")}


@pytest.mark.parametrize("name", ["tiny", "smollm2"])
def test_token_mask_covers_exactly_the_statement(tiny_models, name):
    """On real tokenisations: the marked tokens are one run that decodes to the statement and (at most a space or a
    neighbouring character) nothing else."""
    tokenizer = _tokenizers(tiny_models)[name]
    for text, statement, _ in CASES:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        mask = answer_token_mask(tokenizer, text)
        marked = [i for i, flag in enumerate(mask) if flag]
        assert marked == list(range(marked[0], marked[-1] + 1))  # one contiguous run
        decoded = tokenizer.decode([ids[i] for i in marked])
        assert statement.strip() in decoded and len(decoded.strip()) <= len(statement) + 2, (text, decoded)


def test_masks_are_aligned_with_labels_in_a_batch(tiny_models):
    from kdlab.models.load import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_models["student"]))
    examples = [
        Example("What is 2 + 3?", "2 + 3 = 5. The answer is 5.", answer="5"),
        Example("Pick one.", "the correct answer is option1", answer="option1"),
        Example("No statement here.", "It is 4 apples.", answer="4"),
    ]
    encoded = with_answer_masks(tokenizer, examples, encode_examples(tokenizer, examples, max_length=256))
    batch = collate(encoded, tokenizer.pad_token_id)
    mask, labels = batch["answer_mask"], batch["labels"]
    assert not (mask & (labels == -100)).any()  # only response tokens
    assert tokenizer.decode(labels[0][mask[0]]).strip() == "The answer is 5."
    assert tokenizer.decode(labels[1][mask[1]]).strip() == "the correct answer is option1"
    assert not mask[2].any()
    eos = [len(item.input_ids) - 1 for item in encoded]
    assert not any(mask[row, position] for row, position in enumerate(eos))  # EOS is not part of the decision
