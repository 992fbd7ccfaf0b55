"""The cost of a study's runs: floating-point operations and, for generation, bytes read from memory, estimated from
parameter and token counts, turned into time with the spec's ``cost.tflops`` and ``cost.memory_gbps`` (effective,
not peak, throughputs).

Sizes: parameters of a model (the spec's ``params``, else counted from its config), examples and tokens of a training
file, test examples of a task. With ``P`` parameters and ``T`` tokens: training costs ``6 P T`` per epoch for full
fine-tuning and ``4 P T`` for LoRA, teacher forward passes ``2 P T``.

Generation (evaluation, validation, SeqKD answers) is priced by what bounds it (:class:`Generation`): ``2 P`` FLOPs
per prompt and generated token, plus the bytes decoding reads: each decoding step reads the weights once for the
``B`` sequences it advances (vLLM: up to 256 running sequences; HF: its batch size) and each generated token reads
the KV cache of its context. Time = FLOPs / ``cost.tflops`` + bytes / ``cost.memory_gbps``, divided by the
backend's measured efficiency (:data:`BACKEND_EFFICIENCY`). The backend assumed is the node's (``auto``: vLLM when
it is installed where the plan is made and the job is large enough, as :func:`kdlab.backends.choose_backend` does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from kdlab.errors import KdlabError
from kdlab.study.spec import StudySpec

PROMPT_TOKENS = 100  # tokens of an evaluation prompt; its answer is counted at half the generation budget
TOKEN_KL_SHARE = 1.5  # fidelity's token KL (teacher and student forward passes) against one forward pass of its eval
VLLM_RUNNING = 256  # sequences a vLLM engine advances per step (its max_num_seqs)
KV_PER_PARAM = 8e-6  # KV-cache values per context token per parameter, for a model not here to read (Qwen2.5, Llama-3)
#: measured generation time / (FLOPs / tflops + bytes / bandwidth) inverted, per backend: calibrated on 2 CPU cores
#: with the machine's measured tflops and bandwidth (docs/generation.md, "Cost estimates")
BACKEND_EFFICIENCY = {"hf": 0.5, "vllm": 1.3}


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
def count_kv(spec: str, keep_layers: int | None = None) -> float | None:
    """KV-cache values per context token of a local model (``2 x layers x kv heads x head size``), else None."""
    from transformers import AutoConfig

    from kdlab.models.load import resolve_model_path

    path = resolve_model_path(spec)
    if not Path(path).is_dir():
        return None
    config = AutoConfig.from_pretrained(path)
    heads = config.num_attention_heads
    head = getattr(config, "head_dim", None) or config.hidden_size // heads
    layers = keep_layers if keep_layers is not None else config.num_hidden_layers
    return float(2 * layers * (getattr(config, "num_key_value_heads", None) or heads) * head)


def model_kv(spec: StudySpec, name: str) -> float:
    """KV-cache values per context token of model ``name``: counted from its config, else ``KV_PER_PARAM x P``."""
    entry = spec.models[name]
    counted = None
    if entry.params is None and entry.spec is not None:
        counted = count_kv(entry.spec)
    elif entry.params is None and entry.prune_from is not None and spec.models[entry.prune_from].spec is not None:
        counted = count_kv(spec.models[entry.prune_from].spec, entry.keep_layers)
    return counted if counted is not None else KV_PER_PARAM * model_params(spec, name)


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


@dataclass(frozen=True)
class Generation:
    """A generation job: ``prompts`` prompts of ``prompt_tokens`` tokens, ``new_tokens`` generated for each, by a model
    of ``params`` parameters with ``kv`` KV-cache values per context token and ``weight_bytes`` bytes per value, on
    ``backend`` ("hf" with ``batch`` prompts per batch, or "vllm")."""

    params: float
    kv: float
    prompts: float
    prompt_tokens: float
    new_tokens: float
    backend: str
    batch: int
    weight_bytes: int = 2

    def forward_flops(self) -> float:
        """``2 P N (T + G)``: one forward pass over every prompt and its answer."""
        return 2 * self.params * self.prompts * (self.prompt_tokens + self.new_tokens)

    def flops(self) -> float:
        """Prefill and decoding (:meth:`forward_flops`), over the backend's efficiency."""
        return self.forward_flops() / BACKEND_EFFICIENCY[self.backend]

    def bytes(self) -> float:
        """Bytes decoding reads, over the backend's efficiency: the weights once per step (``N G / B`` steps of ``B``
        running sequences) and the KV cache of each generated token's context (``T + G / 2`` tokens on average)."""
        running = min(self.prompts, VLLM_RUNNING if self.backend == "vllm" else self.batch)
        steps = self.prompts * self.new_tokens / max(running, 1)
        weights = steps * self.params * self.weight_bytes
        context = self.prompt_tokens + self.new_tokens / 2
        cache_reads = self.prompts * self.new_tokens * self.kv * self.weight_bytes * context
        return (weights + cache_reads) / BACKEND_EFFICIENCY[self.backend]


