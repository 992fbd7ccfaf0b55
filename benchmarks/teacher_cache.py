"""Benchmark: a grid of students distilled from one teacher, recomputing the teacher every step vs a teacher cache.

Run from the repository root::

    .venv/bin/python benchmarks/teacher_cache.py            # default: smollm2-135m teacher, 4 pruned students
    .venv/bin/python benchmarks/teacher_cache.py --quick    # same models, fewer examples and steps (a few minutes)
    .venv/bin/python benchmarks/teacher_cache.py --tiny     # tiny models built in code (seconds; a smoke test)

What runs (all in this process, one after the other, on the same data):

1. data: the synthetic arithmetic train split (``--train`` problems) and a disjoint test split (``--test``);
2. models: the teacher (default: the embedded SmolLM2-135M-Instruct *base* model: no LoRA SFT, which does not
   change the cost of a forward pass) and students pruned from it (``--students 4,6,8,10`` decoder layers of 30,
   :func:`kdlab.models.prune.prune_model`); built once in ``--out/models`` and not timed;
3. a warm-up: one untimed 1-step distillation, so that one-time kernel set-up costs hit neither mode;
4. mode **live**: ``run_distill`` per student, the teacher forward pass recomputed at every step;
   mode **cache**: :func:`kdlab.train.cache_lifecycle.ensure_teacher_cache` once (teacher load + one pass over the train
   split, counted once in the cache total), then ``run_distill --teacher-cache`` per student (no teacher loaded).
   The two modes alternate per student (live first for the 1st and 3rd student, cache first for the others) so that
   a drift of the shared machine hits both alike. Same settings otherwise: ``--loss`` (fkl), ``--temperature``
   (2), full fine-tuning of the students at lr 5e-4 (what ``configs/studies/smollm2-cpu.yaml`` does for pruned
   students; ``--lora`` for LoRA r=8), batch 8, max length 192, ``--epochs`` (2) over the train split,
   ``--precision`` auto (bf16 autocast on CPUs with bf16 units, as the trainer does), ``train.save_steps 0``;
5. evaluation of every student of both modes (not timed): accuracy on the test split through
   :func:`kdlab.eval.evaluate.evaluate` (greedy, strict extraction, bf16, 64 new tokens, as the CPU study), and,
   teacher-forced on the gold test answers (fp32, per response token), the negative log-likelihood and the full
   forward KL(p_teacher || p_student) at tau = 1: finer signals than accuracy for students this weak.

Reported: wall time per student run (model loading, training, saving), the cache build, the total per mode and
their ratio (goal: live total / cache total >= 1.4); the same ratio in process CPU time (user + sys of all
threads); the training-loop seconds per step; the cache's bytes per token (from the representation and from the
file); accuracy, held-out NLL and KL per student per mode and their mean differences cache - live; the mean
absolute difference of the final training loss (the cached loss is the k + 1 bucket divergence, a lower bound of
the full one, so at tau > 1 most of that difference is the definition, not the training).
Timing caveat: on a machine shared with other jobs, wall times can swing by several times from one run to the next;
the modes alternate per student, and the load average before and after is recorded. Results go to ``--out/results.json`` and ``--out/results.md`` (and ``--json PATH`` if given).
The run folders of both modes are deleted at the start of each benchmark run (the timing needs fresh runs).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from kdlab.config import build_config  # noqa: E402
from kdlab.data.synth import write_synth  # noqa: E402
from kdlab.train.cache_lifecycle import ensure_teacher_cache  # noqa: E402
from kdlab.train.recipes import run_distill  # noqa: E402

GOAL = 1.4


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="fewer examples and steps (same models)")
    size.add_argument("--tiny", action="store_true", help="tiny models built in code (seconds)")
    p.add_argument(
        "--out",
        type=Path,
        default=ROOT / "runs" / "bench-teacher-cache",
        help="work folder (models, data, runs, results)",
    )
    p.add_argument("--teacher", default="smollm2-135m", help="teacher model spec (ignored with --tiny)")
    p.add_argument(
        "--students",
        default=None,
        help="student sizes: decoder layers kept from the teacher (default 4,6,8,10; tiny 1,2,3,4)",
    )
    p.add_argument("--train", type=int, default=None, help="training problems (default 48; quick 16; tiny 16)")
    p.add_argument("--test", type=int, default=None, help="held-out test problems (default 16; quick 8; tiny 8)")
    p.add_argument("--epochs", type=float, default=None, help="passes over the train split (default 2; quick 1)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--loss", default="fkl")
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument(
        "--lora",
        action="store_true",
        help="LoRA students (default: full fine-tuning, as the CPU study does for pruned students)",
    )
    p.add_argument("--max-length", type=int, default=192)
    p.add_argument(
        "--scale",
        default="standard",
        choices=("standard", "small"),
        help="synthetic number ranges (kdlab data synth --scale)",
    )
    p.add_argument(
        "--synth-steps", dest="synth_steps", type=int, default=3, help="most arithmetic steps per problem (1-3)"
    )
    p.add_argument("--cache-k", type=int, default=64)
    p.add_argument("--cache-tail", default="bucket", choices=("bucket", "renormalize"))
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    p.add_argument("--max-new-tokens", type=int, default=64, help="evaluation: generation budget per answer")
    p.add_argument(
        "--eval-precision",
        default="bf16",
        choices=("bf16", "fp32"),
        help="evaluation precision (kdlab eval --precision)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)
    preset = (
        {"train": 16, "test": 8, "epochs": 1.0} if args.quick or args.tiny else {"train": 48, "test": 16, "epochs": 2.0}
    )
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.students = args.students or ("1,2,3,4" if args.tiny else "4,6,8,10")
    args.student_layers = [int(part) for part in args.students.split(",") if part.strip()]
    return args


# ----------------------------------------------------------------------------------------------------------- set-up


def prepare_models(args) -> tuple[str, dict[int, str]]:
    """The teacher spec and {layers: student folder}; pruned (or, with --tiny, built) once into --out/models."""
    from kdlab.models.prune import prune_model

    models = args.out / "models"
    teacher = args.teacher
    if args.tiny:
        from kdlab.models.tiny import save_tiny_model

        teacher_dir = models / "tiny-teacher"
        if not (teacher_dir / "config.json").is_file():
            save_tiny_model(teacher_dir, layers=6, hidden=64, seed=1, init_std=0.3)
        teacher = str(teacher_dir)
    students = {}
    for layers in args.student_layers:
        folder = models / f"{Path(teacher).name}-{layers}l"
        if not (folder / "config.json").is_file():
            prune_model(teacher, layers, folder)
        students[layers] = str(folder)
    return teacher, students


def prepare_data(args) -> tuple[Path, Path]:
    data = args.out / "data"
    train, test = data / "train.json", data / "arith" / "test.json"  # eval's --data-dir layout
    write_synth(train, n=args.train, seed=0, split="train", max_steps=args.synth_steps, scale=args.scale)
    write_synth(test, n=args.test, seed=1, split="test", max_steps=args.synth_steps, scale=args.scale)
    return train, data


def distill_config(args, teacher: str, student: str, train: Path, out: Path, cache: Path | None, **extra):
    flags = {
        "model": student,
        "teacher": teacher,
        "data": str(train),
        "out": str(out),
        "kd.loss": args.loss,
        "kd.temperature": args.temperature,
        "kd.cache_k": args.cache_k,
        "kd.cache_tail": args.cache_tail,
        "lora.enabled": args.lora,
        "train.epochs": args.epochs,
        "train.batch_size": args.batch_size,
        "train.max_length": args.max_length,
        "train.lr": args.lr,
        "train.save_steps": 0,
        "train.precision": args.precision,
        **extra,
    }
    if cache is not None:
        flags["teacher_cache"] = str(cache)
    return build_config("distill", None, flags, [])


# -------------------------------------------------------------------------------------------------------- measuring


def timed_run(config) -> dict:
    started, cpu_started = time.perf_counter(), time.process_time()
    run_dir = run_distill(config)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    result = json.loads((run_dir / "result.json").read_text())
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "train_s": result["train_seconds"],
        "steps": result["steps"],
        "final_loss": result["final_loss"],
        "run": str(run_dir),
    }


class Heldout:
    """The test split encoded for teacher forcing, with the teacher's final hidden states (computed once, fp32)."""

    @torch.no_grad()
    def __init__(self, teacher: str, test_file: Path, max_length: int, batch_size: int = 8):
        from kdlab.data.formats import load_json_examples
        from kdlab.data.tokenize import collate, encode_examples
        from kdlab.models.load import load_model, load_tokenizer

        tokenizer = load_tokenizer(teacher)
        data = encode_examples(tokenizer, load_json_examples(test_file), max_length)
        self.batches = [
            collate(data[start : start + batch_size], tokenizer.pad_token_id)
            for start in range(0, len(data), batch_size)
        ]
        model = load_model(teacher).eval()
        self.teacher = [self._hidden(model, batch) for batch in self.batches]
        self.teacher_weight = self._weight(model)
        self.teacher_nll = self.scores(model)["heldout_nll"]

    @staticmethod
    def _hidden(model, batch):
        from kdlab.models.heads import final_hidden, response_hidden

        return response_hidden(final_hidden(model, batch["input_ids"], batch["attention_mask"]), batch["labels"])

    @staticmethod
    def _weight(model):
        from kdlab.models.heads import output_weight

        return output_weight(model).detach()

    @torch.no_grad()
    def scores(self, model, chunk: int = 256) -> dict:
        """Per response token: NLL of the gold answer and KL(p_teacher || p_model) at tau = 1 (teacher-forced)."""
        from kdlab.losses import TOKEN_DIVERGENCES

        weight = self._weight(model)
        vocab = min(weight.shape[0], self.teacher_weight.shape[0])
        nll = kl = 0.0
        tokens = 0
        for batch, (t_hidden, _) in zip(self.batches, self.teacher):
            hidden, targets = self._hidden(model, batch)
            for c in range(0, hidden.shape[0], chunk):
                logits = (hidden[c : c + chunk] @ weight[:vocab].T).float()
                t_logits = (t_hidden[c : c + chunk] @ self.teacher_weight[:vocab].T).float()
                nll += float(torch.nn.functional.cross_entropy(logits, targets[c : c + chunk], reduction="sum"))
                kl += float(TOKEN_DIVERGENCES["fkl"](logits, t_logits, 1.0).sum())
            tokens += int(targets.numel())
        return {"heldout_nll": nll / max(tokens, 1), "heldout_kl": kl / max(tokens, 1)}


