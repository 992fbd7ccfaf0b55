"""``kdlab demo``: a real, small and fair KD study on the embedded SmolLM2-135M, offline on a CPU, ending in a report.

The demo is a study (:mod:`kdlab.study`) whose spec it writes itself:

1. Data: synthetic arithmetic word problems with rationales (``kdlab data synth --scale small``), one step on
   single-digit numbers each: the students' distillation set (160 problems, plus 60 more that the study holds out as
   its validation split), the teacher's own SFT set (480 other problems) and 100 disjoint held-out test problems.
   With ``--data-dir`` (LLM-Adapters layout, e.g. ``../shared/data/paper-kd-generalization/eval``) the students are
   also tested zero-shot on AddSub, SingleEq, MultiArith and SVAMP.
2. Teacher: SmolLM2-135M-Instruct, LoRA SFT on its own 480 problems (60 steps): three times the students' data,
   so it is stronger than its students by more than a shared fine-tuning. It is still almost one-hot on the
   students' problems (measured in ``docs/kd-vs-sft.md``: argmax = gold on 99.8% of their response tokens, against
   98.9% for a teacher trained on those very problems), so on this regular task forward KL at tau 1 stays close to
   SFT; what the teacher adds is mostly at tau 2 (13% of its softened mass off the top token).
3. Student: SmolLM2 pruned to 24 of its 30 decoder layers (students cut to 6 or 15 layers stay near 0% at this
   budget), full fine-tuning, 18 steps of 8: the SFT baseline and KD with forward KL (temperature 1 or 2) and
   reverse KL, two seeds.
4. Fair comparison (``tuning`` in the spec): every run -- SFT and each KD method alike -- is trained at each learning
   rate (1e-4, 3e-4) and, for forward KL, each temperature; each candidate is scored on the validation split and
   only the best is evaluated on the test set. Nothing is chosen on test scores.
5. Every selected model is evaluated on the held-out problems (greedy, strict extraction of "The answer is N.",
   precision ``auto``); fidelity of every student to the teacher (answer agreement, BLEU, teacher-forced token KL,
   top-1 agreement); statistics (McNemar and paired bootstrap of KD vs SFT per seed, Holm, seed means) and an HTML
   report with the validation curves.

The teacher's top-k signal is cached once and shared by every KD run. Every step is a resumable run folder:
re-running the command skips what is done and resumes what was interrupted.

``--quick`` (:data:`QUICK`) runs the same pipeline on a few problems with a 4-layer student, 2-3 optimizer steps per
run and one seed: it checks the pipeline, its numbers mean nothing. ``--fidelity`` (:func:`fidelity_spec`) runs the
fidelity study instead: the same teacher, student, data, budget and selection, with SFT, forward KL and the
fidelity-aware objectives of :data:`FIDELITY_METHODS` (synthetic problems only).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from kdlab.data.formats import load_json_examples, write_json_examples
from kdlab.data.split import validation_split
from kdlab.data.synth import generate_arith, write_synth
from kdlab.errors import KdlabError
from kdlab.study.runmeta import RunMeta

TEACHER = "smollm2-135m"
TRANSFER_TASKS = ("AddSub", "SingleEq", "MultiArith", "SVAMP")


@dataclass(frozen=True)
class DemoSize:
    """Data sizes, optimizer steps and grid of one demo flavour."""

    train: int  # the students' distillation set
    validation: int  # held out from it by the study, for selecting settings
    teacher_train: int  # the teacher's own SFT set (disjoint from the students')
    test: int
    transfer_limit: int
    teacher_steps: int
    student_steps: int
    batch_size: int
    max_new_tokens: int
    student_layers: tuple[int, ...] = (24,)  # measured: students cut to 6 or 15 layers stay near 0% at this budget
    seeds: tuple[int, ...] = (0, 1)
    lrs: tuple[float, ...] = (1e-4, 3e-4)


FULL = DemoSize(
    train=160,
    validation=60,
    teacher_train=480,
    test=100,
    transfer_limit=50,
    teacher_steps=60,
    student_steps=18,
    batch_size=8,
    max_new_tokens=36,
)
# --quick checks the pipeline: a smaller student (its numbers carry no meaning anyway) keeps it within minutes
QUICK = DemoSize(
    train=32,
    validation=8,
    teacher_train=32,
    test=8,
    transfer_limit=8,
    teacher_steps=3,
    student_steps=2,
    batch_size=4,
    max_new_tokens=32,
    student_layers=(4,),
    seeds=(0,),
)
SYNTH_STEPS, SYNTH_SCALE = 1, "small"  # one operation on single-digit numbers: within reach of a pruned student
MEASURED_MINUTES = {"full": 29, "quick": 2}  # wall time on 2 CPU cores (README); update with the sizes above


def _grid_words(size: DemoSize) -> str:
    layers = " or ".join(str(n) for n in size.student_layers)
    return f"SmolLM2 pruned to {layers} of its 30 layers, {size.student_steps} steps of {size.batch_size}, {_seed_words(size)}"


def _seed_words(size: DemoSize) -> str:
    return {1: "one seed", 2: "two seeds"}.get(len(size.seeds), f"{len(size.seeds)} seeds")


def help_text() -> tuple[str, str, str]:
    """(description, --quick help, --fidelity help) of ``kdlab demo --help``, written from :data:`FULL`,
    :data:`QUICK` and :data:`FIDELITY_METHODS` so they cannot drift from what the demo runs."""
    description = (
        f"Teacher: SmolLM2-135M-Instruct + LoRA SFT ({FULL.teacher_steps} steps) on its own "
        f"{FULL.teacher_train} synthetic arithmetic problems; students: {_grid_words(FULL)}: SFT vs KD "
        "(forward KL at tau 1 or 2, reverse KL), learning rate and temperature selected on a "
        f"{FULL.validation}-problem validation split for every method; evaluation on {FULL.test} held-out "
        "problems, fidelity, statistics, HTML report. About "
        f"{MEASURED_MINUTES['full']} minutes on 2 CPU cores; --quick under {MEASURED_MINUTES['quick']}."
    )
    quick = (
        f"under {MEASURED_MINUTES['quick']} minutes, same pipeline, numbers without meaning: "
        f"{_grid_words(QUICK)}, {QUICK.train} training problems"
    )
    fidelity = (
        f"the fidelity study instead (same teacher, student, data and budget): SFT vs {len(FIDELITY_METHODS)} "
        "KD objectives -- forward KL (tau 1), decision-level, disagreement-weighted and speculative KD -- with "
        f"the learning rate selected on validation, {_seed_words(FULL)} ({_seed_words(QUICK)} with --quick); "
        "accuracy vs agreement with the teacher, paired tests against forward KL; synthetic problems only (not "
        "with --data-dir); use another --out, e.g. runs/fidelity"
    )
    return description, quick, fidelity


def demo_spec(data: Path, size: DemoSize, transfer: bool) -> dict:
    """The demo's study spec (written to ``<out>/demo-spec.yaml``)."""
    students = {f"smollm2-{n}l": {"prune": {"model": "smollm2", "keep_layers": n}} for n in size.student_layers}
    train = {"batch_size": size.batch_size, "max_length": 192, "warmup_ratio": 0.1}
    layers = " and ".join(str(n) for n in size.student_layers)
    return {
        "name": "smollm2-demo",
        "description": f"SmolLM2-135M-Instruct (LoRA SFT teacher on its own problems) distilled into a student pruned "
        f"to {layers} layers on synthetic arithmetic word problems; learning rate and temperature "
        "selected on a validation split for every method.",
        "models": {"smollm2": {"spec": TEACHER}, **students},
        "teachers": ["smollm2"],
        "students": list(students),
        "domains": {
            "arith": {
                "train": str(data / "train.json"),
                "teacher_train": str(data / "teacher.json"),
                "tasks": ["arith", *TRANSFER_TASKS] if transfer else ["arith"],
                "data_dir": str(data),
            }
        },
        "methods": {"fkl": {"loss": "fkl"}, "rkl": {"loss": "rkl", "temperatures": [1.0]}},
        "temperatures": [1.0, 2.0],
        "seeds": list(size.seeds),
        "tuning": {
            "params": {"train.lr": list(size.lrs)},
            "temperature": "validation",
            "validation": {"n": size.validation, "seed": 0, "task": "arith"},
        },
        "teacher_training": {
            "lora": {"enabled": True},
            "train": {**train, "lr": 1e-3, "max_steps": size.teacher_steps, "save_steps": 20},
        },
        # full fine-tuning checkpoints (weights + AdamW state, ~1.5 GB each) would cost more than redoing a 1-minute run
        "student_training": {
            "lora": {"enabled": False},
            "train": {**train, "max_steps": size.student_steps, "save_steps": 0},
        },
        "teacher_cache": {"enabled": True, "k": 64, "tail": "bucket"},
        "evaluation": {
            "batch_size": 16,
            "limit": max(size.test, size.transfer_limit) if transfer else None,
            "max_new_tokens": size.max_new_tokens,
            "precision": "auto",
        },
        "fidelity": {"enabled": True, "token_kl": True, "embeddings": False},
        "cost": {"tflops": 0.05},
    }


