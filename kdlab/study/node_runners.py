"""What each kind of study run does, by calling the same functions as the ``kdlab`` commands.

A runner takes the node's parameters (``study:`` folders resolved), its output folder and the study folder; the kind
registry (:mod:`kdlab.study.kinds`) names each kind's runner. Each runner leaves its kind's done file last, so a
folder without one is an interrupted run, which the underlying command resumes (training from its last checkpoint,
evaluation from its last written batch).
"""

from __future__ import annotations

import json
from pathlib import Path

from kdlab.study.nodes import SELECTED, resolve


def prune(p: dict, out: Path, study_dir: Path) -> None:
    """A student cut from a loadable model, keeping ``keep_layers`` decoder layers (``kdlab prune``)."""
    from kdlab.models.prune import prune_model

    prune_model(p["model"], p["keep_layers"], out)


def _train_flags(p: dict, out: Path, study_dir: Path) -> dict:
    flags = {key: resolve(value, study_dir) for key, value in p["flags"].items()}
    return {"model": p["model"], "data": p["data"], "out": str(out), **flags}


def sft(p: dict, out: Path, study_dir: Path) -> None:
    """Teacher or student SFT (``kdlab sft``)."""
    from kdlab.config import build_config
    from kdlab.train.recipes import run_sft

    run_sft(build_config("sft", None, _train_flags(p, out, study_dir), []))


def kd(p: dict, out: Path, study_dir: Path) -> None:
    """A KD run: SeqKD is SFT on the teacher's answers, the others ``kdlab distill``."""
    if p["kind"] == "sft":  # SeqKD: SFT on the teacher's answers
        sft(p, out, study_dir)
        return
    from kdlab.config import build_config
    from kdlab.train.recipes import run_distill

    flags = _train_flags(p, out, study_dir)
    flags.update({"teacher": p["teacher"], "teacher_adapter": p["teacher_adapter"]})
    if p.get("teacher_cache"):
        flags["teacher_cache"] = p["teacher_cache"]
    if p.get("teacher_answers"):
        flags["teacher_answers"] = resolve(p["teacher_answers"], study_dir)
    run_distill(build_config("distill", None, flags, []))


def cache(p: dict, out: Path, study_dir: Path) -> None:
    """The teacher signal cache, built (or completed) into ``out``."""
    from kdlab.config import build_config
    from kdlab.train.cache_lifecycle import ensure_teacher_cache

    flags = {key: resolve(value, study_dir) for key, value in p["flags"].items()}
    config = build_config("distill", None, {**flags, "out": str(out), "teacher_cache": str(out)}, [])
    ensure_teacher_cache(config)


def answers(p: dict, out: Path, study_dir: Path) -> None:
    """The teacher's greedy answers to the training prompts, as LLM-Adapters JSON (``out/train.json``), generated as
    SeqKD inside a run generates them (:mod:`kdlab.train.teachers`: one precision rule, ``auto`` here; one engine)."""
    from kdlab.backends import choose_backend
    from kdlab.data.formats import load_examples, write_json_examples
    from kdlab.io import atomic_dir
    from kdlab.models.load import load_tokenizer
    from kdlab.outputs import TEACHER_ANSWERS
    from kdlab.train.teachers import answer_generator, teacher_answers

    precision = p.get("precision", "auto")
    tokenizer = load_tokenizer(p["teacher"])
    examples = load_examples(p["data"])
    backend = choose_backend(p.get("backend", "auto"), p["teacher"], len(examples) * p["max_new_tokens"])
    with answer_generator(p["teacher"], p["teacher_adapter"], tokenizer, precision, backend, p["batch_size"]) as g:
        generated = teacher_answers(g, tokenizer, examples, p["max_new_tokens"])
    with atomic_dir(out, kind=TEACHER_ANSWERS) as tmp:
        write_json_examples(generated, tmp / "train.json")


