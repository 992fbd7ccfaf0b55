"""``kdlab study results``: one tidy table of a study, one row per evaluated run x task.

Columns (``RESULT_COLUMNS``):

- ``run`` (the evaluated training run's folder, or the base teacher's evaluation), ``role`` in teacher,
  base-teacher, student-sft, student-kd; ``domain``, ``task``
- ``teacher``, ``teacher_kind`` (finetuned | base), ``student``, ``student_size_b`` (parameters / 1e9)
- ``method`` (sft, base, or the method's name in the spec), ``loss``, ``init`` (a later stage: the stages it
  started from, ``sft`` or ``sft>fkl``; empty otherwise), ``temperature`` (NaN for SFT/SeqKD), ``noise``, ``seed``
- ``n``, ``correct``, ``accuracy``, ``ci_low``, ``ci_high`` (95% Wilson interval)
- ``sft_accuracy`` (the same student's SFT run, same domain, task and seed: its *reference*) and ``improvement`` =
  accuracy - sft_accuracy, for KD rows. A later-stage run's reference is SFT continued from the same stage (the
  method with loss ``sft`` and the same ``init``: same start, same budget) when the study has one; SFT continued's
  own reference is the run it started from; ``teacher_accuracy``: the teacher the row learned from (or is compared with)
- ``agreement``, ``bleu`` (sacrebleu 0-100), ``cosine``, ``token_kl`` (KL(p_T || p_S) teacher-forced on the teacher's
  outputs), ``top1_agreement``: fidelity to that teacher (NaN where not computed)
- ``eval_dir``, ``sft_eval_dir``: study-relative evaluation folders (``predictions/<task>.jsonl``) for paired tests;
  ``reference``: the run of ``sft_eval_dir`` in words (``SFT``, ``more-sft after SFT``)
- ``selected`` (with ``tuning``: the settings chosen on the validation split, e.g. ``train.lr=0.0003 kd.temperature=2``;
  empty otherwise) and ``val_accuracy`` (the chosen candidate's validation accuracy). A temperature that was selected
  is named there; the ``temperature`` column is then NaN, since temperature is no longer a dimension of the grid.
- ``fidelity_dir``: the study-relative fidelity folder of the row (``pairs/<task>.jsonl``, per-example agreement),
  for paired agreement tests (:mod:`kdlab.stats.fidelity`); empty where fidelity was not computed

:func:`collect_selection` gives the validation side: one row per candidate, with its score and whether it was chosen.

A student's SFT run is shared by all teachers; it gets one row per teacher, with that teacher's accuracy and the
student's fidelity to it. Only finished evaluations appear; ``kdlab study status`` says what is missing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from kdlab.errors import KdlabError
from kdlab.io import atomic_write_bytes, atomic_write_text
from kdlab.stats.formatting import fmt
from kdlab.stats.table import NUMERIC
from kdlab.study.cost import model_params
from kdlab.study.kinds import is_done
from kdlab.study.plan import Node, Plan

# identity and settings, the numbers (:data:`kdlab.stats.table.NUMERIC`, in that order), then the folders
RESULT_COLUMNS = [
    *(
        "run",
        "role",
        "domain",
        "task",
        "teacher",
        "teacher_kind",
        "student",
        "student_size_b",
        "method",
        "loss",
        "init",
    ),
    *NUMERIC[1:],
    *("eval_dir", "sft_eval_dir", "reference", "selected", "val_accuracy", "fidelity_dir"),
]
SELECTION_COLUMNS = [
    "select",
    "role",
    "teacher",
    "teacher_kind",
    "student",
    "domain",
    "method",
    "noise",
    "seed",
    "task",
    "candidate",
    "settings",
    "n",
    "val_accuracy",
    "selected",
    "run",
]
FIDELITY_KEYS = {
    "agreement": "agreement",
    "bleu": "bleu",
    "cosine": "cosine",
    "token_kl": "kl_teacher_student",
    "top1_agreement": "top1_agreement",
}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise KdlabError(f"{path}: unreadable ({exc})") from None


def _number(value) -> float:
    return float(value) if value is not None else math.nan


def collect_results(plan: Plan, study_dir: str | Path) -> pd.DataFrame:
    """The tidy results table of the finished evaluations of ``plan`` (see the module docstring)."""
    study_dir = Path(study_dir)
    spec = plan.spec
    evals = [node for node in plan.nodes if node.kind == "eval" and is_done(node, study_dir)]
    metrics = {node.id: _read_json(node.folder(study_dir) / "metrics.json")["tasks"] for node in evals}
    fidelity: dict[tuple[str, str], dict] = {}
    fidelity_dirs: dict[tuple[str, str], str] = {}
    for node in plan.nodes:
        if node.kind == "fidelity" and is_done(node, study_dir):
            key = (node.params["student_eval"].split(":", 1)[1], node.params["teacher_eval"].split(":", 1)[1])
            fidelity[key] = _read_json(node.folder(study_dir) / "fidelity.json")["tasks"]
            fidelity_dirs[key] = node.id
    teacher_evals = {
        (n.meta.teacher, n.meta.domain, n.meta.role == "base-teacher"): n
        for n in evals
        if n.meta.role in ("teacher", "base-teacher")
    }
    references = _references(evals)
    sizes = {name: model_params(spec, name) / 1e9 for name in set(spec.teachers) | set(spec.students)}
    selections = {
        node.id: _read_json(node.folder(study_dir) / "selection.json")
        for node in plan.nodes
        if node.kind == "select" and is_done(node, study_dir)
    }
    rows = []
    for node in evals:
        meta = node.meta
        teachers = spec.teachers if meta.role == "student-sft" else [meta.teacher]
        for teacher in teachers:
            base = meta.teacher_kind == "base"
            teacher_eval = teacher_evals.get((teacher, meta.domain, base))
            sft_eval = references.get(node.id)
            for task, values in metrics[node.id].items():
                row = _row(node, teacher, task, values, metrics, teacher_eval, sft_eval, fidelity, sizes)
                row["fidelity_dir"] = (
                    fidelity_dirs.get((node.id, teacher_eval.id)) if teacher_eval is not None else None
                )
                rows.append(_with_selection(row, selections.get(meta.run)))
    frame = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    for column in ("n", "correct", "seed"):
        frame[column] = frame[column].astype("Int64")
    return frame


def _references(evals: list[Node]) -> dict[str, Node]:
    """KD evaluation id -> the evaluation it is compared with (see the module docstring): the same student's SFT
    (same domain and seed); for a later stage, SFT continued from the same stage with the same teacher, or else the
    stage it continued; for SFT continued, the stage it continued."""
    by_stage = {}  # (teacher, student, domain, seed, stage) -> evaluation of the run that ends that stage chain
    continued = {}  # (teacher, student, domain, seed, init) -> evaluation of SFT continued from that stage
    for n in evals:
        m = n.meta
        if m.role == "student-kd" and not m.noise and m.teacher_kind == "finetuned":
            by_stage.setdefault((m.teacher, m.student, m.domain, m.seed, ">".join(filter(None, (m.init, m.method)))), n)
            if m.loss == "sft":
                continued[(m.teacher, m.student, m.domain, m.seed, m.init)] = n
    sft = {(n.meta.student, n.meta.domain, n.meta.seed): n for n in evals if n.meta.role == "student-sft"}
    references = {}
    for n in evals:
        m = n.meta
        if m.role != "student-kd":
            continue
        key = (m.teacher, m.student, m.domain, m.seed)
        if not m.init:
            reference = sft.get(key[1:])
        elif m.loss == "sft":
            reference = sft.get(key[1:]) if m.init == "sft" else by_stage.get((*key, m.init))
        else:
            reference = continued.get((*key, m.init))
            reference = reference or (sft.get(key[1:]) if m.init == "sft" else by_stage.get((*key, m.init)))
        if reference is not None:
            references[n.id] = reference
    return references


def _row(
    node: Node,
    teacher: str,
    task: str,
    values: dict,
    metrics: dict,
    teacher_eval: Node | None,
    sft_eval: Node | None,
    fidelity: dict,
    sizes: dict,
) -> dict:
    meta = node.meta
    n, accuracy = int(values["n"]), float(values["accuracy"])
    role = meta.role
    row = {
        "run": meta.run or node.id,
        "role": role,
        "domain": meta.domain,
        "task": task,
        "teacher": teacher,
        "teacher_kind": meta.teacher_kind if role != "student-sft" else "finetuned",
        "student": meta.student,
        "student_size_b": sizes[meta.student],
        "method": "base" if role == "base-teacher" else meta.method,
        "loss": meta.loss or "sft",
        "init": meta.init or "",
        "temperature": _number(meta.temperature),
        "noise": float(meta.noise or 0.0),
        "seed": meta.seed if meta.seed is not None else 0,
        "n": n,
        "correct": round(accuracy * n),
        "accuracy": accuracy,
        "ci_low": float(values["ci95"][0]),
        "ci_high": float(values["ci95"][1]),
        "eval_dir": node.id,
        "sft_accuracy": math.nan,
        "improvement": math.nan,
        "sft_eval_dir": None,
        "reference": "",
    }
    row["teacher_accuracy"] = (
        float(metrics[teacher_eval.id][task]["accuracy"])
        if teacher_eval is not None and task in metrics.get(teacher_eval.id, {})
        else math.nan
    )
    if sft_eval is not None and task in metrics.get(sft_eval.id, {}):
        row["sft_accuracy"] = float(metrics[sft_eval.id][task]["accuracy"])
        row["improvement"] = accuracy - row["sft_accuracy"]
        row["sft_eval_dir"] = sft_eval.id
        row["reference"] = sft_eval.meta.label()
    found = fidelity.get((node.id, teacher_eval.id), {}).get(task, {}) if teacher_eval is not None else {}
    for column, key in FIDELITY_KEYS.items():
        row[column] = _number(found.get(key))
    return row


DATA_FIT_COLUMNS = ["run", "examples_in_data", "examples", "dropped_long", "cut_responses", "max_length", "on_long"]


def collect_data_fit(study_dir: str | Path) -> pd.DataFrame:
    """One row per finished training run of the study (``<kind>/<run>/result.json``) that dropped or cut training
    examples to fit ``train.max_length`` (``DATA_FIT_COLUMNS``, from result.json's ``data``); empty when none did."""
    rows = []
    for path in sorted(Path(study_dir).glob("*/*/result.json")):
        data = _read_json(path).get("data") or {}
        if data.get("dropped_long") or data.get("cut_responses"):
            rows.append(
                {
                    "run": f"{path.parent.parent.name}/{path.parent.name}",
                    **{k: data.get(k) for k in DATA_FIT_COLUMNS[1:]},
                }
            )
    return pd.DataFrame(rows, columns=DATA_FIT_COLUMNS)


def format_settings(settings: dict) -> str:
    """``{"train.lr": 0.0003, "kd.temperature": 2.0}`` -> ``train.lr=0.0003 kd.temperature=2``."""
    return " ".join(
        f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}" for key, value in settings.items()
    )


