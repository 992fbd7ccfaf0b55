"""Expand a study spec into a plan: the runs of the grid, their folders, their dependencies and their cost.

Runs ("nodes"), their kinds and folders: :mod:`kdlab.study.kinds` and :mod:`kdlab.study.nodes`; the training runs:
:mod:`kdlab.study.training_runs`; their evaluation, validation and selection: :mod:`kdlab.study.evaluation_runs`;
cost: :mod:`kdlab.study.cost`.

Kinds are ordered training, validation, selection, test evaluation, so the runner reads no test data before every
selection is made.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

from kdlab.errors import KdlabError
from kdlab.study.cost import seconds
from kdlab.study.evaluation_runs import PlanBuilder
from kdlab.study.kinds import KIND_ORDER
from kdlab.study.nodes import Node, kd_slug, resolve, run_name
from kdlab.study.sizes import model_params
from kdlab.study.spec import StudySpec

__all__ = ["KIND_ORDER", "Node", "Plan", "build_plan", "distils_into", "resolve", "run_name"]


@dataclass
class Plan:
    spec: StudySpec
    nodes: list[Node]

    def by_id(self) -> dict[str, Node]:
        return {node.id: node for node in self.nodes}

    def shard(self, index: int, count: int) -> list[Node]:
        return [node for node in self.nodes if node.shard(count) == index]

    def seconds(self, node: Node) -> float:
        return seconds(node.flops, self.spec.cost["tflops"])


def build_plan(spec: StudySpec) -> Plan:
    """Every run of the study, dependencies first."""
    b = PlanBuilder(spec)
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


def _teacher_evaluations(b: PlanBuilder, teacher: str, domain) -> dict[bool, tuple[Node, tuple]]:
    """``{base: (evaluation, (model, adapter))}`` of the fine-tuned teacher (``False``) and, with
    ``ablations.base_teacher``, of the base teacher (``True``)."""
    t_model, _ = b.model(teacher)
    teacher_run = b.teacher_sft(teacher, domain)
    teacher_load = b.trained(teacher_run, t_model)
    teacher_eval = b.evaluation(teacher_run, *teacher_load, domain, teacher_run.meta, f"{teacher}.{domain.name}")
    evals = {False: (teacher_eval, teacher_load)}
    if b.spec.ablations.base_teacher:
        base_meta = replace(teacher_run.meta, role="base-teacher", teacher_kind="base")
        base_eval = b.evaluation(
            None, t_model, None, domain, base_meta, f"{teacher}.{domain.name}.base", deps=b.model(teacher)[1]
        )
        evals[True] = (base_eval, (t_model, None))
    return evals


def _student_runs(b: PlanBuilder, teacher: str, student: str, domain, seed: int, evals: dict) -> None:
    """A student's SFT baseline and KD runs of one seed (and its ablation runs, for the ablations' students and
    seeds), each evaluated against its teacher's evaluation in ``evals``."""
    spec, ablation = b.spec, b.spec.ablations
    s_model, _ = b.model(student)
    sft = b.tuned(
        lambda overrides, temperature: b.student_sft(student, domain, seed, overrides),
        f"{student}.{domain.name}.s{seed}",
        s_model,
        domain,
        [None],
    )
    b.evaluate_student(sft, s_model, domain, evals[False], teacher)
    runs = []  # (method, temperatures selected together, teacher noise, base teacher)
    for method in spec.methods.values():
        temperatures = method.temperatures or spec.temperatures if method.uses_temperature else [None]
        runs += [(method, group, 0.0, False) for group in b.temperature_groups(temperatures)]
    if student in ablation.students and seed in ablation.seeds:
        variants = [(noise, False) for noise in ablation.teacher_noise] + (
            [(0.0, True)] if ablation.base_teacher else []
        )
        for name in ablation.methods:
            runs += [(spec.methods[name], [ablation.temperature], noise, base) for noise, base in variants]
    for method, group, noise, base in runs:
        make = partial(b.kd, teacher, student, domain, method, noise=noise, base=base, seed=seed)
        temperature = group[0] if len(group) == 1 else None
        slug = kd_slug(teacher, student, domain.name, method.name, temperature, noise, base, seed)
        run = b.tuned(make, slug, s_model, domain, group)
        b.evaluate_student(run, s_model, domain, evals[base], teacher)


def distils_into(spec: StudySpec, teacher: str, student: str) -> bool:
    """Whether the grid has (teacher, student) KD runs: never a model into itself; with ``pairs: smaller`` (default)
    only into students with fewer parameters than the teacher."""
    if teacher == student:
        return False
    return spec.pairs == "all" or model_params(spec, student) < model_params(spec, teacher)


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
