"""The nodes of a plan under construction (:class:`PlanNodes`) and the training runs among them, with the models and
data they need: pruned students, validation splits, teacher and student SFT, the teacher's answers (SeqKD data), the
teacher signal cache, and the KD runs. :mod:`kdlab.study.plan` walks the grid and adds the runs that evaluate them.

A run's folder is ``<kind folder>/<slug>-<h>``: ``<h>`` is the first 8 hex digits of the SHA-1 of the run's kind and
resolved parameters (its config and its inputs' folders). Changing any setting makes a new folder, so a study never
mixes results of different configs, and re-running an unchanged spec finds its finished runs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from kdlab.losses.cross_tokenizer import CROSS_TOKENIZER_LOSSES
from kdlab.study.cost import answers_generation, forward_flops, model_params, train_flops
from kdlab.study.kinds import KINDS
from kdlab.study.nodes import SELECTED, Node, kd_slug, setting_tag, study_path
from kdlab.study.runmeta import RunMeta
from kdlab.study.spec import Method, StudySpec, flatten_sections
from kdlab.study.spec.values import merge_sections

#: node settings added after study folders existed, left out of the folder hash at these values (their default), so
#: that a study planned before them keeps its folder names: the generation backend (``auto``).
HASH_NEUTRAL = {"backend": "auto"}


@dataclass
class PlanNodes:
    """A plan under construction: its spec and its nodes by id, one per folder (asking twice for the same run returns
    the first)."""

    spec: StudySpec
    nodes: dict[str, Node] = field(default_factory=dict)

    def add(
        self,
        kind: str,
        slug: str,
        params: dict,
        deps=(),
        meta: RunMeta | None = None,
        group: str | None = None,
        flops: float = 0.0,
        read_bytes: float = 0.0,
    ) -> Node:
        """The node in folder ``<kind folder>/<slug>-<h>`` (``<h>`` the hash of its kind and params, less the
        settings added later at their default: :data:`HASH_NEUTRAL`); its own shard group by default."""
        hashed = {key: value for key, value in params.items() if HASH_NEUTRAL.get(key, object()) != value}
        digest = hashlib.sha1(json.dumps({"kind": kind, **hashed}, sort_keys=True, default=str).encode()).hexdigest()
        node_id = f"{KINDS[kind].folder}/{slug}-{digest[:8]}"
        node = Node(node_id, kind, params, tuple(deps), meta or RunMeta(), group or node_id, flops, read_bytes)
        return self.nodes.setdefault(node.id, node)


# models and data -------------------------------------------------------------------------------------------------
def model(b: PlanNodes, name: str) -> tuple[str, tuple[str, ...]]:
    """(loadable spec or study folder, dependencies) of a named model."""
    entry = b.spec.models[name]
    if entry.spec is not None:
        return entry.spec, ()
    parent = b.spec.models[entry.prune_from].spec
    params = {"model": parent, "keep_layers": entry.keep_layers}
    node = b.add("prune", name, params, meta=RunMeta(model=name), flops=0.0)
    return study_path(node.id), (node.id,)


def trained(run: Node, base_model: str) -> tuple[str, str | None]:
    """(model, adapter) to load the result of training run ``run`` (of a select node: of its chosen run)."""
    if run.kind == "select":
        final, lora = study_path(run.id, SELECTED, "final"), run.params["lora"]
    else:
        final, lora = study_path(run.id, "final"), run.params["flags"].get("lora.enabled", True)
    return (base_model, final) if lora else (final, None)


def train_data(b: PlanNodes, domain, teacher: bool = False) -> tuple[str, tuple[str, ...]]:
    """(training data, dependencies) of the students (or of the teacher): the domain's file, or with tuning that file
    without the validation split's questions."""
    if b.spec.tuning is None:
        return (domain.teacher_train or domain.train) if teacher else domain.train, ()
    node = split(b, domain)
    return study_path(node.id, "teacher.json" if teacher else "train.json"), (node.id,)


def split(b: PlanNodes, domain) -> Node:
    """The validation split of a domain (kdlab.data.split): ``train.json`` and ``<task folder>/test.json``."""
    tuning = b.spec.tuning
    task = tuning.task or domain.tasks[0]
    params = {
        "train": domain.train,
        "n": tuning.n,
        "seed": tuning.seed,
        "file": tuning.file,
        "task": task,
        "test_tasks": list(domain.tasks),
        "test_dir": domain.data_dir,
        "teacher_train": domain.teacher_train,
    }
    return b.add("split", domain.name, params, meta=RunMeta(domain=domain.name, task=task))


# training runs ---------------------------------------------------------------------------------------------------
def training_flags(sections: dict, seed: int | None) -> dict:
    flags = flatten_sections(sections)
    flags.setdefault("lora.enabled", True)
    if seed is not None:
        flags["train.seed"] = seed
    return flags


