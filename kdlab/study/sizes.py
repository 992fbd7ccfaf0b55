"""Sizes for a study's cost estimate: parameters of a model, examples and tokens of a training file, test examples of
a task, and a duration in words."""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path

from kdlab.errors import KdlabError
from kdlab.study.spec import StudySpec


@cache
def count_params(spec: str, keep_layers: int | None = None) -> float:
    """Parameters of a model spec (optionally pruned to ``keep_layers``), counted on the meta device from its config."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from kdlab.models.load import resolve_model_path

    path = resolve_model_path(spec)
    if not Path(path).is_dir():
        raise KdlabError(
            f"model {spec!r}: give its size in the spec (params: 0.5B); it is not available locally to count"
        )
    config = AutoConfig.from_pretrained(path)
    if keep_layers is not None:
        config.num_hidden_layers = keep_layers
        if getattr(config, "layer_types", None):
            config.layer_types = config.layer_types[:keep_layers]
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    unique = {id(p): p.numel() for p in model.parameters()}
    return float(sum(unique.values()))


def model_params(spec: StudySpec, name: str) -> float:
    entry = spec.models[name]
    if entry.params is not None:
        return entry.params
    if entry.spec is not None:
        return count_params(entry.spec)
    parent = spec.models[entry.prune_from]
    return count_params(parent.spec, entry.keep_layers)


@cache
def data_size(path: str, hint: int | None = None) -> tuple[int, float]:
    """(examples, mean tokens per example) of a training file; tokens ~ characters / 4.

    Hub data or a file that is not here: (``hint`` or 1000 examples, 200 tokens each).
    """
    if path.startswith("hf:") or not Path(path).is_file():
        return hint or 1000, 200.0
    from kdlab.data.formats import load_json_examples

    examples = load_json_examples(path)
    chars = sum(len(e.instruction) + len(e.input or "") + len(e.output or "") for e in examples)
    return len(examples), chars / 4 / max(len(examples), 1)


@cache
def task_size(task_name: str, data_dir: str | None, limit: int | None) -> int:
    """Number of test examples evaluated (500 when the data cannot be read here)."""
    from kdlab.eval.task_examples import load_task_examples
    from kdlab.eval.tasks import TASKS

    try:
        n = len(load_task_examples(TASKS[task_name], data_dir))
    except (KdlabError, OSError, KeyError):
        n = 500
    return min(n, limit) if limit else n


def format_seconds(seconds: float) -> str:
    """``42 s``, ``3.5 min`` or ``2.0 h``; ``?`` when unknown."""
    if not math.isfinite(seconds):
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
