"""Why KD does not beat SFT in kdlab's demo: a measured diagnosis on the demo's 24-layer SmolLM2 student.

What it measures (everything in one process, one run after the other, into ``--out``, default ``runs/kd-vs-sft``):

1. Data exactly as the original ``kdlab demo``: 160 synthetic one-step single-digit arithmetic problems to train on
   (``write_synth(n=160, seed=0, split="train", max_steps=1, scale="small")``) and 100 held-out ones (seed 1, test).
2. The demo's teacher (SmolLM2-135M-Instruct + LoRA r 8, lr 1e-3, 26 steps of 8, warm-up 0.1, max length 192) and
   student (SmolLM2 pruned to 24 of 30 layers).
3. Teacher diagnostics, teacher-forced on the gold responses of the 160 training problems (response tokens only):
   mean CE of the gold token (nats/token), % tokens whose argmax is the gold token, mean entropy at tau 1 and 2,
   mean mass outside the top-1 and off the gold token at tau 1 and 2, mass outside the top-64 at tau 1 and 2 (what
   the teacher cache's bucket merges into one outcome). For the demo teacher, the base model, and a second teacher
   trained (LoRA, lr 1e-3, 60 steps) on a disjoint larger set (480 problems of seed 5 minus those whose question is
   one of the 160): does a teacher that has not memorised the students' problems carry more than the gold labels?
   (That teacher is never evaluated on the test set.)
4. A grid of student runs (full fine-tuning unless LoRA, seed 0, 18 steps of 8, warm-up 0.1, max length 192,
   precision auto), each trained, evaluated on the 100 held-out problems (greedy, strict extraction, 36 new tokens,
   batch 16, fp32 -- kdlab eval's precision at the time of the measurement; fp32 predictions do not depend on the
   batch size) and compared with the teacher's evaluation (``run_fidelity`` with the teacher-forced token
   KL(p_T || p_S) and top-1 agreement), in this order:
   a. lr 5e-4, 1e-4, 2e-4: SFT; forward KL tau 1 with the live teacher; forward KL tau 1 from the teacher cache
      (one cache for all cached runs: k 64, bucket tail, exact tail sums at tau 1 and 2, as the demo's study);
   b. lr 5e-4, 1e-4: forward KL tau 2 and reverse KL tau 1, each live and cached;
   c. LoRA students (r 8, alpha 16 on the 24-layer model), lr 5e-4 and 2e-3: SFT and forward KL tau 1 cached;
   d. part b at lr 2e-4; finally the untrained 24-layer student's evaluation (a floor).
   The teacher and the base model are evaluated once, the same way.

Outputs: ``<out>/kd_vs_sft.json`` and ``<out>/kd_vs_sft.md`` (rewritten after every run, so partial results survive),
and with the full setting also ``benchmarks/kd_vs_sft.md``. Resumable: every step is a kdlab run folder
(``result.json`` / ``metrics.json`` / ``fidelity.json``) or a diagnostics JSON, skipped when it exists.

Run from the repository root::

    .venv/bin/python benchmarks/kd_vs_sft.py            # the full grid: ~60-85 min on 2 shared CPU cores
                                                        # (~2.3 min a student run: train, eval, fidelity)
    .venv/bin/python benchmarks/kd_vs_sft.py --quick    # pipeline check: 4-layer student, 2 steps, 8 test problems,
                                                        # one lr per part (5-12 min; its numbers mean nothing)
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from kdlab.config import build_config  # noqa: E402
from kdlab.data.formats import load_examples, write_json_examples  # noqa: E402
from kdlab.data.overlap import normalise_question, question_text  # noqa: E402
from kdlab.data.synth import write_synth  # noqa: E402
from kdlab.eval.evaluate import EvalSettings, evaluate  # noqa: E402
from kdlab.fidelity_metrics import run_fidelity  # noqa: E402
from kdlab.models.prune import prune_model  # noqa: E402
from kdlab.train.cache_lifecycle import ensure_teacher_cache  # noqa: E402
from kdlab.train.recipes import run_distill, run_sft  # noqa: E402
from kdlab.train.teacher_regime import token_peakedness  # noqa: E402

MODEL = "smollm2-135m"
TRAIN = {"train.batch_size": 8, "train.max_length": 192, "train.warmup_ratio": 0.1}  # the demo's shared settings
CACHE = {"kd.cache_k": 64, "kd.cache_temperatures": [1.0, 2.0]}  # the demo's cache (its study's temperatures)


@dataclass(frozen=True)
class Size:
    train: int = 160
    test: int = 100
    teacher_steps: int = 26
    teacher2_n: int = 480
    teacher2_steps: int = 60
    student_layers: int = 24
    student_steps: int = 18
    batch_size: int = 8
    max_new_tokens: int = 36


FULL = Size()
QUICK = Size(
    train=32,
    test=8,
    teacher_steps=3,
    teacher2_n=48,
    teacher2_steps=3,
    student_layers=4,
    student_steps=2,
    batch_size=4,
    max_new_tokens=32,
)


@dataclass(frozen=True)
class Run:
    part: str
    lr: float
    method: str  # sft | fkl | rkl
    tau: float | None = None
    cached: bool = False
    lora: bool = False

    @property
    def name(self) -> str:
        kind = "sft" if self.method == "sft" else f"{self.method}.t{self.tau:g}.{'cached' if self.cached else 'live'}"
        return f"{kind}.{'lora' if self.lora else 'full'}.lr{self.lr:g}"


def grid(quick: bool) -> list[Run]:
    """The student runs in order of priority (--quick: one lr per part)."""
    runs = []
    for lr in [5e-4] if quick else [5e-4, 1e-4, 2e-4]:
        runs += [Run("a", lr, "sft"), Run("a", lr, "fkl", 1.0), Run("a", lr, "fkl", 1.0, cached=True)]
    for part, lrs in (("b", [5e-4] if quick else [5e-4, 1e-4]), ("d", [] if quick else [2e-4])):
        for lr in lrs:
            runs += [
                Run(part, lr, "fkl", 2.0),
                Run(part, lr, "fkl", 2.0, cached=True),
                Run(part, lr, "rkl", 1.0),
                Run(part, lr, "rkl", 1.0, cached=True),
            ]
        if part == "b":
            for lr in [2e-3] if quick else [5e-4, 2e-3]:
                runs += [Run("c", lr, "sft", lora=True), Run("c", lr, "fkl", 1.0, cached=True, lora=True)]
    return runs


# ------------------------------------------------------------------------------------------------------------ set-up


def prepare_data(out: Path, size: Size) -> dict:
    data = out / "data"
    train, test, train2 = data / "train.json", data / "arith" / "test.json", data / "teacher2-train.json"
    if not train.is_file():
        write_synth(train, n=size.train, seed=0, split="train", max_steps=1, scale="small")
    if not test.is_file():
        write_synth(test, n=size.test, seed=1, split="test", max_steps=1, scale="small")
    if not train2.is_file():  # the disjoint teacher's data: seed 5, minus any question of the students' problems
        raw = data / "teacher2-raw.json"
        write_synth(raw, n=size.teacher2_n, seed=5, split="train", max_steps=1, scale="small")
        students = {normalise_question(question_text(e)) for e in load_examples(train)}
        write_json_examples(
            [e for e in load_examples(raw) if normalise_question(question_text(e)) not in students], train2
        )
    return {
        "dir": data,
        "train": train,
        "test": test,
        "train2": train2,
        "teacher2_examples": len(load_examples(train2)),
        "teacher2_raw": size.teacher2_n,
    }


def train_flags(size: Size, lr: float, steps: int, lora: bool, save_steps: int) -> dict:
    return {
        **TRAIN,
        "train.batch_size": size.batch_size,
        "train.lr": lr,
        "train.max_steps": steps,
        "train.save_steps": save_steps,
        "train.precision": "auto",
        "train.seed": 0,
        "lora.enabled": lora,
        "lora.r": 8,
        "lora.alpha": 16,
    }


def train_teacher(folder: Path, data: Path, size: Size, steps: int) -> Path:
    flags = {"model": MODEL, "data": str(data), "out": str(folder), **train_flags(size, 1e-3, steps, True, 10)}
    run_sft(build_config("sft", None, flags, []))
    return folder / "final"


def build_cache(out: Path, data: Path, teacher_adapter: Path) -> Path:
    """The shared teacher cache, built with the very flags of the study's ``cache`` node (kdlab/study/training_runs.py)."""
    cache = out / "teacher_cache"
    flags = {
        "teacher": MODEL,
        "teacher_adapter": str(teacher_adapter),
        "model": MODEL,
        "data": str(data),
        **CACHE,
        "train.max_length": 192,
        "out": str(cache),
        "teacher_cache": str(cache),
    }
    ensure_teacher_cache(build_config("distill", None, flags, []))
    return cache


