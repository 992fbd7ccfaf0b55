"""Calibrate the generation cost model (:class:`kdlab.study.cost.Generation`) against measured generation times.

Reads the results of ``benchmarks/generation.py`` (``--json``), measures this machine's effective fp32 matmul
throughput (TFLOP/s) and memory bandwidth (GB/s, a large tensor copy), prices each fp32 ``kdlab eval`` run of the
benchmark with the cost model at unit efficiency, and prints the efficiency of each backend: modelled seconds /
measured generation seconds (the whole process's wall time less vLLM's start-up). Those are the numbers that go into
:data:`kdlab.study.cost.BACKEND_EFFICIENCY`.

    .venv/bin/python benchmarks/calibrate_cost.py gen.json

Run it alone (2 cores: anything else running halves the throughputs it measures).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from functools import cache
from pathlib import Path

import torch

from kdlab.study import cost


def matmul_tflops(size: int = 2048, repeats: int = 20) -> float:
    """Effective fp32 TFLOP/s of a ``size x size`` matmul, best of ``repeats``."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e12


def copy_gbps(mib: int = 512, repeats: int = 10) -> float:
    """Effective memory bandwidth in GB/s: bytes read + written by a copy of ``mib`` MiB, best of ``repeats``."""
    source = torch.ones(mib * 2**20 // 4)
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        target.copy_(source)
        best = min(best, time.perf_counter() - start)
    return 2 * source.numel() * 4 / best / 1e9


@cache
def prompt_tokens(model: str, n: int) -> float:
    """Mean prompt tokens of the benchmark's synthetic test prompts (seed 11, as ``benchmarks/generation.py``)."""
    from kdlab.data.formats import load_json_examples
    from kdlab.data.synth import write_synth
    from kdlab.data.tokenize import encode_prompt
    from kdlab.models.load import load_tokenizer

    with tempfile.TemporaryDirectory() as root:
        write_synth(Path(root) / "test.json", n=n, seed=11, split="test")
        examples = load_json_examples(Path(root) / "test.json")[:n]
    tokenizer = load_tokenizer(model)
    return sum(len(encode_prompt(tokenizer, example)) for example in examples) / len(examples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="the --json of benchmarks/generation.py")
    parser.add_argument("--batch-size", type=int, default=16, help="kdlab eval's HF batch size in that run")
    args = parser.parse_args()
    results = json.loads(Path(args.results).read_text())
    from kdlab.models.load import load_model

    model = load_model(results["model"])
    params = sum(p.numel() for p in model.parameters())
    config = model.config
    kv = 2 * config.num_hidden_layers * config.num_key_value_heads * (config.hidden_size // config.num_attention_heads)
    del model
    tflops, gbps = matmul_tflops(), copy_gbps()
    print(f"machine: {results['cpu']}: {tflops:.3f} TFLOP/s fp32 matmul, {gbps:.1f} GB/s copy")
    efficiency = {}
    for row in results["rows"]:
        if row.get("precision") != "fp32" or not row["engine"].startswith("kdlab"):
            continue
        backend = row["engine"].split()[1]
        n = row["prompts"]
        job = cost.Generation(
            params=params,
            kv=kv,
            prompts=n,
            prompt_tokens=prompt_tokens(results["model"], n),
            new_tokens=row["tokens"] / n,
            backend=backend,
            batch=args.batch_size,
            weight_bytes=4,
        )
        cost.BACKEND_EFFICIENCY = {"hf": 1.0, "vllm": 1.0}
        modelled = cost.seconds(job.flops(), tflops, job.bytes(), gbps)
        measured = row["wall_s"] - row["startup_s"]
        efficiency[(backend, n)] = modelled / measured
        print(
            f"{backend:5} {n:5} prompts: modelled {modelled:7.1f} s, measured {measured:7.1f} s, "
            f"efficiency {modelled / measured:.3f}"
        )
    print(
        json.dumps(
            {"tflops": tflops, "memory_gbps": gbps, "efficiency": {f"{b} {n}": e for (b, n), e in efficiency.items()}}
        )
    )


if __name__ == "__main__":
    main()
