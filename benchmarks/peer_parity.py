"""Peer parity with TRL: the same KD run trained by kdlab and by TRL's GKDTrainer, then evaluated the same way.

What it measures. One student (SmolLM2-135M pruned to 24 layers, full fine-tuning) is distilled from one teacher
(SmolLM2-135M-Instruct + a LoRA adapter from ``kdlab.train.recipes.run_sft``) twice, with forward KL at tau 1 on
response tokens, a live teacher (no cache) and kd_weight 1 — once by ``kdlab.train.recipes.run_distill`` and once by
``trl.experimental.gkd.GKDTrainer`` (lmbda 0: no on-policy samples; beta 0: TRL's forward KL; seq_kd False;
temperature 1). Per token, both minimise ``KL(p_T || p_S)``, averaged over the response tokens of the step:
``L = (1 / N) * sum_{kept t} sum_v p_T(v | t) * (log p_T(v | t) - log p_S(v | t))``.

Everything else is made equal: the data (synthetic arithmetic, ``kdlab.data.synth``: 160 training problems, seed 0;
100 held-out, seed 1), kdlab's Alpaca prompt and tokenisation (``kdlab.data.tokenize``: prompt with special tokens,
response + EOS, labels -100 on the prompt and padding, right padding, the loss on ``labels[:, 1:]``), the data order
(TRL's dataloader replays kdlab's seeded permutation, ``kdlab.train.loop.Schedule``), lr, steps, batch size,
AdamW (torch's, not fused; weight decay 0), a linear schedule with ``round(warmup_ratio * steps)`` warm-up steps
(TRL would take ``ceil``: the integer is passed), gradient clipping 1.0, seed 0, the same loaded student and teacher
(``kdlab.train.recipes.prepare_student`` / ``kdlab.train.teachers.load_teacher``), and precision fp32 for both (no autocast; the record says
whether bf16 would have been available). Gradient checkpointing is off in both (TRL's default is on).

Each trainer runs in its own fresh process (this script re-run with ``--worker``), so its wall time and its peak
resident memory (``getrusage(RUSAGE_SELF).ru_maxrss`` of that process: models, optimizer, activations) are its own.
Then both final students are evaluated by ``kdlab.eval.evaluate.evaluate`` on the same held-out problems (task arith,
greedy, strict extraction, fp32), and the script reports: accuracy with 95% Wilson intervals; the paired accuracy
difference kdlab − TRL with a paired bootstrap 95% CI and the exact McNemar p (``kdlab.stats.significance``); how
many greedy outputs are identical; per-step training losses side by side and their max abs difference; the relative
distance between the two final weight sets; wall time and peak memory ratios kdlab / TRL; the CPU model, threads,
library versions and whether bf16 was available. Outputs: ``<out>/peer_parity.json`` and ``<out>/peer_parity.md``.

Run from the repository root (needs the test/benchmark extra: ``pip install trl==1.16.0``, done by
``scripts/setup.sh``)::

    .venv/bin/python benchmarks/peer_parity.py --out runs/peer-parity            # defaults (the kdlab demo's sizes)
    .venv/bin/python benchmarks/peer_parity.py --out runs/peer-parity --teacher-adapter DIR   # reuse a LoRA teacher
    .venv/bin/python benchmarks/peer_parity.py --quick --out /tmp/peer-parity-quick           # pipeline check

Defaults: teacher LoRA SFT lr 1e-3, 26 steps of 8, max_length 192, warm-up 0.1; student pruned to 24 layers; students
18 steps of 8, lr 1e-4, warm-up 0.1; fp32 throughout (the teacher SFT and the evaluation too). ``--quick``: a 4-layer student, 2 student steps, 2 teacher steps, 8 test
problems (checks the pipeline; its numbers mean nothing). Re-running reuses the data, the teacher adapter and the
pruned student in ``--out``; both trainings and evaluations are always redone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

TEACHER = "smollm2-135m"


# ----------------------------------------------------------------------------------------------------------------
# the settings shared by both trainers


def run_config(spec: dict, kind: str, out: Path):
    """kdlab's RunConfig for the teacher SFT (kind 'sft') or the student KD run (kind 'distill')."""
    from kdlab.config import RunConfig

    config = RunConfig(kind=kind, data=spec["train_data"], out=str(out))
    train = config.train
    train.batch_size, train.max_length, train.warmup_ratio = (
        spec["batch_size"],
        spec["max_length"],
        spec["warmup_ratio"],
    )
    train.precision, train.seed, train.save_steps, train.log_steps, train.max_grad_norm = (
        "fp32",
        spec["seed"],
        0,
        1,
        1.0,
    )
    if kind == "sft":  # the teacher: LoRA on SmolLM2-135M-Instruct
        config.model, config.lora.enabled = TEACHER, True
        train.lr, train.max_steps, train.save_steps = spec["teacher_lr"], spec["teacher_steps"], 10
    else:  # the student: full fine-tuning, forward KL at tau 1 from the live teacher
        config.model, config.teacher, config.teacher_adapter = spec["student"], TEACHER, spec["teacher_adapter"]
        config.lora.enabled = False
        train.lr, train.max_steps = spec["lr"], spec["steps"]
        config.kd.loss, config.kd.temperature, config.kd.kd_weight, config.kd.lmbda = "fkl", 1.0, 1.0, 0.0
    return config


