"""Expand a study spec into a plan: the runs of the grid, their folders, their dependencies and their cost.

:func:`build_plan` reads top to bottom: for every domain and teacher, the teacher's evaluations; for every student
and seed it distils into, the SFT baseline and the KD runs, each tuned (with ``tuning``: one run per candidate setting,
scored on the validation split, and a select node over them) and evaluated on test and for fidelity. The training
runs themselves: :mod:`kdlab.study.training_runs`; the kinds of run and their folders: :mod:`kdlab.study.kinds`.

Kinds are ordered training, validation, selection, test evaluation, so the runner reads no test data before every
selection is made.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

from kdlab.errors import KdlabError
from kdlab.study import training_runs
from kdlab.study.cost import evaluation_generation, model_params, seconds, token_kl_flops, validation_generation
from kdlab.study.kinds import KIND_ORDER, KINDS
from kdlab.study.nodes import Node, kd_slug, run_name, study_path
from kdlab.study.runmeta import RunMeta
from kdlab.study.spec import StudySpec, stage_chain
from kdlab.study.training_runs import PlanNodes


@dataclass
class Plan:
    spec: StudySpec
    nodes: list[Node]

    def by_id(self) -> dict[str, Node]:
        return {node.id: node for node in self.nodes}

    def shard(self, index: int, count: int) -> list[Node]:
        return [node for node in self.nodes if node.shard(count) == index]

    def seconds(self, node: Node) -> float:
        return seconds(node.flops, self.spec.cost["tflops"], node.read_bytes, self.spec.cost["memory_gbps"])


def build_plan(spec: StudySpec) -> Plan:
    """Every run of the study, dependencies first."""
    b = PlanNodes(spec)
    for domain in spec.domains.values():
        for teacher in spec.teachers:
            evals = _teacher_evaluations(b, teacher, domain)
            for student in spec.students:
                if distils_into(spec, teacher, student):
                    for seed in spec.seeds:
                        _student_runs(b, teacher, student, domain, seed, evals)
    nodes = list(b.nodes.values())
    order = {kind: i for i, kind in enumerate(KIND_ORDER)}
    nodes.sort(key=lambda node: order[node.kind])  # stable: dependencies come first within the grid order
    return Plan(spec, _topological(nodes))


def distils_into(spec: StudySpec, teacher: str, student: str) -> bool:
    """Whether the grid has (teacher, student) KD runs: never a model into itself; with ``pairs: smaller`` (default)
    only into students with fewer parameters than the teacher."""
    if teacher == student:
        return False
    return spec.pairs == "all" or model_params(spec, student) < model_params(spec, teacher)


def _teacher_evaluations(b: PlanNodes, teacher: str, domain) -> dict[bool, tuple[Node, tuple]]:
    """``{base: (evaluation, (model, adapter))}`` of the fine-tuned teacher (``False``) and, with
    ``ablations.base_teacher``, of the base teacher (``True``)."""
    t_model, _ = training_runs.model(b, teacher)
    teacher_run = training_runs.teacher_sft(b, teacher, domain)
    teacher_load = training_runs.trained(teacher_run, t_model)
    teacher_eval = evaluation(b, teacher_run, *teacher_load, domain, teacher_run.meta, f"{teacher}.{domain.name}")
    evals = {False: (teacher_eval, teacher_load)}
    if b.spec.ablations.base_teacher:
        base_meta = replace(teacher_run.meta, role="base-teacher", teacher_kind="base")
        base_name = f"{teacher}.{domain.name}.base"
        base_eval = evaluation(
            b, None, t_model, None, domain, base_meta, base_name, deps=training_runs.model(b, teacher)[1]
        )
        evals[True] = (base_eval, (t_model, None))
    return evals


def _student_runs(b: PlanNodes, teacher: str, student: str, domain, seed: int, evals: dict) -> None:
    """A student's SFT baseline and KD runs of one seed (and its ablation runs, for the ablations' students and
    seeds), each evaluated against its teacher's evaluation in ``evals``.

    Stages: a method with ``init`` starts from the run carried into test evaluation (the selected one, with tuning)
    of its init for the same student and seed, so methods are added in stage order; an ablation run of a later-stage
    method starts from the main grid's run of its init (the ablation changes its own stage only).
    """
    spec, ablation = b.spec, b.spec.ablations
    s_model, _ = training_runs.model(b, student)
    sft = tuned(
        b,
        lambda overrides, temperature: training_runs.student_sft(b, student, domain, seed, overrides),
        f"{student}.{domain.name}.s{seed}",
        s_model,
        domain,
        [None],
    )
    evaluate_student(b, sft, s_model, domain, evals[False], teacher)
    runs = []  # (method, temperatures selected together, teacher noise, base teacher)
    for method in sorted(spec.methods.values(), key=lambda m: len(stage_chain(spec.methods, m.name))):
        temperatures = method.temperatures or spec.temperatures if method.uses_temperature else [None]
        runs += [(method, group, 0.0, False) for group in temperature_groups(spec, temperatures)]
    if student in ablation.students and seed in ablation.seeds:
        variants = [(noise, False) for noise in ablation.teacher_noise] + (
            [(0.0, True)] if ablation.base_teacher else []
        )
        for name in ablation.methods:
            runs += [(spec.methods[name], [ablation.temperature], noise, base) for noise, base in variants]
    carried = {"sft": sft}  # stage name -> its run carried into test evaluation (main grid)
    for method, group, noise, base in runs:
        chain = ">".join(stage_chain(spec.methods, method.name)[:-1]) or None
        init = carried[method.init] if method.init else None
        make = partial(
            training_runs.kd,
            b,
            teacher,
            student,
            domain,
            method,
            noise=noise,
            base=base,
            seed=seed,
            init=init,
            chain=chain,
        )
        temperature = group[0] if len(group) == 1 else None
        slug = kd_slug(teacher, student, domain.name, method.name, temperature, noise, base, seed, chain)
        run = tuned(b, make, slug, s_model, domain, group)
        if not noise and not base:
            carried[method.name] = run
        evaluate_student(b, run, s_model, domain, evals[base], teacher)


def temperature_groups(spec: StudySpec, temperatures: list) -> list[list]:
    """Temperatures selected together: all at once under ``tuning.temperature: validation``, else one by one."""
    if spec.tuning is not None and spec.tuning.temperature == "validation" and len(temperatures) > 1:
        return [list(temperatures)]
    return [[temperature] for temperature in temperatures]


# tuning: candidates scored on validation, and the selection --------------------------------------------------
def tuned(b: PlanNodes, make, slug: str, s_model: str, domain, temperatures: list) -> Node:
    """The training run a study carries into test evaluation.

    ``make(overrides=..., temperature=...)`` adds a training run. Without tuning: ``make`` with no overrides and
    ``temperatures[0]``. With it: one run per candidate setting and temperature, each scored on the validation
    split, and a select node over them (the carried run).
    """
    tuning = b.spec.tuning
    if tuning is None:
        return make(overrides={}, temperature=temperatures[0])
    candidates = []
    for overrides in tuning.candidates():
        for temperature in temperatures:
            run = make(overrides=overrides, temperature=temperature)
            settings = {**overrides, **({"kd.temperature": temperature} if len(temperatures) > 1 else {})}
            candidates.append((run, validation(b, run, *training_runs.trained(run, s_model), domain), settings))
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
    deps = tuple(val.id for _, val, _ in candidates)
    return b.add("select", f"{KINDS[first.kind].folder}.{slug}", params, deps, meta)


def validation(b: PlanNodes, run: Node, model: str, adapter: str | None, domain) -> Node:
    """A candidate run scored on its domain's validation split (all of it: ``evaluation.limit`` is for tests)."""
    split = training_runs.split(b, domain)
    settings = {**b.spec.evaluation, "limit": None}
    params = {
        "model": model,
        "adapter": adapter,
        "tasks": [split.params["task"]],
        "data_dir": study_path(split.id),
        **settings,
    }
    cost = validation_generation(b.spec, run.meta.student, b.spec.tuning.n, settings)
    meta = replace(run.meta, run=run.id)
    return b.add(
        "val-eval",
        run_name(run),
        params,
        (run.id, split.id),
        meta,
        group=run.group,
        flops=cost.flops(),
        read_bytes=cost.bytes(),
    )


