"""The ``ablations`` section of a study spec: extra KD runs on a slice of the grid (teacher noise, base teacher)."""

from __future__ import annotations

from dataclasses import dataclass, field

from kdlab.errors import KdlabError
from kdlab.study.spec.values import as_mapping, as_names, as_numbers, check_keys

ABLATION_KEYS = {"teacher_noise", "base_teacher", "students", "methods", "temperature", "seeds"}


@dataclass
class Ablations:
    """Gaussian noise stds on the teacher logits and/or distillation from the base (not fine-tuned) teacher, for the
    chosen students, token-level methods and seeds at one temperature; empty when neither is asked for."""

    teacher_noise: list[float] = field(default_factory=list)
    base_teacher: bool = False
    students: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    temperature: float | None = None
    seeds: list[int] = field(default_factory=list)


def load_ablations(
    data, where: str, students: list[str], token_methods: list[str], temperatures: list[float], seeds: list[int]
) -> Ablations:
    """The ``ablations`` section. Defaults: the first student, the first of ``token_methods`` (the study's
    token-level methods), the first temperature and every seed; each chosen one must be one of the study's."""
    data = as_mapping(data, where)
    check_keys(data, ABLATION_KEYS, where)
    noise = (
        as_numbers(data["teacher_noise"], f"{where}.teacher_noise", positive=True) if data.get("teacher_noise") else []
    )
    base_teacher = data.get("base_teacher", False)
    if not isinstance(base_teacher, bool):
        raise KdlabError(f"{where}.base_teacher: expected true or false, got {base_teacher!r}")
    if not noise and not base_teacher:
        return Ablations()
    chosen_students = as_names(data["students"], f"{where}.students") if "students" in data else [students[0]]
    for item in chosen_students:
        if item not in students:
            raise KdlabError(f"{where}.students: {item!r} is not one of the study's students ({', '.join(students)})")
    chosen_methods = as_names(data["methods"], f"{where}.methods") if "methods" in data else token_methods[:1]
    for item in chosen_methods:
        if item not in token_methods:
            raise KdlabError(
                f"{where}.methods: {item!r} is not a token-level method of the study ({', '.join(token_methods)})"
            )
    temperature = data.get("temperature", temperatures[0])
    as_numbers(temperature, f"{where}.temperature", positive=True)
    chosen_seeds = as_numbers(data["seeds"], f"{where}.seeds", kind=int) if "seeds" in data else list(seeds)
    for item in chosen_seeds:
        if item not in seeds:
            raise KdlabError(f"{where}.seeds: {item} is not one of the study's seeds ({seeds})")
    return Ablations(noise, base_teacher, chosen_students, chosen_methods, float(temperature), chosen_seeds)
