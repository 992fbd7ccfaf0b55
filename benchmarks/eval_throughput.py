"""Benchmark: batched generation with a KV cache vs one prompt at a time without a cache (the reference code's way).

Both paths decode greedily the same prompts with the same model and the same token budget; the script checks that
they extract the same answers and reports generated tokens per second and their ratio.

    .venv/bin/python benchmarks/eval_throughput.py --model smollm2-135m --prompts 32 --batch-size 16

Prompts: the first ``--prompts`` problems of the synthetic arithmetic test split (``kdlab data synth``), or of
``--data FILE`` (LLM-Adapters JSON). The unbatched path uses ``use_cache=False`` and batch size 1, as the paper's
evaluation did; both run in fp32 unless ``--bf16``.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from kdlab.data.formats import load_json_examples
from kdlab.data.synth import generate_arith
from kdlab.data.tokenize import encode_prompt
from kdlab.eval.extract import extract
from kdlab.generation import cut_at_eos, generate_ids
from kdlab.models.load import load_model, load_tokenizer


@torch.no_grad()
def one_at_a_time_without_cache(model, tokenizer, prompt_ids, max_new_tokens):
    """Greedy decoding of each prompt alone, recomputing the whole sequence at every step (no KV cache)."""
    outputs = []
    for ids in prompt_ids:
        output = model.generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            use_cache=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        outputs.append(cut_at_eos(output[0, len(ids) :].tolist(), tokenizer.eos_token_id))
    return outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--adapter", default=None)
    parser.add_argument(
        "--data", default=None, help="LLM-Adapters JSON with the prompts (default: synthetic test split)"
    )
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--bf16", action="store_true", help="run both paths under bf16 autocast")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()

    examples = (
        load_json_examples(args.data)[: args.prompts]
        if args.data
        else generate_arith(args.prompts, seed=1, split="test")
    )
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model, adapter=args.adapter, merge_adapter=True).eval()
    prompt_ids = [encode_prompt(tokenizer, example) for example in examples]
    rows = {}
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
        for name, run in [
            (
                "batched+cache",
                lambda: generate_ids(model, tokenizer, prompt_ids, args.max_new_tokens, batch_size=args.batch_size),
            ),
            (
                "one-at-a-time, no cache",
                lambda: one_at_a_time_without_cache(model, tokenizer, prompt_ids, args.max_new_tokens),
            ),
        ]:
            start = time.perf_counter()
            outputs = run()
            seconds = time.perf_counter() - start
            tokens = sum(len(ids) for ids in outputs)
            answers = [extract("arith", tokenizer.decode(ids, skip_special_tokens=True)) for ids in outputs]
            rows[name] = {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds, "answers": answers}
    batched, single = rows["batched+cache"], rows["one-at-a-time, no cache"]
    same = sum(a == b for a, b in zip(batched["answers"], single["answers"]))
    print(f"{'path':<26}{'seconds':>9}{'tokens':>8}{'tokens/s':>10}")
    for name, row in rows.items():
        print(f"{name:<26}{row['seconds']:>9.1f}{row['tokens']:>8}{row['tokens_per_s']:>10.1f}")
    ratio = batched["tokens_per_s"] / single["tokens_per_s"]
    print(f"speed-up (tokens/s): {ratio:.1f}x; same extracted answer on {same}/{len(examples)} prompts")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(
                {"args": vars(args), "rows": rows, "ratio": ratio, "same_answers": same, "n": len(examples)},
                handle,
                indent=2,
            )


if __name__ == "__main__":
    main()
