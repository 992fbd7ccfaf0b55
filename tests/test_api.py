"""The Python API (kdlab.sft/distill/evaluate/fidelity/run_study) writes what the CLI writes for the same settings."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from kdlab_testing import cli_args, run_cli
from safetensors.torch import load_file

import kdlab
from kdlab.config import build_config
from kdlab.errors import KdlabError

FAST = {"max_steps": 3, "batch_size": 4, "precision": "fp32", "save_steps": 0, "lr": 1e-3}
FAST_ARGS = [f"--{key.replace('_', '-')}={value}" for key, value in FAST.items()]  # the CLI's --name=value form
TIMINGS = {"train_seconds", "tokens_per_s", "elapsed_s", "seconds", "started", "finished", "wall_seconds"}


def _untimed(value):
    if isinstance(value, dict):
        return {key: _untimed(item) for key, item in value.items() if key not in TIMINGS and "time" not in key}
    if isinstance(value, list):
        return [_untimed(item) for item in value]
    return value


def same_json(a: Path, b: Path, ignore_paths=()) -> None:
    left, right = (json.loads(path.read_text()) for path in (a, b))
    for key in ignore_paths:
        left.pop(key, None), right.pop(key, None)
    assert _untimed(left) == _untimed(right)


def same_weights(a: Path, b: Path) -> None:
    name = "adapter_model.safetensors" if (a / "adapter_model.safetensors").is_file() else "model.safetensors"
    left, right = load_file(a / name), load_file(b / name)
    assert left.keys() == right.keys()
    for key in left:
        torch.testing.assert_close(left[key], right[key], rtol=0, atol=0)


def same_log(a: Path, b: Path) -> None:
    left, right = pd.read_csv(a / "log.csv"), pd.read_csv(b / "log.csv")
    pd.testing.assert_frame_equal(left[["step", "loss", "lr", "tokens"]], right[["step", "loss", "lr", "tokens"]])


@pytest.fixture(scope="module")
def four(synth_train, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("api-data") / "four.json"
    path.write_text(json.dumps(json.loads(synth_train.read_text())[:8]))
    return path


def test_import_kdlab_is_light_and_exposes_the_api():
    code = "import sys, kdlab; assert 'torch' not in sys.modules; assert callable(kdlab.sft); print(kdlab.run_study.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "run_study"


def test_sft_and_distill_match_the_cli(tiny_models, four, tmp_path):
    sft_args = cli_args("sft", model=tiny_models["student"], data=four, out=tmp_path / "cli-sft", no_lora=True)
    assert run_cli(*sft_args, *FAST_ARGS) == 0
    run = kdlab.sft(
        model=tiny_models["student"], data=four, out=tmp_path / "api-sft", lora={"enabled": False}, train=dict(FAST)
    )
    assert run.path == tmp_path / "api-sft" and run.final.is_dir() and run.summary["steps"] == 3
    assert run.config.kind == "sft" and not run.config.lora.enabled
    same_weights(tmp_path / "cli-sft" / "final", run.final)
    same_log(tmp_path / "cli-sft", run.path)
    same_json(tmp_path / "cli-sft" / "result.json", run.path / "result.json")
    assert list(run.log().step) == [1, 2, 3]

    distill_args = cli_args(
        "distill",
        teacher=tiny_models["teacher"],
        student=tiny_models["student"],
        data=four,
        out=tmp_path / "cli-kd",
        loss="rkl",
        temperature="2",
        no_lora=True,
    )
    assert run_cli(*distill_args, *FAST_ARGS) == 0
    kd = kdlab.distill(
        teacher=tiny_models["teacher"],
        student=tiny_models["student"],
        data=four,
        out=tmp_path / "api-kd",
        kd={"loss": "rkl", "temperature": 2.0},
        lora={"enabled": False},
        train=dict(FAST),
    )
    same_weights(tmp_path / "cli-kd" / "final", kd.final)
    same_log(tmp_path / "cli-kd", kd.path)
    same_json(tmp_path / "cli-kd" / "result.json", kd.path / "result.json")
    # a RunConfig in, the same run out: it is already complete, so nothing is retrained
    config = build_config(
        "distill",
        None,
        {
            "model": str(tiny_models["student"]),
            "teacher": str(tiny_models["teacher"]),
            "data": str(four),
            "out": str(kd.path),
            "kd.loss": "rkl",
            "kd.temperature": 2.0,
            "lora.enabled": False,
            **{f"train.{k}": v for k, v in FAST.items()},
        },
        [],
    )
    again = kdlab.distill(config)
    assert again.summary == kd.summary


def test_bad_settings_are_refused_with_the_cli_messages(tiny_models, four, tmp_path):
    with pytest.raises(KdlabError, match="missing setting 'teacher'"):
        kdlab.distill(student=tiny_models["student"], data=four, out=tmp_path / "x")
    with pytest.raises(KdlabError, match="train=: expected a dict"):
        kdlab.sft(model=tiny_models["student"], data=four, out=tmp_path / "x", train=3)
    with pytest.raises(KdlabError, match="kind"):
        kdlab.sft(build_config("distill", None, {"model": "m", "teacher": "t", "data": "d", "out": "o"}, []))
    with pytest.raises(KdlabError, match="lr"):
        kdlab.sft(model=tiny_models["student"], data=four, out=tmp_path / "x", overrides=["train.lr=-1"])
    assert not (tmp_path / "x").exists()


def test_evaluate_and_fidelity_match_the_cli(tiny_models, tmp_path):
    from kdlab.data.synth import write_synth

    write_synth(tmp_path / "data" / "arith" / "test.json", n=6, seed=3, split="test")
    common = {"data_dir": tmp_path / "data", "max_new_tokens": 8, "batch_size": 3, "precision": "fp32"}
    for side in ("teacher", "student"):
        assert run_cli("eval", model=tiny_models[side], tasks="arith", out=tmp_path / f"cli-{side}", **common) == 0
        api = kdlab.evaluate(tiny_models[side], "arith", tmp_path / f"api-{side}", **common)
        same_json(tmp_path / f"cli-{side}" / "metrics.json", api.path / "metrics.json", ignore_paths=("settings",))
        assert api.metrics["tasks"]["arith"]["n"] == 6 and len(api.predictions("arith")) == 6
        assert (tmp_path / f"cli-{side}" / "predictions" / "arith.jsonl").read_text() == (
            api.path / "predictions" / "arith.jsonl"
        ).read_text()
    status = run_cli(
        "fidelity",
        teacher=tmp_path / "cli-teacher",
        student=tmp_path / "cli-student",
        out=tmp_path / "cli-fid",
        teacher_model=tiny_models["teacher"],
        student_model=tiny_models["student"],
        no_embeddings=True,
    )
    assert status == 0
    fid = kdlab.fidelity(
        tmp_path / "api-teacher",
        tmp_path / "api-student",
        tmp_path / "api-fid",
        teacher_model=tiny_models["teacher"],
        student_model=tiny_models["student"],
        embeddings=False,
    )
    same_json(tmp_path / "cli-fid" / "fidelity.json", fid.path / "fidelity.json", ignore_paths=("settings",))
    assert fid.summary["average"]["n"] == 6


@pytest.fixture
def api_spec(tiny_models, tmp_path) -> Path:
    """A 5-run study (teacher SFT, student SFT, one KD run, their evaluations and fidelity) on tiny models."""
    from kdlab.data.synth import write_synth

    write_synth(tmp_path / "train.json", n=16, seed=0, split="train")
    write_synth(tmp_path / "eval" / "arith" / "test.json", n=4, seed=1, split="test")
    train = {"max_steps": 2, "batch_size": 4, "max_length": 320, "save_steps": 0, "lr": 1e-3, "precision": "fp32"}
    spec = {
        "name": "api",
        "models": {"teacher": {"spec": str(tiny_models["teacher"])}, "small": {"spec": str(tiny_models["student"])}},
        "teachers": ["teacher"],
        "students": ["small"],
        "domains": {"arith": {"train": "train.json", "tasks": ["arith"], "data_dir": "eval"}},
        "methods": {"fkl": {"loss": "fkl"}},
        "temperatures": [1.0],
        "seeds": [0],
        "teacher_training": {"lora": {"enabled": True}, "train": dict(train)},
        "student_training": {"lora": {"enabled": False}, "train": dict(train)},
        "evaluation": {"limit": 4, "max_new_tokens": 8, "batch_size": 4},
        "fidelity": {"enabled": True, "token_kl": False, "embeddings": False},
    }
    path = tmp_path / "api.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_dry_run_plans_and_writes_nothing(api_spec, tmp_path, capsys):
    study = kdlab.run_study(api_spec, out=tmp_path / "dry", dry_run=True, report=True)
    assert study.path == tmp_path / "dry" and study.failed == 0
    assert "teacher-sft" in capsys.readouterr().out
    assert not (tmp_path / "dry").exists()


def test_run_study_matches_the_cli(api_spec, tmp_path):
    path = api_spec
    assert run_cli("study", "run", path, out=tmp_path / "cli-study") == 0
    assert run_cli("study", "report", tmp_path / "cli-study") == 0
    study = kdlab.run_study(path, out=tmp_path / "api-study", report=True)
    assert study.failed == 0 and study.blocked == 0
    assert (study.path / "report" / "report.html").is_file()
    columns = ["run", "role", "method", "task", "n", "correct", "accuracy"]
    api_results = study.results()
    cli_results = pd.read_csv(tmp_path / "cli-study" / "results" / "results.csv")
    pd.testing.assert_frame_equal(api_results[columns].reset_index(drop=True), cli_results[columns], check_dtype=False)
    assert (tmp_path / "cli-study" / "stats" / "stats.md").read_text() == (
        study.path / "stats" / "stats.md"
    ).read_text()
