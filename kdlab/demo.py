"""``kdlab demo``: a real, small KD study on the embedded SmolLM2-135M, offline on a CPU, ending in a report.

The demo is a study (:mod:`kdlab.study`) whose spec it writes itself:

1. Data: synthetic arithmetic word problems with rationales (``kdlab data synth --scale small``), one step on
   single-digit numbers each (160 to train, 100 held out): a train split and a
   disjoint held-out test split. With ``--data-dir`` (LLM-Adapters layout, e.g.
   ``../shared/data/paper-kd-generalization/eval``) the students are also tested zero-shot on AddSub, SingleEq,
   MultiArith and SVAMP: transfer from synthetic training problems to real ones.
2. Teacher: SmolLM2-135M-Instruct, LoRA SFT on the train split.
3. Students: SmolLM2 pruned to 24 and 27 of its 30 decoder layers, each trained for 18 steps of 8 with SFT (the
   baseline) and with KD from the teacher: forward KL at tau 1 and 2, reverse KL, generalized JSD (beta 0.5); full
   fine-tuning (a pruned network needs all its weights to recover). Ablations on the 24-layer student: Gaussian
   noise (sigma 2) on the teacher's logits, and KD from the base teacher (before its SFT). Why so mild a pruning:
   measured on this budget, students cut to 6 or 15 layers stay near 0% (they lose even single-digit arithmetic and
   need far more than a few hundred examples to heal), so no comparison between them could be resolved.
4. Every model is evaluated on the held-out problems (greedy, strict extraction of "The answer is N."); fidelity of
   every student to its teacher (answer agreement, BLEU, teacher-forced token KL, top-1 agreement); statistics
   (McNemar and paired bootstrap of KD vs SFT, the paper's H1-H5) and an HTML report.

The teacher's top-k signal is cached once and shared by every KD run (no teacher forward pass while the students
train); training runs in bf16 on CPUs that support it. Every step is a resumable run folder: re-running the command
skips what is done and resumes what was interrupted.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from kdlab.data.synth import write_synth
from kdlab.errors import KdlabError

TEACHER = "smollm2-135m"
TRANSFER_TASKS = ("AddSub", "SingleEq", "MultiArith", "SVAMP")


@dataclass(frozen=True)
class DemoSize:
    """Data sizes and optimizer steps of one demo flavour."""

    train: int
    test: int
    transfer_limit: int
    teacher_steps: int
    student_steps: int
    batch_size: int
    max_new_tokens: int
    student_layers: tuple[int, int] = (24, 27)  # measured: students cut to 6 or 15 layers stay near 0% at this budget


FULL = DemoSize(train=160, test=100, transfer_limit=50, teacher_steps=26, student_steps=18, batch_size=8, max_new_tokens=36)
# --quick checks the pipeline: smaller students (their numbers carry no meaning anyway) keep it within minutes
QUICK = DemoSize(train=32, test=8, transfer_limit=8, teacher_steps=3, student_steps=2, batch_size=4, max_new_tokens=32,
                 student_layers=(4, 6))
SYNTH_STEPS, SYNTH_SCALE = 1, "small"  # one operation on single-digit numbers: within reach of a pruned student


def demo_spec(data: Path, size: DemoSize, transfer: bool) -> dict:
    """The demo's study spec (written to ``<out>/demo-spec.yaml``)."""
    students = {f"smollm2-{n}l": {"prune": {"model": "smollm2", "keep_layers": n}} for n in size.student_layers}
    smallest = f"smollm2-{min(size.student_layers)}l"
    train = {"batch_size": size.batch_size, "max_length": 192, "warmup_ratio": 0.1}
    return {
        "name": "smollm2-demo",
        "description": "SmolLM2-135M-Instruct (LoRA SFT teacher) distilled into pruned 6- and 15-layer students "
                       "on synthetic arithmetic word problems.",
        "models": {"smollm2": {"spec": TEACHER}, **students},
        "teachers": ["smollm2"],
        "students": list(students),
        "domains": {"arith": {"train": str(data / "train.json"),
                              "tasks": ["arith", *TRANSFER_TASKS] if transfer else ["arith"],
                              "data_dir": str(data)}},
        "methods": {"fkl": {"loss": "fkl"}, "rkl": {"loss": "rkl", "temperatures": [1.0]},
                    "gjsd": {"loss": "gjsd", "beta": 0.5, "temperatures": [1.0]}},
        "temperatures": [1.0, 2.0],
        "seeds": [0],
        "ablations": {"teacher_noise": [2.0], "base_teacher": True, "students": [smallest], "methods": ["fkl"],
                      "temperature": 1.0},
        "teacher_training": {"lora": {"enabled": True},
                             "train": {**train, "lr": 1e-3, "max_steps": size.teacher_steps, "save_steps": 10}},
        # full fine-tuning checkpoints (weights + AdamW state, ~1.5 GB each) would cost more than redoing a 2-minute run
        "student_training": {"lora": {"enabled": False},
                             "train": {**train, "lr": 5e-4, "max_steps": size.student_steps, "save_steps": 0}},
        "teacher_cache": {"enabled": True, "k": 64, "tail": "bucket"},
        "evaluation": {"batch_size": 16, "limit": max(size.test, size.transfer_limit) if transfer else None,
                       "max_new_tokens": size.max_new_tokens, "precision": "bf16"},
        "fidelity": {"enabled": True, "token_kl": True, "embeddings": False},
        "cost": {"tflops": 0.05},
    }