def environment() -> dict:
    """CPU model, threads, versions, and whether bf16 would have been used by kdlab's --precision auto."""
    import torch
    import transformers
    import trl

    from kdlab.train.loop import resolve_precision

    cpu = platform.processor() or "unknown"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        cpu = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        pass
    return {
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "bf16_available": resolve_precision("auto") == "bf16",
        "precision_used": "fp32",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
    }


# ----------------------------------------------------------------------------------------------------------------
# workers (each in its own process)


def worker_prepare(spec: dict) -> dict:
    """The teacher adapter (unless given) and the pruned student (unless already there)."""
    from kdlab.models.prune import prune_model
    from kdlab.train.recipes import run_sft

    info = {"environment": environment()}
    if not spec["teacher_adapter_given"]:
        run_dir = run_sft(run_config(spec, "sft", Path(spec["teacher_run"])))
        info["teacher_sft"] = json.loads((run_dir / "result.json").read_text())
    if not (Path(spec["student"]) / "config.json").is_file():
        info["kept_layers"] = prune_model(TEACHER, spec["student_layers"], spec["student"])
    return info


def worker_kdlab(spec: dict) -> dict:
    """kdlab's KD run; the per-step losses come from its log.csv."""
    import csv

    from kdlab.train.recipes import run_distill

    run_dir = run_distill(run_config(spec, "distill", Path(spec["kdlab_run"])))
    result = json.loads((run_dir / "result.json").read_text())
    with (run_dir / "log.csv").open() as handle:
        losses = [float(row["loss"]) for row in csv.DictReader(handle)]
    return {
        "final": str(run_dir / "final"),
        "train_seconds": result["train_seconds"],
        "losses": losses,
        "precision": result["precision"],
    }


