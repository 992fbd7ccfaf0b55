"""Checkpoints hold no pickles, and a damaged one is skipped for the one before (kdlab.train.checkpoints).

Why: resuming loaded ``checkpoints/step-N/state.pt`` with ``torch.load(weights_only=False)``, so a crafted file in
a run folder ran its code when the command was re-run; a truncated ``state.pt`` stopped the run with a traceback
instead of resuming from the previous checkpoint.
"""

import json

import numpy as np
import pytest
import torch
from kdlab_testing import run_cli, small_data, weights

from kdlab.train import loop

STEPS = {"max_steps": 6, "batch_size": 4, "save_steps": 2, "keep_checkpoints": 2, "precision": "fp32"}


class Payload:
    """Unpickling it runs code: it creates the file ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


@pytest.fixture(scope="module")
def sft_args(tiny_models, synth_train, tmp_path_factory):
    data = small_data(tmp_path_factory.mktemp("ckpt") / "eight.json", synth_train, 8)
    return {"model": tiny_models["student"], "data": data, **STEPS}


@pytest.fixture(scope="module")
def straight(sft_args, tmp_path_factory):
    """The same run, never interrupted."""
    out = tmp_path_factory.mktemp("straight") / "run"
    assert run_cli("sft", **sft_args, out=out) == 0
    return out


def interrupt(args: dict, out, monkeypatch, at_step: int = 5) -> None:
    """Run ``kdlab sft`` and kill it (KeyboardInterrupt) when step ``at_step`` starts."""
    original = loop.Trainer._step

    def crash(self, step, batches):
        if step == at_step:
            raise KeyboardInterrupt("simulated kill")
        return original(self, step, batches)

    monkeypatch.setattr(loop.Trainer, "_step", crash)
    with pytest.raises(KeyboardInterrupt):
        run_cli("sft", **args, out=out)
    monkeypatch.setattr(loop.Trainer, "_step", original)


def resume(args: dict, out, monkeypatch) -> list[int]:
    """Re-run the command (it must succeed); the steps it trained."""
    calls = []
    original = loop.Trainer._step
    monkeypatch.setattr(loop.Trainer, "_step", lambda self, step, b: calls.append(step) or original(self, step, b))
    assert run_cli("sft", **args, out=out) == 0
    return calls


def assert_same_model(run, straight) -> None:
    mine, reference = weights(run), weights(straight)
    assert mine.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(mine[name], reference[name], rtol=0, atol=0)


def test_checkpoints_hold_no_pickle_and_resume_exactly(sft_args, straight, tmp_path, monkeypatch):
    out = tmp_path / "run"
    interrupt(sft_args, out, monkeypatch)
    folders = sorted((out / "checkpoints").iterdir())
    assert [folder.name for folder in folders] == ["step-000002", "step-000004"]
    for folder in folders:
        assert sorted(path.name for path in folder.iterdir()) == ["state.json", "state.safetensors"]
        assert json.loads((folder / "state.json").read_text())["step"] == int(folder.name[5:])
    assert resume(sft_args, out, monkeypatch) == [5, 6]
    assert_same_model(out, straight)


def test_a_planted_pickle_never_runs(sft_args, straight, tmp_path, monkeypatch, capsys):
    """An old-format state.pt is skipped (the previous checkpoint is used); a state.pt beside a checkpoint is ignored."""
    out, marker = tmp_path / "run", tmp_path / "MARKER"
    interrupt(sft_args, out, monkeypatch)
    latest, previous = out / "checkpoints" / "step-000004", out / "checkpoints" / "step-000002"
    for path in latest.iterdir():
        path.unlink()
    torch.save(Payload(marker), latest / "state.pt")
    torch.save(Payload(marker), previous / "state.pt")
    capsys.readouterr()
    assert resume(sft_args, out, monkeypatch) == [3, 4, 5, 6]
    assert not marker.exists()
    err = capsys.readouterr().err
    assert "step-000004: checkpoint skipped: old checkpoint format (state.pt, a pickle: never loaded" in err
    assert_same_model(out, straight)


def truncate(folder) -> None:
    for path in folder.iterdir():
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def empty(folder) -> None:
    for path in folder.iterdir():
        path.write_bytes(b"")


def mix(folder) -> None:
    """The tensors of step 4 with the JSON of step 2 (same sizes: only the pairing is wrong)."""
    (folder / "state.json").write_bytes((folder.parent / "step-000002" / "state.json").read_bytes())
    meta = json.loads((folder / "state.json").read_text())
    meta["step"] = 4
    (folder / "state.json").write_text(json.dumps(meta))


def garble(folder) -> None:
    (folder / "state.json").write_text('{"format": "kdlab-checkpoint-1", "step": 4, "optimizer": [')


@pytest.mark.parametrize("damage", [truncate, empty, mix, garble], ids=lambda damage: damage.__name__)
def test_a_damaged_checkpoint_falls_back_to_the_previous_one(sft_args, straight, tmp_path, monkeypatch, capsys, damage):
    out = tmp_path / "run"
    interrupt(sft_args, out, monkeypatch)
    damage(out / "checkpoints" / "step-000004")
    capsys.readouterr()
    assert resume(sft_args, out, monkeypatch) == [3, 4, 5, 6]
    err = capsys.readouterr().err
    assert "step-000004: checkpoint skipped:" in err and "Traceback" not in err
    assert_same_model(out, straight)


def test_no_usable_checkpoint_left_starts_again_from_step_0(sft_args, straight, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    interrupt(sft_args, out, monkeypatch)
    for folder in (out / "checkpoints").iterdir():
        truncate(folder)
    (out / "checkpoints" / "step-x").mkdir()  # not a checkpoint: ignored
    capsys.readouterr()
    assert resume(sft_args, out, monkeypatch) == [1, 2, 3, 4, 5, 6]
    err = capsys.readouterr().err
    assert err.count("checkpoint skipped") == 2 and "training starts again from step 0" in err
    assert_same_model(out, straight)


def test_an_adapter_weights_pickle_is_not_unpickled(sft_args, straight, tmp_path):
    """A run's inputs and outputs are read back too (``--adapter``, ``final/``): peft/transformers load ``*.bin``
    with ``weights_only=True``, which refuses the payload (one-line error, exit 2)."""
    adapter, marker = tmp_path / "adapter", tmp_path / "MARKER"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_bytes((straight / "final" / "adapter_config.json").read_bytes())
    torch.save(Payload(marker), adapter / "adapter_model.bin")
    assert run_cli("sft", **sft_args, adapter=adapter, out=tmp_path / "run") == 2
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_a_teacher_cache_holding_a_pickle_is_not_unpickled(tiny_models, sft_args, tmp_path):
    """The teacher cache is read with ``np.load`` (no pickles): an object array planted in cache.npz never runs."""
    cache, marker = tmp_path / "cache", tmp_path / "MARKER"
    common = {
        "teacher": tiny_models["teacher"],
        "student": tiny_models["student"],
        "data": sft_args["data"],
        "teacher_cache": cache,
        "max_steps": 1,
        "batch_size": 4,
        "precision": "fp32",
        "save_steps": 0,
    }
    assert run_cli("distill", **common, out=tmp_path / "first") == 0
    with np.load(cache / "cache.npz") as data:
        arrays = {name: data[name] for name in data.files}
    arrays["offsets"] = np.array([Payload(marker)], dtype=object)
    np.savez(cache / "cache.npz", **arrays)
    try:
        code = run_cli("distill", **common, out=tmp_path / "second")
    except ValueError as exc:  # numpy: "Object arrays cannot be loaded when allow_pickle=False"
        code = str(exc)
    assert code != 0 and not marker.exists()
