"""kdlab eval on a test file with one very long question: the prompt limit (model context minus the generation
budget, or --max-prompt-tokens), --on-long truncate|drop|error in both modes, the counts in metrics.json, and an
evaluation that fails leaving no half-written output folder."""

import json

import pytest
from kdlab_testing import run_cli

from kdlab import generation as generation_module
from kdlab.errors import KdlabError
from kdlab.eval import evaluate as evaluate_module
from kdlab.eval.evaluate import EvalSettings, evaluate
from kdlab.models.tiny import build_tiny_tokenizer

CONTEXT = 1024  # max_position_embeddings of the tiny models (kdlab.models.tiny)
LONG = "What is 3 plus 4? " * 2800  # 50,400 characters, about 28,000 tokens of the tiny tokenizer


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def long_dir(tmp_path_factory):
    """arith (two short questions, then one of 50k characters) and boolq (the same for a choice task)."""
    from kdlab.data.synth import write_synth

    root = tmp_path_factory.mktemp("long-data")
    write_synth(root / "arith" / "test.json", n=2, seed=3, split="test")
    items = json.loads((root / "arith" / "test.json").read_text())
    items.append({"instruction": LONG + "How many?", "input": "", "output": "The answer is 7.", "answer": "7"})
    (root / "arith" / "test.json").write_text(json.dumps(items))
    boolq = [
        {"instruction": f"{q}\n\nAnswer format: true/false", "input": "", "output": "", "answer": a}
        for q, a in [("Is water wet?", "true"), (LONG + "Is fire cold?", "false"), ("Is ice hot?", "false")]
    ]
    (root / "boolq").mkdir()
    (root / "boolq" / "test.json").write_text(json.dumps(boolq))
    return root


def settings(tmp_path, model, name, data_dir, **kwargs):
    base = {"model": str(model), "tasks": ["arith"], "out": str(tmp_path / name), "data_dir": str(data_dir)}
    return EvalSettings(**{"max_new_tokens": 12, "batch_size": 4, **base, **kwargs})


@pytest.fixture
def prompt_lengths(monkeypatch):
    """The prompt lengths given to generation; a prompt past the model's context stands for the 13.8 GB
    allocation of the report and fails at once (as it would under a memory limit)."""
    seen = []
    original = generation_module.generate_ids

    def spy(model, tokenizer, prompt_ids, *args, **kwargs):
        seen.extend(len(ids) for ids in prompt_ids)
        if max(seen) > CONTEXT:
            raise MemoryError(f"a prompt of {max(seen)} tokens")
        return original(model, tokenizer, prompt_ids, *args, **kwargs)

    monkeypatch.setattr(generation_module, "generate_ids", spy)
    return seen


def test_a_long_question_is_truncated_to_the_context_keeping_its_end(tiny_models, long_dir, tmp_path, prompt_lengths):
    """Why: nothing limited the prompt length; one 2 MB question made kdlab eval allocate 13.8 GB."""
    metrics = evaluate(settings(tmp_path, tiny_models["student"], "trunc", long_dir))
    assert max(prompt_lengths) == CONTEXT - 12  # the room left by the generation budget
    task = metrics["tasks"]["arith"]
    assert task["n"] == 3 and task["truncated_long"] == 1 and task["dropped_long"] == 0
    assert metrics["settings"]["on_long"] == "truncate"
    lines = {line["id"]: line for line in read_jsonl(tmp_path / "trunc" / "predictions" / "arith.jsonl")}
    assert LONG.strip() in lines[2]["prompt"]  # the record keeps the whole question (it identifies the example)
    full = len(build_tiny_tokenizer()(lines[2]["prompt"])["input_ids"])
    assert lines[2]["prompt_tokens_cut"] == full - (CONTEXT - 12)
    assert "prompt_tokens_cut" not in lines[0] and "prompt_tokens_cut" not in lines[1]


def test_the_end_of_the_prompt_is_kept(tiny_models, long_dir, tmp_path, monkeypatch):
    """The truncated prompt still ends with the question's end and the template's '### Response:'."""
    seen = []
    original = generation_module.generate_ids

    def spy(model, tokenizer, prompt_ids, *args, **kwargs):
        seen.extend(prompt_ids)
        return original(model, tokenizer, prompt_ids, *args, **kwargs)

    monkeypatch.setattr(generation_module, "generate_ids", spy)
    metrics = evaluate(settings(tmp_path, tiny_models["student"], "end", long_dir, max_prompt_tokens=50))
    assert [len(ids) for ids in seen] == [50, 50, 50] and metrics["tasks"]["arith"]["truncated_long"] == 3
    texts = [build_tiny_tokenizer().decode(ids) for ids in seen]
    assert all(text.endswith("?\n\n### Response:\n") for text in texts)
    assert any(text.endswith("What is 3 plus 4? How many?\n\n### Response:\n") for text in texts)


