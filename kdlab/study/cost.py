"""The cost of a study's runs: floating-point operations estimated from parameter and token counts
(:mod:`kdlab.study.sizes`), turned into time with the spec's ``cost.tflops`` (effective, not peak, throughput).

With ``P`` parameters and ``T`` tokens: training costs ``6 P T`` per epoch for full fine-tuning and ``4 P T`` for LoRA,
teacher forward passes ``2 P T``, generation ``2 P`` per prompt and generated token, counted 5x because decoding is
memory-bound.
"""

from __future__ import annotations

from kdlab.study.sizes import data_size, task_size

GENERATION_INEFFICIENCY = 5.0  # token-by-token decoding is memory-bound: count its FLOPs 5x against cost.tflops
PROMPT_TOKENS = 100  # tokens of an evaluation prompt; its answer is counted at half the generation budget
TOKEN_KL_SHARE = 0.3  # fidelity's token KL (teacher and student forward passes) against the student's evaluation


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
