"""Expand a study spec into a plan: the runs of the grid, their folders, their dependencies and their cost.

Runs ("nodes"), their kinds and folders: :mod:`kdlab.study.kinds`.

With ``tuning`` in the spec, each student run is trained once per candidate setting (run folders tagged with the
setting, e.g. ``.lr0.0003``), each candidate is scored on the validation split, and the select node's choice is the
run that gets test evaluation and fidelity. Kinds are ordered training, validation, selection, test evaluation, so
the runner reads no test data before every selection is made.

``<h>`` is the first 8 hex digits of the SHA-1 of the run's resolved parameters (its config and its inputs'
folders): changing any setting makes a new folder, so a study never mixes results of different configs, and
re-running an unchanged spec finds its finished runs. Each node belongs to a shard group (the training run it
evaluates, or itself), so ``--shard K/N`` keeps a run and its evaluation on the same machine.

Cost: floating-point operations estimated from the parameter counts and token counts (training ``6 P T`` per
epoch for full fine-tuning, ``4 P T`` for LoRA, teacher forward passes ``2 P T``, generation ``2 P`` per prompt
and generated token, counted 5x because decoding is memory-bound), turned into time with the spec's ``cost.tflops`` (effective, not peak, throughput).
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

from kdlab.errors import KdlabError
from kdlab.study.kinds import KIND_DIRS, KIND_ORDER
from kdlab.study.runmeta import RunMeta
from kdlab.study.sizes import data_size, model_params, task_size
from kdlab.study.spec import Method, StudySpec, flatten_sections

GENERATION_INEFFICIENCY = 5.0  # token-by-token decoding is memory-bound: count its FLOPs 5x against cost.tflops
STUDY_PREFIX = "study:"  # parameter values that are folders inside the study


@dataclass
class Node:
    """One run of the study: ``params`` say what to do (study-relative paths are ``study:`` prefixed)."""

    id: str
    kind: str
    params: dict
    deps: tuple[str, ...] = ()
    meta: RunMeta = field(default_factory=RunMeta)
    group: str = ""
    flops: float = 0.0

    def folder(self, study_dir: Path) -> Path:
        return Path(study_dir) / self.id

    def shard(self, count: int) -> int:
        """Deterministic shard (0-based) of this node's group among ``count`` shards."""
        return zlib.crc32((self.group or self.id).encode()) % count


def study_path(node_id: str, *parts: str) -> str:
    return STUDY_PREFIX + "/".join((node_id,) + parts)


def resolve(value, study_dir: Path):
    """A parameter value with ``study:`` folders turned into real paths."""
    if isinstance(value, str) and value.startswith(STUDY_PREFIX):
        return str(Path(study_dir) / value[len(STUDY_PREFIX) :])
    return value


def _node(
    kind: str,
    slug: str,
    params: dict,
    deps=(),
    meta: RunMeta | None = None,
    group: str | None = None,
    flops: float = 0.0,
) -> Node:
    digest = hashlib.sha1(json.dumps({"kind": kind, **params}, sort_keys=True, default=str).encode()).hexdigest()[:8]
    node_id = f"{KIND_DIRS[kind]}/{slug}-{digest}"
    return Node(node_id, kind, params, tuple(deps), meta or RunMeta(), group or node_id, flops)


# ---------------------------------------------------------------- the plan


@dataclass
class Plan:
    spec: StudySpec
    nodes: list[Node]

    def by_id(self) -> dict[str, Node]:
        return {node.id: node for node in self.nodes}

    def shard(self, index: int, count: int) -> list[Node]:
        return [node for node in self.nodes if node.shard(count) == index]

    def seconds(self, node: Node) -> float:
        return node.flops / (float(self.spec.cost["tflops"]) * 1e12)


