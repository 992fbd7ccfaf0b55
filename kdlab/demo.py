"""``kdlab demo``: a real, small and fair KD study on the embedded SmolLM2-135M, offline on a CPU, ending in a report.

The demo is a study (:mod:`kdlab.study`) whose spec it writes itself. It runs the staged recipe in which the
literature's KD wins come from (GKD, Agarwal et al. 2024; on-policy distillation after SFT): fine-tune the student
first, then distil on its own samples, and compare with more SFT at the same budget.

1. Data: synthetic arithmetic word problems with rationales (``kdlab data synth --scale small``), one step on
   single-digit numbers each: the students' set (160 problems, plus 60 more that the study holds out as its
   validation split), the teacher's own SFT set (480 other problems) and 100 disjoint held-out test problems.
   With ``--data-dir`` (LLM-Adapters layout, e.g. ``../shared/data/paper-kd-generalization/eval``) the students are
   also tested zero-shot on AddSub, SingleEq, MultiArith and SVAMP.
2. Teacher: SmolLM2-135M-Instruct, LoRA SFT on its own 480 problems (60 steps): three times the students' data,
   so it is stronger than its students by more than a shared fine-tuning. It is almost one-hot on the students'
   problems (measured in ``docs/kd-vs-sft.md`` and in the demo's regime table), which is why off-policy KD from
   the pruned student ties SFT: what it can correct is the student's *own* mistakes.
3. First stage: SmolLM2 pruned to 24 of its 30 decoder layers, full fine-tuning, SFT for 18 steps of 8 (the SFT
   baseline), three seeds.
4. Second stage (:data:`STAGE2_METHODS`), every method from the same selected SFT run of its seed, for the same
   optimizer steps on the same problems: SFT continued (the budget-matched baseline), on-policy reverse KL (every
   step on the student's own samples), GKD (JSD beta 0.5, half the steps on the student's samples) and off-policy
   forward KL.
5. Fair comparison (``tuning`` in the spec): in each stage every run is trained at each learning rate (1e-4,
   3e-4), each candidate is scored on the validation split and only the best goes on (to the next stage, or to the
   test set). The first stage is selected before the second starts; nothing is chosen on test scores.
6. Every selected model is evaluated on the held-out problems (greedy, strict extraction of "The answer is N.",
   precision ``auto``); fidelity of every student to the teacher (answer agreement, BLEU, teacher-forced token KL,
   top-1 agreement); statistics (McNemar and paired bootstrap of each second-stage method against SFT continued per
   seed, Holm, seed means) and an HTML report; the regime table (:func:`regime`): how peaked the teacher is on the
   students' data, how often the student's own samples state the right answer early and late in the second stage,
   and where the second stage's time went (sampling, teacher, student update).

The teacher's top-k signal is cached once and shared by the off-policy KD steps. Every step is a resumable run
folder: re-running the command skips what is done and resumes what was interrupted.

``--quick`` (:data:`QUICK`) runs the same pipeline on a few problems with a 4-layer student, 2 optimizer steps per
stage and one seed: it checks the pipeline, its numbers mean nothing. ``--fidelity`` (:func:`fidelity_spec`) runs the
fidelity study instead: the same teacher, student, data, first-stage budget and selection, single-stage, with SFT,
forward KL and the fidelity-aware objectives of :data:`FIDELITY_METHODS` (synthetic problems only). What does not fit
in the demo's time (a second student size, the base-teacher ablation): ``configs/studies/smollm2-staged.yaml``.
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
from kdlab.io import atomic_write_json
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
    student_steps: int  # the first stage (SFT)
    stage2_steps: int  # the second stage, the same for every method
    batch_size: int
    max_new_tokens: int  # evaluation
    sample_tokens: int  # on-policy samples (answers run ~30 tokens)
    student_layers: tuple[int, ...] = (24,)  # measured: students cut to 6 or 15 layers stay near 0% at this budget
    seeds: tuple[int, ...] = (0, 1, 2)
    lrs: tuple[float, ...] = (1e-4, 3e-4)


FULL = DemoSize(
    train=160,
    validation=60,
    teacher_train=480,
    test=100,
    transfer_limit=50,
    teacher_steps=60,
    student_steps=18,
    stage2_steps=12,
    batch_size=8,
    max_new_tokens=36,
    sample_tokens=48,
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
    stage2_steps=2,
    batch_size=4,
    max_new_tokens=32,
    sample_tokens=24,
    student_layers=(4,),
    seeds=(0,),
)
SYNTH_STEPS, SYNTH_SCALE = 1, "small"  # one operation on single-digit numbers: within reach of a pruned student
MEASURED_MINUTES = {"full": 35, "quick": 2}  # wall time on 2 CPU cores (README); update with the sizes above

#: the second stage of the staged recipe: every method starts from the student's selected SFT run (``init: sft``) and
#: trains for the same optimizer steps on the same problems (:attr:`DemoSize.stage2_steps`)
STAGE2_METHODS = {
    "sft-continued": {"loss": "sft"},  # more SFT on the gold responses: the budget-matched baseline
    "on-policy": {"preset": "on-policy"},  # reverse KL on the student's own samples, every step (lmbda 1)
    "gkd": {"preset": "gkd"},  # generalized JSD (beta 0.5), half the steps on the student's samples
    "fkl": {"loss": "fkl"},  # off-policy forward KL on the training responses (the teacher cache)
}


def _grid_words(size: DemoSize) -> str:
    layers = " or ".join(str(n) for n in size.student_layers)
    return (
        f"SmolLM2 pruned to {layers} of its 30 layers, SFT for {size.student_steps} steps of {size.batch_size}, then "
        f"{size.stage2_steps} more steps per second-stage method, {_seed_words(size)}"
    )


def _seed_words(size: DemoSize | tuple) -> str:
    seeds = size.seeds if isinstance(size, DemoSize) else size
    return {1: "one seed", 2: "two seeds", 3: "three seeds"}.get(len(seeds), f"{len(seeds)} seeds")


def help_text() -> tuple[str, str, str]:
    """(description, --quick help, --fidelity help) of ``kdlab demo --help``, written from :data:`FULL`,
    :data:`QUICK`, :data:`STAGE2_METHODS` and :data:`FIDELITY_METHODS` so they cannot drift from what the demo runs."""
    description = (
        f"The staged recipe: SFT first, then distillation on the student's own samples, against more SFT at the "
        f"same budget. Teacher: SmolLM2-135M-Instruct + LoRA SFT ({FULL.teacher_steps} steps) on its own "
        f"{FULL.teacher_train} synthetic arithmetic problems; students: {_grid_words(FULL)}; second stage from the "
        f"selected SFT run: {', '.join(STAGE2_METHODS)}; the learning rate selected on a {FULL.validation}-problem "
        f"validation split in each stage for every method; evaluation on {FULL.test} held-out problems, paired "
        "tests against SFT continued, fidelity, the regime table, HTML report. About "
        f"{MEASURED_MINUTES['full']} minutes on 2 CPU cores; --quick under {MEASURED_MINUTES['quick']}."
    )
    quick = (
        f"under {MEASURED_MINUTES['quick']} minutes, same pipeline, numbers without meaning: "
        f"{_grid_words(QUICK)}, {QUICK.train} training problems"
    )
    fidelity = (
        f"the fidelity study instead (same teacher, student, data and first-stage budget, single-stage): SFT vs "
        f"{len(FIDELITY_METHODS)} KD objectives -- forward KL (tau 1), decision-level, disagreement-weighted and "
        f"speculative KD -- with the learning rate selected on validation, {_seed_words(FULL.seeds[:2])} "
        f"({_seed_words(QUICK.seeds[:2])} with --quick); accuracy vs agreement with the teacher, paired tests against "
        "forward KL; synthetic problems only (not with --data-dir); use another --out, e.g. runs/fidelity"
    )
    return description, quick, fidelity


def demo_spec(data: Path, size: DemoSize, transfer: bool) -> dict:
    """The demo's study spec (written to ``<out>/demo-spec.yaml``): the first stage is the study's SFT baseline, the
    second :data:`STAGE2_METHODS`, each from the selected SFT run with ``size.stage2_steps`` steps."""
    students = {f"smollm2-{n}l": {"prune": {"model": "smollm2", "keep_layers": n}} for n in size.student_layers}
    train = {"batch_size": size.batch_size, "max_length": 192, "warmup_ratio": 0.1}
    layers = " and ".join(str(n) for n in size.student_layers)
    return {
        "name": "smollm2-demo",
        "description": f"The staged recipe on SmolLM2: a student pruned to {layers} layers is fine-tuned (SFT), then "
        "distilled from SmolLM2-135M-Instruct (LoRA SFT teacher on its own problems) on its own samples, against "
        "SFT continued at the same budget; learning rate selected on a validation split in each stage.",
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
        "methods": {
            name: {**method, "init": "sft", "training": {"train": {"max_steps": size.stage2_steps}}}
            for name, method in STAGE2_METHODS.items()
        },
        "temperatures": [1.0],
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
        "kd": {"max_new_tokens": size.sample_tokens},
        "teacher_cache": {"enabled": True, "k": 64, "tail": "bucket"},
        "evaluation": {
            "batch_size": 16,
            "limit": max(size.test, size.transfer_limit) if transfer else None,
            "max_new_tokens": size.max_new_tokens,
            "precision": "auto",
        },
        # agreement and BLEU; the teacher-forced token KL (two models loaded per run, ~25 s each, 7 of the demo's
        # minutes) is left to `kdlab fidelity --teacher-model ...`
        "fidelity": {"enabled": True, "token_kl": False, "embeddings": False},
        "cost": {"tflops": 0.05},
    }


#: a second, smaller student for configs/studies/smollm2-staged.yaml: (kept layers, first-stage SFT steps). Measured
#: (probe of 2026-12-04, SFT at lr 3e-4 on the demo's 160 problems, 60 fresh validation-like problems, never the test
#: set): 15 layers reach 5% after 54 steps and 30% after 150; 18 layers 10% after 54; 20 layers 23% after 54; the
#: 24-layer demo student 20% after 18. So 15 layers with a 150-step first stage is the smallest student measured off
#: the floor.
SMALL_STUDENT = (15, 150)
#: the second-stage KD method of the base-teacher ablation: the best KD method of the demo by mean validation accuracy
#: of its selected runs (never by test scores; see docs/staged-kd.md)
ABLATION_METHOD = "on-policy"


def staged_study_spec(data: Path, size: DemoSize) -> dict:
    """configs/studies/smollm2-staged.yaml: the demo's study (the same runs, so run into the demo's study folder it
    resumes the demo's finished runs) plus the smaller student of :data:`SMALL_STUDENT` with its longer first stage,
    and the task-unaware (base) teacher for :data:`ABLATION_METHOD` on the demo's student."""
    spec = demo_spec(data, size, transfer=False)
    layers, steps = SMALL_STUDENT
    small = f"smollm2-{layers}l"
    spec["models"][small] = {
        "prune": {"model": "smollm2", "keep_layers": layers},
        "student_training": {"train": {"max_steps": steps}},  # the first stage only: each method's stage sets its own
    }
    main = spec["students"][0]
    spec["students"].append(small)
    spec["ablations"] = {"base_teacher": True, "students": [main], "methods": [ABLATION_METHOD], "temperature": 1.0}
    spec.update(
        name="smollm2-staged",
        description=f"The demo's staged comparison on two student sizes ({main}: SFT {size.student_steps} steps; "
        f"{small}: SFT {steps} steps), then {size.stage2_steps} second-stage steps per method; and the base "
        f"(task-unaware) teacher for {ABLATION_METHOD} on {main}.",
    )
    return spec


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
        seeds=list(size.seeds[:2]),
        fidelity={"enabled": True, "token_kl": True, "embeddings": False},
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
    headline = {
        **summarize_demo(frame, stats),
        "regime": regime(plan, study_dir, frame),
        "backends": backends_used(study_dir),
    }
    atomic_write_json(out / "headline.json", {**headline, "minutes": minutes})
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


