"""The cost of a study's runs: floating-point operations estimated from parameter and token counts, turned into time
with the spec's ``cost.tflops`` (effective, not peak, throughput).

Sizes: parameters of a model (the spec's ``params``, else counted from its config), examples and tokens of a training
file, test examples of a task. With ``P`` parameters and ``T`` tokens: training costs ``6 P T`` per epoch for full
fine-tuning and ``4 P T`` for LoRA, teacher forward passes ``2 P T``, generation ``2 P`` per prompt and generated
token, counted 5x because decoding is memory-bound.
"""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path

from kdlab.errors import KdlabError
from kdlab.study.spec import StudySpec

GENERATION_INEFFICIENCY = 5.0  # token-by-token decoding is memory-bound: count its FLOPs 5x against cost.tflops
PROMPT_TOKENS = 100  # tokens of an evaluation prompt; its answer is counted at half the generation budget
TOKEN_KL_SHARE = 0.3  # fidelity's token KL (teacher and student forward passes) against the student's evaluation


# sizes -----------------------------------------------------------------------------------------------------------
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


# FLOPs and time --------------------------------------------------------------------------------------------------
def train_flops(params: float, domain, sections: dict, lora: bool, data: str | None = None) -> float:
    """``(4 if lora else 6) P N T E``: ``N`` examples of ``T`` tokens of ``data`` (default: the domain's training file),
    ``E`` epochs (``train.epochs``, or ``train.max_steps`` batches of ``batch_size * grad_accum`` examples)."""
    examples, tokens = data_size(data or domain.train, domain.examples)
    train = sections.get("train", {})
    epochs = float(train.get("epochs", 1.0))
    if train.get("max_steps"):
        batch = int(train.get("batch_size", 8)) * int(train.get("grad_accum", 1))
        epochs = train["max_steps"] * batch / max(examples, 1)
    return (4.0 if lora else 6.0) * params * examples * tokens * epochs


def forward_flops(params: float, domain, epochs: float = 1.0) -> float:
    """``2 P N T E``: a model's forward passes over the domain's ``N`` training examples of ``T`` tokens, ``E`` times."""
    examples, tokens = data_size(domain.train, domain.examples)
    return 2 * params * examples * tokens * epochs


def generation_flops(params: float, domain, max_new_tokens: int) -> float:
    """``2 P N (T + new) * 5``: greedy answers to the domain's ``N`` training prompts (SeqKD data)."""
    examples, tokens = data_size(domain.train, domain.examples)
    return 2 * params * examples * (tokens + max_new_tokens) * GENERATION_INEFFICIENCY


def evaluation_flops(params: float, domain, settings: dict) -> float:
    """``5 * sum_tasks 2 P N_task (100 + budget / 2)``: generating answers to each task's evaluated examples."""
    budget = settings["max_new_tokens"] or 256
    return GENERATION_INEFFICIENCY * sum(
        2 * params * task_size(task, domain.data_dir, settings["limit"]) * (PROMPT_TOKENS + budget / 2)
        for task in domain.tasks
    )


def validation_flops(params: float, examples: int, max_new_tokens: int | None) -> float:
    """``5 * 2 P N (100 + budget / 2)``: generating answers to the ``N`` validation examples."""
    return GENERATION_INEFFICIENCY * 2 * params * examples * (PROMPT_TOKENS + (max_new_tokens or 256) / 2)


def token_kl_flops(evaluation_flops: float) -> float:
    """Fidelity's token-level KL: a share of the evaluation whose answers it scores."""
    return evaluation_flops * TOKEN_KL_SHARE


def seconds(flops: float, tflops: float) -> float:
    """Time of ``flops`` at ``tflops`` effective TFLOP/s."""
    return flops / (float(tflops) * 1e12)


def format_seconds(seconds: float) -> str:
    """``42 s``, ``3.5 min`` or ``2.0 h``; ``?`` when unknown."""
    if not math.isfinite(seconds):
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