#: ``kdlab demo --fidelity``: the fidelity-aware objectives against forward KL and SFT (presets of kdlab.config.KD_PRESETS)
FIDELITY_METHODS = {
    "fkl": {"loss": "fkl"},
    "decision": {"preset": "decision-kd"},  # the divergence on "The answer is N." weighted 5x
    "disagreement": {
        "preset": "disagreement-kd"
    },  # gamma = 2: tokens where the student's argmax differs weigh up to 3x
    "speculative": {
        "preset": "speculative-kd"
    },  # half the steps on student samples checked against the teacher's top-25
}


def fidelity_spec(data: Path, size: DemoSize) -> dict:
    """The fidelity study: the demo's teacher, student, data, budget and validation-based selection of the learning
    rate, with SFT, forward KL (tau 1) and the three fidelity-aware objectives (decision-level, disagreement-weighted
    and speculative KD)."""
    spec = demo_spec(data, size, transfer=False)
    spec.update(
        name="smollm2-fidelity",
        description="Fidelity-aware distillation on SmolLM2: SFT, forward KL, decision-level KD (answer span x5), "
        "disagreement-weighted KD (gamma 2) and speculative KD (top-25, lambda 0.5), learning rate "
        "selected on a validation split for every method; accuracy and agreement with the teacher.",
        methods=dict(FIDELITY_METHODS),
        temperatures=[1.0],
        kd={"max_new_tokens": 2 * size.max_new_tokens},
    )  # on-policy samples: answers run ~30 tokens
    return spec