def regime(plan, study_dir: Path, frame) -> dict:
    """What the second stage had to work with and what it cost, from the finished study:

    - ``teacher``: the fine-tuned teacher's peakedness on the students' training problems
      (:func:`kdlab.train.teacher_regime.token_peakedness`; computed once, kept in ``<study>/regime-teacher.json``);
    - ``methods``: per second-stage method, over its selected runs (one per seed), the mean time split of training
      (seconds sampling, in the teacher's forward passes, and the rest: the student's update) and, for on-policy
      methods, the share of the student's samples that state the training problem's answer over the first and the
      last third of its on-policy steps (``on_policy_this_session`` of result.json). Both cover the session that
      finished a run: after a resume they describe its last part only.
    """
    from kdlab.study.nodes import resolve
    from kdlab.train.teacher_regime import token_peakedness

    cached = study_dir / "regime-teacher.json"
    teacher_run = next(node for node in plan.nodes if node.kind == "teacher-sft")
    data = resolve(_student_data(plan), study_dir)
    adapter = str(teacher_run.folder(study_dir) / "final")
    inputs = {"teacher": teacher_run.id, "data": data}
    if not cached.is_file() or json.loads(cached.read_text()).get("inputs") != inputs:
        atomic_write_json(cached, {**token_peakedness(teacher_run.params["model"], adapter, data), "inputs": inputs})
    methods: dict[str, dict] = {}
    for row in frame[(frame["role"] == "student-kd") & (frame["task"] == frame["task"].iloc[0])].to_dict("records"):
        result = json.loads((study_dir / row["run"] / "result.json").read_text())
        if "time_split_this_session" not in result:  # a run finished by an older kdlab: nothing measured
            continue
        entry = methods.setdefault(row["method"], {"runs": 0, "sampling": 0.0, "teacher": 0.0, "student": 0.0})
        entry["runs"] += 1
        for part, seconds in result.get("time_split_this_session", {}).items():
            entry[part] += seconds
        sampled = result.get("on_policy_this_session")
        if sampled:
            for key in ("sample_accuracy_first_third", "sample_accuracy_last_third"):
                if sampled.get(key) is not None:
                    entry.setdefault(key, []).append(sampled[key])
    for entry in methods.values():
        for part in ("sampling", "teacher", "student"):
            entry[part] /= max(entry["runs"], 1)
        for key in ("sample_accuracy_first_third", "sample_accuracy_last_third"):
            if key in entry:
                entry[key] = sum(entry[key]) / len(entry[key])
    return {"teacher": json.loads(cached.read_text()), "methods": methods}


