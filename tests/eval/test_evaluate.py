"""kdlab eval end to end on a tiny model: files, metrics, batch-size invariance, adapters, resume, loglik."""

import json

import pytest
import torch

from kdlab import generation as generation_module
from kdlab.errors import KdlabError
from kdlab.eval.evaluate import EvalSettings, evaluate, sequence_logprobs
from kdlab.eval.options import parse_options
from kdlab.eval.tasks import GROUPS, TASKS

SHARED_TASKS = [task for task in GROUPS["paper14"] if task != "hellaswag"] + ["mathqa"]


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def settings(tmp_path, model, name, **kwargs):
    base = {"model": str(model), "tasks": ["arith"], "out": str(tmp_path / name), "max_new_tokens": 12, "batch_size": 4}
    base.update(kwargs)
    return EvalSettings(**base)


@pytest.fixture(scope="module")
def arith_dir(tmp_path_factory):
    from kdlab.data.synth import write_synth

    root = tmp_path_factory.mktemp("eval-data")
    write_synth(root / "arith" / "test.json", n=10, seed=3, split="test")
    return root


def test_generate_on_every_shared_task_writes_predictions_and_metrics(tiny_models, shared_dir, tmp_path):
    data_dir = shared_dir / "data" / "paper-kd-generalization" / "eval"
    out = tmp_path / "gen"
    metrics = evaluate(
        EvalSettings(
            model=str(tiny_models["student"]),
            tasks=[",".join(SHARED_TASKS)],
            out=str(out),
            data_dir=str(data_dir),
            limit=3,
            max_new_tokens=6,
            batch_size=3,
        )
    )
    assert sorted(metrics["tasks"]) == sorted(SHARED_TASKS)
    for task in SHARED_TASKS:
        lines = read_jsonl(out / "predictions" / f"{task}.jsonl")
        assert [line["id"] for line in lines] and sorted(line["id"] for line in lines) == [0, 1, 2]
        gold = json.loads((data_dir / TASKS[task].folder / "test.json").read_text())
        for line in lines:
            assert {"id", "prompt", "output", "pred", "gold", "correct", "preds", "corrects"} <= set(line)
            assert line["gold"] == gold[line["id"]]["answer"]
            assert gold[line["id"]]["instruction"].strip() in line["prompt"]
        task_metrics = metrics["tasks"][task]
        assert task_metrics["n"] == 3 and 0 <= task_metrics["accuracy"] <= 1
        assert task_metrics["accuracy"] == sum(line["correct"] for line in lines) / 3
        assert task_metrics["no_answer"] == sum(line["pred"] is None for line in lines)
        low, high = task_metrics["ci95"]
        assert 0 <= low <= task_metrics["accuracy"] <= high <= 1
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert metrics["groups"]["commonsense"]["missing"] == ["hellaswag"]
    assert metrics["groups"]["math"]["accuracy"] == pytest.approx(
        sum(metrics["tasks"][task]["accuracy"] for task in GROUPS["math"]) / len(GROUPS["math"])
    )


def test_predictions_do_not_depend_on_the_batch_size(tiny_models, arith_dir, tmp_path):
    # the guarantee is fp32's (documented); bf16 rounding may depend on the padded batch shape
    one = evaluate(
        settings(
            tmp_path,
            tiny_models["talker"],
            "b1",
            data_dir=str(arith_dir),
            batch_size=1,
            max_new_tokens=20,
            precision="fp32",
        )
    )
    eight = evaluate(
        settings(
            tmp_path,
            tiny_models["talker"],
            "b8",
            data_dir=str(arith_dir),
            batch_size=8,
            max_new_tokens=20,
            precision="fp32",
        )
    )
    lines_one = sorted(read_jsonl(tmp_path / "b1" / "predictions" / "arith.jsonl"), key=lambda line: line["id"])
    lines_eight = sorted(read_jsonl(tmp_path / "b8" / "predictions" / "arith.jsonl"), key=lambda line: line["id"])
    assert [line["output"] for line in lines_one] == [line["output"] for line in lines_eight]
    assert any(line["output"] for line in lines_one)  # the model did generate text
    assert one["tasks"] == eight["tasks"]
    assert one["settings"]["precision"] == "fp32"