def worker_trl(spec: dict) -> dict:
    """TRL's GKDTrainer on the same student, teacher, tokenised data, data order and optimisation settings."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # the pin is deliberate: no "experimental API" warning
    import torch
    from datasets import Dataset
    from torch.utils.data import DataLoader
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from kdlab.data.formats import load_examples
    from kdlab.data.tokenize import Encoded, collate, encode_examples
    from kdlab.models.load import load_tokenizer
    from kdlab.train.loop import Schedule
    from kdlab.train.recipes import prepare_student
    from kdlab.train.teachers import load_teacher

    config = run_config(spec, "distill", Path(spec["trl_run"]))
    train = config.train
    tokenizer = load_tokenizer(config.model)
    encoded = encode_examples(tokenizer, load_examples(config.data), train.max_length, source=config.data)
    teacher = load_teacher(config)  # fp32, adapter merged, eval mode, frozen: as in run_distill
    student = prepare_student(config)  # seeded, all weights trainable, use_cache off: as in run_distill
    # kdlab's data order: the micro-batches (positions in `encoded`) of steps 1..max_steps, one process
    schedule = Schedule(len(encoded), train.batch_size, train.grad_accum, 1, 0, train.seed)
    batches = [batch for _, _, step_batches in schedule.step_batches(0, train.max_steps) for batch in step_batches]
    dataset = Dataset.from_list(
        [{"index": item.index, "prompt_ids": item.prompt_ids, "response_ids": item.response_ids} for item in encoded]
    )

    def collator(rows: list[dict]) -> dict:
        """kdlab's right-padded batch (input_ids, attention_mask, labels [B, T]) plus what GKDTrainer reads for
        on-policy sampling (never used at lmbda 0): the prompts left-padded [B, P] and their attention mask."""
        items = [Encoded(row["index"], row["prompt_ids"], row["response_ids"]) for row in rows]
        batch = collate(items, tokenizer.pad_token_id)
        del batch["index"]
        width = max(len(item.prompt_ids) for item in items)
        batch["prompts"] = torch.full((len(items), width), tokenizer.pad_token_id, dtype=torch.long)
        batch["prompt_attention_mask"] = torch.zeros((len(items), width), dtype=torch.long)
        for row, item in enumerate(items):
            batch["prompts"][row, width - len(item.prompt_ids) :] = torch.tensor(item.prompt_ids)
            batch["prompt_attention_mask"][row, width - len(item.prompt_ids) :] = 1
        return batch

    class KdlabOrderGKDTrainer(GKDTrainer):
        """GKDTrainer reading kdlab's micro-batches in kdlab's order, recording each step's loss at full precision."""

        def get_train_dataloader(self):
            loader = DataLoader(self.train_dataset, batch_sampler=batches, collate_fn=self.data_collator)
            return self.accelerator.prepare(loader)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            output = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            step_losses.append(float((output[0] if return_outputs else output).detach()))
            return output

    step_losses: list[float] = []
    args = GKDConfig(
        output_dir=str(Path(spec["trl_run"]) / "trainer"),
        lmbda=0.0,
        beta=0.0,
        seq_kd=False,
        temperature=1.0,
        learning_rate=train.lr,
        max_steps=train.max_steps,
        per_device_train_batch_size=train.batch_size,
        gradient_accumulation_steps=train.grad_accum,
        lr_scheduler_type="linear",
        warmup_steps=round(train.warmup_ratio * train.max_steps),
        weight_decay=train.weight_decay,
        max_grad_norm=train.max_grad_norm,
        optim="adamw_torch",
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        max_length=train.max_length,
        seed=train.seed,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = KdlabOrderGKDTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        data_collator=collator,
    )
    started = time.time()
    trainer.train()
    seconds = time.time() - started
    final = Path(spec["trl_run"]) / "final"
    trainer.save_model(str(final))
    tokenizer.save_pretrained(final)
    return {
        "final": str(final),
        "train_seconds": seconds,
        "losses": step_losses,
        "precision": "fp32",
        "warmup_steps": args.warmup_steps,
        "optim": args.optim,
    }


def worker_eval(spec: dict) -> dict:
    """Evaluate both final students on the held-out problems; compare their weights."""
    from safetensors.torch import load_file

    from kdlab.eval.evaluate import EvalSettings, evaluate

    metrics = {}
    for name in ("kdlab", "trl"):
        out = Path(spec["out"]) / f"eval-{name}"
        metrics[name] = evaluate(
            EvalSettings(
                model=spec[f"{name}_final"],
                tasks=["arith"],
                out=str(out),
                data_dir=spec["data_dir"],
                batch_size=16,
                limit=spec["test_limit"],
                max_new_tokens=spec["max_new_tokens"],
                precision="fp32",
            )
        )["tasks"]["arith"]
    a, b = (load_file(str(Path(spec[f"{name}_final"]) / "model.safetensors")) for name in ("kdlab", "trl"))
    common = sorted(set(a) & set(b))
    diff = sum(float((a[key].double() - b[key].double()).pow(2).sum()) for key in common) ** 0.5
    norm = sum(float(a[key].double().pow(2).sum()) for key in common) ** 0.5
    return {
        "metrics": metrics,
        "weights_relative_l2": diff / norm,
        "weights_max_abs": max(float((a[key] - b[key]).abs().max()) for key in common),
        "weight_tensors_compared": len(common),
    }


