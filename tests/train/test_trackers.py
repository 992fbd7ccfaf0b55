"""--report-to tensorboard|mlflow: the tracker's loss series, read back from its files, equals log.csv's."""

import csv
import json
from pathlib import Path

import pytest
from kdlab_testing import run_cli, small_data

from kdlab.train import loop
from kdlab.train.trackers import installed, resolve_report_to


def csv_losses(run_dir: Path) -> dict[int, float]:
    with (run_dir / "log.csv").open() as handle:
        return {int(row["step"]): float(row["loss"]) for row in csv.DictReader(handle)}


def tensorboard_losses(run_dir: Path) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir / "trackers" / "tensorboard"))
    accumulator.Reload()
    return {event.step: event.value for event in accumulator.Scalars("loss")}


def mlflow_losses(run_dir: Path) -> dict[int, float]:
    from mlflow.tracking import MlflowClient

    run_id = (run_dir / "trackers" / "mlflow_run_id").read_text().strip()
    history = MlflowClient(tracking_uri=f"file:{run_dir / 'trackers' / 'mlruns'}").get_metric_history(run_id, "loss")
    steps = [metric.step for metric in history]
    assert len(steps) == len(set(steps)), f"a step logged twice: {sorted(steps)}"
    return {metric.step: metric.value for metric in history}


READERS = {"tensorboard": tensorboard_losses, "mlflow": mlflow_losses}


def sft_args(tiny_models, data: Path, out: Path, tracker: str, steps: int = 4, save_steps: int = 0) -> dict:
    """The flags of a small ``kdlab sft`` run reporting to ``tracker``."""
    return {
        "model": tiny_models["student"],
        "data": data,
        "out": out,
        "max_steps": steps,
        "batch_size": 4,
        "precision": "fp32",
        "save_steps": save_steps,
        "report_to": tracker,
    }


@pytest.mark.parametrize("tracker", ["tensorboard", "mlflow"])
def test_tracker_loss_series_equals_log_csv(tiny_models, synth_train, tmp_path, monkeypatch, tracker):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    pytest.importorskip(tracker)
    data = small_data(tmp_path / "eight.json", synth_train, 8)
    out = tmp_path / "run"
    assert run_cli("sft", **sft_args(tiny_models, data, out, tracker)) == 0
    expected, logged = csv_losses(out), READERS[tracker](out)
    assert sorted(logged) == sorted(expected) == [1, 2, 3, 4]
    for step, value in expected.items():
        assert logged[step] == pytest.approx(value, rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("tracker", ["tensorboard", "mlflow"])
def test_a_resumed_run_logs_each_step_once(tiny_models, synth_train, tmp_path, monkeypatch, tracker):
    """Killed after logging step 5 with a checkpoint at step 4: steps 5-6 re-run; the tracker still reads as log.csv."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    pytest.importorskip(tracker)
    data = small_data(tmp_path / "eight.json", synth_train, 8)
    out = tmp_path / "run"
    args = sft_args(tiny_models, data, out, tracker, steps=6, save_steps=4)
    original_step = loop.Trainer._step

    def crash_at_step_6(self, step, batches):
        if step == 6:
            raise KeyboardInterrupt("simulated kill")
        return original_step(self, step, batches)

    monkeypatch.setattr(loop.Trainer, "_step", crash_at_step_6)
    with pytest.raises(KeyboardInterrupt):
        run_cli("sft", **args)
    monkeypatch.setattr(loop.Trainer, "_step", original_step)
    assert sorted(csv_losses(out)) == [1, 2, 3, 4, 5]
    assert run_cli("sft", **args) == 0
    expected, logged = csv_losses(out), READERS[tracker](out)
    assert sorted(logged) == sorted(expected) == [1, 2, 3, 4, 5, 6]
    for step, value in expected.items():
        assert logged[step] == pytest.approx(value, rel=1e-6, abs=1e-6)


def test_report_to_names(capsys):
    assert resolve_report_to(["none"]) == [] and resolve_report_to([]) == []
    assert resolve_report_to(["no-such-tracker"]) == []
    assert "tracker 'no-such-tracker' is not installed" in capsys.readouterr().out
    if not installed("wandb"):  # wandb is not installed by kdlab: one clear line, training goes on
        assert resolve_report_to(["wandb"]) == []
        assert (
            capsys.readouterr().out.strip()
            == "kdlab: tracker 'wandb' is not installed; logging to log.csv only (pip install wandb)"
        )
    names = resolve_report_to(["all"])
    assert set(names) <= {"tensorboard", "mlflow", "wandb"} and capsys.readouterr().out == ""


def test_a_study_evaluation_is_added_to_the_trackers(tiny_models, synth_train, tmp_path, monkeypatch):
    """The study's eval node logs eval/TASK/accuracy at the run's last step to the trackers the run logged to."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from kdlab.data.synth import write_synth
    from kdlab.study.kinds import KINDS

    data = small_data(tmp_path / "eight.json", synth_train, 8)
    out = tmp_path / "run"
    assert run_cli("sft", **sft_args(tiny_models, data, out, "tensorboard,mlflow", steps=2)) == 0
    write_synth(tmp_path / "eval-data" / "arith" / "test.json", n=4, seed=3, split="test")
    KINDS["eval"].runner(
        {
            "model": str(tiny_models["student"]),
            "adapter": str(out / "final"),
            "tasks": ["arith"],
            "data_dir": str(tmp_path / "eval-data"),
            "mode": "generate",
            "extraction": "strict",
            "batch_size": 4,
            "limit": None,
            "max_new_tokens": 4,
            "precision": "fp32",
        },
        tmp_path / "eval",
        tmp_path,
    )
    accuracy = json.loads((tmp_path / "eval" / "metrics.json").read_text())["tasks"]["arith"]["accuracy"]

    accumulator = EventAccumulator(str(out / "trackers" / "tensorboard"))
    accumulator.Reload()
    assert [(event.step, event.value) for event in accumulator.Scalars("eval/arith/accuracy")] == [
        (2, pytest.approx(accuracy))
    ]
    assert sorted(event.step for event in accumulator.Scalars("loss")) == [1, 2]
    run_id = (out / "trackers" / "mlflow_run_id").read_text().strip()
    history = MlflowClient(tracking_uri=f"file:{out / 'trackers' / 'mlruns'}").get_metric_history(
        run_id, "eval/arith/accuracy"
    )
    assert [(metric.step, metric.value) for metric in history] == [(2, pytest.approx(accuracy))]


def tensorboard_series(run_dir: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir / "trackers" / "tensorboard"))
    accumulator.Reload()
    return {event.step: event.value for event in accumulator.Scalars(tag)}