# ------------------------------------------------------------------------------------------------- teacher diagnostics


@torch.no_grad()
def diagnostics(out: Path, name: str, model_spec: str, adapter, data: Path) -> dict:
    path = out / "diagnostics" / f"{name}.json"
    if not path.is_file():
        started = time.time()
        result = {
            **token_peakedness(model_spec, str(adapter) if adapter else None, data),
            "seconds": time.time() - started,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------------------------ students and evals


def train_student(
    run: Run, out: Path, size: Size, student: Path, data: Path, teacher_adapter: Path, cache: Path
) -> Path:
    folder = out / "students" / run.name
    flags = {
        "model": str(student),
        "data": str(data),
        "out": str(folder),
        **train_flags(size, run.lr, size.student_steps, run.lora, 0),
    }
    if run.method == "sft":
        run_sft(build_config("sft", None, flags, []))
        return folder
    flags.update(
        {
            "teacher": MODEL,
            "teacher_adapter": str(teacher_adapter),
            "kd.loss": run.method,
            "kd.temperature": run.tau,
            "kd.teacher_noise": 0.0,
        }
    )
    if run.cached:
        flags.update({"teacher_cache": str(cache), **CACHE, "kd.cache_tail": "bucket"})
    run_distill(build_config("distill", None, flags, []))
    return folder


def evaluate_model(out: Path, name: str, model: str, adapter, data_dir: Path, size: Size) -> Path:
    folder = out / "eval" / name
    if not (folder / "metrics.json").is_file():
        evaluate(
            EvalSettings(
                model=str(model),
                adapter=str(adapter) if adapter else None,
                tasks=["arith"],
                out=str(folder),
                data_dir=str(data_dir),
                mode="generate",
                extraction="strict",
                batch_size=16,
                limit=None,
                max_new_tokens=size.max_new_tokens,
                precision="fp32",
            )
        )
    return folder


def fidelity(
    out: Path, name: str, teacher_eval: Path, student_eval: Path, teacher_adapter: Path, model: str, adapter
) -> Path:
    folder = out / "fidelity" / name
    if not (folder / "fidelity.json").is_file():
        run_fidelity(
            teacher_eval,
            student_eval,
            folder,
            teacher_model=MODEL,
            student_model=str(model),
            teacher_adapter=str(teacher_adapter),
            student_adapter=str(adapter) if adapter else None,
            embeddings=False,
        )
    return folder


# ----------------------------------------------------------------------------------------------------------- results


def _read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def eval_row(out: Path, name: str) -> dict | None:
    metrics = _read_json(out / "eval" / name / "metrics.json")
    if metrics is None:
        return None
    arith = metrics["tasks"]["arith"]
    row = {"accuracy": arith["accuracy"], "ci95": arith["ci95"], "n": arith["n"], "no_answer": arith["no_answer"]}
    fid = _read_json(out / "fidelity" / name / "fidelity.json")
    if fid is not None:
        task = fid["tasks"]["arith"]
        row.update(
            {
                "agreement": task["agreement"],
                "token_kl": task.get("kl_teacher_student"),
                "top1_agreement": task.get("top1_agreement"),
                "bleu": task.get("bleu"),
            }
        )
    return row


def run_row(out: Path, run: Run) -> dict | None:
    folder = out / "students" / run.name
    result = _read_json(folder / "result.json")
    if result is None:
        return None
    with (folder / "log.csv").open() as handle:
        losses = [float(row["loss"]) for row in csv.DictReader(handle)]
    return {
        "name": run.name,
        "part": run.part,
        "lr": run.lr,
        "method": run.method,
        "tau": run.tau,
        "teacher": None if run.method == "sft" else ("cached" if run.cached else "live"),
        "params": "LoRA" if run.lora else "full",
        "final_loss": result["final_loss"],
        "train_seconds": result["train_seconds"],
        "losses": losses,
        **(eval_row(out, run.name) or {}),
    }


def cpu_model() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Model name")), "?")
        cpus = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("CPU(s)")), "?")
        return f"{name} ({cpus} CPUs)"
    except OSError:
        return "?"