def _prepare_data(out: Path, size: DemoSize, data_dir: str | None) -> Path:
    data = out / "data"
    if not (data / "train.json").is_file():
        write_synth(data / "train.json", n=size.train, seed=0, split="train", max_steps=SYNTH_STEPS, scale=SYNTH_SCALE)
    if not (data / "arith" / "test.json").is_file():
        write_synth(data / "arith" / "test.json", n=size.test, seed=1, split="test", max_steps=SYNTH_STEPS, scale=SYNTH_SCALE)
    if data_dir:
        source = Path(data_dir).resolve()
        for task in TRANSFER_TASKS:
            test = source / task / "test.json"
            if not test.is_file():
                raise KdlabError(f"--data-dir {data_dir}: {test} not found (expected the LLM-Adapters layout <task>/test.json)")
            link = data / task
            if not link.exists():
                link.symlink_to(source / task, target_is_directory=True)
    return data


def run_demo(out: str | Path, quick: bool = False, data_dir: str | None = None) -> dict:
    """Run the demo study into ``out``; returns its headline numbers."""
    from kdlab.study.commands import compute_stats
    from kdlab.study.plan import build_plan
    from kdlab.study.report import write_report
    from kdlab.study.results import collect_results
    from kdlab.study.runner import prepare_study, run_plan

    started = time.time()
    out, size = Path(out), QUICK if quick else FULL
    out.mkdir(parents=True, exist_ok=True)
    data = _prepare_data(out, size, data_dir)
    spec_path = out / "demo-spec.yaml"
    spec_text = yaml.safe_dump(demo_spec(data.resolve(), size, bool(data_dir)), sort_keys=False)
    if not spec_path.is_file() or spec_path.read_text() != spec_text:
        spec_path.write_text(spec_text)
    print(f"kdlab demo: {'quick' if quick else 'full'} study in {out} (spec: {spec_path}); re-running resumes", flush=True)
    spec, study_dir = prepare_study(spec_path, out / "study")
    plan = build_plan(spec)
    summary = run_plan(plan, study_dir, poll=5.0)
    if summary.failed or summary.blocked:
        raise KdlabError(f"{summary.failed} demo runs failed ({summary.blocked} skipped); see `kdlab study status {study_dir}`")
    frame = collect_results(plan, study_dir)
    stats = compute_stats(study_dir, frame, study_dir / "stats")
    html, _ = write_report(study_dir, frame, stats, study_dir / "report", title="kdlab demo: SmolLM2 distillation study")
    minutes = (time.time() - started) / 60
    headline = summarize_demo(frame, stats)
    print("\n" + format_summary(headline, html, minutes, size), flush=True)
    return {**headline, "minutes": minutes, "report": str(html)}


