"""SFT and distill end to end on tiny models: loss falls, runs resume, bad input is refused cleanly."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from kdlab_testing import FAST, cli_args, losses, run_cli, small_data, weights

from kdlab.train import loop


def test_sft_full_finetuning_loss_falls_on_a_repeated_batch(tiny_models, synth_train, tmp_path):
    data = small_data(tmp_path / "four.json", synth_train, 4)  # one batch of 4, seen every step
    out = tmp_path / "sft"
    assert (
        run_cli(
            "sft",
            model=tiny_models["student"],
            data=data,
            out=out,
            no_lora=True,
            max_steps=12,
            batch_size=4,
            lr=1e-2,
            **FAST,
        )
        == 0
    )
    curve = losses(out)
    assert len(curve) == 12 and curve[-1] < 0.7 * curve[0]
    assert (out / "final" / "model.safetensors").is_file() and (out / "final" / "tokenizer.json").is_file()
    result = json.loads((out / "result.json").read_text())
    assert result["steps"] == 12 and result["precision"] == "no"
    assert "kind: sft" in (out / "config.yaml").read_text()


def test_sft_lora_saves_only_the_adapter(tiny_models, synth_train, tmp_path):
    out = tmp_path / "lora"
    assert (
        run_cli(
            "sft",
            model=tiny_models["student"],
            data=synth_train,
            out=out,
            max_steps=3,
            batch_size=4,
            lora_r=4,
            lora_targets="q_proj,v_proj",
            **FAST,
        )
        == 0
    )
    config = json.loads((out / "final" / "adapter_config.json").read_text())
    assert config["r"] == 4 and sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    assert all("lora_" in name for name in weights(out))


@pytest.mark.parametrize(
    "loss,extra",
    [
        ("fkl", {"temperature": 2}),
        ("rkl", {}),
        ("gjsd", {"beta": 0.5, "lmbda": 0.5}),
        ("skl", {"skew_alpha": 0.1}),
        ("tvd", {"kd_weight": 0.5, "teacher_noise": 1.0}),
    ],
)
def test_distill_loss_falls_on_a_repeated_batch(tiny_models, synth_train, tmp_path, loss, extra):
    data = small_data(tmp_path / "four.json", synth_train, 4)
    out = tmp_path / loss
    assert (
        run_cli(
            "distill",
            teacher=tiny_models["teacher"],
            student=tiny_models["student"],
            data=data,
            out=out,
            loss=loss,
            no_lora=True,
            max_steps=10,
            batch_size=4,
            lr=1e-2,
            max_new_tokens=8,
            **extra,
            **FAST,
        )
        == 0
    )
    curve = losses(out)
    on_policy = loss == "gjsd"  # on-policy steps see other responses: compare off-policy steps only
    assert curve[-1] < curve[0] or (on_policy and min(curve[1:]) < curve[0])
    assert all(value >= 0 for value in curve)


def test_distill_with_a_teacher_adapter_and_seqkd(tiny_models, synth_train, tmp_path):
    teacher_run = tmp_path / "teacher"
    assert (
        run_cli(
            "sft", model=tiny_models["teacher"], data=synth_train, out=teacher_run, max_steps=2, batch_size=8, **FAST
        )
        == 0
    )
    out = tmp_path / "seqkd"
    assert (
        run_cli(
            "distill",
            teacher=tiny_models["teacher"],
            teacher_adapter=teacher_run / "final",
            student=tiny_models["student"],
            data=synth_train,
            out=out,
            loss="seqkd",
            max_steps=2,
            batch_size=8,
            max_new_tokens=6,
            **FAST,
        )
        == 0
    )
    generated = json.loads((out / "seqkd_data.json").read_text())
    original = json.loads(synth_train.read_text())
    assert [item["instruction"] for item in generated] == [item["instruction"] for item in original]
    assert [item["output"] for item in generated] != [item["output"] for item in original]  # teacher answers


@pytest.mark.parametrize("loss,student", [("fkl", "student"), ("gold", "other")], ids=["fkl", "gold-other-tokenizer"])
def test_resume_after_interruption_gives_the_same_model(tiny_models, synth_train, tmp_path, monkeypatch, loss, student):
    args = {
        "teacher": tiny_models["teacher"],
        "student": tiny_models[student],
        "data": synth_train,
        "loss": loss,
        "max_steps": 6,
        "batch_size": 4,
        "lmbda": 0.3,
        "max_new_tokens": 4,
        "precision": "fp32",
        "save_steps": 2,
    }
    assert run_cli("distill", **args, out=tmp_path / "straight") == 0

    original_step = loop.Trainer._step

    def crash_after_step_4(self, step, batches):
        if step == 5:
            raise KeyboardInterrupt("simulated kill")
        return original_step(self, step, batches)

    monkeypatch.setattr(loop.Trainer, "_step", crash_after_step_4)
    with pytest.raises(KeyboardInterrupt):
        run_cli("distill", **args, out=tmp_path / "resumed")
    assert (tmp_path / "resumed" / "checkpoints" / "step-000004").is_dir()
    assert not (tmp_path / "resumed" / "final").exists() and not (tmp_path / "resumed" / "result.json").exists()
    monkeypatch.setattr(loop.Trainer, "_step", original_step)

    calls = []
    monkeypatch.setattr(
        loop.Trainer, "_step", lambda self, step, batches: calls.append(step) or original_step(self, step, batches)
    )
    assert run_cli("distill", **args, out=tmp_path / "resumed") == 0
    assert calls == [5, 6]
    straight, resumed = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert straight.keys() == resumed.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=1e-7)
    assert losses(tmp_path / "resumed") == pytest.approx(losses(tmp_path / "straight"), abs=1e-6)

    calls.clear()  # a complete run is not trained again
    assert run_cli("distill", **args, out=tmp_path / "resumed") == 0
    assert calls == []


def test_gradient_accumulation_normalises_by_all_response_tokens(tiny_models, synth_train, tmp_path, monkeypatch):
    """With SGD the update is lr * gradient: one batch of 4 == two micro-batches of 2 (uneven token counts)."""
    monkeypatch.setattr(torch.optim, "AdamW", lambda params, lr, weight_decay: torch.optim.SGD(params, lr=lr))
    common = dict(
        model=tiny_models["student"],
        data=synth_train,
        no_lora=True,
        max_steps=1,
        lr=1.0,
        warmup_ratio=0,
        max_grad_norm=0,
        **FAST,
    )
    assert run_cli("sft", **common, out=tmp_path / "one", batch_size=4) == 0
    assert run_cli("sft", **common, out=tmp_path / "accum", batch_size=2, grad_accum=2) == 0
    assert run_cli("sft", **common, out=tmp_path / "accum-small", batch_size=1, grad_accum=4) == 0
    one = weights(tmp_path / "one")
    for other in ("accum", "accum-small"):
        for name, value in weights(tmp_path / other).items():
            torch.testing.assert_close(value, one[name], rtol=1e-5, atol=1e-6)
    assert losses(tmp_path / "accum") == pytest.approx(losses(tmp_path / "one"), rel=1e-6)


def test_a_folder_with_another_config_is_refused(tiny_models, synth_train, tmp_path, capsys):
    args = dict(model=tiny_models["student"], data=synth_train, out=tmp_path / "run", max_steps=1, **FAST)
    assert run_cli("sft", **args) == 0
    assert run_cli("sft", **args, lr=0.1) == 2
    assert "different config" in capsys.readouterr().err


def bad_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[{"instruction": "q", "output": "a"},')
    return path


def empty_json(tmp_path):
    path = tmp_path / "empty.json"
    path.write_text("[]")
    return path


def missing_field(tmp_path):
    path = tmp_path / "field.json"
    path.write_text('[{"instruction": "q", "output": "a"}, {"instruction": "q2"}]')
    return path


def not_a_cache(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "keep.txt").write_text("not a cache")
    return folder


@pytest.mark.parametrize(
    "case,message",
    [
        ("missing-data", "data file not found"),
        ("malformed-json", "malformed JSON"),
        ("missing-field", "[1]: missing field 'output'"),
        ("empty-data", "the dataset is empty"),
        ("zero-temperature", "temperature must be > 0"),
        ("negative-temperature", "temperature must be > 0"),
        ("beta", "kd.beta must be in [0, 1]"),
        ("unknown-loss", "kd.loss: 'kl' is not one of"),
        ("tokenizers", "use different tokenizers"),
        ("bad-adapter", "not a LoRA adapter folder"),
        ("missing-model", "model folder not found"),
        ("too-short", "no example fits in max_length=4"),
        ("seqkd-cache", "--teacher-cache works with token-level losses only"),
        ("cache-k", "kd.cache_k must be > 0"),
        ("not-a-cache", "exists and is not a teacher cache"),
    ],
)
def test_bad_input_is_one_clear_line_exit_2_and_no_output(case, message, tiny_models, synth_train, tmp_path, capsys):
    data = {
        "missing-data": tmp_path / "nope.json",
        "malformed-json": bad_json(tmp_path),
        "empty-data": empty_json(tmp_path),
        "missing-field": missing_field(tmp_path),
    }.get(case, synth_train)
    options = {
        "zero-temperature": {"temperature": 0},
        "negative-temperature": {"temperature": -1},
        "beta": {"beta": 1.5},
        "unknown-loss": {"set": "kd.loss=kl"},
        "bad-adapter": {"teacher_adapter": tmp_path},
        "too-short": {"max_length": 4},
        "seqkd-cache": {"loss": "seqkd", "teacher_cache": tmp_path / "cache"},
        "cache-k": {"teacher_cache": tmp_path / "cache", "cache_k": 0},
        "not-a-cache": {"teacher_cache": not_a_cache(tmp_path)},
    }.get(case, {})
    student = {"tokenizers": tiny_models["other"], "missing-model": tmp_path / "no-model"}.get(
        case, tiny_models["student"]
    )
    out = tmp_path / "out"
    code = run_cli(
        "distill", teacher=tiny_models["teacher"], student=student, data=data, out=out, max_steps=1, **options, **FAST
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("kdlab: error:") and message in err and "\n" not in err
    assert not out.exists()


def test_two_processes_see_different_data_and_save_once(tiny_models, synth_train, tmp_path):
    """torchrun with 2 CPU processes (gloo): disjoint examples per step; one final save; same losses as 1 process."""
    common = {
        "model": tiny_models["student"],
        "data": synth_train,
        "max_steps": 3,
        "batch_size": 2,
        "trace_data": True,
        "precision": "fp32",
        "save_steps": 2,
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run(
        [*torchrun, *cli_args("-m", "kdlab.cli", "sft", **common, out=tmp_path / "ddp")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("kdlab: done") == 1
    traces = [
        dict(line.split("\t") for line in (tmp_path / "ddp" / "trace" / f"rank-{rank}.txt").read_text().splitlines())
        for rank in (0, 1)
    ]
    for step in ("1", "2", "3"):
        assert not set(traces[0][step].split(",")) & set(traces[1][step].split(","))
    assert json.loads((tmp_path / "ddp" / "result.json").read_text())["processes"] == 2
    assert sorted(path.name for path in (tmp_path / "ddp").iterdir()) == [
        "config.yaml",
        "final",
        "inputs.json",
        "log.csv",
        "result.json",
        "trace",
    ]
    # the same micro-batches in one process with 2 accumulation steps give the same losses
    single = subprocess.run(
        [sys.executable, *cli_args("-m", "kdlab.cli", "sft", **common, grad_accum=2, out=tmp_path / "single")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    assert losses(tmp_path / "ddp") == pytest.approx(losses(tmp_path / "single"), abs=1e-5)


def test_distill_with_a_teacher_cache_builds_once_and_reuses_it(tiny_models, synth_train, tmp_path, monkeypatch):
    """The first run builds the cache; runs with other losses/temperatures reuse it without loading the teacher."""
    from kdlab.train import cache_lifecycle, teacher_signal

    data = small_data(tmp_path / "eight.json", synth_train, 8)
    cache = tmp_path / "cache"
    common = dict(
        teacher=tiny_models["teacher"],
        student=tiny_models["student"],
        data=data,
        teacher_cache=cache,
        cache_k=32,
        no_lora=True,
        max_steps=4,
        batch_size=4,
        lr=1e-2,
        **FAST,
    )
    assert run_cli("distill", **common, out=tmp_path / "fkl") == 0
    manifest = json.loads((cache / "manifest.json").read_text())
    assert (
        manifest["k"] == 32 and manifest["examples"] == 8 and manifest["vocab_size"] == 384
    )  # sliced (teacher pads 7 rows)
    stamps = {name: (cache / name).stat().st_mtime_ns for name in ("manifest.json", "cache.npz")}
    assert "teacher_cache:" in (tmp_path / "fkl" / "config.yaml").read_text()

    def no_teacher(config):
        raise AssertionError("the teacher was loaded")

    monkeypatch.setattr(teacher_signal, "load_teacher", no_teacher)
    monkeypatch.setattr(cache_lifecycle, "load_teacher", no_teacher)
    monkeypatch.setattr(cache_lifecycle, "build_cache", no_teacher)
    out = tmp_path / "rkl-t2"
    assert run_cli("distill", **common, out=out, loss="rkl", temperature=2, cache_tail="renormalize") == 0
    assert {name: (cache / name).stat().st_mtime_ns for name in stamps} == stamps
    curve = losses(out)
    assert len(curve) == 4 and curve[-1] < curve[0] and all(value >= 0 for value in curve)
    monkeypatch.undo()

    # GKD with the cache: off-policy steps from the cache, on-policy steps from the (loaded) live teacher
    out = tmp_path / "gkd"
    assert run_cli("distill", **common, out=out, loss="gjsd", lmbda=0.5, max_new_tokens=4) == 0
    assert json.loads((out / "result.json").read_text())["on_policy_steps_this_session"] > 0
    assert {name: (cache / name).stat().st_mtime_ns for name in stamps} == stamps


def test_a_run_started_before_a_setting_existed_resumes(tiny_models, synth_train, tmp_path, capsys):
    """A config.yaml without a setting added to kdlab later counts that setting as its default."""
    import yaml

    args = dict(model=tiny_models["student"], data=synth_train, out=tmp_path / "run", max_steps=1, **FAST)
    assert run_cli("sft", **args) == 0
    path = tmp_path / "run" / "config.yaml"
    old = yaml.safe_load(path.read_text())
    del old["kd"]["cache_tail"], old["teacher_cache"]
    path.write_text(yaml.safe_dump(old))
    assert run_cli("sft", **args) == 0
    assert "is complete" in capsys.readouterr().out
    old["train"]["lr"] = 0.5  # a real difference is still refused
    path.write_text(yaml.safe_dump(old))
    assert run_cli("sft", **args) == 2


def test_runs_of_different_precision_in_one_process(tiny_models, synth_train, tmp_path):
    """A study runs many trainings in one process; accelerate's process-wide state must not pin the first precision."""
    base = {"model": tiny_models["student"], "data": synth_train, "max_steps": 1, "save_steps": 0}
    assert run_cli("sft", **base, out=tmp_path / "bf16", precision="bf16") == 0
    assert run_cli("sft", **base, out=tmp_path / "fp32", precision="fp32") == 0
    assert (tmp_path / "fp32" / "result.json").is_file()


