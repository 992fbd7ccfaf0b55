"""Experiment trackers (``train.report_to`` / ``--report-to``): TensorBoard, MLflow and W&B, through accelerate.

Every tracker writes inside the run folder by default::

    RUN/trackers/tensorboard/   TensorBoard event files (``tensorboard --logdir RUN/trackers``)
    RUN/trackers/mlruns/        an MLflow file store (``mlflow ui --backend-store-uri file:RUN/trackers/mlruns``),
                                experiment "kdlab", one MLflow run per kdlab run (its id in trackers/mlflow_run_id)
    RUN/trackers/wandb/         W&B's local files (``WANDB_MODE=offline`` works without network)

``MLFLOW_TRACKING_URI`` set in the environment wins over the run folder's store.

Names: ``tensorboard``, ``mlflow``, ``wandb``; ``all`` = every one of them that is installed; ``none`` = no tracker.
A tracker that is not installed is left out with a one-line message (log.csv is always written).

Evaluation: when a study evaluates a finished run (its eval and fidelity nodes), :func:`log_evaluation` adds the
results to the run's TensorBoard and MLflow logs at the run's last step (``eval/TASK/accuracy``,
``fidelity/TASK/agreement``).

Resume: a resumed run appends to the same trackers. TensorBoard gets ``purge_step`` = the first re-run step, so
readers (TensorBoard, its EventAccumulator) drop the events an interrupted session logged after the checkpoint;
MLflow keeps one MLflow run for the whole kdlab run and skips the steps it already holds (a step logged before the
interruption keeps its first value: the same as log.csv's, since a resumed run repeats the same computation).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

KNOWN = ("tensorboard", "mlflow", "wandb")


def installed(name: str) -> bool:
    """Whether the tracker's package is importable (its module has the tracker's name)."""
    return importlib.util.find_spec(name) is not None


def resolve_report_to(names: list) -> list[str]:
    """Expand ``all``/``none`` and comma lists; keep installed trackers, in order, without repeats.

    >>> resolve_report_to(["none"])
    []
    """
    wanted: list[str] = []
    for item in names:
        for name in str(item).split(","):
            name = name.strip().lower()
            if not name or name == "none":
                continue
            for one in KNOWN if name == "all" else (name,):
                if one not in wanted:
                    wanted.append(one)
    explicit_all = any(str(item).strip().lower() == "all" for item in names)
    kept = []
    for name in wanted:
        if installed(name):
            kept.append(name)
        elif not explicit_all:  # 'all' means the installed ones: no message for the others
            hint = "pip install 'kdlab[trackers]'" if name in ("tensorboard", "mlflow") else f"pip install {name}"
            print(f"kdlab: tracker '{name}' is not installed; logging to log.csv only ({hint})", flush=True)
    return kept


def build_trackers(names: list, run_dir: Path) -> list:
    """accelerate tracker objects for ``names`` (see :func:`resolve_report_to`), all writing under RUN/trackers."""
    root = Path(run_dir) / "trackers"
    trackers = []
    for name in resolve_report_to(names):
        if name == "tensorboard":
            from accelerate.tracking import TensorBoardTracker

            trackers.append(TensorBoardTracker("tensorboard", str(root)))
        elif name == "mlflow":
            trackers.append(_mlflow_tracker(root, Path(run_dir).name))
        elif name == "wandb":
            from accelerate.tracking import WandBTracker

            (root / "wandb").mkdir(parents=True, exist_ok=True)
            trackers.append(WandBTracker(Path(run_dir).name, dir=str(root / "wandb")))
        else:
            trackers.append(name)  # another accelerate tracker by name (comet_ml, aim, ...)
    return trackers


def prepare_resume(trackers: list, start_step: int) -> None:
    """Before ``init_trackers``: tell the trackers the first step this session logs (``start_step + 1``)."""
    from accelerate.tracking import TensorBoardTracker

    for tracker in trackers:
        if isinstance(tracker, TensorBoardTracker) and start_step > 0:
            tracker.init_kwargs["purge_step"] = start_step + 1


def step_metrics(
    loss: float,
    lr: float,
    tokens: int,
    tokens_per_s: float,
    epoch: int,
    on_policy_steps: int | None,
    loss_parts: dict | None = None,
) -> dict:
    """The values logged at each log step: log.csv's row (unrounded), plus for KD runs ``kd_loss`` and ``ce_loss``
    (the step's mean KD and CE terms per response token; they sum to ``loss``) and ``on_policy_steps``."""
    metrics = {
        "loss": loss,
        "lr": lr,
        "tokens": tokens,
        "tokens_per_s": tokens_per_s,
        "epoch": epoch,
        **(loss_parts or {}),
    }
    if on_policy_steps is not None:
        metrics["on_policy_steps"] = on_policy_steps
    return metrics


def evaluation_values(metrics: dict | None = None, fidelity: dict | None = None) -> dict[str, float]:
    """Scalars of a metrics.json (``eval/TASK/accuracy``) or fidelity.json (``fidelity/TASK/agreement``, ``.../average``)."""
    values = {}
    for task, row in ((metrics or {}).get("tasks") or {}).items():
        for key in ("accuracy", "accuracy_norm"):
            if isinstance(row.get(key), (int, float)):
                values[f"eval/{task}/{key}"] = float(row[key])
    if fidelity:
        for task, row in {**fidelity.get("tasks", {}), "average": fidelity.get("average", {})}.items():
            for key in ("agreement", "teacher_accuracy", "student_accuracy"):
                if isinstance(row.get(key), (int, float)):
                    values[f"fidelity/{task}/{key}"] = float(row[key])
    return values


def log_evaluation(run_dir: str | Path | None, values: dict[str, float]) -> list[str]:
    """Add evaluation results (a study's eval / fidelity node) to the trackers a finished run logged to, at its last
    step: TensorBoard (RUN/trackers/tensorboard) and MLflow (the run in trackers/mlflow_run_id). Returns their names."""
    if run_dir is None or not values or not (Path(run_dir) / "result.json").is_file():
        return []
    import json

    root = Path(run_dir) / "trackers"
    step = int(json.loads((Path(run_dir) / "result.json").read_text())["steps"])
    done = []
    if (root / "tensorboard").is_dir() and installed("tensorboard"):
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(root / "tensorboard"))
        for key, value in values.items():
            writer.add_scalar(key, value, step)
        writer.close()
        done.append("tensorboard")
    if (root / "mlflow_run_id").is_file() and installed("mlflow"):
        from mlflow.tracking import MlflowClient

        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"file:{(root / 'mlruns').resolve()}"
        client, run_id = MlflowClient(tracking_uri=uri), (root / "mlflow_run_id").read_text().strip()
        for key, value in values.items():
            client.log_metric(run_id, key, value, step=step)
        done.append("mlflow")
    return done