def test_auto_precision_follows_the_hardware(tiny_models, arith_dir, tmp_path, monkeypatch):
    import kdlab.precision as precision

    monkeypatch.setattr(precision.torch.cuda, "is_available", lambda: False)
    for native, expected in ((False, "fp32"), (True, "bf16")):
        monkeypatch.setattr(precision.torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
        monkeypatch.setattr(
            precision.torch.cpu, "_is_avx512_bf16_supported", lambda native=native: native, raising=False
        )
        metrics = evaluate(
            settings(tmp_path, tiny_models["talker"], f"auto-{expected}", data_dir=str(arith_dir), limit=2)
        )
        assert metrics["settings"]["precision"] == expected


def test_loglik_scores_match_a_full_logits_computation_and_batching(tiny_models, shared_dir, tmp_path):
    from kdlab.models import load_model, load_tokenizer

    model, tokenizer = load_model(str(tiny_models["teacher"])), load_tokenizer(str(tiny_models["teacher"]))
    prompts = [tokenizer("Question one?")["input_ids"], tokenizer("A longer question two here?")["input_ids"]]
    options = [
        tokenizer(" yes", add_special_tokens=False)["input_ids"],
        tokenizer(" no way", add_special_tokens=False)["input_ids"],
    ]
    batched = sequence_logprobs(model, tokenizer, prompts, options)
    for prompt, option, value in zip(prompts, options, batched):
        ids = torch.tensor([prompt + option])
        with torch.no_grad():
            logprobs = model(ids).logits[0].log_softmax(-1)
        expected = sum(logprobs[len(prompt) - 1 + i, token] for i, token in enumerate(option))
        assert value == pytest.approx(float(expected), abs=1e-4)
        assert sequence_logprobs(model, tokenizer, [prompt], [option])[0] == pytest.approx(value, abs=1e-4)

    data_dir = shared_dir / "data" / "paper-kd-generalization" / "eval"
    metrics = evaluate(
        settings(
            tmp_path,
            tiny_models["teacher"],
            "ll",
            tasks=["piqa,ARC-Easy,AQuA,boolq"],
            mode="loglik",
            data_dir=str(data_dir),
            limit=4,
        )
    )
    for line in read_jsonl(tmp_path / "ll" / "predictions" / "ARC-Easy.jsonl"):
        assert set(line["scores"]) == set(line["options"]) and line["pred"] == max(
            line["scores"], key=line["scores"].get
        )
        assert line["pred_norm"] == max(line["scores_norm"], key=line["scores_norm"].get)
    assert {"accuracy", "accuracy_norm", "n", "no_answer", "ci95"} <= set(metrics["tasks"]["piqa"])


def test_a_broken_adapter_is_a_hard_error(tiny_models, arith_dir, tmp_path):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 2}')
    with pytest.raises(KdlabError, match="adapter: LoRA adapter folder has no weights file"):  # not a network error
        evaluate(
            settings(
                tmp_path, tiny_models["teacher"], "bad", data_dir=str(arith_dir), adapter=str(tmp_path / "adapter")
            )
        )
    assert not (tmp_path / "bad").exists()
    (tmp_path / "adapter" / "adapter_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(KdlabError, match="LoRA adapter failed to load"):
        evaluate(
            settings(
                tmp_path, tiny_models["teacher"], "bad", data_dir=str(arith_dir), adapter=str(tmp_path / "adapter")
            )
        )
    assert not (tmp_path / "bad").exists()


def test_an_interrupted_evaluation_resumes_without_redoing_examples(tiny_models, arith_dir, tmp_path, monkeypatch):
    full = settings(tmp_path, tiny_models["talker"], "full", data_dir=str(arith_dir))
    evaluate(full)
    expected = sorted(read_jsonl(tmp_path / "full" / "predictions" / "arith.jsonl"), key=lambda line: line["id"])

    part = settings(tmp_path, tiny_models["talker"], "part", data_dir=str(arith_dir))
    evaluate(part)
    path = tmp_path / "part" / "predictions" / "arith.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:4]) + "\n" + lines[4][:30])  # killed while writing line 5
    (tmp_path / "part" / "metrics.json").unlink()
    generated = []
    original = generation_module.generate_ids
    monkeypatch.setattr(
        generation_module,
        "generate_ids",
        lambda model, tok, prompts, *a, **k: generated.append(len(prompts)) or original(model, tok, prompts, *a, **k),
    )
    metrics = evaluate(part)
    assert generated == [len(expected) - 4]
    resumed = sorted(read_jsonl(path), key=lambda line: line["id"])
    assert resumed == expected and metrics["tasks"]["arith"]["n"] == len(expected)


def test_exclude_overlap_and_bad_settings(tiny_models, arith_dir, tmp_path):
    test_items = json.loads((arith_dir / "arith" / "test.json").read_text())
    train = tmp_path / "train.json"
    train.write_text(json.dumps(test_items[:3]))
    metrics = evaluate(
        settings(tmp_path, tiny_models["student"], "clean", data_dir=str(arith_dir), exclude_overlap=str(train))
    )
    ids = {line["id"] for line in read_jsonl(tmp_path / "clean" / "predictions" / "arith.jsonl")}
    assert ids == set(range(3, len(test_items))) and metrics["tasks"]["arith"]["n"] == len(test_items) - 3
    with pytest.raises(KdlabError, match="loglik mode needs a choice task"):
        evaluate(settings(tmp_path, tiny_models["student"], "x", data_dir=str(arith_dir), mode="loglik"))
    with pytest.raises(KdlabError, match="unknown task"):
        evaluate(settings(tmp_path, tiny_models["student"], "y", tasks=["nope"]))
    with pytest.raises(KdlabError, match="holds an evaluation with other settings"):
        evaluate(settings(tmp_path, tiny_models["student"], "clean", data_dir=str(arith_dir), limit=2))


@pytest.mark.parametrize(
    "task,instruction,expected",
    [
        ("boolq", "Is it? Answer format: true/false", {"true": "true", "false": "false"}),
        (
            "piqa",
            "Q\n\nSolution1: a b\n\nSolution2: c\n\nAnswer format: solution1/solution2",
            {"solution1": "a b", "solution2": "c"},
        ),
        (
            "winogrande",
            "S _ x\n\nOption1: Sarah Option2: Maria Answer format: option1/option2",
            {"option1": "Sarah", "option2": "Maria"},
        ),
        (
            "AQuA",
            "How many? Answer Choices: (A) 1 (B) 2.5 (C) 3 (D) 4 (E) none",
            {"A": "1", "B": "2.5", "C": "3", "D": "4", "E": "none"},
        ),
        (
            "mathqa",
            "x ? The options: A ) 38 , B ) 27.6 , C ) 30 , D ) 2 , E ) none",
            {"A": "38", "B": "27.6", "C": "30", "D": "2", "E": "none"},
        ),
        (
            "mathqa",
            "x ? The options: ['A ) 2 : 3', 'B ) 4 : 5', 'C ) 1', 'D ) 7', 'E ) 8']",
            {"A": "2 : 3", "B": "4 : 5", "C": "1", "D": "7", "E": "8"},
        ),
    ],
)
def test_options_are_parsed_from_instructions(task, instruction, expected):
    assert parse_options(TASKS[task], instruction) == expected


def test_every_shared_choice_item_has_parseable_options_containing_the_gold(shared_dir):
    from kdlab.eval.task_examples import load_task_examples

    data_dir = shared_dir / "data" / "paper-kd-generalization" / "eval"
    for name in [
        "boolq",
        "piqa",
        "social_i_qa",
        "winogrande",
        "ARC-Easy",
        "ARC-Challenge",
        "openbookqa",
        "AQuA",
        "mathqa",
    ]:
        for example in load_task_examples(name, data_dir):
            assert example.answer.strip() in parse_options(TASKS[name], example.instruction), (
                name,
                example.instruction[-120:],
            )


def test_a_moved_or_differently_named_evaluation_folder_resumes(tiny_models, arith_dir, tmp_path, monkeypatch):
    """Why: the settings check compared `out` and path strings, so a moved folder (or ./x vs x/) was "other settings"."""
    monkeypatch.chdir(tmp_path)
    first = settings(tmp_path, tiny_models["talker"], "x", data_dir=str(arith_dir), limit=3)
    first.out = "x/"
    evaluate(first)
    (tmp_path / "x").rename(tmp_path / "moved")
    lines = (tmp_path / "moved" / "predictions" / "arith.jsonl").read_text().splitlines()
    (tmp_path / "moved" / "predictions" / "arith.jsonl").write_text(lines[0] + "\n")  # interrupted after one example
    (tmp_path / "moved" / "metrics.json").unlink()
    again = settings(tmp_path, tiny_models["talker"], "moved", data_dir=str(arith_dir), limit=3)
    again.out = "./moved"
    metrics = evaluate(again)
    assert metrics["tasks"]["arith"]["n"] == 3
    assert (
        next(
            json.loads(line)["id"]
            for line in (tmp_path / "moved" / "predictions" / "arith.jsonl").read_text().splitlines()
        )
        == 0
    )
    with pytest.raises(KdlabError, match=r"other settings .*max_new_tokens"):
        evaluate(settings(tmp_path, tiny_models["talker"], "moved", data_dir=str(arith_dir), limit=3, max_new_tokens=5))
