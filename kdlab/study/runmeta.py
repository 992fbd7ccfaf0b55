"""The typed record of what a study node is about (:class:`RunMeta`): written by the plan, read by the results table,
the executors and the demo."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class RunMeta:
    """Who is trained or evaluated in a node, on what, how. Fields a node kind does not have stay at their default.

    ``role`` is ``teacher``, ``base-teacher``, ``student-sft`` or ``student-kd`` for training and evaluation nodes (None for data, model, answers and cache nodes);
    ``teacher_kind`` is ``finetuned`` or ``base``; ``temperature`` is None for methods without one (and for a selection
    over temperatures); ``run`` is the training run (or select node) an evaluation, validation or fidelity node
    belongs to; ``model`` names a pruned model, ``task`` the validation task of a split; ``init`` is the chain of
    stages a later-stage run starts from, first to last (``sft``, ``sft>fkl``; None: from the student model).
    """

    role: str | None = None
    teacher: str | None = None
    teacher_kind: str = "finetuned"
    student: str | None = None
    domain: str | None = None
    method: str | None = None
    loss: str | None = None
    temperature: float | None = None
    noise: float = 0.0
    seed: int | None = None
    run: str | None = None
    model: str | None = None
    task: str | None = None
    init: str | None = None

    @classmethod
    def from_row(cls, row) -> RunMeta:
        """The record of a results or selection table row (dict or pandas row; a missing temperature is NaN there)."""
        temperature = row.get("temperature")
        if isinstance(temperature, float) and math.isnan(temperature):
            temperature = None
        return cls(
            role=row.get("role"),
            method=row.get("method"),
            temperature=temperature,
            noise=row.get("noise") or 0.0,
            teacher_kind=row.get("teacher_kind") or "finetuned",
            init=row.get("init") if isinstance(row.get("init"), str) and row.get("init") else None,
        )

    def label(self, temperature: bool = True, teacher: bool = True) -> str:
        """The run in words: ``SFT``, or the KD method with what sets it apart, ``fkl tau=2 noise=1 (base teacher)``
        (``temperature=False``: without ``tau``, for runs whose temperature was selected on validation;
        ``teacher=False``: without ``(base teacher)``, for lines that name the teacher). A later stage names what it
        started from: ``opd after SFT``, ``opd after SFT > fkl``."""
        if self.role == "student-sft":
            return "SFT"
        label = str(self.method)
        if self.init:
            label += " after " + " > ".join("SFT" if stage == "sft" else stage for stage in self.init.split(">"))
        if temperature and self.temperature is not None:
            label += f" tau={self.temperature:g}"
        if self.noise:
            label += f" noise={self.noise:g}"
        if teacher and self.teacher_kind == "base":
            label += " (base teacher)"
        return label
