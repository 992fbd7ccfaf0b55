"""A synthetic study built in code for the study statistics / report tests (no data files): a results table in
the ``kdlab.stats.results`` schema plus the per-example predictions JSONL files its rows point at.

Loaded by path from the tests (``load()`` below); not a test module itself."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from kdlab.stats.significance import wilson_ci

TASK_DOMAINS = {"gsm8k": "math", "boolq": "commonsense"}
METHODS = {"fkl": "fkl", "rkl": "rkl", "gkd": "gjsd"}
# latent accuracies: student SFT per task, a size bonus, KD gains per method / temperature
BASE = {"gsm8k": 0.30, "boolq": 0.55}
SIZE_BONUS = {0.5: 0.0, 1.5: 0.12}
METHOD_GAIN = {"fkl": 0.06, "rkl": 0.04, "gkd": 0.08, "seqkd": 0.03}
TEMP_GAIN = {1.0: 0.0, 2.0: 0.02}
NO_TEMPERATURE = ("seqkd",)  # losses that take no temperature (NaN in the table)


def make_study(
    root: Path,
    *,
    students: dict[str, float] | None = None,
    methods: dict[str, str] | None = None,
    temperatures: tuple[float, ...] = (1.0, 2.0),
    tasks: dict[str, str] | None = None,
    seeds: tuple[int, ...] = (0, 1),
    n_examples: int = 80,
    noise: tuple[float, ...] = (1.0, 2.0, 5.0),
    base_teacher: bool = True,
    fidelity: bool = True,
    teacher: tuple[str, float] = ("Tiny-7B", 7.0),
    rng_seed: int = 0,
) -> pd.DataFrame:
    """Write ``root/runs/<run>/eval/predictions/<task>.jsonl`` for every run and return the results table.

    The noise ablation (``noise``) and the base-teacher ablation use the first student, the first method and the
    last temperature. Correctness is drawn from one latent difficulty per example shared by every run, so KD and
    SFT runs on the same task are positively correlated (as real paired runs are)."""
    root = Path(root)
    students = students or {"Tiny-0.5B": 0.5, "Tiny-1.5B": 1.5}
    methods = methods or dict(METHODS)
    tasks = tasks or dict(TASK_DOMAINS)
    rng = np.random.default_rng(rng_seed)
    difficulty = {task: rng.uniform(size=n_examples) for task in tasks}
    teacher_name, teacher_size = teacher
    rows: list[dict] = []
    nan = math.nan

    def write_run(run: str, base_row: dict, latent: dict[str, float]) -> None:
        eval_dir = f"runs/{run}/eval"
        pred_dir = root / eval_dir / "predictions"
        pred_dir.mkdir(parents=True, exist_ok=True)
        for task, domain in tasks.items():
            p = min(max(latent[task], 0.02), 0.98)
            correct = difficulty[task] + rng.normal(0, 0.08, size=n_examples) < p
            with open(pred_dir / f"{task}.jsonl", "w", encoding="utf-8") as handle:
                for i in rng.permutation(n_examples):  # file order need not be id order
                    handle.write(
                        json.dumps(
                            {
                                "id": int(i),
                                "correct": bool(correct[i]),
                                "pred": "1",
                                "gold": "1" if correct[i] else "2",
                                "output": "...",
                            }
                        )
                        + "\n"
                    )
            k = int(correct.sum())
            low, high = wilson_ci(k, n_examples)
            rows.append(
                {
                    **base_row,
                    "run": run,
                    "domain": domain,
                    "task": task,
                    "n": n_examples,
                    "correct": k,
                    "accuracy": k / n_examples,
                    "ci_low": low,
                    "ci_high": high,
                    "eval_dir": eval_dir,
                }
            )

    def common(role, teacher_kind, student, size, method, loss, temperature, nz, seed):
        return {
            "role": role,
            "teacher": teacher_name if role != "student-sft" else None,
            "teacher_kind": teacher_kind,
            "student": student,
            "student_size_b": size,
            "method": method,
            "loss": loss,
            "temperature": temperature,
            "noise": nz,
            "seed": seed,
        }

    write_run(
        "teacher-ft",
        common("teacher", "finetuned", teacher_name, teacher_size, "sft", "sft", nan, 0.0, 0),
        {t: BASE.get(t, 0.4) + 0.35 for t in tasks},
    )
    if base_teacher:
        write_run(
            "teacher-base",
            common("base-teacher", "base", teacher_name, teacher_size, "sft", "sft", nan, 0.0, 0),
            {t: BASE.get(t, 0.4) - 0.1 for t in tasks},
        )
    first_student, first_method = next(iter(students)), next(iter(methods))
    for student, size in students.items():
        sft_latent = {t: BASE.get(t, 0.4) + SIZE_BONUS.get(size, 0.05) for t in tasks}
        for seed in seeds:
            shift = 0.01 * seed
            write_run(
                f"sft-{student}-s{seed}",
                common("student-sft", None, student, size, "sft", "sft", nan, 0.0, seed),
                {t: v + shift for t, v in sft_latent.items()},
            )
            for method, loss in methods.items():
                temps = (nan,) if loss in NO_TEMPERATURE else temperatures
                for temperature in temps:
                    gain = METHOD_GAIN.get(method, 0.03) + TEMP_GAIN.get(temperature, 0.0) - 0.05 * (size > 1)
                    latent = {t: v + shift + gain for t, v in sft_latent.items()}
                    tag = f"{student}-{method}" + ("" if math.isnan(temperature) else f"-T{temperature:g}")
                    write_run(
                        f"kd-{tag}-s{seed}",
                        common("student-kd", "finetuned", student, size, method, loss, temperature, 0.0, seed),
                        latent,
                    )
                    if student == first_student and method == first_method and temperature == temps[-1]:
                        for sigma in noise:
                            write_run(
                                f"kd-{tag}-n{sigma:g}-s{seed}",
                                common(
                                    "student-kd", "finetuned", student, size, method, loss, temperature, sigma, seed
                                ),
                                {t: v - 0.04 * sigma for t, v in latent.items()},
                            )
                        if base_teacher:
                            write_run(
                                f"kd-{tag}-base-s{seed}",
                                common("student-kd", "base", student, size, method, loss, temperature, 0.0, seed),
                                {t: v - 0.12 for t, v in latent.items()},
                            )

    frame = pd.DataFrame(rows)
    # the joins the results builder does: SFT accuracy / eval dir of the same student, domain, task, seed;
    # the accuracy of the teacher that was distilled (fine-tuned or base) on the same task
    sft = frame[frame.role == "student-sft"].set_index(["student", "domain", "task", "seed"])
    teachers = frame[frame.role.isin(["teacher", "base-teacher"])].set_index(["teacher_kind", "task"])["accuracy"]
    kd = (frame.role == "student-kd").to_numpy()
    keys = list(zip(frame.student, frame.domain, frame.task, frame.seed))
    frame["sft_accuracy"] = [sft["accuracy"].get(k, nan) if is_kd else nan for k, is_kd in zip(keys, kd)]
    frame["sft_eval_dir"] = [sft["eval_dir"].get(k, None) if is_kd else None for k, is_kd in zip(keys, kd)]
    frame["improvement"] = np.where(kd, frame["accuracy"] - frame["sft_accuracy"], nan)
    frame["teacher_accuracy"] = [
        teachers.get((kind, task), nan) if role != "student-sft" else nan
        for kind, task, role in zip(frame.teacher_kind, frame.task, frame.role)
    ]
    for column, (low, high) in {
        "agreement": (0.3, 0.8),
        "bleu": (15.0, 55.0),
        "cosine": (0.6, 0.95),
        "token_kl": (0.2, 1.5),
        "top1_agreement": (0.5, 0.9),
    }.items():
        values = rng.uniform(low, high, size=len(frame))
        frame[column] = np.where(kd & fidelity, values, nan)
    return frame