@pytest.mark.parametrize(
    "name,extra",
    [
        ("decision", {"answer_weight": 5.0}),
        ("disagreement-cached", {"disagreement_gamma": 2.0, "teacher_cache": "CACHE"}),
        ("speculative", {"preset": "speculative-kd", "lmbda": 1.0, "speculative_k": 3}),
        ("on-policy", {"preset": "on-policy"}),
    ],
)
def test_fidelity_aware_objectives_train(tiny_models, synth_train, tmp_path, capsys, name, extra):
    data = small_data(tmp_path / "four.json", synth_train, 4)
    out = tmp_path / name
    extra = {flag: tmp_path / "cache" if value == "CACHE" else value for flag, value in extra.items()}
    assert (
        run_cli(
            "distill",
            teacher=tiny_models["teacher"],
            student=tiny_models["student"],
            data=data,
            out=out,
            no_lora=True,
            max_steps=4,
            batch_size=4,
            lr=1e-2,
            max_new_tokens=8,
            max_length=400,
            **extra,
            **FAST,
        )
        == 0
    )
    result = json.loads((out / "result.json").read_text())
    config = (out / "config.yaml").read_text()
    printed = capsys.readouterr().out
    if name in ("decision", "disagreement-cached"):  # off-policy: one repeated batch, the loss falls
        curve = losses(out)
        assert len(curve) == 4 and curve[-1] < curve[0]
    if name == "decision":
        assert "answer statement found in 4 of 4 training examples" in printed and "answer_weight: 5.0" in config
    if name == "speculative":
        assert "loss: fkl" in config and "speculative_k: 3" in config
        assert result["on_policy_steps_this_session"] == 4
        assert 0 < result["speculative_replaced_this_session"] <= result["speculative_tokens_this_session"]
    if name == "on-policy":
        assert "loss: rkl" in config and "lmbda: 1.0" in config and result["on_policy_steps_this_session"] == 4


