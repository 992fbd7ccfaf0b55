"""Reading two ``kdlab eval`` folders and pairing their examples (teacher and student, same tasks and ids).

An evaluation folder holds ``predictions/<task>.jsonl`` (one record per example: id, pred, correct, and output for
``generate`` evaluations; see :mod:`kdlab.eval.evaluate`), ``config.yaml`` and, once finished, ``metrics.json``.
"""

from __future__ import annotations

from pathlib import Path

from kdlab.errors import KdlabError
from kdlab.eval.predictions import read_prediction_lines
from kdlab.outputs import read_config_mapping


def example_order(index) -> tuple:
    """Sort key of example ids: by type name first, so ids of mixed types (int and str) still sort."""
    return (str(type(index)), index)


def read_eval_folder(folder: str | Path) -> dict:
    """{"mode", "extraction", "tasks": {task: {id: record}}} of an evaluation folder; KdlabError when it is none."""
    folder = Path(folder)
    predictions = folder / "predictions"
    if not predictions.is_dir():
        raise KdlabError(f"{folder}: not a kdlab evaluation folder (no predictions/)")
    files = sorted(path for path in predictions.glob("*.jsonl") if not path.name.startswith("."))
    if not files:
        raise KdlabError(f"{folder}: predictions/ holds no <task>.jsonl file")
    config = read_config_mapping(folder / "config.yaml") if (folder / "config.yaml").is_file() else {}
    tasks = {
        path.stem: {
            record["id"]: record for _, record in read_prediction_lines(path, ("id", "pred", "correct"), str_ids=True)
        }
        for path in files
    }
    mode = config.get("mode")
    if mode not in ("generate", "loglik"):
        first = next((record for records in tasks.values() for record in records.values()), {})
        mode = "generate" if "output" in first else "loglik"
    if mode == "generate":
        for task, records in tasks.items():
            if any("output" not in record for record in records.values()):
                raise KdlabError(f"{folder}: task {task} is a generate evaluation but a line has no output field")
    return {
        "mode": mode,
        "extraction": config.get("extraction"),
        "tasks": tasks,
        "complete": (folder / "metrics.json").is_file(),
    }


def _check_complete(side: str, folder, data: dict, allow_partial: bool) -> None:
    """Refuse an evaluation folder without metrics.json (interrupted, or still running) unless ``allow_partial``."""
    if not data["complete"] and not allow_partial:
        raise KdlabError(
            f"{side} folder {folder}: unfinished evaluation (no metrics.json); rerun kdlab eval to finish it, "
            "or pass --allow-partial to compare the examples both folders have"
        )


def _check_same_examples(teacher: dict, student: dict) -> None:
    """Each paired example must be the same question: equal prompt and gold on both sides; else a KdlabError naming
    the task and the first mismatching id (two evaluations of different test files can share ids)."""
    for task in sorted(teacher["tasks"]):
        t_records, s_records = teacher["tasks"][task], student["tasks"][task]
        for index in sorted(set(t_records) & set(s_records), key=example_order):
            t, s = t_records[index], s_records[index]
            for field in ("prompt", "gold"):
                if field in t and field in s and str(t[field]) != str(s[field]):
                    raise KdlabError(
                        f"task {task}, example id {index}: the teacher and student folders hold different "
                        f"examples ({field} differs: {str(t[field])[:60]!r} vs {str(s[field])[:60]!r}); "
                        "evaluate both on the same test file"
                    )


def _common_ids(teacher: dict, student: dict, teacher_dir, student_dir) -> None:
    """Keep only the ids both folders have (``--allow-partial``), saying how many were left out."""
    for task in sorted(teacher["tasks"]):
        t_records, s_records = teacher["tasks"][task], student["tasks"][task]
        common = set(t_records) & set(s_records)
        left_out = len(t_records) + len(s_records) - 2 * len(common)
        if left_out:
            print(
                f"kdlab: warning: task {task}: {left_out} examples are in only one of {teacher_dir} and {student_dir} "
                f"(--allow-partial): comparing the {len(common)} both have",
                flush=True,
            )
        teacher["tasks"][task] = {i: t_records[i] for i in common}
        student["tasks"][task] = {i: s_records[i] for i in common}


def paired(teacher_dir, student_dir, allow_partial: bool = False) -> tuple[dict, dict]:
    """Read both folders and check they are finished evaluations (unless ``allow_partial``) covering the same tasks
    and ids in the same mode, each id with the same prompt and gold on both sides."""
    teacher, student = read_eval_folder(teacher_dir), read_eval_folder(student_dir)
    _check_complete("teacher", teacher_dir, teacher, allow_partial)
    _check_complete("student", student_dir, student, allow_partial)
    if teacher["mode"] != student["mode"]:
        raise KdlabError(
            f"teacher folder {teacher_dir} is a {teacher['mode']} evaluation and student folder {student_dir} "
            f"a {student['mode']} one; compare folders of the same mode"
        )
    only_teacher = sorted(set(teacher["tasks"]) - set(student["tasks"]))
    only_student = sorted(set(student["tasks"]) - set(teacher["tasks"]))
    if only_teacher or only_student:
        raise KdlabError(
            f"the folders cover different tasks: missing from student {student_dir}: {', '.join(only_teacher) or 'none'}; "
            f"missing from teacher {teacher_dir}: {', '.join(only_student) or 'none'}"
        )
    _check_same_examples(teacher, student)
    if allow_partial:
        _common_ids(teacher, student, teacher_dir, student_dir)
    for task in sorted(teacher["tasks"]):
        t_ids, s_ids = set(teacher["tasks"][task]), set(student["tasks"][task])
        if t_ids != s_ids:
            raise KdlabError(
                f"task {task}: {len(t_ids ^ s_ids)} example ids differ between the folders "
                f"({len(t_ids - s_ids)} only in teacher, {len(s_ids - t_ids)} only in student); "
                f"evaluate both on the same examples (same data, --limit and --exclude-overlap)"
            )
    return teacher, student