WORKERS = {"prepare": worker_prepare, "kdlab": worker_kdlab, "trl": worker_trl, "eval": worker_eval}


def run_worker(name: str, spec: dict, out: Path) -> dict:
    """Run ``name`` in a fresh process; returns its result plus wall time and peak RSS of that process."""
    spec_path, result_path = out / "spec.json", out / f"worker-{name}.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    result_path.unlink(missing_ok=True)
    print(f"peer_parity: {name} ...", flush=True)
    started = time.time()
    subprocess.run(
        [sys.executable, __file__, "--worker", name, "--spec", str(spec_path), "--result", str(result_path)], check=True
    )
    result = json.loads(result_path.read_text())
    result["process_wall_seconds"] = time.time() - started
    print(
        f"peer_parity: {name} done in {result['process_wall_seconds']:.1f} s "
        f"(peak RSS {result['peak_rss_mib']:.0f} MiB)",
        flush=True,
    )
    return result


def worker_main(name: str, spec_path: str, result_path: str) -> None:
    import resource

    result = WORKERS[name](json.loads(Path(spec_path).read_text()))
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    Path(result_path).write_text(json.dumps(result, indent=1))


# ----------------------------------------------------------------------------------------------------------------
# comparison


def read_predictions(path: Path) -> dict[int, dict]:
    return {record["id"]: record for record in map(json.loads, path.read_text().splitlines()) if record}


def compare(spec: dict, prepared: dict, kdlab: dict, trl: dict, evaluated: dict) -> dict:
    """Accuracies, paired tests, identical outputs, per-step losses, time and memory ratios."""
    import numpy as np

    from kdlab.stats.significance import mcnemar_exact, paired_bootstrap_ci

    out = Path(spec["out"])
    preds = {name: read_predictions(out / f"eval-{name}" / "predictions" / "arith.jsonl") for name in ("kdlab", "trl")}
    ids = sorted(set(preds["kdlab"]) & set(preds["trl"]))
    ok_k = np.array([bool(preds["kdlab"][i]["correct"]) for i in ids])
    ok_t = np.array([bool(preds["trl"][i]["correct"]) for i in ids])
    b, c = int((ok_k & ~ok_t).sum()), int((~ok_k & ok_t).sum())
    low, high = paired_bootstrap_ci(ok_k, ok_t, n_boot=10000, seed=0)
    n_steps = min(len(kdlab["losses"]), len(trl["losses"]))
    steps = [
        {
            "step": s + 1,
            "kdlab": kdlab["losses"][s],
            "trl": trl["losses"][s],
            "abs_diff": abs(kdlab["losses"][s] - trl["losses"][s]),
        }
        for s in range(n_steps)
    ]
    m = evaluated["metrics"]
    return {
        "settings": {
            key: spec[key]
            for key in (
                "quick",
                "student_layers",
                "steps",
                "batch_size",
                "lr",
                "warmup_ratio",
                "max_length",
                "seed",
                "teacher_steps",
                "teacher_lr",
                "teacher_adapter",
                "test_limit",
                "max_new_tokens",
            )
        },
        "environment": prepared["environment"],
        "accuracy": {
            name: {
                "accuracy": m[name]["accuracy"],
                "n": m[name]["n"],
                "ci95": m[name]["ci95"],
                "no_answer": m[name]["no_answer"],
            }
            for name in ("kdlab", "trl")
        },
        "paired": {
            "n": len(ids),
            "diff": float(ok_k.mean() - ok_t.mean()),
            "ci95": [low, high],
            "kdlab_only_right": b,
            "trl_only_right": c,
            "mcnemar_p": mcnemar_exact(b, c),
        },
        "identical_outputs": sum(preds["kdlab"][i]["output"] == preds["trl"][i]["output"] for i in ids),
        "losses": steps,
        "loss_max_abs_diff": max((row["abs_diff"] for row in steps), default=float("nan")),
        "weights_relative_l2": evaluated["weights_relative_l2"],
        "weights_max_abs": evaluated["weights_max_abs"],
        "train_seconds": {"kdlab": kdlab["train_seconds"], "trl": trl["train_seconds"]},
        "process_wall_seconds": {"kdlab": kdlab["process_wall_seconds"], "trl": trl["process_wall_seconds"]},
        "peak_rss_mib": {"kdlab": kdlab["peak_rss_mib"], "trl": trl["peak_rss_mib"]},
        "time_ratio_kdlab_over_trl": kdlab["train_seconds"] / trl["train_seconds"],
        "process_time_ratio_kdlab_over_trl": kdlab["process_wall_seconds"] / trl["process_wall_seconds"],
        "memory_ratio_kdlab_over_trl": kdlab["peak_rss_mib"] / trl["peak_rss_mib"],
    }