def test_answer_target_teacher_trains_on_the_teachers_answers(tiny_models, synth_train, tmp_path, capsys):
    data = small_data(tmp_path / "four.json", synth_train, 4)
    examples = json.loads(data.read_text())
    answers = [dict(item, output="I think so. The answer is 999.") for item in examples]
    answers[1]["output"] = "no idea"  # no statement: the gold answer is kept
    (tmp_path / "answers.json").write_text(json.dumps(answers))
    out = tmp_path / "teacher-target"
    assert (
        run_cli(
            "distill",
            teacher=tiny_models["teacher"],
            student=tiny_models["student"],
            data=data,
            out=out,
            no_lora=True,
            max_steps=2,
            batch_size=4,
            answer_weight=2.0,
            max_length=400,
            answer_target="teacher",
            teacher_answers=tmp_path / "answers.json",
            **FAST,
        )
        == 0
    )
    assert "3 of 4 training answers changed to the teacher's (1 kept gold" in capsys.readouterr().out
    used = json.loads((out / "answer_target_data.json").read_text())
    assert [item["output"].endswith("The answer is 999.") for item in used] == [True, False, True, True]
    assert used[1]["output"] == examples[1]["output"]
    gold = examples[0]["output"].strip()
    assert used[0]["output"] == gold[: gold.rindex("The answer is ")] + "The answer is 999."  # only the value changed