def _mlflow_tracker(root: Path, run_name: str):
    from accelerate.tracking import MLflowTracker

    class KdlabMLflowTracker(MLflowTracker):
        """MLflowTracker with a file store inside the run folder, one MLflow run per kdlab run, no repeated steps."""

        def start(self):
            from accelerate.state import PartialState

            if not PartialState().is_main_process:
                return
            import mlflow

            if "MLFLOW_TRACKING_URI" not in os.environ:
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow>=3.17 asks for an opt-in
                mlflow.set_tracking_uri(f"file:{(root / 'mlruns').resolve()}")
            if mlflow.active_run() is not None:  # left open by an interrupted run in this process
                mlflow.end_run("KILLED")
            id_file = root / "mlflow_run_id"
            self.run_id = self.run_id or (id_file.read_text().strip() if id_file.is_file() else None)
            self.logged_upto = _last_step(mlflow, self.run_id) if self.run_id else 0
            super().start()
            root.mkdir(parents=True, exist_ok=True)
            id_file.write_text(self.active_run.info.run_id + "\n")

        def log(self, values: dict, step: int | None = None, **kwargs):
            if step is not None and step <= getattr(self, "logged_upto", 0):
                return
            super().log(values, step=step, **kwargs)

    return KdlabMLflowTracker(experiment_name="kdlab", run_name=run_name)


def _last_step(mlflow, run_id: str) -> int:
    """The largest step of the ``loss`` series already in MLflow run ``run_id`` (0 if none)."""
    history = mlflow.tracking.MlflowClient().get_metric_history(run_id, "loss")
    return max((metric.step for metric in history), default=0)
