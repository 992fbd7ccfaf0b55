"""LLM-Adapters JSON loading errors, the prompt template and tokenisation with masked prompts."""

import json

import pytest

from kdlab.data.formats import Example, load_json_examples
from kdlab.data.prompt import PROMPT_TEMPLATE, format_prompt
from kdlab.data.tokenize import IGNORE_INDEX, collate, count_response_tokens, encode_examples
from kdlab.errors import KdlabError


def write(tmp_path, payload, name="d.json"):
    path = tmp_path / name
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return path


@pytest.mark.parametrize(
    "payload,message",
    [
        ("[1, 2", "malformed JSON at line 1"),
        ({"instruction": "x"}, "expected a JSON list of examples, got dict"),
        ([], "the dataset is empty"),
        ([{"instruction": "q", "output": "a"}, "text"], "d.json[1]: expected an object"),
        ([{"instruction": "q", "output": "a"}, {"output": "a"}], "d.json[1]: missing field 'instruction'"),
        ([{"instruction": "q", "output": 3}], "d.json[0]: field 'output' must be a string, got int"),
        ([{"instruction": "  ", "output": "a"}], "d.json[0]: field 'instruction' is empty"),
    ],
)
def test_load_errors_name_file_index_and_field(tmp_path, payload, message):
    with pytest.raises(KdlabError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_json_examples(write(tmp_path, payload))


def test_load_accepts_numeric_answers_and_missing_optional_fields(tmp_path):
    examples = load_json_examples(
        write(tmp_path, [{"instruction": "q", "output": "o", "answer": 576.0}, {"instruction": "q2", "output": "o2"}])
    )
    assert examples == [Example("q", "o", "", "576.0"), Example("q2", "o2", "", "")]


def test_prompt_template_is_alpaca_without_input():
    assert format_prompt(" What is 2+2? ") == PROMPT_TEMPLATE.format(instruction="What is 2+2?")
    assert PROMPT_TEMPLATE.endswith("### Response:\n")
    assert format_prompt("Q", "context").count("Q\n\ncontext") == 1


def test_labels_mask_the_prompt_and_cover_the_response_and_eos(tiny_models):
    from kdlab.models import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_models["student"]))
    examples = [Example("What is 2 + 3?", "2 + 3 = 5. The answer is 5."), Example("Q?", "Yes.")]
    encoded = encode_examples(tokenizer, examples, max_length=256)
    batch = collate(encoded, tokenizer.pad_token_id)
    first = encoded[0]
    labels = batch["labels"][0]
    assert (labels[: len(first.prompt_ids)] == IGNORE_INDEX).all()
    response = labels[len(first.prompt_ids) : len(first.input_ids)].tolist()
    assert response == first.response_ids and response[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(response[:-1]) == "2 + 3 = 5. The answer is 5."
    assert (batch["labels"][1][len(encoded[1].input_ids) :] == IGNORE_INDEX).all()  # padding
    assert batch["attention_mask"][1].sum() == len(encoded[1].input_ids)
    assert count_response_tokens(batch["labels"]) == len(first.response_ids) + len(encoded[1].response_ids)


def test_long_responses_are_cut_and_prompts_that_do_not_fit_are_dropped(tiny_models):
    from kdlab.models import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_models["student"]))
    short, long_prompt = Example("Q?", "a " * 200), Example("word " * 300, "a")
    encoded = encode_examples(tokenizer, [short, long_prompt], max_length=64)
    assert len(encoded) == 1 and len(encoded[0].input_ids) == 64 and encoded[0].index == 0
    with pytest.raises(KdlabError, match="no example fits in max_length=64"):
        encode_examples(tokenizer, [long_prompt], max_length=64)


def test_hub_datasets_map_columns_and_report_errors(monkeypatch):
    import datasets

    from kdlab.data.formats import load_examples

    rows = [{"question": "What is 2+2?", "solution": "2 + 2 = 4. The answer is 4.", "label": 4}]
    calls = []

    def fake_load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        if name == "missing/set":
            raise FileNotFoundError("Dataset 'missing/set' doesn't exist on the Hub")
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    examples = load_examples(
        "hf:org/math:main@test", {"instruction": "question", "output": "solution", "answer": "label"}
    )
    assert calls == [("org/math", "main", "test")]
    assert examples == [Example("What is 2+2?", "2 + 2 = 4. The answer is 4.", "", "4")]
    with pytest.raises(KdlabError, match="no column 'instruction' for field 'instruction'"):
        load_examples("hf:org/math")
    with pytest.raises(KdlabError, match="hf:missing/set: could not load Hub dataset"):
        load_examples("hf:missing/set")