def _prepare_data(out: Path, size: DemoSize, data_dir: str | None) -> Path:
    """The students' set (distillation + validation), the teacher's disjoint set, the test set, transfer links."""
    data = out / "data"
    if not (data / "train.json").is_file():
        write_synth(
            data / "train.json",
            n=size.train + size.validation,
            seed=0,
            split="train",
            max_steps=SYNTH_STEPS,
            scale=SYNTH_SCALE,
        )
    if not (data / "teacher.json").is_file():
        extra = generate_arith(2 * size.teacher_train, seed=2, split="train", max_steps=SYNTH_STEPS, scale=SYNTH_SCALE)
        own = validation_split(extra, 0, 0, validation=load_json_examples(data / "train.json")).train  # none of theirs
        write_json_examples(own[: size.teacher_train], data / "teacher.json")
    if not (data / "arith" / "test.json").is_file():
        write_synth(
            data / "arith" / "test.json", n=size.test, seed=1, split="test", max_steps=SYNTH_STEPS, scale=SYNTH_SCALE
        )
    if data_dir:
        source = Path(data_dir).resolve()
        for task in TRANSFER_TASKS:
            test = source / task / "test.json"
            if not test.is_file():
                raise KdlabError(
                    f"--data-dir {data_dir}: {test} not found (expected the LLM-Adapters layout <task>/test.json)"
                )
            link = data / task
            if not link.exists():
                link.symlink_to(source / task, target_is_directory=True)
    return data


