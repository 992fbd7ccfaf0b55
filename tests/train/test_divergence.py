"""A run whose loss or gradient stops being finite stops at once; JSON outputs never hold a bare NaN.

Why: with ``--lr 1e30 --no-lora`` the loss became NaN at step 3; kdlab printed "done ... final loss nan", exited 0,
saved an all-NaN model and wrote ``NaN`` (not JSON) into result.json.
"""

import json

import pytest
import torch
from kdlab_testing import run_cli, small_data
from safetensors.torch import load_file

from kdlab.io import atomic_write_json
from kdlab.train import recipes


def strict_json(text: str):
    """Parse ``text`` as standard JSON (Python's json also accepts NaN / Infinity, which other parsers reject)."""

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def args(tiny_models, synth_train, tmp_path):
    data = small_data(tmp_path / "eight.json", synth_train, 8)
    return {"model": tiny_models["student"], "data": data, "max_steps": 6, "batch_size": 4, "precision": "fp32"}


def test_a_diverging_loss_stops_the_run_with_one_line(args, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli("sft", **args, out=out, no_lora=True, lr=1e30, save_steps=1) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("kdlab: error:")]
    assert len(errors) == 1
    err = errors[0]
    assert "training diverged at step" in err
    assert not (out / "final").exists() and not (out / "result.json").exists()
    saved = sorted((out / "checkpoints").iterdir())
    assert saved and f"last good checkpoint: checkpoints/{saved[-1].name}" in err
    for name, value in load_file(saved[-1] / "state.safetensors").items():
        assert value.dtype == torch.uint8 or torch.isfinite(value).all(), name


class NanGradient(torch.autograd.Function):
    """0 in the forward pass (the loss stays finite), NaN gradients in the backward pass."""

    @staticmethod
    def forward(ctx, weight):
        ctx.shape = weight.shape
        return weight.sum() * 0

    @staticmethod
    def backward(ctx, grad):
        return torch.full(ctx.shape, float("nan"))


def test_a_non_finite_gradient_with_a_finite_loss_stops_the_run(args, tmp_path, capsys, monkeypatch):
    original = recipes.sft_objective

    def poisoned(chunk_size):
        objective = original(chunk_size)

        def run(model, batch, step):
            weight = next(param for param in model.parameters() if param.requires_grad)
            return objective(model, batch, step) + NanGradient.apply(weight)

        return run

    monkeypatch.setattr(recipes, "sft_objective", poisoned)
    out = tmp_path / "run"
    assert run_cli("sft", **args, out=out, save_steps=0) == 2
    err = capsys.readouterr().err
    assert "training diverged at step 1 (loss " in err and "gradient norm nan" in err
    assert "last good checkpoint: none" in err
    assert not (out / "final").exists() and not (out / "result.json").exists()


def test_json_outputs_hold_null_for_non_finite_numbers(tmp_path):
    path = tmp_path / "out.json"
    atomic_write_json(path, {"loss": float("nan"), "curve": (1.5, float("inf"), -float("inf")), "n": 3})
    assert strict_json(path.read_text()) == {"loss": None, "curve": [1.5, None, None], "n": 3}