class _Builder:
    def __init__(self, spec: StudySpec):
        self.spec = spec
        self.nodes: dict[str, Node] = {}

    def add(self, node: Node) -> Node:
        self.nodes.setdefault(node.id, node)
        return self.nodes[node.id]

    def cache_temperatures(self) -> list[float]:
        """Every temperature a KD run of the study uses (and 1): the cache stores their exact tail mass."""
        spec = self.spec
        used = {1.0, *spec.temperatures, *(t for m in spec.methods.values() for t in (m.temperatures or []))}
        if spec.ablations.temperature is not None:
            used.add(spec.ablations.temperature)
        return sorted(float(t) for t in used)

    # models ---------------------------------------------------------
    def model(self, name: str) -> tuple[str, tuple[str, ...]]:
        """(loadable spec or study folder, dependencies) of a named model."""
        entry = self.spec.models[name]
        if entry.spec is not None:
            return entry.spec, ()
        parent = self.spec.models[entry.prune_from].spec
        node = self.add(
            _node(
                "prune", name, {"model": parent, "keep_layers": entry.keep_layers}, meta=RunMeta(model=name), flops=0.0
            )
        )
        return study_path(node.id), (node.id,)

    def trained(self, run: Node, base_model: str) -> tuple[str, str | None]:
        """(model, adapter) to load the result of training run ``run`` (of a select node: of its chosen run)."""
        if run.kind == "select":
            final, lora = study_path(run.id, "selected", "final"), run.params["lora"]
        else:
            final, lora = study_path(run.id, "final"), run.params["flags"].get("lora.enabled", True)
        return (base_model, final) if lora else (final, None)

    def train_data(self, domain, teacher: bool = False) -> tuple[str, tuple[str, ...]]:
        """(training data, dependencies) of the students (or of the teacher): the domain's file, or with tuning that
        file without the validation split's questions."""
        if self.spec.tuning is None:
            return (domain.teacher_train or domain.train) if teacher else domain.train, ()
        node = self.split(domain)
        return study_path(node.id, "teacher.json" if teacher else "train.json"), (node.id,)

    def split(self, domain) -> Node:
        """The validation split of a domain (kdlab.data.split): ``train.json`` and ``<task folder>/test.json``."""
        tuning = self.spec.tuning
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
        return self.add(_node("split", domain.name, params, meta=RunMeta(domain=domain.name, task=task)))

    # training runs ---------------------------------------------------
    def train_flops(self, params: float, domain, sections: dict, lora: bool, data: str | None = None) -> float:
        examples, tokens = data_size(data or domain.train, domain.examples)
        train = sections.get("train", {})
        epochs = float(train.get("epochs", 1.0))
        if train.get("max_steps"):
            batch = int(train.get("batch_size", 8)) * int(train.get("grad_accum", 1))
            epochs = train["max_steps"] * batch / max(examples, 1)
        return (4.0 if lora else 6.0) * params * examples * tokens * epochs

    def training_flags(self, sections: dict, seed: int | None) -> dict:
        flags = flatten_sections(sections)
        flags.setdefault("lora.enabled", True)
        if seed is not None:
            flags["train.seed"] = seed
        return flags

    def teacher_sft(self, teacher: str, domain) -> Node:
        model, deps = self.model(teacher)
        teacher_sections = merge_sections(self.spec.teacher_training, domain.training)
        flags = self.training_flags(teacher_sections, None)
        data, data_deps = self.train_data(domain, teacher=True)
        deps += data_deps
        params = {"model": model, "data": data, "flags": flags}
        flops = self.train_flops(
            model_params(self.spec, teacher), domain, teacher_sections, flags["lora.enabled"], domain.teacher_train
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
        return self.add(_node("teacher-sft", f"{teacher}.{domain.name}", params, deps, meta, flops=flops))

    def teacher_model(self, teacher: str, domain, base: bool) -> tuple[str, str | None, tuple[str, ...]]:
        model, deps = self.model(teacher)
        if base:
            return model, None, deps
        run = self.teacher_sft(teacher, domain)
        trained_model, adapter = self.trained(run, model)
        return trained_model, adapter, deps + (run.id,)

    def student_sft(self, student: str, domain, seed: int, overrides: dict | None = None) -> Node:
        model, deps = self.model(student)
        student_sections = merge_sections(self.spec.student_training, domain.training)
        flags = {**self.training_flags(student_sections, seed), **(overrides or {})}
        data, data_deps = self.train_data(domain)
        deps += data_deps
        params = {"model": model, "data": data, "flags": flags}
        flops = self.train_flops(model_params(self.spec, student), domain, student_sections, flags["lora.enabled"])
        meta = RunMeta(role="student-sft", student=student, domain=domain.name, method="sft", loss="sft", seed=seed)
        return self.add(
            _node(
                "student-sft",
                f"{student}.{domain.name}.s{seed}" + setting_tag(overrides),
                params,
                deps,
                meta,
                flops=flops,
            )
        )

    def answers(self, teacher: str, domain, base: bool, method: Method) -> Node:
        t_model, t_adapter, deps = self.teacher_model(teacher, domain, base)
        settings = {
            "max_new_tokens": int(method.kd.get("max_new_tokens", 128)),
            "batch_size": int(method.kd.get("generation_batch_size", 16)),
            "max_length": int(
                merge_sections(self.spec.student_training, domain.training).get("train", {}).get("max_length", 256)
            ),
        }
        data, data_deps = self.train_data(domain)
        deps += data_deps
        params = {"teacher": t_model, "teacher_adapter": t_adapter, "data": data, **settings}
        examples, tokens = data_size(domain.train, domain.examples)
        flops = (
            2
            * model_params(self.spec, teacher)
            * examples
            * (tokens + settings["max_new_tokens"])
            * GENERATION_INEFFICIENCY
        )
        meta = RunMeta(teacher=teacher, domain=domain.name, teacher_kind="base" if base else "finetuned")
        slug = f"{teacher}.{domain.name}" + (".base" if base else "")
        return self.add(_node("answers", slug, params, deps, meta, flops=flops))

    def cache(self, teacher: str, domain, base: bool) -> Node:
        t_model, t_adapter, deps = self.teacher_model(teacher, domain, base)
        data, data_deps = self.train_data(domain)
        deps += data_deps
        flags = {
            "teacher": t_model,
            "teacher_adapter": t_adapter,
            "model": self.spec.models[teacher].spec,
            "data": data,
            "kd.cache_k": int(self.spec.teacher_cache["k"]),
            "kd.cache_temperatures": self.cache_temperatures(),
            **{
                key: value
                for key, value in flatten_sections(merge_sections(self.spec.student_training, domain.training)).items()
                if key in ("train.max_length", "train.on_long", "train.precision")
            },
        }
        examples, tokens = data_size(domain.train, domain.examples)
        meta = RunMeta(teacher=teacher, domain=domain.name, teacher_kind="base" if base else "finetuned")
        slug = f"{teacher}.{domain.name}" + (".base" if base else "")
        return self.add(
            _node(
                "cache",
                slug,
                {"flags": flags},
                deps,
                meta,
                flops=2 * model_params(self.spec, teacher) * examples * tokens,
            )
        )

    def kd(
        self,
        teacher: str,
        student: str,
        domain,
        method: Method,
        temperature: float | None,
        noise: float,
        base: bool,
        seed: int,
        overrides: dict | None = None,
    ) -> Node:
        s_model, deps = self.model(student)
        data, data_deps = self.train_data(domain)
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
        )
        slug = kd_slug(teacher, student, domain.name, method.name, temperature, noise, base, seed) + setting_tag(
            overrides
        )
        student_sections = merge_sections(self.spec.student_training, domain.training)
        flags = {**self.training_flags(student_sections, seed), **(overrides or {})}
        s_params = model_params(self.spec, student)
        flops = self.train_flops(s_params, domain, student_sections, flags["lora.enabled"])
        if method.loss == "seqkd":
            answers = self.answers(teacher, domain, base, method)
            params = {"kind": "sft", "model": s_model, "data": study_path(answers.id, "train.json"), "flags": flags}
            return self.add(_node("kd", slug, params, deps + (answers.id,), meta, flops=flops))
        t_model, t_adapter, t_deps = self.teacher_model(teacher, domain, base)
        flags.update({f"kd.{key}": value for key, value in method.kd.items()})
        flags.update({"kd.temperature": temperature, "kd.teacher_noise": noise})
        params = {
            "kind": "distill",
            "model": s_model,
            "teacher": t_model,
            "teacher_adapter": t_adapter,
            "data": data,
            "flags": flags,
        }
        deps = deps + t_deps
        use_cache = self.spec.teacher_cache["enabled"] and method.kd.get("answer_target", "gold") != "teacher"
        if method.kd.get("answer_target", "gold") == "teacher":  # the teacher's own answers, generated once per teacher
            answers = self.answers(teacher, domain, base, method)
            params["teacher_answers"] = study_path(answers.id, "train.json")
            deps += (answers.id,)
        if use_cache:
            cache = self.cache(teacher, domain, base)
            params["teacher_cache"] = study_path(cache.id)
            flags.update(
                {
                    "kd.cache_k": int(self.spec.teacher_cache["k"]),
                    "kd.cache_tail": self.spec.teacher_cache["tail"],
                    "kd.cache_temperatures": self.cache_temperatures(),
                }
            )
            deps += (cache.id,)
        examples, tokens = data_size(domain.train, domain.examples)
        if not use_cache or float(method.kd.get("lmbda", 0.0)) > 0:
            flops += 2 * model_params(self.spec, teacher) * examples * tokens * float(flags.get("train.epochs", 1.0))
        return self.add(_node("kd", slug, params, deps, meta, flops=flops))

    # evaluation -------------------------------------------------------
    def evaluation(
        self, run: Node | None, model: str, adapter: str | None, domain, meta: RunMeta, name: str, deps=()
    ) -> Node:
        settings = dict(self.spec.evaluation)
        params = {
            "model": model,
            "adapter": adapter,
            "tasks": list(domain.tasks),
            "data_dir": domain.data_dir,
            **settings,
        }
        size = model_params(self.spec, meta.student)
        budget = settings["max_new_tokens"] or 256
        flops = GENERATION_INEFFICIENCY * sum(
            2 * size * task_size(task, domain.data_dir, settings["limit"]) * (100 + budget / 2) for task in domain.tasks
        )
        run_deps = (run.id,) if run is not None else ()
        group = run.group if run is not None else None
        return self.add(
            _node(
                "eval",
                name,
                params,
                tuple(deps) + run_deps,
                replace(meta, run=run.id if run else None),
                group=group,
                flops=flops,
            )
        )

    def validation(self, run: Node, model: str, adapter: str | None, domain) -> Node:
        """A candidate run scored on its domain's validation split (all of it: ``evaluation.limit`` is for tests)."""
        split = self.split(domain)
        settings = {**self.spec.evaluation, "limit": None}
        params = {
            "model": model,
            "adapter": adapter,
            "tasks": [split.params["task"]],
            "data_dir": study_path(split.id),
            **settings,
        }
        size = model_params(self.spec, run.meta.student)
        flops = (
            GENERATION_INEFFICIENCY * 2 * size * self.spec.tuning.n * (100 + (settings["max_new_tokens"] or 256) / 2)
        )
        return self.add(
            _node(
                "val-eval",
                run_name(run),
                params,
                (run.id, split.id),
                replace(run.meta, run=run.id),
                group=run.group,
                flops=flops,
            )
        )

    def tuned(self, make, slug: str, s_model: str, domain, temperatures: list) -> Node:
        """The training run a study carries into test evaluation.

        Without tuning: ``make({}, temperatures[0])``. With it: one run ``make(overrides, temperature)`` per candidate
        setting and temperature, each scored on the validation split, and a select node over them (the carried run).
        """
        tuning = self.spec.tuning
        if tuning is None:
            return make({}, temperatures[0])
        candidates = []
        for overrides in tuning.candidates():
            for temperature in temperatures:
                run = make(overrides, temperature)
                settings = {**overrides, **({"kd.temperature": temperature} if len(temperatures) > 1 else {})}
                candidates.append((run, self.validation(run, *self.trained(run, s_model), domain), settings))
        first = candidates[0][0]
        meta = first.meta
        if len(temperatures) > 1:
            meta = replace(meta, temperature=None)  # selected per run: see the selection
        params = {
            "candidates": [
                {"run": study_path(run.id), "eval": study_path(val.id), "settings": settings}
                for run, val, settings in candidates
            ],
            "task": candidates[0][1].params["tasks"][0],
            "lora": first.params["flags"].get("lora.enabled", True),
        }
        return self.add(
            _node("select", f"{KIND_DIRS[first.kind]}.{slug}", params, tuple(val.id for _, val, _ in candidates), meta)
        )

    def temperature_groups(self, temperatures: list) -> list[list]:
        """Temperatures selected together: all at once under ``tuning.temperature: validation``, else one by one."""
        if self.spec.tuning is not None and self.spec.tuning.temperature == "validation" and len(temperatures) > 1:
            return [list(temperatures)]
        return [[temperature] for temperature in temperatures]

    def fidelity(
        self, student_eval: Node, teacher_eval: Node, teacher_load: tuple, student_load: tuple, run: Node
    ) -> Node:
        settings = self.spec.fidelity
        params = {
            "teacher_eval": study_path(teacher_eval.id),
            "student_eval": study_path(student_eval.id),
            "embeddings": bool(settings["embeddings"]),
        }
        flops = 0.0
        if settings["token_kl"]:
            params.update(
                {
                    "teacher_model": teacher_load[0],
                    "teacher_adapter": teacher_load[1],
                    "student_model": student_load[0],
                    "student_adapter": student_load[1],
                }
            )
            flops = student_eval.flops * 0.3
        return self.add(
            _node(
                "fidelity",
                run_name(student_eval),
                params,
                (student_eval.id, teacher_eval.id),
                student_eval.meta,
                group=run.group,
                flops=flops,
            )
        )