@pytest.mark.parametrize(
    "flags,message",
    [
        ({"speculative_k": 4}, "set kd.lmbda > 0"),
        ({"answer_target": "teacher", "teacher_cache": "CACHE"}, "drop --teacher-cache"),
        ({"loss": "seqkd", "answer_weight": 3}, "token-level KD settings"),
        ({"disagreement_gamma": -1}, "kd.disagreement_gamma must be >= 0"),
        ({"preset": "nope"}, "invalid choice"),
    ],
)
def test_fidelity_options_are_checked(tiny_models, synth_train, tmp_path, capsys, flags, message):
    flags = {flag: tmp_path / "cache" if value == "CACHE" else value for flag, value in flags.items()}
    code = run_cli(
        "distill",
        teacher=tiny_models["teacher"],
        student=tiny_models["student"],
        data=synth_train,
        out=tmp_path / "out",
        **flags,
        **FAST,
    )
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_resume_does_not_depend_on_the_path_string_and_a_moved_run_resumes(
    tiny_models, synth_train, tmp_path, monkeypatch, capsys
):
    """Why: `--out runs/x/`, `./runs/x`, an absolute path, another working directory or a moved folder made a run
    folder "hold a different config"."""
    monkeypatch.chdir(tmp_path)
    data = small_data(tmp_path / "train.json", synth_train, 8)
    common = dict(model=tiny_models["student"], max_steps=1, batch_size=4, **FAST)
    assert run_cli("sft", **common, data="train.json", out="runs/x/") == 0
    capsys.readouterr()
    assert run_cli("sft", **common, data="./train.json", out="./runs/x") == 0
    assert run_cli("sft", **common, data=data, out=tmp_path / "runs" / "x") == 0
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert run_cli("sft", **common, data="../train.json", out="../runs/x") == 0
    (tmp_path / "runs" / "x").rename(tmp_path / "moved")
    assert run_cli("sft", **common, data=data, out=tmp_path / "moved") == 0
    out = capsys.readouterr().out
    assert out.count("is complete (result.json); nothing to do") == 4
    assert run_cli("sft", **common, data=data, out=tmp_path / "moved", lr=0.1) == 2  # a real change still is refused
    assert "different config (train.lr" in capsys.readouterr().err