def teacher_sft(b: PlanNodes, teacher: str, domain) -> Node:
    t_model, deps = model(b, teacher)
    teacher_sections = merge_sections(b.spec.teacher_training, domain.training)
    flags = training_flags(teacher_sections, None)
    data, data_deps = train_data(b, domain, teacher=True)
    deps += data_deps
    params = {"model": t_model, "data": data, "flags": flags}
    flops = train_flops(
        model_params(b.spec, teacher), domain, teacher_sections, flags["lora.enabled"], domain.teacher_train
    )
    meta = RunMeta(
        role="teacher",
        teacher=teacher,
        student=teacher,
        domain=domain.name,
        method="sft",
        loss="sft",
        teacher_kind="finetuned",
        seed=flags.get("train.seed", 0),
    )
    return b.add("teacher-sft", f"{teacher}.{domain.name}", params, deps, meta, flops=flops)


def teacher_model(b: PlanNodes, teacher: str, domain, base: bool) -> tuple[str, str | None, tuple[str, ...]]:
    """(model, adapter, dependencies) of the base teacher or of its SFT on the domain."""
    t_model, deps = model(b, teacher)
    if base:
        return t_model, None, deps
    run = teacher_sft(b, teacher, domain)
    trained_model, adapter = trained(run, t_model)
    return trained_model, adapter, deps + (run.id,)


def student_sections(b: PlanNodes, student: str, domain, method: Method | None = None) -> dict:
    """The run-config sections of a student run: the study's student settings, then the domain's, the student
    model's (``models.NAME.student_training``) and the method's own (``methods.NAME.training``: its stage budget)."""
    sections = merge_sections(b.spec.student_training, domain.training)
    sections = merge_sections(sections, b.spec.models[student].student_training)
    return merge_sections(sections, method.training) if method is not None else sections


def student_sft(b: PlanNodes, student: str, domain, seed: int, overrides: dict | None = None) -> Node:
    s_model, deps = model(b, student)
    sections = student_sections(b, student, domain)
    flags = {**training_flags(sections, seed), **(overrides or {})}
    data, data_deps = train_data(b, domain)
    deps += data_deps
    params = {"model": s_model, "data": data, "flags": flags}
    flops = train_flops(model_params(b.spec, student), domain, sections, flags["lora.enabled"])
    meta = RunMeta(role="student-sft", student=student, domain=domain.name, method="sft", loss="sft", seed=seed)
    slug = f"{student}.{domain.name}.s{seed}" + setting_tag(overrides)
    return b.add("student-sft", slug, params, deps, meta, flops=flops)


def start_from(init: Node | None, s_model: str, flags: dict) -> tuple[str, tuple[str, ...]]:
    """(model, dependencies) a student run starts from: the student model, or the result of the earlier stage
    ``init`` (a training run or the select node carrying one); a LoRA stage sets ``flags["adapter"]`` to its adapter,
    which the run keeps training."""
    if init is None:
        return s_model, ()
    start, adapter = trained(init, s_model)
    if adapter is not None:
        flags["adapter"] = adapter
    return start, (init.id,)


def answers(b: PlanNodes, teacher: str, domain, base: bool, method: Method) -> Node:
    """The teacher's greedy answers to the training prompts (SeqKD data)."""
    t_model, t_adapter, deps = teacher_model(b, teacher, domain, base)
    student_sections = merge_sections(b.spec.student_training, domain.training)  # the teacher's answers fit these
    settings = {
        "max_new_tokens": int(method.kd.get("max_new_tokens", 128)),
        "batch_size": int(method.kd.get("generation_batch_size", 16)),
        "backend": method.kd.get("generation_backend", "auto"),
        "max_length": int(student_sections.get("train", {}).get("max_length", 256)),
    }
    data, data_deps = train_data(b, domain)
    deps += data_deps
    params = {"teacher": t_model, "teacher_adapter": t_adapter, "data": data, **settings}
    cost = answers_generation(b.spec, teacher, domain, settings)
    meta = RunMeta(teacher=teacher, domain=domain.name, teacher_kind="base" if base else "finetuned")
    slug = f"{teacher}.{domain.name}" + (".base" if base else "")
    return b.add("answers", slug, params, deps, meta, flops=cost.flops(), read_bytes=cost.bytes())


def cache_temperatures(spec: StudySpec) -> list[float]:
    """Every temperature a KD run of the study uses (and 1): the cache stores their exact tail mass."""
    used = {1.0, *spec.temperatures, *(t for m in spec.methods.values() for t in (m.temperatures or []))}
    if spec.ablations.temperature is not None:
        used.add(spec.ablations.temperature)
    return sorted(float(t) for t in used)