def split(p: dict, out: Path, study_dir: Path) -> None:
    """``out/train.json`` (training data minus validation), ``out/teacher.json`` (the teacher's data minus the
    validation questions) and ``out/<task folder>/test.json`` (the validation split, disjoint from training and from
    the domain's test files), then ``split.json`` with the counts."""
    from kdlab.data.formats import load_examples, load_json_examples, write_json_examples
    from kdlab.data.split import validation_split
    from kdlab.eval.tasks import get_task
    from kdlab.io import atomic_write_json

    test = []
    for name in p["test_tasks"]:
        path = Path(p["test_dir"] or "") / get_task(name).folder / "test.json"
        if p["test_dir"] and path.is_file():
            test += load_json_examples(path)
    given = load_json_examples(p["file"]) if p["file"] else None
    split = validation_split(load_examples(p["train"]), p["n"], p["seed"], given, test, where=p["file"] or p["train"])
    task = get_task(p["task"])
    write_json_examples(split.train, out / "train.json")
    teacher = split.train
    if p.get("teacher_train"):
        teacher = validation_split(
            load_examples(p["teacher_train"]), 0, 0, split.validation, where=p["teacher_train"]
        ).train
    write_json_examples(teacher, out / "teacher.json")
    write_json_examples(split.validation, out / task.folder / "test.json")
    atomic_write_json(
        out / "split.json",
        {
            "train": len(split.train),
            "validation": len(split.validation),
            "task": task.name,
            "source": p["file"] or p["train"],
            "seed": p["seed"],
            "teacher": len(teacher),
            "removed_from_train": split.removed_from_train,
            "dropped_test_overlap": split.dropped_test_overlap,
        },
    )


def select(p: dict, out: Path, study_dir: Path) -> None:
    """Choose the candidate with the best validation accuracy (ties: the first listed); link ``out/selected`` to it
    and write ``selection.json`` (every candidate's settings and validation score, and the choice)."""
    import os

    from kdlab.io import atomic_write_json

    rows = []
    for candidate in p["candidates"]:
        metrics = json.loads((Path(resolve(candidate["eval"], study_dir)) / "metrics.json").read_text())["tasks"][
            p["task"]
        ]
        rows.append(
            {
                "run": candidate["run"].split(":", 1)[1],
                "eval": candidate["eval"].split(":", 1)[1],
                "settings": candidate["settings"],
                "n": int(metrics["n"]),
                "accuracy": float(metrics["accuracy"]),
            }
        )
    best = max(range(len(rows)), key=lambda i: (rows[i]["accuracy"], -i))
    out.mkdir(parents=True, exist_ok=True)
    link = out / SELECTED
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(os.path.relpath(study_dir / rows[best]["run"], out), link, target_is_directory=True)
    atomic_write_json(
        out / "selection.json", {"task": p["task"], "metric": "accuracy", "candidates": rows, "selected": rows[best]}
    )


def evaluation(p: dict, out: Path, study_dir: Path) -> None:
    """Evaluation on the given tasks (``kdlab evaluate``): a candidate on the validation split, or a test evaluation."""
    from kdlab.eval.evaluate import EvalSettings, evaluate

    evaluate(
        EvalSettings(
            model=p["model"],
            adapter=p["adapter"],
            tasks=list(p["tasks"]),
            out=str(out),
            data_dir=p["data_dir"],
            mode=p["mode"],
            extraction=p["extraction"],
            batch_size=p["batch_size"],
            limit=p["limit"],
            max_new_tokens=p["max_new_tokens"],
            precision=p["precision"],
            backend=p.get("backend", "auto"),
        )
    )


def evaluation_to_card(p: dict, out: Path, study_dir: Path) -> None:
    """Test evaluation; the evaluated run's model card and trackers get the results."""
    from kdlab.model_card import card_after_eval, evaluated_run
    from kdlab.train.trackers import evaluation_values, log_evaluation

    evaluation(p, out, study_dir)
    card_after_eval(out)
    log_evaluation(evaluated_run(out), evaluation_values(metrics=json.loads((out / "metrics.json").read_text())))


def fidelity(p: dict, out: Path, study_dir: Path) -> None:
    """The student's fidelity to its teacher (``kdlab fidelity``); the student's model card and trackers get it."""
    from kdlab.fidelity_metrics import run_fidelity
    from kdlab.model_card import card_after_eval, evaluated_run
    from kdlab.train.trackers import evaluation_values, log_evaluation

    run_fidelity(
        p["teacher_eval"],
        p["student_eval"],
        out,
        teacher_model=p.get("teacher_model"),
        student_model=p.get("student_model"),
        teacher_adapter=p.get("teacher_adapter"),
        student_adapter=p.get("student_adapter"),
        embeddings=p["embeddings"],
    )
    card_after_eval(p["student_eval"], fidelity_dir=out)
    log_evaluation(
        evaluated_run(p["student_eval"]), evaluation_values(fidelity=json.loads((out / "fidelity.json").read_text()))
    )
