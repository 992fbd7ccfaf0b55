"""``kdlab demo``: a short, real SFT + KD example on the embedded SmolLM2-135M, offline on a CPU.

1. Synthetic arithmetic word problems: a train split and a disjoint test split (``kdlab data synth``).
2. Teacher: SmolLM2-135M-Instruct, LoRA SFT on the train split.
3. Student: SmolLM2 pruned to 8 of its 30 decoder layers (``kdlab models prune``), distilled from the teacher with
   forward KL at temperature 2 (full fine-tuning: the pruned network needs all its weights to recover).
4. A quick check: ``kdlab eval`` of teacher and student on the held-out test problems (greedy, strict extraction
   of the number in "The answer is N."); predictions are kept in ``eval-teacher/`` and ``eval-student/``.

Every step is a resumable run folder under ``--out``: re-running the command skips what is done.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from kdlab.config import build_config
from kdlab.data.synth import write_synth
from kdlab.train.run import run_distill, run_sft

TEACHER = "smollm2-135m"


@dataclass(frozen=True)
class DemoSize:
    train: int
    test: int
    teacher_epochs: float
    student_epochs: float
    student_layers: int = 8


FULL = DemoSize(train=300, test=50, teacher_epochs=2, student_epochs=2)
QUICK = DemoSize(train=48, test=12, teacher_epochs=1, student_epochs=1)


def run_demo(out: str | Path, quick: bool = False) -> dict:
    """Run the demo into ``out``; returns the accuracies."""
    out, size = Path(out), QUICK if quick else FULL
    started = time.time()
    data = out / "data"
    train_path, test_path = data / "train.json", data / "arith" / "test.json"  # eval's --data-dir layout
    if not train_path.is_file():
        write_synth(train_path, n=size.train, seed=0, split="train")
    if not test_path.is_file():
        write_synth(test_path, n=size.test, seed=1, split="test")

    print(f"kdlab demo: [1/4] teacher LoRA SFT of {TEACHER} on {size.train} synthetic problems", flush=True)
    teacher_run = out / "teacher-sft"
    run_sft(build_config("sft", None, {"model": TEACHER, "data": str(train_path), "out": str(teacher_run),
                                       "train.epochs": size.teacher_epochs, "train.lr": 1e-3}, []))

    print(f"kdlab demo: [2/4] student: {TEACHER} pruned to {size.student_layers} layers", flush=True)
    student = out / "models" / f"smollm2-{size.student_layers}l"
    if not (student / "config.json").is_file():
        from kdlab.models.prune import prune_model

        prune_model(TEACHER, size.student_layers, student)

    print("kdlab demo: [3/4] KD (forward KL, tau = 2) from the teacher into the student", flush=True)
    student_run = out / "student-kd-fkl-t2"
    run_distill(build_config("distill", None, {"model": str(student), "teacher": TEACHER,
                                               "teacher_adapter": str(teacher_run / "final"), "data": str(train_path),
                                               "out": str(student_run), "kd.loss": "fkl", "kd.temperature": 2.0,
                                               "lora.enabled": False, "train.epochs": size.student_epochs,
                                               "train.lr": 5e-4}, []))

    print(f"kdlab demo: [4/4] greedy answers on {size.test} held-out test problems", flush=True)
    teacher_acc = arith_accuracy(TEACHER, str(teacher_run / "final"), data, out / "eval-teacher")
    student_acc = arith_accuracy(str(student_run / "final"), None, data, out / "eval-student")
    minutes = (time.time() - started) / 60
    print(f"\nkdlab demo: done in {minutes:.1f} min. Held-out accuracy (n={size.test}): "
          f"teacher {teacher_acc:.0%}, 8-layer KD student {student_acc:.0%}. Runs: {out}", flush=True)
    return {"teacher": teacher_acc, "student": student_acc, "minutes": minutes}


def arith_accuracy(model_spec: str, adapter: str | None, data_dir: Path, out: Path) -> float:
    """Strict-extraction accuracy on the held-out arith split, through ``kdlab eval`` (resumable, logged in ``out``)."""
    from kdlab.eval.runner import EvalSettings, evaluate

    metrics = evaluate(EvalSettings(model=model_spec, adapter=adapter, tasks=["arith"], data_dir=str(data_dir),
                                    out=str(out), max_new_tokens=128))
    return metrics["tasks"]["arith"]["accuracy"]
