"""The ``tuning`` section of a study spec: student run settings selected on a validation split.

With ``tuning``, every student run is trained once per candidate setting (:meth:`Tuning.candidates`), each candidate
is scored on the validation split, and only the best one is carried into test evaluation (see :mod:`kdlab.study.spec`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

from kdlab.errors import KdlabError
from kdlab.study.spec.values import as_mapping, check_keys, check_name, flatten_sections, is_int, resolve_path

TUNING_KEYS = {"params", "temperature", "validation"}
VALIDATION_KEYS = {"n", "seed", "file", "task"}
UNTUNABLE = {
    "train.seed",
    "lora.enabled",
    "train.max_length",
    "train.on_long",
    "train.precision",
    "train.report_to",
    "train.trace_data",
}


@dataclass
class Tuning:
    """Selection of student run settings on a validation split (see :mod:`kdlab.study.spec`).

    ``params`` maps a dotted run setting (``train.lr``) to the values tried; ``temperature`` is ``validation``
    (temperatures are candidates) or ``paper`` (each temperature kept, the paper's max over test shown as a labelled
    view); the validation split is ``file`` or else a seeded (``seed``) slice of ``n`` training examples; ``task``
    scores it (default: the domain's first task).
    """

    params: dict[str, list]
    temperature: str = "validation"
    n: int = 100
    seed: int = 0
    file: str | None = None
    task: str | None = None

    def candidates(self) -> list[dict]:
        """Every combination of ``params``, in the listed order (the first key varies slowest)."""
        keys = list(self.params)
        return [dict(zip(keys, values)) for values in itertools.product(*(self.params[key] for key in keys))] or [{}]


def load_tuning(data, where: str, base: Path, check_files: bool) -> Tuning:
    """The ``tuning`` section; a validation ``file`` is resolved against ``base`` (and must exist with ``check_files``)."""
    data = as_mapping(data, where)
    check_keys(data, TUNING_KEYS, where)
    params = _load_params(data.get("params"), f"{where}.params")
    rule = data.get("temperature", "validation")
    if rule not in ("validation", "paper"):
        raise KdlabError(
            f"{where}.temperature: {rule!r} is not one of validation (select on the validation split), "
            "paper (every temperature to the test set; the paper's max over test scores shown as a labelled view)"
        )
    where = f"{where}.validation"
    validation = as_mapping(data.get("validation"), where)
    check_keys(validation, VALIDATION_KEYS, where)
    n = validation.get("n", 100)
    if not is_int(n) or n < 1:
        raise KdlabError(f"{where}.n: expected a positive integer, got {n!r}")
    seed = validation.get("seed", 0)
    if not is_int(seed):
        raise KdlabError(f"{where}.seed: expected an integer, got {seed!r}")
    file = validation.get("file")
    if file is not None:
        if not isinstance(file, str) or not file:
            raise KdlabError(f"{where}.file: expected a path, got {file!r}")
        file = resolve_path(file, base)
        if check_files and not Path(file).is_file():
            raise KdlabError(f"{where}.file: file not found: {file}")
    task = validation.get("task")
    if task is not None and not isinstance(task, str):
        raise KdlabError(f"{where}.task: expected a task name, got {task!r}")
    return Tuning(params, rule, n, seed, file, task)


def _load_params(data, where: str) -> dict[str, list]:
    """``tuning.params``: dotted student run settings (``train.NAME``, ``lora.NAME``) -> the distinct values tried."""
    params = {}
    for key, values in as_mapping(data, where).items():
        if not isinstance(key, str) or key.count(".") != 1 or key.split(".")[0] not in ("train", "lora"):
            raise KdlabError(f"{where}: {key!r} is not a student run setting (train.NAME or lora.NAME)")
        if key in UNTUNABLE:
            raise KdlabError(
                f"{where}.{key}: cannot be tuned (seeds are the study's 'seeds'; the others change "
                "what a run is, not how well it trains)"
            )
        if isinstance(values, (int, float, str)) and not isinstance(values, bool):
            values = [values]
        if not isinstance(values, list) or not values:
            raise KdlabError(f"{where}.{key}: expected a non-empty list of values, got {values!r}")
        if len(set(map(repr, values))) != len(values):
            raise KdlabError(f"{where}.{key}: values repeat in {values}")
        for value in values:  # a candidate's values are part of its runs' folder names (nodes.setting_tag)
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, str):
                    check_name(item, f"{where}.{key}")
        params[key] = values
    return params


def check_tuning(tuning: Tuning, student_training: dict, domains: dict, where: str, check_files: bool) -> None:
    """Every candidate builds a valid run config over ``student_training``; the validation task exists; the slice
    leaves training data in every domain (``domains``: name -> :class:`~kdlab.study.spec.Domain`)."""
    from kdlab.config import build_config
    from kdlab.eval.tasks import TASKS

    if tuning.task is not None and tuning.task not in TASKS:
        raise KdlabError(f"{where}.validation.task: unknown task {tuning.task!r}")
    for candidate in tuning.candidates():
        flags = {"model": "m", "data": "d", "out": "o", **flatten_sections(student_training), **candidate}
        try:
            build_config("sft", None, flags, [])
        except KdlabError as exc:
            raise KdlabError(f"{where}.params: {exc}") from None
    if tuning.file is None and check_files:
        from kdlab.data.formats import load_examples

        for domain in domains.values():
            if domain.train.startswith("hf:"):
                continue
            count = len(load_examples(domain.train))
            if tuning.n >= count:
                raise KdlabError(
                    f"{where}.validation.n: {tuning.n} validation examples would leave no training data in "
                    f"domains.{domain.name}.train ({count} examples)"
                )