def build_plan(spec: StudySpec) -> Plan:
    """Every run of the study, dependencies first."""
    b = _Builder(spec)
    ablation = spec.ablations
    for domain in spec.domains.values():
        for teacher in spec.teachers:
            t_model, _ = b.model(teacher)
            teacher_run = b.teacher_sft(teacher, domain)
            teacher_load = b.trained(teacher_run, t_model)
            teacher_eval = b.evaluation(
                teacher_run, *teacher_load, domain, teacher_run.meta, f"{teacher}.{domain.name}"
            )
            evals = {False: (teacher_eval, teacher_load)}
            if ablation.base_teacher:
                base_meta = replace(teacher_run.meta, role="base-teacher", teacher_kind="base")
                evals[True] = (
                    b.evaluation(
                        None,
                        t_model,
                        None,
                        domain,
                        base_meta,
                        f"{teacher}.{domain.name}.base",
                        deps=b.model(teacher)[1],
                    ),
                    (t_model, None),
                )
            for student in spec.students:
                if not distils_into(spec, teacher, student):
                    continue
                s_model, _ = b.model(student)
                for seed in spec.seeds:
                    sft = b.tuned(
                        lambda o, t: b.student_sft(student, domain, seed, o),
                        f"{student}.{domain.name}.s{seed}",
                        s_model,
                        domain,
                        [None],
                    )
                    _evaluate_student(b, sft, s_model, domain, evals[False], teacher)
                    for method in spec.methods.values():
                        temperatures = method.temperatures or spec.temperatures if method.uses_temperature else [None]
                        for group in b.temperature_groups(temperatures):
                            run = b.tuned(
                                lambda o, t: b.kd(teacher, student, domain, method, t, 0.0, False, seed, o),
                                kd_slug(
                                    teacher,
                                    student,
                                    domain.name,
                                    method.name,
                                    group[0] if len(group) == 1 else None,
                                    0.0,
                                    False,
                                    seed,
                                ),
                                s_model,
                                domain,
                                group,
                            )
                            _evaluate_student(b, run, s_model, domain, evals[False], teacher)
                    if student not in ablation.students or seed not in ablation.seeds:
                        continue
                    for name in ablation.methods:
                        method = spec.methods[name]
                        variants = [(noise, False) for noise in ablation.teacher_noise] + (
                            [(0.0, True)] if ablation.base_teacher else []
                        )
                        for noise, base in variants:
                            run = b.tuned(
                                lambda o, t: b.kd(teacher, student, domain, method, t, noise, base, seed, o),
                                kd_slug(
                                    teacher, student, domain.name, method.name, ablation.temperature, noise, base, seed
                                ),
                                s_model,
                                domain,
                                [ablation.temperature],
                            )
                            _evaluate_student(b, run, s_model, domain, evals[base], teacher)
    nodes = list(b.nodes.values())
    order = {kind: i for i, kind in enumerate(KIND_ORDER)}
    nodes.sort(key=lambda node: order[node.kind])  # stable: dependencies come first within the grid order
    return Plan(spec, _topological(nodes))