def _student_data(plan) -> str:
    """The students' training file of the plan (``study:`` path of the validation split's ``train.json``)."""
    return next(node.params["data"] for node in plan.nodes if node.kind == "student-sft")


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
        rank = group["role"].ne("student-sft").astype(int) + group["loss"].ne("sft").astype(int)  # SFT, continued, KD
        order = group.assign(_rank=rank).sort_values(["seed", "_rank", "method"], kind="stable")
        for _, row in order.iterrows():
            entry = {
                "label": RunMeta.from_row(row).label(),
                "reference": row.get("reference") or "SFT",
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
        students[student] = {
            "size_b": float(group["student_size_b"].iloc[0]),
            "runs": runs,
            "means": _seed_means(stats.get("seeds"), student),
        }
    return {
        "n": int(teacher["n"]),
        "teacher": teacher["accuracy"],
        "teacher_ci": (teacher["ci_low"], teacher["ci_high"]),
        "students": students,
    }


def _seed_means(seeds, student: str) -> list[dict]:
    """Per run of ``student`` on the held-out task: mean accuracy over seeds with its 95% t-interval, and the mean
    difference to its reference with its t-interval (``stats["seeds"]``)."""
    if seeds is None:
        return []
    rows = seeds[(seeds["student"] == student) & (seeds["task"] == "arith")]
    means = []
    for row in rows.to_dict("records"):
        means.append(
            {
                "label": RunMeta.from_row(row).label(),
                "seeds": int(row["n_seeds"]),
                "accuracy": row["accuracy_mean"],
                "ci": (_nan_to_none(row["accuracy_ci_low"]), _nan_to_none(row["accuracy_ci_high"])),
                "gain": _nan_to_none(row.get("improvement_mean")),
                "gain_ci": (_nan_to_none(row.get("improvement_ci_low")), _nan_to_none(row.get("improvement_ci_high"))),
            }
        )
    return means


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
    lines = [
        f"kdlab demo: done in {minutes:.1f} min. Held-out synthetic problems (n={headline['n']} each, 95% Wilson CIs); "
        "settings chosen on the validation split in each stage:",
        f"  teacher (SmolLM2-135M + LoRA SFT on its own problems): {_pct(headline['teacher'])} "
        f"{_ci(headline['teacher_ci'])}",
    ]
    better = worse = total = 0
    for student, info in headline["students"].items():
        lines.append(f"  {student} ({info['size_b'] * 1000:.0f}M params):")
        for entry in info["runs"]:
            lines.append(_run_line(entry))
            if "diff" in entry:
                total += 1
                better += entry["pvalue_holm"] < 0.05 and entry["diff"] > 0
                worse += entry["pvalue_holm"] < 0.05 and entry["diff"] < 0
        if info.get("means") and len({m["seeds"] for m in info["means"]} - {1}):
            lines.append("    over seeds (mean [95% t-interval]; gain = difference to the run's reference):")
            for m in info["means"]:
                gain = "" if m["gain"] is None else f"  gain {100 * m['gain']:+.1f} pp {_signed_ci(m['gain_ci'])}"
                lines.append(f"      {m['label']:<32} {100 * m['accuracy']:.1f}% {_signed_ci(m['ci'], False)}{gain}")
    lines += _regime_lines(headline.get("regime"))
    lines.append(
        f"  In plain words: of {total} comparisons with the reference (same student, seed and problems; a KD method "
        f"against SFT continued, SFT continued against the SFT run it continued), {better} "
        f"{'was' if better == 1 else 'were'} significantly better and "
        f"{worse} significantly worse after Holm correction over all of them (exact McNemar); the report has the "
        "staged table and the validation curves."
    )
    if size is QUICK:
        lines.append(
            "  (--quick: a few optimizer steps on a few examples; the numbers show the pipeline, not a finding.)"
        )
    used = ", ".join(f"{name} x {count}" for name, count in headline.get("backends", {}).items())
    lines.append(f"  Generation backend of the evaluations (--backend auto): {used or 'none recorded'}")
    lines.append(f"  Report: {html}")
    return "\n".join(lines)


def _pct(value: float) -> str:
    return f"{100 * value:.0f}%"


def _ci(bounds: tuple) -> str:
    return f"[{100 * bounds[0]:.0f}-{100 * bounds[1]:.0f}%]"


def _signed_ci(bounds: tuple, signed: bool = True) -> str:
    if bounds[0] is None or bounds[1] is None:
        return ""
    spec = "+.1f" if signed else ".1f"
    return f"[{100 * bounds[0]:{spec}}, {100 * bounds[1]:{spec}}]"


def _run_line(entry: dict) -> str:
    """One selected run: its seed, label, chosen settings, accuracy, difference to its reference, fidelity."""
    text = (
        f"    seed {entry['seed']}  {entry['label']:<28} {_short(entry['selected']):<10} "
        f"{_pct(entry['accuracy']):>4} {_ci(entry['ci']):<10}"
    )
    if "diff" in entry:
        low, high = entry["diff_ci"]
        text += (
            f" vs {entry['reference']} {100 * entry['diff']:+.0f} pp [{100 * low:+.0f}, {100 * high:+.0f}]"
            f"  McNemar p={entry['pvalue']:.2g} (Holm {entry['pvalue_holm']:.2g})"
        )
    if entry["agreement"] is not None:
        text += f"  agreement {entry['agreement']:.2f}"
    if entry["bleu"] is not None:
        text += f"  BLEU {entry['bleu']:.0f}"
    return text


def _regime_lines(found: dict | None) -> list[str]:
    """The regime in words: the teacher's peakedness, the on-policy samples' accuracy early and late, the time split."""
    if not found:
        return []
    t = found["teacher"]
    lines = [
        f"  Regime: on the students' problems the teacher's top token is the gold one on {100 * t['argmax_is_gold']:.1f}% "
        f"of response tokens; it puts {100 * t['off_top1_t1']:.1f}% of its mass elsewhere at tau 1 "
        f"({100 * t['off_top1_t2']:.1f}% at tau 2)."
    ]
    for method, entry in found["methods"].items():
        text = (
            f"    {method}: per run {entry['sampling']:.0f} s sampling, {entry['teacher']:.0f} s teacher, "
            f"{entry['student']:.0f} s student update"
        )
        if "sample_accuracy_first_third" in entry:
            text += (
                f"; its own samples state the right answer {_pct(entry['sample_accuracy_first_third'])} of the time "
                f"early in the stage, {_pct(entry['sample_accuracy_last_third'])} late"
            )
        lines.append(text)
    return lines