def test_a_kd_run_logs_its_kd_and_ce_parts(tiny_models, synth_train, tmp_path):
    """kd_loss + ce_loss = loss at every step; with kd_weight 0.5 both parts are positive; the first step's parts
    equal the two terms computed apart (KD-only and CE-only objectives on the same batch and weights)."""
    pytest.importorskip("tensorboard")
    import torch

    from kdlab.config import KDConfig
    from kdlab.data.formats import load_examples
    from kdlab.data.tokenize import collate, encode_examples
    from kdlab.models.load import load_model, load_tokenizer
    from kdlab.train.objectives import DistillObjective, kd_spec, sft_objective

    data = small_data(tmp_path / "four.json", synth_train, 4)
    out = tmp_path / "kd"
    assert (
        run_cli(
            "distill",
            teacher=tiny_models["teacher"],
            student=tiny_models["student"],
            data=data,
            out=out,
            loss="fkl",
            temperature=2,
            kd_weight=0.5,
            no_lora=True,
            max_steps=3,
            batch_size=4,
            precision="fp32",
            save_steps=0,
            report_to="tensorboard",
        )
        == 0
    )
    loss, kd, ce = (tensorboard_series(out, tag) for tag in ("loss", "kd_loss", "ce_loss"))
    assert sorted(loss) == sorted(kd) == sorted(ce) == [1, 2, 3]
    for step in loss:
        assert kd[step] + ce[step] == pytest.approx(loss[step], rel=1e-5)
        assert kd[step] > 0 and ce[step] > 0
    # step 1 runs on the untrained student: its parts are the two terms of the objective computed apart
    tokenizer = load_tokenizer(tiny_models["student"])
    batch = collate(encode_examples(tokenizer, load_examples(str(data)), 256), tokenizer.pad_token_id)
    n = int((batch["labels"][:, 1:] != -100).sum())
    student, teacher = load_model(tiny_models["student"]), load_model(tiny_models["teacher"])
    kd_only = DistillObjective(
        kd_spec(KDConfig(loss="fkl", temperature=2.0, kd_weight=1.0), 256), 0, 0, teacher=teacher
    )
    with torch.no_grad():
        expected_kd = 0.5 * float(kd_only(student, batch, 1)) / n
        expected_ce = 0.5 * float(sft_objective(256)(student, batch, 1)) / n
    assert kd[1] == pytest.approx(expected_kd, rel=1e-4) and ce[1] == pytest.approx(expected_ce, rel=1e-4)