def assumed_backend(requested: str, budget_tokens: float) -> str:
    """The backend a generation node is priced on: ``requested``, or for ``auto`` what
    :func:`kdlab.backends.choose_backend` takes here for a model vLLM runs."""
    from kdlab.backends import AUTO_MIN_TOKENS
    from kdlab.vllm_engine import vllm_version

    if requested != "auto":
        return requested
    return "vllm" if vllm_version() is not None and budget_tokens >= AUTO_MIN_TOKENS else "hf"


def generation(spec: StudySpec, model: str, prompts: float, prompt_tokens: float, new_tokens: float, settings: dict):
    """The :class:`Generation` of ``model`` for a node whose ``settings`` hold ``backend``, ``batch_size`` and
    ``precision`` (fp32: 4-byte values, else 2)."""
    return Generation(
        params=model_params(spec, model),
        kv=model_kv(spec, model),
        prompts=prompts,
        prompt_tokens=prompt_tokens,
        new_tokens=new_tokens,
        backend=assumed_backend(settings.get("backend", "auto"), prompts * new_tokens),
        batch=int(settings.get("batch_size", 16)),
        weight_bytes=4 if settings.get("precision") == "fp32" else 2,
    )


def answers_generation(spec: StudySpec, teacher: str, domain, settings: dict) -> Generation:
    """Greedy answers to the domain's ``N`` training prompts (SeqKD data), each counted at the full budget."""
    examples, tokens = data_size(domain.train, domain.examples)
    return generation(spec, teacher, examples, tokens, settings["max_new_tokens"], settings)


def evaluation_generation(spec: StudySpec, model: str, domain, settings: dict) -> Generation:
    """Answers to each task's evaluated examples: prompts of 100 tokens, answers at half the budget."""
    prompts = sum(task_size(task, domain.data_dir, settings["limit"]) for task in domain.tasks)
    return generation(spec, model, prompts, PROMPT_TOKENS, (settings["max_new_tokens"] or 256) / 2, settings)


def validation_generation(spec: StudySpec, model: str, examples: int, settings: dict) -> Generation:
    """Answers to the ``N`` validation examples: prompts of 100 tokens, answers at half the budget."""
    return generation(spec, model, examples, PROMPT_TOKENS, (settings["max_new_tokens"] or 256) / 2, settings)


def token_kl_flops(evaluation: Generation) -> float:
    """Fidelity's token-level KL: teacher and student forward passes over the answers of ``evaluation``, a share of
    its forward FLOPs (whatever backend generated them: the KL passes run on HF)."""
    return evaluation.forward_flops() * TOKEN_KL_SHARE


def seconds(flops: float, tflops: float, read_bytes: float = 0.0, memory_gbps: float = 1.0) -> float:
    """Time of ``flops`` at ``tflops`` effective TFLOP/s plus ``read_bytes`` at ``memory_gbps`` effective GB/s."""
    return flops / (float(tflops) * 1e12) + read_bytes / (float(memory_gbps) * 1e9)


def format_seconds(seconds: float) -> str:
    """``42 s``, ``3.5 min`` or ``2.0 h``; ``?`` when unknown."""
    if not math.isfinite(seconds):
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