def _with_selection(row: dict, selection: dict | None) -> dict:
    """A row of a selected run: the chosen training run, its settings and validation score."""
    if selection is None:
        return {**row, "selected": "", "val_accuracy": math.nan}
    chosen = selection["selected"]
    row = {
        **row,
        "run": chosen["run"],
        "selected": format_settings(chosen["settings"]),
        "val_accuracy": chosen["accuracy"],
    }
    if "kd.temperature" in chosen["settings"]:
        row["temperature"] = math.nan
    return row


def collect_selection(plan: Plan, study_dir: str | Path) -> pd.DataFrame:
    """Every candidate of every finished selection: its settings, validation accuracy and whether it was chosen."""
    study_dir = Path(study_dir)
    rows = []
    for node in plan.nodes:
        if node.kind != "select" or not is_done(node, study_dir):
            continue
        selection, meta = _read_json(node.folder(study_dir) / "selection.json"), node.meta
        for i, candidate in enumerate(selection["candidates"]):
            rows.append(
                {
                    "select": node.id,
                    "role": meta.role,
                    "teacher": meta.teacher,
                    "teacher_kind": meta.teacher_kind,
                    "student": meta.student,
                    "domain": meta.domain,
                    "method": meta.method,
                    "noise": float(meta.noise or 0.0),
                    "seed": meta.seed if meta.seed is not None else 0,
                    "task": selection["task"],
                    "candidate": i,
                    "settings": format_settings(candidate["settings"]),
                    "n": candidate["n"],
                    "val_accuracy": candidate["accuracy"],
                    "selected": candidate["run"] == selection["selected"]["run"],
                    "run": candidate["run"],
                    **{f"setting:{k}": v for k, v in candidate["settings"].items()},
                }
            )
    frame = pd.DataFrame(rows)
    return frame if len(frame) else pd.DataFrame(columns=SELECTION_COLUMNS)