def evaluate_student(args, student: str, run: dict, data_dir: Path, name: str, heldout: Heldout) -> dict:
    from kdlab.eval.evaluate import EvalSettings, evaluate
    from kdlab.models.load import load_model

    final = Path(run["run"]) / "final"
    model, adapter = (student, str(final)) if args.lora else (str(final), None)
    started = time.perf_counter()
    metrics = evaluate(
        EvalSettings(
            model=model,
            adapter=adapter,
            tasks=["arith"],
            data_dir=str(data_dir),
            out=str(args.out / "eval" / name),
            max_new_tokens=args.max_new_tokens,
            precision=args.eval_precision,
        )
    )
    scores = heldout.scores(load_model(model, adapter=adapter, merge_adapter=True).eval())
    return {
        "accuracy": metrics["tasks"]["arith"]["accuracy"],
        "n": metrics["tasks"]["arith"]["n"],
        **scores,
        "eval_s": time.perf_counter() - started,
    }


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_before": os.getloadavg(),
    }


# ---------------------------------------------------------------------------------------------------------- report


def to_markdown(result: dict) -> str:
    s = result["settings"]
    lines = [
        f"Teacher `{s['teacher']}`, students {', '.join(f'{n}L' for n in s['students'])}; {s['train']} train / "
        f"{s['test']} test problems, {s['epochs']:g} epoch(s), batch {s['batch_size']}, {s['loss']} tau={s['temperature']:g}, "
        f"{'LoRA' if s['lora'] else 'full FT'}, precision {result['precision']}, cache k={s['cache_k']} ({s['cache_tail']}).",
        "",
        "| student | live s | cache s | live s/step | cache s/step | acc live | acc cache | NLL live | NLL cache | KL live | KL cache | final loss live | final loss cache |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["students"]:
        live, cache = row["live"], row["cache"]
        lines.append(
            f"| {row['layers']}L | {live['wall_s']:.1f} | {cache['wall_s']:.1f} | {live['train_s'] / live['steps']:.2f} | "
            f"{cache['train_s'] / cache['steps']:.2f} | {live['accuracy']:.3f} | {cache['accuracy']:.3f} | "
            f"{live['heldout_nll']:.3f} | {cache['heldout_nll']:.3f} | {live['heldout_kl']:.3f} | {cache['heldout_kl']:.3f} | "
            f"{live['final_loss']:.3f} | {cache['final_loss']:.3f} |"
        )
    t = result["totals"]
    lines += [
        f"| cache build | – | {t['cache_build_s']:.1f} | | | | | | | | | | |",
        f"| **total** | **{t['live_s']:.1f}** | **{t['cache_s']:.1f}** | | | | | | | | | | |",
        "",
        f"- speed-up live / cache: **{t['ratio']:.2f}x** (goal >= {GOAL}x: {'met' if t['ratio'] >= GOAL else 'missed'}); "
        f"training loop only (sum of train seconds, build included in cache): {t['train_ratio']:.2f}x; "
        f"process CPU time (less sensitive to other load): {t['live_cpu_s']:.0f} s vs {t['cache_cpu_s']:.0f} s = {t['cpu_ratio']:.2f}x",
        f"- cache: {result['cache']['tokens']} tokens, {result['cache']['bytes_per_token']} bytes/token "
        f"(representation), {result['cache']['bytes_per_token_file']:.1f} bytes/token (file, {result['cache']['file_bytes'] / 1e6:.2f} MB)",
        f"- accuracy cache - live: mean {t['mean_accuracy_diff']:+.3f} (n = {s['test']} per student); held-out (teacher-forced, "
        f"per response token) NLL of the gold answers cache - live: mean {t['mean_nll_diff']:+.3f} nats (teacher: "
        f"{t['teacher_heldout_nll']:.3f}); KL(teacher || student) at tau 1 cache - live: mean {t['mean_kl_diff']:+.3f} nats; "
        f"final training loss |cache - live|: mean {t['mean_abs_final_loss_diff']:.3f} (the cached loss is the k + 1 bucket "
        f"divergence, a lower bound of the live one)",
        f"- benchmark wall time {result['benchmark_minutes']:.1f} min (evaluation {t['eval_s']:.0f} s)",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    info = machine()
    args.out.mkdir(parents=True, exist_ok=True)
    for stale in ("live", "cache", "teacher-cache", "warmup", "eval"):
        shutil.rmtree(args.out / stale, ignore_errors=True)
    teacher, students = prepare_models(args)
    train, data_dir = prepare_data(args)
    print(
        f"teacher_cache benchmark: teacher {teacher}, students {list(students)} layers, {args.train} train problems, "
        f"{args.epochs:g} epoch(s); work folder {args.out}",
        flush=True,
    )

    smallest = students[min(students)]
    warm = distill_config(args, teacher, smallest, train, args.out / "warmup", None, **{"train.max_steps": 1})
    run_distill(warm)

    cache_dir = args.out / "teacher-cache"
    build_started, build_cpu_started = time.perf_counter(), time.process_time()
    ensure_teacher_cache(distill_config(args, teacher, smallest, train, args.out / "cache" / "unused", cache_dir))
    build_s, build_cpu = time.perf_counter() - build_started, time.process_time() - build_cpu_started
    manifest = json.loads((cache_dir / "manifest.json").read_text())

    rows = []
    for position, (layers, student) in enumerate(students.items()):
        modes = ["live", "cache"] if position % 2 == 0 else ["cache", "live"]
        row = {"layers": layers, "student": student}
        for mode in modes:
            config = distill_config(
                args, teacher, student, train, args.out / mode / f"{layers}l", cache_dir if mode == "cache" else None
            )
            row[mode] = timed_run(config)
            print(
                f"  {layers}L {mode}: {row[mode]['wall_s']:.1f} s ({row[mode]['steps']} steps, final loss {row[mode]['final_loss']:.4f})",
                flush=True,
            )
        rows.append(row)
    precision = json.loads((Path(rows[0]["live"]["run"]) / "result.json").read_text())["precision"]

    eval_started = time.perf_counter()
    heldout = Heldout(teacher, data_dir / "arith" / "test.json", args.max_length)
    for row in rows:
        for mode in ("live", "cache"):
            row[mode].update(
                evaluate_student(args, row["student"], row[mode], data_dir, f"{mode}-{row['layers']}l", heldout)
            )
    eval_s = time.perf_counter() - eval_started

    live_total = sum(row["live"]["wall_s"] for row in rows)
    cache_total = build_s + sum(row["cache"]["wall_s"] for row in rows)
    totals = {
        "live_s": live_total,
        "cache_s": cache_total,
        "cache_build_s": build_s,
        "ratio": live_total / cache_total,
        "train_ratio": sum(row["live"]["train_s"] for row in rows)
        / (build_s + sum(row["cache"]["train_s"] for row in rows)),
        "live_cpu_s": sum(row["live"]["cpu_s"] for row in rows),
        "cache_cpu_s": build_cpu + sum(row["cache"]["cpu_s"] for row in rows),
        "cache_build_cpu_s": build_cpu,
        "mean_accuracy_diff": statistics.mean(row["cache"]["accuracy"] - row["live"]["accuracy"] for row in rows),
        "mean_nll_diff": statistics.mean(row["cache"]["heldout_nll"] - row["live"]["heldout_nll"] for row in rows),
        "mean_kl_diff": statistics.mean(row["cache"]["heldout_kl"] - row["live"]["heldout_kl"] for row in rows),
        "teacher_heldout_nll": heldout.teacher_nll,
        "mean_abs_final_loss_diff": statistics.mean(
            abs(row["cache"]["final_loss"] - row["live"]["final_loss"]) for row in rows
        ),
        "eval_s": eval_s,
    }
    totals["cpu_ratio"] = totals["live_cpu_s"] / totals["cache_cpu_s"]
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": info,
        "precision": precision,
        "settings": {
            "teacher": teacher,
            "teacher_note": "base model, no SFT" if not args.tiny else "tiny random model",
            "students": list(students),
            "train": args.train,
            "test": args.test,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "loss": args.loss,
            "temperature": args.temperature,
            "lr": args.lr,
            "lora": args.lora,
            "cache_k": args.cache_k,
            "cache_tail": args.cache_tail,
            "max_new_tokens": args.max_new_tokens,
        },
        "cache": {
            key: manifest[key]
            for key in (
                "tokens",
                "examples",
                "k",
                "vocab_size",
                "bytes_per_token",
                "bytes_per_token_file",
                "file_bytes",
            )
        },
        "students": rows,
        "totals": totals,
        "benchmark_minutes": (time.perf_counter() - started) / 60,
    }
    result["machine"]["load_average_after"] = os.getloadavg()
    markdown = to_markdown(result)
    print()
    print(markdown)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out / 'results.json'} and results.md", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
