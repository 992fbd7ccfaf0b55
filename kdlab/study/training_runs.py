"""The training runs of a study plan, with the models and data they need: pruned students, validation splits, teacher
and student SFT, the teacher's answers (SeqKD data), the teacher signal cache, and the KD runs.

:class:`TrainingRuns` collects a plan's nodes as it makes them (one node per folder: asking twice for the same run
returns the first); :class:`kdlab.study.evaluation_runs.PlanBuilder` adds the runs that evaluate them.
"""

from __future__ import annotations

import hashlib
import json

from kdlab.study.cost import forward_flops, generation_flops, train_flops
from kdlab.study.kinds import KINDS
from kdlab.study.nodes import Node, kd_slug, setting_tag, study_path
from kdlab.study.runmeta import RunMeta
from kdlab.study.sizes import model_params
from kdlab.study.spec import Method, StudySpec, flatten_sections


def make_node(
    kind: str,
    slug: str,
    params: dict,
    deps=(),
    meta: RunMeta | None = None,
    group: str | None = None,
    flops: float = 0.0,
) -> Node:
    """A node in folder ``<kind folder>/<slug>-<h>``, ``<h>`` the hash of its kind and params; its own group by default."""
    digest = hashlib.sha1(json.dumps({"kind": kind, **params}, sort_keys=True, default=str).encode()).hexdigest()[:8]
    node_id = f"{KINDS[kind].folder}/{slug}-{digest}"
    return Node(node_id, kind, params, tuple(deps), meta or RunMeta(), group or node_id, flops)


class TrainingRuns:
    """The nodes of a plan under construction and the training runs among them."""

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
            make_node(
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
        return self.add(make_node("split", domain.name, params, meta=RunMeta(domain=domain.name, task=task)))

    # training runs ---------------------------------------------------
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
        flops = train_flops(
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
        return self.add(make_node("teacher-sft", f"{teacher}.{domain.name}", params, deps, meta, flops=flops))

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
        flops = train_flops(model_params(self.spec, student), domain, student_sections, flags["lora.enabled"])
        meta = RunMeta(role="student-sft", student=student, domain=domain.name, method="sft", loss="sft", seed=seed)
        return self.add(
            make_node(
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
        flops = generation_flops(model_params(self.spec, teacher), domain, settings["max_new_tokens"])
        meta = RunMeta(teacher=teacher, domain=domain.name, teacher_kind="base" if base else "finetuned")
        slug = f"{teacher}.{domain.name}" + (".base" if base else "")
        return self.add(make_node("answers", slug, params, deps, meta, flops=flops))

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
        meta = RunMeta(teacher=teacher, domain=domain.name, teacher_kind="base" if base else "finetuned")
        slug = f"{teacher}.{domain.name}" + (".base" if base else "")
        flops = forward_flops(model_params(self.spec, teacher), domain)
        return self.add(make_node("cache", slug, {"flags": flags}, deps, meta, flops=flops))

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
        flops = train_flops(s_params, domain, student_sections, flags["lora.enabled"])
        if method.loss == "seqkd":
            answers = self.answers(teacher, domain, base, method)
            params = {"kind": "sft", "model": s_model, "data": study_path(answers.id, "train.json"), "flags": flags}
            return self.add(make_node("kd", slug, params, deps + (answers.id,), meta, flops=flops))
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
        if not use_cache or float(method.kd.get("lmbda", 0.0)) > 0:  # the teacher runs beside the student
            flops += forward_flops(model_params(self.spec, teacher), domain, float(flags.get("train.epochs", 1.0)))
        return self.add(make_node("kd", slug, params, deps, meta, flops=flops))


def merge_sections(base: dict, overlay: dict) -> dict:
    """Run-config sections ``base`` with ``overlay``'s settings on top (``{"train": {"epochs": 3}}``)."""
    merged = {section: dict(values) for section, values in base.items()}
    for section, values in overlay.items():
        merged.setdefault(section, {}).update(values)
    return merged