def summarize_demo(frame, stats: dict) -> dict:
    """Teacher accuracy, each student's SFT and KD accuracies with CIs and p-values, fidelity, on the held-out task."""
    rows = frame[frame["task"] == "arith"]
    teacher = rows[rows["role"] == "teacher"].iloc[0]
    base = rows[rows["role"] == "base-teacher"]
    paired = stats.get("paired")
    students = {}
    for student, group in rows[rows["role"].isin(["student-sft", "student-kd"])].groupby("student", sort=False):
        sft = group[group["role"] == "student-sft"].iloc[0]
        kd = []
        for _, row in group[group["role"] == "student-kd"].iterrows():
            entry = {"label": _label(row), "accuracy": row["accuracy"], "ci": (row["ci_low"], row["ci_high"]),
                     "agreement": row["agreement"], "bleu": row["bleu"], "token_kl": row["token_kl"]}
            match = paired[(paired["run"] == row["run"]) & (paired["task"] == "arith")] if paired is not None else paired
            if match is not None and len(match):
                entry["pvalue"] = float(match.iloc[0]["pvalue"])
            kd.append(entry)
        students[student] = {"size_b": float(sft["student_size_b"]), "sft": sft["accuracy"], "sft_ci": (sft["ci_low"], sft["ci_high"]),
                             "sft_agreement": sft["agreement"], "kd": kd}
    return {"n": int(teacher["n"]), "teacher": teacher["accuracy"], "teacher_ci": (teacher["ci_low"], teacher["ci_high"]),
            "base_teacher": float(base.iloc[0]["accuracy"]) if len(base) else None, "students": students}


def _label(row) -> str:
    label = row["method"] + (f" tau={row['temperature']:g}" if not math.isnan(row["temperature"]) else "")
    if row["noise"]:
        label += f" noise={row['noise']:g}"
    if row["teacher_kind"] == "base":
        label += " (base teacher)"
    return label


def format_summary(headline: dict, html: Path, minutes: float, size: DemoSize) -> str:
    """The plain-language end of the demo's output."""
    pct = lambda v: f"{100 * v:.0f}%"
    ci = lambda c: f"[{100 * c[0]:.0f}-{100 * c[1]:.0f}%]"
    lines = [f"kdlab demo: done in {minutes:.1f} min. Held-out synthetic problems (n={headline['n']} each, 95% Wilson CIs):",
             f"  teacher (SmolLM2-135M + LoRA SFT): {pct(headline['teacher'])} {ci(headline['teacher_ci'])}"
             + (f"; before its SFT: {pct(headline['base_teacher'])}" if headline["base_teacher"] is not None else "")]
    wins = total = significant = worse = 0
    for student, info in headline["students"].items():
        lines.append(f"  {student} ({info['size_b'] * 1000:.0f}M params): SFT {pct(info['sft'])} {ci(info['sft_ci'])}")
        for entry in info["kd"]:
            p = entry.get("pvalue")
            total += 1
            wins += entry["accuracy"] > info["sft"]
            significant += p is not None and p < 0.05 and entry["accuracy"] > info["sft"]
            worse += p is not None and p < 0.05 and entry["accuracy"] < info["sft"]
            lines.append(f"      KD {entry['label']:<28} {pct(entry['accuracy']):>4} {ci(entry['ci'])}"
                         + (f"  McNemar p={p:.3g}" if p is not None and not math.isnan(p) else "")
                         + (f"  agreement {entry['agreement']:.2f}" if not math.isnan(entry["agreement"]) else "")
                         + (f"  BLEU {entry['bleu']:.0f}" if not math.isnan(entry["bleu"]) else ""))
    lines.append(f"  In plain words: KD beat the SFT baseline in {wins} of {total} comparisons ({significant} significantly) and "
                 f"was significantly worse in {worse} (exact McNemar p < 0.05 on the same problems, before Holm correction; "
                 "the report has the corrected values).")
    if size is QUICK:
        lines.append("  (--quick: a few optimizer steps on a few examples; the numbers show the pipeline, not a finding.)")
    lines.append(f"  Report: {html}")
    return "\n".join(lines)