def test_drop_and_error(tiny_models, long_dir, tmp_path, prompt_lengths):
    metrics = evaluate(settings(tmp_path, tiny_models["student"], "drop", long_dir, on_long="drop"))
    task = metrics["tasks"]["arith"]
    assert task["n"] == 2 and task["dropped_long"] == 1 and task["truncated_long"] == 0
    assert sorted(line["id"] for line in read_jsonl(tmp_path / "drop" / "predictions" / "arith.jsonl")) == [0, 1]
    with pytest.raises(KdlabError, match=r"task arith, example 2: the prompt has \d+ tokens, more than 1012"):
        evaluate(settings(tmp_path, tiny_models["student"], "error", long_dir, on_long="error"))
    assert not (tmp_path / "error").exists()
    with pytest.raises(KdlabError, match="--on-long 'cut'"):
        evaluate(settings(tmp_path, tiny_models["student"], "bad", long_dir, on_long="cut"))
    with pytest.raises(KdlabError, match="--max-prompt-tokens must be > 0"):
        evaluate(settings(tmp_path, tiny_models["student"], "bad", long_dir, max_prompt_tokens=0))
    with pytest.raises(KdlabError, match="--max-new-tokens 2000 leaves no room for a prompt"):
        evaluate(settings(tmp_path, tiny_models["student"], "bad", long_dir, max_new_tokens=2000))
    assert max(prompt_lengths) <= CONTEXT - 12 and not (tmp_path / "bad").exists()


def test_loglik_scoring_respects_the_limit(tiny_models, long_dir, tmp_path, monkeypatch):
    lengths = []
    original = evaluate_module.sequence_logprobs

    def spy(model, tokenizer, prompt_ids, continuation_ids):
        lengths.extend(len(p) + len(c) for p, c in zip(prompt_ids, continuation_ids))
        if max(lengths) > CONTEXT:
            raise MemoryError(f"a sequence of {max(lengths)} tokens")
        return original(model, tokenizer, prompt_ids, continuation_ids)

    monkeypatch.setattr(evaluate_module, "sequence_logprobs", spy)
    metrics = evaluate(settings(tmp_path, tiny_models["student"], "ll", long_dir, tasks=["boolq"], mode="loglik"))
    assert max(lengths) == CONTEXT and metrics["tasks"]["boolq"]["truncated_long"] == 1
    assert metrics["tasks"]["boolq"]["n"] == 3
    metrics = evaluate(
        settings(tmp_path, tiny_models["student"], "ll-drop", long_dir, tasks=["boolq"], mode="loglik", on_long="drop")
    )
    assert metrics["tasks"]["boolq"]["n"] == 2 and metrics["tasks"]["boolq"]["dropped_long"] == 1


def test_cli_flags_and_one_line_error(tiny_models, long_dir, tmp_path, capsys):
    common = {"model": tiny_models["student"], "tasks": "arith", "data_dir": long_dir, "max_new_tokens": 4}
    assert run_cli("eval", **common, out=tmp_path / "e", on_long="error") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kdlab: error: task arith, example 2") and "\n" not in err
    assert not (tmp_path / "e").exists()
    assert run_cli("eval", **common, out=tmp_path / "ok", max_prompt_tokens=300, on_long="drop") == 0
    metrics = json.loads((tmp_path / "ok" / "metrics.json").read_text())
    assert metrics["tasks"]["arith"]["dropped_long"] == 1 and metrics["settings"]["on_long"] == "drop"


def test_an_error_during_evaluation_leaves_no_half_written_folder(tiny_models, long_dir, tmp_path, monkeypatch):
    """Why: a MemoryError in the middle of an evaluation left config.yaml and part of the predictions, a folder
    that a retry with other settings (a smaller batch) then refused."""

    def out_of_memory(*args, **kwargs):
        raise MemoryError("simulated")

    monkeypatch.setattr(generation_module, "generate_ids", out_of_memory)
    with pytest.raises(MemoryError):
        evaluate(settings(tmp_path, tiny_models["student"], "new", long_dir))
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(MemoryError):
        evaluate(settings(tmp_path, tiny_models["student"], "empty", long_dir))
    assert (tmp_path / "empty").is_dir() and not any((tmp_path / "empty").iterdir())
    assert not list(tmp_path.glob(".*kdlab-lock"))