def run_demo(out: str | Path, quick: bool = False, data_dir: str | None = None, fidelity: bool = False) -> dict:
    """Run the demo study (or, with ``fidelity``, the fidelity study of :func:`fidelity_spec`) into ``out``; returns
    its headline numbers."""
    from kdlab.stats.results import collect_results, collect_selection
    from kdlab.stats.study import compute_stats
    from kdlab.study.executors.local import run_plan
    from kdlab.study.folder import prepare_study
    from kdlab.study.plan import build_plan
    from kdlab.study.report import write_report

    started = time.time()
    out, size = Path(out), QUICK if quick else FULL
    out.mkdir(parents=True, exist_ok=True)
    data = _prepare_data(out, size, data_dir)
    spec_path = out / "demo-spec.yaml"
    if fidelity and data_dir:
        raise KdlabError("--fidelity runs on the synthetic problems only (drop --data-dir)")
    spec = fidelity_spec(data.resolve(), size) if fidelity else demo_spec(data.resolve(), size, bool(data_dir))
    spec_text = yaml.safe_dump(spec, sort_keys=False)
    if not spec_path.is_file() or spec_path.read_text() != spec_text:
        spec_path.write_text(spec_text)
    kind = ("quick " if quick else "full ") + ("fidelity study" if fidelity else "study")
    print(f"kdlab demo: {kind} in {out} (spec: {spec_path}); re-running resumes", flush=True)
    spec, study_dir = prepare_study(spec_path, out / "study")
    plan = build_plan(spec)
    summary = run_plan(plan, study_dir, poll=5.0)
    if summary.failed or summary.blocked:
        raise KdlabError(
            f"{summary.failed} demo runs failed ({summary.blocked} skipped); see `kdlab study status {study_dir}`"
        )
    frame = collect_results(plan, study_dir)
    stats = compute_stats(study_dir, frame, study_dir / "stats", collect_selection(plan, study_dir))
    title = (
        "kdlab demo: fidelity-aware distillation on SmolLM2" if fidelity else "kdlab demo: SmolLM2 distillation study"
    )
    html, _ = write_report(study_dir, frame, stats, study_dir / "report", title=title)
    minutes = (time.time() - started) / 60
    headline = {**summarize_demo(frame, stats), "backends": backends_used(study_dir)}
    print("\n" + format_summary(headline, html, minutes, size), flush=True)
    return {**headline, "minutes": minutes, "report": str(html)}


def backends_used(study_dir: Path) -> dict[str, int]:
    """How many of the study's evaluations ran on each generation backend (``settings.backend`` of their
    metrics.json, with vLLM's version): ``{"vllm 0.32.0": 12, "hf": 9}``."""
    counts: dict[str, int] = {}
    for path in sorted(study_dir.glob("*/*/metrics.json")):
        settings = json.loads(path.read_text()).get("settings", {})
        name = " ".join(str(part) for part in (settings.get("backend"), settings.get("vllm_version")) if part)
        if name:
            counts[name] = counts.get(name, 0) + 1
    return counts