def markdown(r: dict) -> str:
    def pct(v):
        return f"{100 * v:.0f}%"

    acc = {
        name: f"{pct(a['accuracy'])} [{100 * a['ci95'][0]:.0f}–{100 * a['ci95'][1]:.0f}] (n={a['n']}, no answer {a['no_answer']})"
        for name, a in r["accuracy"].items()
    }
    p, s, env = r["paired"], r["settings"], r["environment"]
    teacher = (
        f"adapter {s['teacher_adapter']}"
        if s["teacher_steps"] is None
        else f"LoRA SFT {s['teacher_steps']} steps of {s['batch_size']}, lr {s['teacher_lr']:g}"
    )
    lines = [
        f"Peer parity: kdlab vs TRL GKDTrainer (forward KL, tau 1, live teacher){' — QUICK check, numbers mean nothing' if s['quick'] else ''}",
        "",
        f"Student: SmolLM2-135M pruned to {s['student_layers']} layers, full FT, {s['steps']} steps of {s['batch_size']}, "
        f"lr {s['lr']:g}, warm-up {s['warmup_ratio']:g}, fp32; teacher: SmolLM2-135M-Instruct + {teacher}.",
        f"Machine: {env['cpu_model']} ({env['cpu_count']} CPUs, {env['torch_threads']} torch threads"
        f"{', GPU ' + env['cuda'] if env['cuda'] else ''}); bf16 available: {env['bf16_available']} (not used: fp32); "
        f"torch {env['torch']}, transformers {env['transformers']}, trl {env['trl']}.",
        "",
        "| | kdlab | TRL GKDTrainer | kdlab / TRL |",
        "|---|---|---|---:|",
        f"| held-out accuracy (95% Wilson CI) | {acc['kdlab']} | {acc['trl']} | |",
        f"| training loop wall time | {r['train_seconds']['kdlab']:.1f} s | {r['train_seconds']['trl']:.1f} s | {r['time_ratio_kdlab_over_trl']:.2f} |",
        f"| whole process wall time (load, train, save) | {r['process_wall_seconds']['kdlab']:.1f} s | {r['process_wall_seconds']['trl']:.1f} s | {r['process_time_ratio_kdlab_over_trl']:.2f} |",
        f"| peak RSS of the process | {r['peak_rss_mib']['kdlab']:.0f} MiB | {r['peak_rss_mib']['trl']:.0f} MiB | {r['memory_ratio_kdlab_over_trl']:.2f} |",
        "",
        f"Paired on the same {p['n']} problems: accuracy kdlab − TRL = {100 * p['diff']:+.0f} pp "
        f"[{100 * p['ci95'][0]:+.0f}, {100 * p['ci95'][1]:+.0f}] (paired bootstrap 95% CI); only kdlab right "
        f"{p['kdlab_only_right']}, only TRL right {p['trl_only_right']}, exact McNemar p = {p['mcnemar_p']:.3g}; "
        f"identical greedy outputs: {r['identical_outputs']} of {p['n']}.",
        f"Final weights: relative L2 distance {r['weights_relative_l2']:.2e}, max abs difference {r['weights_max_abs']:.2e}.",
        "",
        f"Per-step training loss (mean forward KL per response token), max abs difference {r['loss_max_abs_diff']:.2e}:",
        "",
        "| step | kdlab | TRL | abs diff |",
        "|---:|---:|---:|---:|",
        *[f"| {row['step']} | {row['kdlab']:.6f} | {row['trl']:.6f} | {row['abs_diff']:.1e} |" for row in r["losses"]],
    ]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/peer-parity", help="output folder (reused: data, teacher, student)")
    parser.add_argument(
        "--quick", action="store_true", help="4-layer student, 2 steps, 2 teacher steps, 8 test problems"
    )
    parser.add_argument(
        "--teacher-adapter", help="reuse this LoRA adapter folder as the teacher's (skips the teacher SFT)"
    )
    parser.add_argument("--student-layers", type=int, help="layers kept in the pruned student (default 24; quick 4)")
    parser.add_argument("--steps", type=int, help="student optimizer steps (default 18; quick 2)")
    parser.add_argument("--teacher-steps", type=int, help="teacher LoRA SFT steps (default 26; quick 2)")
    parser.add_argument("--test-limit", type=int, help="held-out problems evaluated (default 100; quick 8)")
    parser.add_argument("--lr", type=float, default=1e-4, help="student peak learning rate")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(args.worker, args.spec, args.result)
        return 0

    from kdlab.data.synth import write_synth

    out = Path(args.out).resolve()
    quick = args.quick

    def pick(value, full, small):
        return value if value is not None else (small if quick else full)

    layers, steps = pick(args.student_layers, 24, 4), pick(args.steps, 18, 2)
    teacher_steps, test_limit = pick(args.teacher_steps, 26, 2), pick(args.test_limit, 100, 8)
    data = out / "data"
    if not (data / "train.json").is_file():
        write_synth(data / "train.json", n=160, seed=0, split="train", max_steps=1, scale="small")
    if not (data / "arith" / "test.json").is_file():
        write_synth(data / "arith" / "test.json", n=100, seed=1, split="test", max_steps=1, scale="small")
    teacher_run = out / f"teacher-sft-{teacher_steps}steps"
    spec = {
        "out": str(out),
        "quick": quick,
        "train_data": str(data / "train.json"),
        "data_dir": str(data),
        "student": str(out / f"student-{layers}l"),
        "student_layers": layers,
        "steps": steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "warmup_ratio": 0.1,
        "max_length": 192,
        "seed": 0,
        "teacher_run": str(teacher_run),
        "teacher_steps": None if args.teacher_adapter else teacher_steps,
        "teacher_lr": 1e-3,
        "teacher_adapter_given": bool(args.teacher_adapter),
        "teacher_adapter": str(Path(args.teacher_adapter).resolve())
        if args.teacher_adapter
        else str(teacher_run / "final"),
        "kdlab_run": str(out / "kdlab-student"),
        "trl_run": str(out / "trl-student"),
        "test_limit": test_limit,
        "max_new_tokens": 36,
    }
    out.mkdir(parents=True, exist_ok=True)
    prepared = run_worker("prepare", spec, out)
    for name in ("kdlab-student", "trl-student", "eval-kdlab", "eval-trl"):  # always redone: fresh measurements
        shutil.rmtree(out / name, ignore_errors=True)
    kdlab = run_worker("kdlab", spec, out)
    trl = run_worker("trl", spec, out)
    evaluated = run_worker("eval", {**spec, "kdlab_final": kdlab["final"], "trl_final": trl["final"]}, out)
    result = compare(spec, prepared, kdlab, trl, evaluated)
    (out / "peer_parity.json").write_text(json.dumps(result, indent=1))
    text = markdown(result)
    (out / "peer_parity.md").write_text(text)
    print("\n" + text + f"\nwritten: {out / 'peer_parity.json'}, {out / 'peer_parity.md'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