def merge_sections(base: dict, overlay: dict) -> dict:
    """Run-config sections ``base`` with ``overlay``'s settings on top (``{"train": {"epochs": 3}}``)."""
    merged = {section: dict(values) for section, values in base.items()}
    for section, values in overlay.items():
        merged.setdefault(section, {}).update(values)
    return merged


def distils_into(spec: StudySpec, teacher: str, student: str) -> bool:
    """Whether the grid has (teacher, student) KD runs: never a model into itself; with ``pairs: smaller`` (default)
    only into students with fewer parameters than the teacher."""
    if teacher == student:
        return False
    return spec.pairs == "all" or model_params(spec, student) < model_params(spec, teacher)


def run_name(node: Node) -> str:
    """A node's folder name without its kind folder and hash: ``kd/a.b.fkl.s0-1a2b3c4d`` -> ``a.b.fkl.s0``."""
    return node.id.split("/", 1)[1].rsplit("-", 1)[0]


def kd_slug(
    teacher: str, student: str, domain: str, method: str, temperature: float | None, noise: float, base: bool, seed: int
) -> str:
    """The readable part of a KD run's folder name."""
    return ".".join(
        [teacher, student, domain, method]
        + ([f"t{temperature:g}"] if temperature is not None else [])
        + ([f"noise{noise:g}"] if noise else [])
        + (["base"] if base else [])
        + [f"s{seed}"]
    )