def _nan_to_none(value):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def summarize_demo(frame, stats: dict) -> dict:
    """Teacher accuracy; per student and seed the selected SFT and KD runs: accuracy with CI, settings chosen on
    validation, the paired difference to SFT with its bootstrap CI, McNemar p (and Holm over all comparisons),
    agreement and BLEU with the teacher; on the held-out task."""
    rows = frame[frame["task"] == "arith"]
    teacher = rows[rows["role"] == "teacher"].iloc[0]
    paired = stats.get("paired")
    students = {}
    for student, group in rows[rows["role"].isin(["student-sft", "student-kd"])].groupby("student", sort=False):
        runs = []
        order = group.assign(_sft=group["role"] != "student-sft").sort_values(["seed", "_sft", "method"], kind="stable")
        for _, row in order.iterrows():
            entry = {
                "label": ("" if row["role"] == "student-sft" else "KD ") + RunMeta.from_row(row).label(),
                "seed": int(row["seed"]),
                "selected": row["selected"],
                "val_accuracy": _nan_to_none(row["val_accuracy"]),
                "accuracy": row["accuracy"],
                "ci": (row["ci_low"], row["ci_high"]),
                "agreement": _nan_to_none(row["agreement"]),
                "bleu": _nan_to_none(row["bleu"]),
            }
            match = paired[(paired["run"] == row["run"]) & (paired["task"] == "arith")] if paired is not None else None
            if row["role"] == "student-kd" and match is not None and len(match):
                m = match.iloc[0]
                entry.update(
                    diff=float(m["diff"]),
                    diff_ci=(float(m["ci_low"]), float(m["ci_high"])),
                    pvalue=float(m["pvalue"]),
                    pvalue_holm=float(m["pvalue_holm_all"]),
                )
            runs.append(entry)
        students[student] = {"size_b": float(group["student_size_b"].iloc[0]), "runs": runs}
    return {
        "n": int(teacher["n"]),
        "teacher": teacher["accuracy"],
        "teacher_ci": (teacher["ci_low"], teacher["ci_high"]),
        "students": students,
    }


def _short(settings: str) -> str:
    """``kd.temperature=2 train.lr=0.0003`` -> ``tau=2 lr=3e-04``."""
    parts = []
    for item in settings.split():
        key, value = item.split("=", 1)
        name = {"kd.temperature": "tau", "train.lr": "lr"}.get(key, key.split(".")[-1])
        parts.append(f"{name}={float(value):.0e}" if name == "lr" else f"{name}={value}")
    return " ".join(parts)


def format_summary(headline: dict, html: Path, minutes: float, size: DemoSize) -> str:
    """The plain-language end of the demo's output."""

    def pct(v):
        return f"{100 * v:.0f}%"

    def ci(c):
        return f"[{100 * c[0]:.0f}-{100 * c[1]:.0f}%]"

    lines = [
        f"kdlab demo: done in {minutes:.1f} min. Held-out synthetic problems (n={headline['n']} each, 95% Wilson CIs); "
        "settings chosen on the validation split:",
        f"  teacher (SmolLM2-135M + LoRA SFT on its own problems): {pct(headline['teacher'])} {ci(headline['teacher_ci'])}",
    ]
    better = worse = total = 0
    for student, info in headline["students"].items():
        lines.append(f"  {student} ({info['size_b'] * 1000:.0f}M params):")
        for entry in info["runs"]:
            text = (
                f"    seed {entry['seed']}  {entry['label']:<12} {_short(entry['selected']):<16} "
                f"{pct(entry['accuracy']):>4} {ci(entry['ci']):<10}"
            )
            if "diff" in entry:
                total += 1
                better += entry["pvalue_holm"] < 0.05 and entry["diff"] > 0
                worse += entry["pvalue_holm"] < 0.05 and entry["diff"] < 0
                text += (
                    f" vs SFT {100 * entry['diff']:+.0f} pp [{100 * entry['diff_ci'][0]:+.0f}, {100 * entry['diff_ci'][1]:+.0f}]"
                    f"  McNemar p={entry['pvalue']:.2g} (Holm {entry['pvalue_holm']:.2g})"
                )
            if entry["agreement"] is not None:
                text += f"  agreement {entry['agreement']:.2f}"
            if entry["bleu"] is not None:
                text += f"  BLEU {entry['bleu']:.0f}"
            lines.append(text)
    lines.append(
        f"  In plain words: of {total} KD-vs-SFT comparisons (same student, seed and problems), {better} "
        f"{'was' if better == 1 else 'were'} significantly better and {worse} significantly worse after Holm "
        "correction over all of them (exact McNemar); the report has seed means and the validation curves."
    )
    if size is QUICK:
        lines.append(
            "  (--quick: a few optimizer steps on a few examples; the numbers show the pipeline, not a finding.)"
        )
    used = ", ".join(f"{name} x {count}" for name, count in headline.get("backends", {}).items())
    lines.append(f"  Generation backend of the evaluations (--backend auto): {used or 'none recorded'}")
    lines.append(f"  Report: {html}")
    return "\n".join(lines)
