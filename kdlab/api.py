"""kdlab from Python: the ``kdlab`` commands as functions that return result objects.

Each function takes the same settings as its command and builds the same config dataclass
(:class:`kdlab.config.RunConfig`, :class:`kdlab.eval.evaluate.EvalSettings`), so a call and the command write the
same files. Settings come as keywords (top-level fields, and the sections ``lora``, ``train``, ``kd`` as dicts),
a YAML file (``config=``), ``--set``-style strings (``overrides=["train.lr=1e-4"]``) or a ready
:class:`RunConfig`; precedence is that of the CLI: defaults < preset < YAML file < keywords < overrides.

Example::

    import kdlab

    teacher = kdlab.sft(model="smollm2-135m", data="train.json", out="runs/teacher", train={"max_steps": 200})
    student = kdlab.distill(teacher="smollm2-135m", teacher_adapter=teacher.final, student="runs/student-init",
                            data="train.json", out="runs/kd", kd={"loss": "rkl", "temperature": 2.0})
    scores = kdlab.evaluate("runs/student-init", "arith", "runs/kd-eval", adapter=student.final)
    print(scores.metrics["tasks"])
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from kdlab.config import SECTIONS, RunConfig, build_config, validate
from kdlab.errors import KdlabError


@dataclass(frozen=True)
class RunResult:
    """A finished (or already complete) training run: its folder, resolved config and ``result.json``."""

    path: Path
    config: RunConfig
    summary: dict = field(repr=False)

    @property
    def final(self) -> Path:
        """``path/final``: the trained model (a full model folder, or a LoRA adapter)."""
        return self.path / "final"

    def log(self):
        """The training log (``log.csv``) as a pandas DataFrame: step, epoch, loss, lr, tokens, ..."""
        import pandas as pd

        return pd.read_csv(self.path / "log.csv")


@dataclass(frozen=True)
class EvalResult:
    """An evaluation folder and its ``metrics.json`` (per task: accuracy, n, Wilson interval, ...)."""

    path: Path
    metrics: dict = field(repr=False)

    def predictions(self, task: str) -> list[dict]:
        """The per-example records of ``task`` (``predictions/<task>.jsonl``)."""
        from kdlab.eval.predictions import read_prediction_lines

        path = self.path / "predictions" / f"{task}.jsonl"
        return [record for _, record in read_prediction_lines(path, str_ids=True)]


@dataclass(frozen=True)
class FidelityResult:
    """A fidelity folder and its ``fidelity.json`` summary (agreement, right/wrong table, BLEU, ROUGE-L, ...)."""

    path: Path
    summary: dict = field(repr=False)


@dataclass(frozen=True)
class StudyResult:
    """A study folder; :meth:`results` and :meth:`report` compute the tables and the report from finished runs."""

    path: Path
    failed: int = 0
    blocked: int = 0

    def results(self):
        """The tidy results table (a row per run x task) of the finished evaluations, as a DataFrame."""
        from kdlab.study.folder import load_study
        from kdlab.study.publish import finished_results

        return finished_results(*load_study(self.path))[0]

    def report(self) -> Path:
        """Write the results and statistics tables (``path/results``, ``path/stats``) and the HTML report
        (``path/report/report.html``, with ``report.md``); return the HTML file."""
        from kdlab.study.folder import load_study
        from kdlab.study.publish import write_study_report

        return write_study_report(*load_study(self.path))[0]


def _flags(settings: dict) -> dict:
    """Keyword settings as the CLI's flags: ``train={"lr": 1e-3}`` -> ``{"train.lr": 1e-3}``."""
    flags = {}
    for key, value in settings.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise KdlabError(f"{key}=: expected a dict of {key} settings, got {type(value).__name__}")
            flags.update({f"{key}.{name}": item for name, item in value.items()})
        elif value is not None:
            flags[key] = str(value) if isinstance(value, Path) else value
    return flags


def _config(kind: str, config, overrides, settings: dict, preset: str | None = None) -> RunConfig:
    if isinstance(config, RunConfig):
        if settings or overrides or preset:
            raise KdlabError("pass either a RunConfig or settings (keywords, overrides, preset), not both")
        if config.kind != kind:
            raise KdlabError(f"config.kind is {config.kind!r}; kdlab.{kind}() needs kind={kind!r}")
        validate(config)
        return config
    return build_config(kind, str(config) if config else None, _flags(settings), list(overrides or []), preset=preset)


def _run_result(path: Path, config: RunConfig) -> RunResult:
    result = path / "result.json"
    summary = json.loads(result.read_text()) if result.is_file() else {}
    return RunResult(path=path, config=config, summary=summary)