# test evaluation and fidelity ------------------------------------------------------------------------------------
def evaluate_student(b: PlanNodes, run: Node, s_model: str, domain, teacher_eval: tuple, teacher: str) -> None:
    """Test evaluation of a student run and, with ``fidelity.enabled``, its fidelity to ``teacher_eval``'s
    teacher (``(evaluation, (model, adapter))``)."""
    load = training_runs.trained(run, s_model)
    meta = replace(run.meta, teacher=run.meta.teacher or teacher)
    student_eval = evaluation(b, run, *load, domain, meta, run_name(run))
    if b.spec.fidelity["enabled"]:
        fidelity(b, student_eval, teacher_eval[0], teacher_eval[1], load, run, domain)


def evaluation(
    b: PlanNodes, run: Node | None, model: str, adapter: str | None, domain, meta: RunMeta, name: str, deps=()
) -> Node:
    """Test evaluation of ``run`` (None: of a model not trained in the study) on the domain's tasks."""
    settings = dict(b.spec.evaluation)
    params = {"model": model, "adapter": adapter, "tasks": list(domain.tasks), "data_dir": domain.data_dir, **settings}
    cost = evaluation_generation(b.spec, meta.student, domain, settings)
    run_deps = (run.id,) if run is not None else ()
    group = run.group if run is not None else None
    meta = replace(meta, run=run.id if run else None)
    return b.add(
        "eval", name, params, tuple(deps) + run_deps, meta, group=group, flops=cost.flops(), read_bytes=cost.bytes()
    )


def fidelity(
    b: PlanNodes, student_eval: Node, teacher_eval: Node, teacher_load: tuple, student_load: tuple, run: Node, domain
) -> Node:
    """The student's fidelity to its teacher, from their evaluations (with ``token_kl``: and both models)."""
    settings = b.spec.fidelity
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
        flops = token_kl_flops(evaluation_generation(b.spec, student_eval.meta.student, domain, b.spec.evaluation))
    deps = (student_eval.id, teacher_eval.id)
    return b.add("fidelity", run_name(student_eval), params, deps, student_eval.meta, group=run.group, flops=flops)


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