def long_examples(path: Path, source: Path) -> Path:
    """9 examples: #0 has a prompt longer than max_length 400, #1 a response that must be cut."""
    examples = json.loads(source.read_text())[:9]
    examples[0]["instruction"] = "How many apples? " * 200
    examples[1]["output"] = "We count them one by one. " * 20 + "The answer is 3."
    path.write_text(json.dumps(examples))
    return path


def test_examples_that_do_not_fit_are_counted_and_on_long_chooses(tiny_models, synth_train, tmp_path, capsys):
    """Why: a prompt over max_length was dropped and a long response cut (losing "The answer is" and EOS) without a
    word; result.json just said 8 examples instead of 9."""
    data = long_examples(tmp_path / "long.json", synth_train)
    common = dict(model=tiny_models["student"], data=data, max_steps=1, batch_size=4, max_length=400, **FAST)
    assert run_cli("sft", **common, out=tmp_path / "truncate") == 0
    err = capsys.readouterr().err
    assert "1 of 9 examples dropped and 1 responses cut" in err and "--on-long" in err
    data_counts = json.loads((tmp_path / "truncate" / "result.json").read_text())["data"]
    assert data_counts == {
        "examples_in_data": 9,
        "examples": 8,
        "dropped_long": 1,
        "cut_responses": 1,
        "max_length": 400,
        "on_long": "truncate",
    }
    assert run_cli("sft", **common, out=tmp_path / "drop", on_long="drop") == 0
    drop = json.loads((tmp_path / "drop" / "result.json").read_text())["data"]
    assert (drop["examples"], drop["dropped_long"], drop["cut_responses"]) == (7, 2, 0)
    capsys.readouterr()
    assert run_cli("sft", **common, out=tmp_path / "error", on_long="error") == 2
    assert "long.json: example 0 has" in capsys.readouterr().err
    assert not (tmp_path / "error").exists()