def sft(config: RunConfig | str | Path | None = None, *, overrides: list[str] | None = None, **settings) -> RunResult:
    """Supervised fine-tuning, as ``kdlab sft``: a teacher, or a student's SFT baseline.

    Keywords: ``model``, ``data``, ``out``, ``adapter`` and the sections ``lora``/``train`` as dicts;
    ``config``: a YAML file or a :class:`RunConfig`. Re-running on the same ``out`` resumes or returns the
    finished run.

    >>> run = kdlab.sft(model="smollm2-135m", data="train.json", out="runs/teacher", train={"max_steps": 100})
    >>> run.final, run.summary["final_loss"]
    """
    from kdlab.train.recipes import run_sft

    config = _config("sft", config, overrides, settings)
    return _run_result(run_sft(config), config)


def distill(
    config: RunConfig | str | Path | None = None,
    *,
    preset: str | None = None,
    overrides: list[str] | None = None,
    **settings,
) -> RunResult:
    """Knowledge distillation, as ``kdlab distill``.

    Keywords: ``teacher``, ``teacher_adapter``, ``teacher_cache``, ``student`` (or ``model``), ``adapter``,
    ``data``, ``out`` and the sections ``kd``/``lora``/``train`` as dicts; ``preset``: a named KD recipe
    (:data:`kdlab.config.KD_PRESETS`; explicit settings win).

    >>> run = kdlab.distill(teacher="smollm2-135m", teacher_adapter="runs/teacher/final", student="runs/pruned",
    ...                     data="train.json", out="runs/kd", kd={"loss": "fkl", "temperature": 2.0})
    """
    from kdlab.train.recipes import run_distill

    if "student" in settings:
        if settings.get("model") is not None:
            raise KdlabError("pass the student as student= or model=, not both")
        settings["model"] = settings.pop("student")
    config = _config("distill", config, overrides, settings, preset=preset)
    return _run_result(run_distill(config), config)


def evaluate(model: str | Path, tasks: str | list[str], out: str | Path, **settings) -> EvalResult:
    """Zero-shot evaluation, as ``kdlab eval``: writes ``out/metrics.json`` and ``out/predictions/<task>.jsonl``.

    ``tasks``: names or groups (``"math"``, ``"gsm8k,svamp"`` or a list); other keywords are the fields of
    :class:`kdlab.eval.evaluate.EvalSettings` (``adapter``, ``data_dir``, ``mode``, ``extraction``, ``batch_size``,
    ``limit``, ``max_new_tokens``, ``exclude_overlap``, ``precision``, ``max_prompt_tokens``, ``on_long``, ``backend``).

    >>> scores = kdlab.evaluate("smollm2-135m", "arith", "runs/eval", limit=50)
    >>> scores.metrics["tasks"]["arith"]["accuracy"]
    """
    from kdlab.eval.evaluate import EvalSettings
    from kdlab.eval.evaluate import evaluate as run_eval  # the module's function; this one wraps it

    names = [tasks] if isinstance(tasks, str) else [",".join(tasks)]
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in settings.items()}
    eval_settings = EvalSettings(model=str(model), tasks=names, out=str(out), **settings)
    return EvalResult(path=Path(out), metrics=run_eval(eval_settings))


def fidelity(teacher: str | Path, student: str | Path, out: str | Path, **settings) -> FidelityResult:
    """Student-teacher fidelity, as ``kdlab fidelity``, from two evaluation folders on the same examples.

    Keywords: ``teacher_model``/``student_model`` (+ ``teacher_adapter``/``student_adapter``) add teacher-forced
    token KL and top-1 agreement; ``embeddings`` (bool) the embedding cosine; ``allow_partial``.

    >>> fid = kdlab.fidelity("runs/teacher-eval", "runs/kd-eval", "runs/kd-fidelity")
    >>> fid.summary["average"]["agreement"]
    """
    from kdlab.fidelity_metrics import run_fidelity

    summary = run_fidelity(teacher, student, out, **settings)
    return FidelityResult(path=Path(out), summary=summary)


def run_study(
    spec: str | Path, out: str | Path | None = None, *, executor: str = "local", report: bool = False, **options
) -> StudyResult:
    """Run a study spec, as ``kdlab study run`` (resumable: finished runs are kept); with ``report=True`` also
    write its statistics and HTML report (not after a ``dry_run=True``, which only prints the plan).

    ``executor``: ``local`` (default; options ``shard``, ``poll``, ``max_wait``), ``ray`` (``address``,
    ``max_retries``) or ``slurm`` (``slurm_overrides``, ``submitit_local``); see docs/distributed.md.

    >>> study = kdlab.run_study("configs/studies/smollm2-cpu.yaml", out="runs/cpu", report=True)
    >>> study.results().groupby("method").accuracy.mean()
    """
    if executor == "local":
        from kdlab.study.executors.local import run_study as run_local

        study_dir, summary = run_local(spec, out, **options)
    else:
        from kdlab.study.executors import run_with_executor

        study_dir, summary = run_with_executor(executor, spec, out, **options)
    result = StudyResult(
        path=Path(study_dir), failed=getattr(summary, "failed", 0), blocked=getattr(summary, "blocked", 0)
    )
    if report and summary is not None:
        result.report()
    return result