def cache(b: PlanNodes, teacher: str, domain, base: bool) -> Node:
    """The teacher signal cache (top-k log-probs) of the domain's training data, shared by every KD run using it."""
    t_model, t_adapter, deps = teacher_model(b, teacher, domain, base)
    data, data_deps = train_data(b, domain)
    deps += data_deps
    student_flags = flatten_sections(merge_sections(b.spec.student_training, domain.training))
    flags = {
        "teacher": t_model,
        "teacher_adapter": t_adapter,
        "model": b.spec.models[teacher].spec,
        "data": data,
        "kd.cache_k": int(b.spec.teacher_cache["k"]),
        "kd.cache_temperatures": cache_temperatures(b.spec),
        **{
            key: value
            for key, value in student_flags.items()
            if key in ("train.max_length", "train.on_long", "train.precision")
        },
    }
    meta = RunMeta(teacher=teacher, domain=domain.name, teacher_kind="base" if base else "finetuned")
    slug = f"{teacher}.{domain.name}" + (".base" if base else "")
    flops = forward_flops(model_params(b.spec, teacher), domain)
    return b.add("cache", slug, {"flags": flags}, deps, meta, flops=flops)


def kd(
    b: PlanNodes,
    teacher: str,
    student: str,
    domain,
    method: Method,
    temperature: float | None,
    noise: float,
    base: bool,
    seed: int,
    overrides: dict | None = None,
    init: Node | None = None,
    chain: str | None = None,
) -> Node:
    """One KD run: SeqKD (SFT on the teacher's answers), SFT continued (a later stage with loss ``sft``), or
    token-level distillation from the live teacher or its signal cache; from the student model, or with ``init``
    from an earlier stage's result (``chain``: the stages before, ``sft>fkl``)."""
    s_model, deps = model(b, student)
    data, data_deps = train_data(b, domain)
    deps += data_deps
    meta = RunMeta(
        role="student-kd",
        teacher=teacher,
        student=student,
        domain=domain.name,
        method=method.name,
        loss=method.loss,
        temperature=temperature,
        noise=noise,
        seed=seed,
        teacher_kind="base" if base else "finetuned",
        init=chain,
    )
    slug = kd_slug(teacher, student, domain.name, method.name, temperature, noise, base, seed, chain)
    slug += setting_tag(overrides)
    sections = student_sections(b, student, domain, method)
    flags = {**training_flags(sections, seed), **(overrides or {})}
    start, init_deps = start_from(init, s_model, flags)
    deps += init_deps
    flops = train_flops(model_params(b.spec, student), domain, sections, flags["lora.enabled"])
    if method.loss in ("seqkd", "sft"):
        if method.loss == "seqkd":
            seqkd_data = answers(b, teacher, domain, base, method)
            data, deps = study_path(seqkd_data.id, "train.json"), deps + (seqkd_data.id,)
        params = {"kind": "sft", "model": start, "data": data, "flags": flags}
        return b.add("kd", slug, params, deps, meta, flops=flops)
    t_model, t_adapter, t_deps = teacher_model(b, teacher, domain, base)
    flags.update({f"kd.{key}": value for key, value in method.kd.items()})
    flags.update({"kd.temperature": temperature, "kd.teacher_noise": noise})
    params = {
        "kind": "distill",
        "model": start,
        "teacher": t_model,
        "teacher_adapter": t_adapter,
        "data": data,
        "flags": flags,
    }
    deps = deps + t_deps + _teacher_inputs(b, teacher, domain, base, method, params)
    if not _uses_cache(b.spec, method) or float(method.kd.get("lmbda", 0.0)) > 0:  # the teacher runs beside the student
        flops += forward_flops(model_params(b.spec, teacher), domain, float(flags.get("train.epochs", 1.0)))
    return b.add("kd", slug, params, deps, meta, flops=flops)


def _uses_cache(spec: StudySpec, method: Method) -> bool:
    """Whether a token-level KD run reads the teacher signal cache (not when it learns the teacher's own answers, nor
    with a cross-tokenizer loss: those run against the live teacher)."""
    return (
        spec.teacher_cache["enabled"]
        and method.kd.get("answer_target", "gold") != "teacher"
        and method.loss not in CROSS_TOKENIZER_LOSSES
    )


def _teacher_inputs(b: PlanNodes, teacher: str, domain, base: bool, method: Method, params: dict) -> tuple[str, ...]:
    """The teacher's answers (``kd.answer_target: teacher``, generated once per teacher) and signal cache that a
    token-level KD run reads: set in its ``params`` (the cache's settings in its flags); their node ids."""
    deps: tuple[str, ...] = ()
    if method.kd.get("answer_target", "gold") == "teacher":
        teacher_answers = answers(b, teacher, domain, base, method)
        params["teacher_answers"] = study_path(teacher_answers.id, "train.json")
        deps += (teacher_answers.id,)
    if _uses_cache(b.spec, method):
        signal = cache(b, teacher, domain, base)
        params["teacher_cache"] = study_path(signal.id)
        params["flags"].update(
            {
                "kd.cache_k": int(b.spec.teacher_cache["k"]),
                "kd.cache_tail": b.spec.teacher_cache["tail"],
                "kd.cache_temperatures": cache_temperatures(b.spec),
            }
        )
        deps += (signal.id,)
    return deps
