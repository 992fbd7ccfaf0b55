"""A run records what its local inputs held (inputs.json) and refuses to resume when they changed.

Why: a run recorded the path of its data, not its contents; when the file at that path changed between a kill and
the re-run, the resumed run silently trained on two datasets.
"""

import json

import pytest
from kdlab_testing import run_cli, small_data
from safetensors.torch import load_file, save_file

from kdlab.config import RunConfig
from kdlab.train import loop, run_inputs

ARGS = {"max_steps": 4, "batch_size": 4, "save_steps": 2, "precision": "fp32"}


def interrupt(args: dict, out, monkeypatch) -> None:
    """Run ``kdlab sft`` and kill it when step 3 starts (after the step-2 checkpoint)."""
    original = loop.Trainer._step

    def crash(self, step, batches):
        if step == 3:
            raise KeyboardInterrupt("simulated kill")
        return original(self, step, batches)

    monkeypatch.setattr(loop.Trainer, "_step", crash)
    with pytest.raises(KeyboardInterrupt):
        run_cli("sft", **args, out=out)
    monkeypatch.setattr(loop.Trainer, "_step", original)


def error_line(capsys) -> str:
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("kdlab: error:")]
    assert len(errors) == 1
    return errors[0]


def test_a_changed_data_file_is_refused_on_resume(tiny_models, synth_train, tmp_path, monkeypatch, capsys):
    data = small_data(tmp_path / "train.json", synth_train, 8)
    args = {"model": tiny_models["student"], "data": data, **ARGS}
    out = tmp_path / "run"
    interrupt(args, out, monkeypatch)
    original = data.read_bytes()
    small_data(data, synth_train, 12)  # other examples at the same path
    capsys.readouterr()
    assert run_cli("sft", **args, out=out) == 2
    err = error_line(capsys)
    assert f"inputs changed since the run started (data {data} changed)" in err
    assert not (out / "final").exists() and (out / "checkpoints" / "step-000002").is_dir()
    recorded = json.loads((out / "inputs.json").read_text())["inputs"]
    assert set(recorded) == {"data", "model"} and recorded["data"]["path"] == str(data)
    data.unlink()
    assert run_cli("sft", **args, out=out) == 2
    assert f"(data {data} missing)" in error_line(capsys)
    data.write_bytes(original)  # restored: the run resumes
    assert run_cli("sft", **args, out=out) == 0
    assert (out / "result.json").is_file()


def test_a_changed_adapter_folder_is_refused_on_resume(tiny_models, synth_train, tmp_path, monkeypatch, capsys):
    common = {"model": tiny_models["student"], "data": small_data(tmp_path / "train.json", synth_train, 8)}
    assert run_cli("sft", **common, out=tmp_path / "base", max_steps=1, save_steps=0, precision="fp32") == 0
    adapter = tmp_path / "base" / "final"
    args = {**common, "adapter": adapter, **ARGS}
    out = tmp_path / "run"
    interrupt(args, out, monkeypatch)
    capsys.readouterr()
    tensors = load_file(adapter / "adapter_model.safetensors")
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1
    save_file(tensors, adapter / "adapter_model.safetensors")
    assert run_cli("sft", **args, out=out) == 2
    assert f"(adapter {adapter} changed)" in error_line(capsys)


def test_a_run_folder_without_the_record_resumes_unchecked(tiny_models, synth_train, tmp_path, monkeypatch):
    """A run started by a kdlab that did not write inputs.json resumes as before, and gets the record."""
    data = small_data(tmp_path / "train.json", synth_train, 8)
    args = {"model": tiny_models["student"], "data": data, **ARGS}
    out = tmp_path / "run"
    interrupt(args, out, monkeypatch)
    (out / "inputs.json").unlink()
    small_data(data, synth_train, 12)
    assert run_cli("sft", **args, out=out) == 0
    assert json.loads((out / "inputs.json").read_text())["inputs"]["data"]["sha256"] == run_inputs.fingerprint(data)


def test_fingerprints_cover_weights_configs_and_tokenizers_of_local_inputs(tiny_models, tmp_path, monkeypatch):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    for item in tiny_models["teacher"].iterdir():
        (teacher / item.name).write_bytes(item.read_bytes())
    config = RunConfig(kind="distill", model="smollm2-135m", teacher=str(teacher), data="hf:gsm8k", out="x")
    found = run_inputs.input_fingerprints(config)
    assert set(found) == {"teacher"}  # an embedded model name and a Hub dataset are not hashed
    before = found["teacher"]["sha256"]
    (teacher / "notes.md").write_text("not a model file")
    assert run_inputs.fingerprint(teacher) == before
    config_json = json.loads((teacher / "config.json").read_text())
    (teacher / "config.json").write_text(json.dumps({**config_json, "rope_theta": 1.0}))
    assert run_inputs.fingerprint(teacher) != before
    # a file over FULL_HASH_BYTES is sampled: still changed by rewritten contents
    monkeypatch.setattr(run_inputs, "FULL_HASH_BYTES", 1024)
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(5 << 20))
    sampled = run_inputs.fingerprint(big)
    big.write_bytes(b"\1" * (5 << 20))
    assert run_inputs.fingerprint(big) != sampled
