"""The per-example fidelity frame of two evaluation folders and its per-task summary (see :mod:`kdlab.fidelity_metrics`)."""

from __future__ import annotations

import math

import pandas as pd

from kdlab.fidelity_metrics.distribution import DISTRIBUTION_METRICS
from kdlab.fidelity_metrics.embeddings import embed_texts, use_embeddings
from kdlab.fidelity_metrics.folders import example_order, paired
from kdlab.fidelity_metrics.text import corpus_bleu, rouge_l, sentence_bleu

FRAME_COLUMNS = [
    "task",
    "id",
    "teacher_pred",
    "student_pred",
    "teacher_correct",
    "student_correct",
    "agree",
    "sentence_bleu",
    "rougeL",
    "cosine",
]
PAIR_FIELDS = FRAME_COLUMNS[1:]


def fidelity_frame(
    teacher_dir, student_dir, embeddings: bool | None = None, allow_partial: bool = False
) -> pd.DataFrame:
    """One row per (task, id), sorted: task, id, teacher_pred, student_pred, teacher_correct, student_correct,
    agree, sentence_bleu, rougeL, cosine (NaN for loglik folders, and cosine NaN when embeddings are off), plus
    teacher_output and student_output (None for loglik folders; :func:`summarize` uses them for corpus BLEU).

    ``embeddings``: None uses the embedding model when its package is installed, True requires it (KdlabError with
    the install command when missing), False skips it. ``frame.attrs`` records the mode, the extraction of each
    folder and whether embeddings were used. Both folders must be finished evaluations of the same examples (same
    ids, prompts and gold answers); ``allow_partial`` accepts unfinished ones and compares the ids both have.
    """
    with_embeddings = use_embeddings(embeddings)
    teacher, student = paired(teacher_dir, student_dir, allow_partial)
    generate = teacher["mode"] == "generate"
    rows = []
    for task in sorted(teacher["tasks"]):
        t_records, s_records = teacher["tasks"][task], student["tasks"][task]
        for index in sorted(t_records, key=example_order):
            t, s = t_records[index], s_records[index]
            t_pred, s_pred = t["pred"], s["pred"]
            row = {
                "task": task,
                "id": index,
                "teacher_pred": t_pred,
                "student_pred": s_pred,
                "teacher_correct": bool(t["correct"]),
                "student_correct": bool(s["correct"]),
                "agree": t_pred is not None and s_pred is not None and str(t_pred) == str(s_pred),
                "sentence_bleu": math.nan,
                "rougeL": math.nan,
                "cosine": math.nan,
                "teacher_output": None,
                "student_output": None,
            }
            if generate:
                t_out, s_out = str(t["output"] or ""), str(s["output"] or "")
                row.update(
                    teacher_output=t_out,
                    student_output=s_out,
                    sentence_bleu=sentence_bleu(s_out, t_out),
                    rougeL=rouge_l(s_out, t_out),
                )
            rows.append(row)
    frame = pd.DataFrame(rows, columns=FRAME_COLUMNS + ["teacher_output", "student_output"])
    frame["teacher_pred"] = frame["teacher_pred"].astype(object).where(frame["teacher_pred"].notna(), None)
    frame["student_pred"] = frame["student_pred"].astype(object).where(frame["student_pred"].notna(), None)
    if generate and with_embeddings and len(frame):
        t_emb = embed_texts(frame["teacher_output"].tolist())
        s_emb = embed_texts(frame["student_output"].tolist())
        frame["cosine"] = (t_emb * s_emb).sum(-1).clamp(-1.0, 1.0).double().numpy()
    frame.attrs.update(
        mode=teacher["mode"],
        embeddings=bool(generate and with_embeddings),
        extraction={"teacher": teacher["extraction"], "student": student["extraction"]},
    )
    return frame


def _mean(values) -> float | None:
    values = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(values) / len(values) if values else None


def _share(mask: pd.Series) -> float | None:
    return float(mask.mean()) if len(mask) else None


def _task_summary(rows: pd.DataFrame) -> dict:
    agree = rows["agree"].astype(bool)
    both = rows["teacher_pred"].notna() & rows["student_pred"].notna()
    t_right, s_right = rows["teacher_correct"].astype(bool), rows["student_correct"].astype(bool)
    outputs = (
        "teacher_output" in rows
        and "student_output" in rows
        and len(rows) > 0
        and rows["teacher_output"].notna().all()
        and rows["student_output"].notna().all()
    )
    return {
        "n": len(rows),
        "agreement": _share(agree),
        "n_both_answered": int(both.sum()),
        "agreement_both_answered": _share(agree[both]),
        "table": {
            "teacher_right_student_right": int((t_right & s_right).sum()),
            "teacher_right_student_wrong": int((t_right & ~s_right).sum()),
            "teacher_wrong_student_right": int((~t_right & s_right).sum()),
            "teacher_wrong_student_wrong": int((~t_right & ~s_right).sum()),
        },
        "agreement_teacher_right": _share(agree[t_right]),
        "agreement_teacher_wrong": _share(agree[~t_right]),
        "teacher_accuracy": _share(t_right),
        "student_accuracy": _share(s_right),
        "bleu": corpus_bleu(rows["student_output"].tolist(), rows["teacher_output"].tolist()) if outputs else None,
        "sentence_bleu": _mean(rows["sentence_bleu"].tolist()),
        "rougeL": _mean(rows["rougeL"].tolist()),
        "cosine": _mean(rows["cosine"].tolist()),
    }


def summarize(frame: pd.DataFrame, distribution: dict | None = None) -> dict:
    """{"tasks": {task: metrics}, "average": macro means} from :func:`fidelity_frame` (see the module doc).

    ``distribution`` (the result of :func:`distribution_fidelity`) adds kl_teacher_student, kl_student_teacher,
    top1_agreement and tokens to the tasks it covers.
    """
    tasks = {task: _task_summary(rows) for task, rows in frame.groupby("task", sort=True)}
    for task, values in (distribution or {}).items():
        if task in tasks:
            tasks[task].update({key: values[key] for key in (*DISTRIBUTION_METRICS, "tokens")})
    average: dict = {
        "n": sum(t["n"] for t in tasks.values()),
        "n_tasks": len(tasks),
        "n_both_answered": sum(t["n_both_answered"] for t in tasks.values()),
        "table": {
            key: sum(t["table"][key] for t in tasks.values())
            for key in next(iter(tasks.values()), {"table": {}})["table"]
        },
    }
    keys = [
        "agreement",
        "agreement_both_answered",
        "agreement_teacher_right",
        "agreement_teacher_wrong",
        "teacher_accuracy",
        "student_accuracy",
        "bleu",
        "sentence_bleu",
        "rougeL",
        "cosine",
    ]
    if distribution:
        keys += list(DISTRIBUTION_METRICS)
        average["tokens"] = sum(t.get("tokens", 0) for t in tasks.values())
    for key in keys:
        average[key] = _mean([t.get(key) for t in tasks.values()])
    return {"tasks": tasks, "average": average}