@pytest.mark.parametrize(
    "loss,extra", [("uld", {"kd_weight": 0.5}), ("gold", {"temperature": 2, "shared_weight": 0.5})]
)
def test_cross_tokenizer_distill_loss_falls_and_records_the_alignment(
    tiny_models, synth_train, tmp_path, capsys, loss, extra
):
    """A teacher with another tokenizer (384 vs 300 tokens) trains a student with kd.loss uld | gold."""
    data = small_data(tmp_path / "four.json", synth_train, 4)
    out = tmp_path / loss
    args = {"teacher": tiny_models["teacher"], "student": tiny_models["other"], "data": data, "out": out}
    assert (
        run_cli("distill", **args, loss=loss, no_lora=True, max_steps=10, batch_size=4, lr=1e-2, **extra, **FAST) == 0
    )
    curve = losses(out)
    assert curve[-1] < curve[0] and all(value >= 0 for value in curve)
    alignment = json.loads((out / "result.json").read_text())["data"]["alignment"]
    assert 0 < alignment["spans"] <= alignment["student_tokens"]
    assert "spans of identical text" in capsys.readouterr().out


def test_cross_tokenizer_on_policy_steps_train_on_the_students_samples(tiny_models, synth_train, tmp_path):
    """kd.lmbda 1: every step samples from the student; the teacher reads each sample in its own tokens."""
    out = tmp_path / "gold-on-policy"
    args = {"teacher": tiny_models["teacher"], "student": tiny_models["other"], "data": synth_train, "out": out}
    assert run_cli("distill", **args, loss="gold", lmbda=1.0, max_steps=3, batch_size=4, max_new_tokens=12, **FAST) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["on_policy_steps_this_session"] == 3
    assert all(math.isfinite(value) and value > 0 for value in losses(out))  # KD only: 0 would mean no spans


@pytest.mark.parametrize(
    "flags,message",
    [
        ({"loss": "fkl"}, "use different tokenizers"),  # the same-tokenizer losses still refuse
        ({"loss": "uld", "teacher_cache": "CACHE"}, "--teacher-cache not supported"),
        ({"loss": "gold", "lmbda": 0.5, "speculative_k": 4}, "kd.speculative_k not supported"),
        ({"loss": "uld", "teacher_noise": 1.0, "answer_weight": 2}, "kd.teacher_noise, kd.answer_weight not supported"),
        ({"loss": "gold", "shared_weight": 2}, "kd.shared_weight must be in [0, 1] or -1"),
        ({"loss": "uld", "shared_weight": 0.5}, "kd.shared_weight applies to kd.loss gold only"),
        ({"loss": "uld", "temperature": 0}, "kd.temperature must be > 0"),
    ],
)
def test_cross_tokenizer_options_are_checked(tiny_models, synth_train, tmp_path, capsys, flags, message):
    flags = {flag: tmp_path / "cache" if value == "CACHE" else value for flag, value in flags.items()}
    out = tmp_path / "out"
    code = run_cli(
        "distill",
        teacher=tiny_models["teacher"],
        student=tiny_models["other"],
        data=synth_train,
        out=out,
        **flags,
        **FAST,
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "\n" not in err
    assert not out.exists()