def _f(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def write_results(out: Path, size: Size, runs: list[Run], data: dict, started: float, md_paths: list[Path]) -> dict:
    diag = {path.stem: json.loads(path.read_text()) for path in sorted((out / "diagnostics").glob("*.json"))}
    models = {name: eval_row(out, name) for name in ("teacher", "base", "student-untrained")}
    rows = [row for row in (run_row(out, run) for run in runs) if row is not None]
    summary = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "size": size.__dict__,
        "elapsed_minutes": (time.time() - started) / 60,
        "teacher2_examples": data["teacher2_examples"],
        "diagnostics": diag,
        "models": models,
        "runs": rows,
        "pending": [run.name for run in runs if run.name not in {row["name"] for row in rows}],
    }
    (out / "kd_vs_sft.json").write_text(json.dumps(summary, indent=2) + "\n")

    def pct(v):
        return "-" if v is None else f"{100 * v:.0f}%"

    def ci(c):
        return "" if not c else f" [{100 * c[0]:.0f}-{100 * c[1]:.0f}]"

    lines = [
        "# KD vs SFT in the kdlab demo: measured diagnosis",
        "",
        f"Generated by `benchmarks/kd_vs_sft.py` on {summary['date']}, CPU: {summary['cpu']}, "
        f"torch threads {summary['torch_threads']}, elapsed {summary['elapsed_minutes']:.1f} min"
        + (f"; pending: {len(summary['pending'])} runs" if summary["pending"] else "; all runs done")
        + ".",
        "",
        f"Student: SmolLM2 pruned to {size.student_layers} layers, {size.student_steps} steps of {size.batch_size}, "
        f"warm-up 0.1, max length 192, seed 0, precision auto. Held-out: {size.test} problems, greedy, 36 new tokens, "
        "fp32. Agreement = answer agreement with the teacher; token KL = teacher-forced KL(p_T || p_S) at tau 1 "
        "on the teacher's outputs; top-1 = teacher-forced argmax agreement. Loss = training loss per response "
        "token (cached runs: the k+1 bucket divergence, a lower bound of the full one; tau 2 includes tau^2).",
        "",
        "## Models",
        "",
        "| model | accuracy [95% CI] | no answer | agreement | token KL | top-1 |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, row in models.items():
        if row:
            lines.append(
                f"| {name} | {pct(row['accuracy'])}{ci(row['ci95'])} | {row['no_answer']} | {_f(row.get('agreement'), '.2f')} "
                f"| {_f(row.get('token_kl'), '.3f')} | {_f(row.get('top1_agreement'), '.3f')} |"
            )
    lines += [
        "",
        "## Student runs",
        "",
        "| part | lr | method | teacher | params | accuracy [95% CI] | no answer | agreement | token KL | top-1 | loss step 1 → final | train s |",
        "|---|---|---|---|---|---|---:|---:|---:|---:|---|---:|",
    ]
    for row in rows:
        method = row["method"] if row["method"] == "sft" else f"{row['method']} tau {row['tau']:g}"
        lines.append(
            f"| {row['part']} | {row['lr']:g} | {method} | {row['teacher'] or '-'} | {row['params']} "
            f"| {pct(row.get('accuracy'))}{ci(row.get('ci95'))} | {row.get('no_answer', '-')} "
            f"| {_f(row.get('agreement'), '.2f')} | {_f(row.get('token_kl'), '.3f')} | {_f(row.get('top1_agreement'), '.3f')} "
            f"| {row['losses'][0]:.3f} → {row['final_loss']:.3f} | {row['train_seconds']:.0f} |"
        )
    labels = {
        "teacher": "demo teacher (LoRA SFT on the 160)",
        "base": "base SmolLM2-135M-Instruct",
        "teacher2": f"disjoint teacher (LoRA SFT on {data['teacher2_examples']} other problems)",
    }
    lines += [
        "",
        f"## Teacher diagnostics (teacher-forced on the gold responses of the {size.train} training problems)",
        "",
        "| model | tokens | CE gold (nats/tok) | argmax = gold | entropy tau 1 | entropy tau 2 | off top-1 tau 1 | off top-1 tau 2 "
        "| off gold tau 1 | off gold tau 2 | off top-64 tau 1 | off top-64 tau 2 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, d in diag.items():
        lines.append(
            f"| {labels.get(name, name)} | {d['tokens']} | {d['ce_gold']:.3f} | {100 * d['argmax_is_gold']:.1f}% "
            f"| {d['entropy_t1']:.3f} | {d['entropy_t2']:.3f} | {d['off_top1_t1']:.3f} | {d['off_top1_t2']:.3f} "
            f"| {d['off_gold_t1']:.3f} | {d['off_gold_t2']:.3f} | {d['off_top64_t1']:.4f} | {d['off_top64_t2']:.3f} |"
        )
    lines += ["", "Per-step training losses of every run: `losses` in the JSON file (`<out>/kd_vs_sft.json`).", ""]
    for path in md_paths:
        path.write_text("\n".join(lines))
    return summary


# -------------------------------------------------------------------------------------------------------------- main


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="pipeline check: 4-layer student, 2 steps, 8 test problems")
    p.add_argument(
        "--out", type=Path, default=None, help="work folder (default runs/kd-vs-sft, --quick runs/kd-vs-sft-quick)"
    )
    args = p.parse_args(argv)
    size = QUICK if args.quick else FULL
    out = (args.out or ROOT / "runs" / ("kd-vs-sft-quick" if args.quick else "kd-vs-sft")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    md_paths = [out / "kd_vs_sft.md"] + ([] if args.quick else [ROOT / "benchmarks" / "kd_vs_sft.md"])
    started, runs = time.time(), grid(args.quick)

    def log(text):
        return print(f"[kd_vs_sft {(time.time() - started) / 60:5.1f} min] {text}", flush=True)

    data = prepare_data(out, size)

    def report():
        return write_results(out, size, runs, data, started, md_paths)

    log(
        f"data: {size.train} train, {size.test} test, disjoint teacher set {data['teacher2_examples']} of {size.teacher2_n}"
    )
    student = out / "models" / f"{size.student_layers}l"
    if not (student / "config.json").is_file():
        prune_model(MODEL, size.student_layers, student)
    teacher = train_teacher(out / "teacher", data["train"], size, size.teacher_steps)
    teacher_eval = evaluate_model(out, "teacher", MODEL, teacher, data["dir"], size)
    evaluate_model(out, "base", MODEL, None, data["dir"], size)
    fidelity(out, "base", teacher_eval, out / "eval" / "base", teacher, MODEL, None)
    diagnostics(out, "teacher", MODEL, teacher, data["train"])
    diagnostics(out, "base", MODEL, None, data["train"])
    report()
    teacher2 = train_teacher(out / "teacher2", data["train2"], size, size.teacher2_steps)
    diagnostics(out, "teacher2", MODEL, teacher2, data["train"])
    cache = build_cache(out, data["train"], teacher)
    report()
    log("teacher, base, diagnostics and cache done; student grid next")
    for i, run in enumerate(runs, 1):
        log(f"run {i}/{len(runs)} (part {run.part}): {run.name}")
        folder = train_student(run, out, size, student, data["train"], teacher, cache)
        model, adapter = (student, folder / "final") if run.lora else (folder / "final", None)
        student_eval = evaluate_model(out, run.name, model, adapter, data["dir"], size)
        fidelity(out, run.name, teacher_eval, student_eval, teacher, model, adapter)
        report()
    evaluate_model(out, "student-untrained", student, None, data["dir"], size)
    fidelity(out, "student-untrained", teacher_eval, out / "eval" / "student-untrained", teacher, student, None)
    report()
    log(f"done: {out / 'kd_vs_sft.json'}, {', '.join(str(path) for path in md_paths)}")


if __name__ == "__main__":
    main()