def setting_tag(overrides: dict | None) -> str:
    """A candidate's tuned settings in its folder name: ``{"train.lr": 3e-4}`` -> ``.lr0.0003``."""

    def text(value) -> str:
        return f"{value:g}" if isinstance(value, float) else str(value)

    return "".join(f".{key.split('.', 1)[1]}{text(value)}" for key, value in (overrides or {}).items())


def _evaluate_student(b: _Builder, run: Node, s_model: str, domain, teacher_eval: tuple, teacher: str) -> None:
    load = b.trained(run, s_model)
    meta = replace(run.meta, teacher=run.meta.teacher or teacher)
    evaluation = b.evaluation(run, *load, domain, meta, run_name(run))
    if b.spec.fidelity["enabled"]:
        b.fidelity(evaluation, teacher_eval[0], teacher_eval[1], load, run)


def _topological(nodes: list[Node]) -> list[Node]:
    """Nodes ordered so that every dependency comes before its dependents (kind order kept where possible)."""
    by_id = {node.id: node for node in nodes}
    done: set[str] = set()
    ordered: list[Node] = []

    def visit(node: Node, path: tuple = ()) -> None:
        if node.id in done:
            return
        if node.id in path:
            raise KdlabError(f"study plan: dependency cycle through {node.id}")  # pragma: no cover
        for dep in node.deps:
            visit(by_id[dep], path + (node.id,))
        done.add(node.id)
        ordered.append(node)

    for node in nodes:
        visit(node)
    return ordered