def write_results(frame: pd.DataFrame, out_dir: str | Path, selection: pd.DataFrame | None = None) -> list[Path]:
    """``results.csv`` and ``results.parquet`` in ``out_dir`` (each written atomically), and ``selection.csv`` when
    the study tuned its runs (a non-empty ``selection``)."""
    import io

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, parquet_path = out_dir / "results.csv", out_dir / "results.parquet"
    atomic_write_text(csv_path, frame.to_csv(index=False))
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    atomic_write_bytes(parquet_path, buffer.getvalue())
    paths = [csv_path, parquet_path]
    if selection is not None and not selection.empty:
        paths.append(out_dir / "selection.csv")
        atomic_write_text(paths[-1], selection.to_csv(index=False))
    return paths


def format_results(frame: pd.DataFrame) -> str:
    """A compact terminal view: accuracy (and improvement) per run and task."""
    if frame.empty:
        return "no finished evaluations yet"
    view = frame.copy()
    view["acc"] = view["accuracy"].map(lambda v: f"{v:.3f}")
    view["CI"] = [f"[{lo:.2f}, {hi:.2f}]" for lo, hi in zip(view["ci_low"], view["ci_high"])]
    view["gain"] = view["improvement"].map(lambda v: fmt(v, "+.3f"))
    view["agree"] = view["agreement"].map(lambda v: fmt(v, ".2f"))
    view["tau"] = view["temperature"].map(lambda v: fmt(v, "g"))
    columns = [
        "role",
        "teacher",
        "student",
        "method",
        "tau",
        "noise",
        "seed",
        "task",
        "n",
        "acc",
        "CI",
        "gain",
        "agree",
    ]
    return view[columns].to_string(index=False)
