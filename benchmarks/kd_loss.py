"""Benchmark: naive vs chunked distillation loss (forward + backward), memory, time and gradient agreement.

Run from the repository root::

    .venv/bin/python benchmarks/kd_loss.py                     # defaults: 2048 tokens, V=49152, H=576, fkl, fp32
    .venv/bin/python benchmarks/kd_loss.py --chunk-size 256 512 1024 2048 --json out.json
    .venv/bin/python benchmarks/kd_loss.py --bf16              # both paths under torch.autocast("cpu", bfloat16)

The problem: student hidden states ``h [N, H]`` and student lm_head weight ``W [V, H]`` (both require grad), teacher
hidden states ``h_t [N, H]`` and teacher weight ``W_t [V, H]`` (no grad), targets ``y [N]``.

- naive:   ``z_S = h @ W.T``; ``z_T = h_t @ W_t.T`` (under no_grad); ``naive_distill_loss(z_S, z_T, y).backward()``
- chunked: ``chunked_distill_loss(h, W, h_t, W_t, y, chunk_size=C).backward()``

Both compute the same sum over tokens of ``(1 - w) * CE + w * tau^2 * divergence`` (kdlab.losses).

Memory ("peak extra MiB")
    CPU tensors are invisible to tracemalloc and torch has no CPU peak counter, so each path is measured in a fresh
    child process (this script re-run with the hidden ``--measure naive|chunked`` flag) through the kernel's resident
    set high-water mark:

    1. build the inputs (same seed as the parent) and run the path once at full size as a warm-up (loads kernels,
       lets MKL/oneDNN/OpenMP make their persistent buffers), then drop the gradients;
    2. reset the high-water mark (write "5" to /proc/self/clear_refs; if the kernel refuses, the mark from the
       warm-up would dominate, so in that case the warm-up is skipped and this is reported as ``hwm_reset: false``)
       and read ``VmRSS`` = baseline (inputs allocated, no gradients);
    3. run forward + backward once and read ``VmHWM``; peak extra = VmHWM - baseline. Gradients (``h.grad``,
       ``W.grad``) are part of the extra memory for both paths.

    The child runs with ``MALLOC_MMAP_THRESHOLD_=65536`` (also as a glibc tunable), which pins glibc's mmap threshold
    (no dynamic growth) so every large buffer is mmapped and returned to the kernel when freed: the RSS then follows
    the live tensors and the high-water mark is their true peak (a freed-but-cached heap block can neither hide
    nor fake a peak). The high-water mark is monotone, so no sampling is needed.

Time ("median s")
    Measured in this (parent) process for all paths: one warm-up per path, then ``--repeats`` rounds that run the
    paths in turn (naive, chunked C1, chunked C2, ...), so that drift of the machine hits all paths alike; the
    median wall time of forward + backward (inputs already allocated, gradients reset to None before each run).
    The median process CPU time (user + sys of all threads, ``time.process_time``) of the same runs is reported
    too ("cpu s"): on a shared machine it is less inflated by other processes than the wall time. The goal is
    judged on the wall time ("time x").

Gradient check
    On the full-size problem, the gradients of the warm-up runs: for ``h.grad`` and ``W.grad`` the max abs diff
    between chunked and naive, and that diff relative to the largest |naive gradient|. It passes when
    ``max_abs_diff <= tol * max(1, max|g_naive|)`` (tol = ``--tol``, 1e-5): an absolute 1e-5 for gradients of
    magnitude up to 1, and a relative 1e-5 for larger ones (the loss is a *sum* over tokens, so ``W.grad`` grows
    with N and fp32 rounding of a sum over 2048 tokens in a different order cannot stay under an absolute 1e-5).
    The loss values are checked the same way. The check is enforced (exit status 1 on failure) in fp32 (or fp64)
    without ``--bf16``; under ``--bf16`` or ``--dtype bf16`` the diffs are reported only.

Goals (issue): chunked peak extra memory <= 1/4 of naive, time <= 1.0x naive, gradients equal within 1e-5 in fp32.
``--strict-goals`` makes the exit status 3 when a chunk size misses the memory or time goal.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kdlab.losses import DIVERGENCES, chunked_distill_loss, naive_distill_loss  # noqa: E402

MEASURE_TAG = "KD_LOSS_MEASURE "
MIB = 1024.0 * 1024.0
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp64": torch.float64}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tokens", type=int, default=2048, help="N, number of token positions")
    p.add_argument("--vocab", type=int, default=49152, help="V, vocabulary size (both models)")
    p.add_argument("--hidden", type=int, default=576, help="H, hidden size (both models)")
    p.add_argument(
        "--chunk-size",
        type=int,
        nargs="+",
        default=[256],
        help="one or more chunk sizes to compare (kdlab default: 256)",
    )
    p.add_argument("--loss", default="fkl", choices=sorted(DIVERGENCES))
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--kd-weight", type=float, default=1.0, help="w in (1 - w) * CE + w * tau^2 * divergence")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="dtype of hidden states and weights")
    p.add_argument(
        "--bf16", action="store_true", help="run both paths under torch.autocast('cpu', dtype=torch.bfloat16)"
    )
    p.add_argument("--tol", type=float, default=1e-5, help="gradient/loss tolerance (see module docstring)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--no-memory", action="store_true", help="skip the memory measurement (child processes)")
    p.add_argument("--strict-goals", action="store_true", help="exit 3 if a chunk size misses the memory/time goal")
    p.add_argument("--json", type=Path, default=None, help="write the results as JSON to this path")
    p.add_argument("--measure", choices=["naive", "chunked"], default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.measure == "chunked" and len(args.chunk_size) != 1:
        p.error("--measure chunked takes exactly one --chunk-size")
    return args


# ----------------------------------------------------------------------------------------------------------- problem


def make_inputs(args) -> dict:
    """Inputs with realistic logit scales (std ~2) and a teacher correlated with the student."""
    g = torch.Generator().manual_seed(args.seed)
    n, v, h = args.tokens, args.vocab, args.hidden
    dtype = DTYPES[args.dtype]
    hidden = torch.randn(n, h, generator=g)
    weight = torch.randn(v, h, generator=g) * (2.0 / h**0.5)
    t_hidden = hidden + 0.5 * torch.randn(n, h, generator=g)
    t_weight = weight + (1.0 / h**0.5) * torch.randn(v, h, generator=g)
    targets = torch.randint(0, v, (n,), generator=g)
    return {
        "hidden": hidden.to(dtype).requires_grad_(True),
        "weight": weight.to(dtype).requires_grad_(True),
        "t_hidden": t_hidden.to(dtype),
        "t_weight": t_weight.to(dtype),
        "targets": targets,
    }


def loss_kwargs(args) -> dict:
    return {arg.keyword: arg.default for arg in DIVERGENCES[args.loss].arguments}


def autocast_ctx(args):
    return torch.autocast("cpu", dtype=torch.bfloat16) if args.bf16 else nullcontext()


def run_naive(inp: dict, args) -> torch.Tensor:
    """Forward + backward of the naive path; returns the (detached) loss."""
    with autocast_ctx(args):
        student_logits = inp["hidden"] @ inp["weight"].T
        with torch.no_grad():
            teacher_logits = inp["t_hidden"] @ inp["t_weight"].T
        loss = naive_distill_loss(
            student_logits,
            teacher_logits,
            inp["targets"],
            loss=args.loss,
            temperature=args.temperature,
            kd_weight=args.kd_weight,
            loss_kwargs=loss_kwargs(args),
        )
    loss.backward()
    return loss.detach()


def run_chunked(inp: dict, args, chunk_size: int) -> torch.Tensor:
    """Forward + backward of the chunked path; returns the (detached) loss."""
    with autocast_ctx(args):
        loss = chunked_distill_loss(
            inp["hidden"],
            inp["weight"],
            inp["t_hidden"],
            inp["t_weight"],
            inp["targets"],
            loss=args.loss,
            temperature=args.temperature,
            kd_weight=args.kd_weight,
            loss_kwargs=loss_kwargs(args),
            chunk_size=chunk_size,
        )
    loss.backward()
    return loss.detach()


def run_path(name: str, inp: dict, args, chunk_size: int | None = None) -> torch.Tensor:
    return run_naive(inp, args) if name == "naive" else run_chunked(inp, args, chunk_size)


def zero_grads(inp: dict) -> None:
    inp["hidden"].grad = None
    inp["weight"].grad = None


# ------------------------------------------------------------------------------------------------------------ memory


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_child(args) -> dict:
    """Hidden --measure mode: peak RSS above the inputs of one forward + backward of one path (see docstring)."""
    chunk = args.chunk_size[0] if args.measure == "chunked" else None
    inp = make_inputs(args)
    probe = _reset_hwm()  # can the high-water mark be reset here?
    if probe:
        run_path(args.measure, inp, args, chunk)  # full-size warm-up
        zero_grads(inp)
    gc.collect()
    hwm_reset = _reset_hwm()
    baseline = _status_kib("VmRSS")
    t0 = time.perf_counter()
    loss = run_path(args.measure, inp, args, chunk)
    seconds = time.perf_counter() - t0
    peak = _status_kib("VmHWM")
    after = _status_kib("VmRSS")
    return {
        "path": args.measure,
        "chunk_size": chunk,
        "hwm_reset": hwm_reset,
        "warmup": probe,
        "baseline_mib": baseline / 1024.0,
        "peak_mib": peak / 1024.0,
        "peak_extra_mib": (peak - baseline) / 1024.0,
        "after_extra_mib": (after - baseline) / 1024.0,
        "seconds_single": seconds,
        "loss": float(loss),
    }


def child_argv(args, path: str, chunk_size: int | None) -> list[str]:
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--measure",
        path,
        "--tokens",
        str(args.tokens),
        "--vocab",
        str(args.vocab),
        "--hidden",
        str(args.hidden),
        "--loss",
        args.loss,
        "--temperature",
        repr(args.temperature),
        "--kd-weight",
        repr(args.kd_weight),
        "--dtype",
        args.dtype,
        "--seed",
        str(args.seed),
        "--chunk-size",
        str(chunk_size or args.chunk_size[0]),
    ]
    if args.bf16:
        argv.append("--bf16")
    if args.threads:
        argv += ["--threads", str(args.threads)]
    return argv


def measure_in_child(args, path: str, chunk_size: int | None = None) -> dict:
    env = dict(os.environ)
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    env["MALLOC_TRIM_THRESHOLD_"] = "0"
    env["GLIBC_TUNABLES"] = ":".join(
        filter(None, [env.get("GLIBC_TUNABLES"), "glibc.malloc.mmap_threshold=65536", "glibc.malloc.trim_threshold=0"])
    )
    proc = subprocess.run(child_argv(args, path, chunk_size), env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MEASURE_TAG)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"memory child for {path} (chunk {chunk_size}) failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
        )
    return json.loads(lines[-1][len(MEASURE_TAG) :])


# ------------------------------------------------------------------------------------------------------ time + check


def compare(ref: torch.Tensor, other: torch.Tensor, tol: float) -> dict:
    ref64, other64 = ref.double(), other.double()
    max_abs = float((other64 - ref64).abs().max())
    scale = float(ref64.abs().max())
    return {
        "max_abs": max_abs,
        "ref_max": scale,
        "rel": max_abs / scale if scale > 0 else 0.0,
        "ok": max_abs <= tol * max(1.0, scale),
    }


def time_and_check(args) -> dict:
    inp = make_inputs(args)
    paths = [("naive", None)] + [("chunked", c) for c in args.chunk_size]
    # Warm-up (one per path), keeping its loss and gradients for the check.
    ref = {}
    for name, chunk in paths:
        zero_grads(inp)
        loss = run_path(name, inp, args, chunk)
        ref[(name, chunk)] = (loss.double(), inp["hidden"].grad.clone(), inp["weight"].grad.clone())
    zero_grads(inp)
    times = {key: [] for key in paths}
    cpu_times = {key: [] for key in paths}
    for _ in range(args.repeats):
        for name, chunk in paths:
            zero_grads(inp)
            gc.collect()
            c0, t0 = time.process_time(), time.perf_counter()
            run_path(name, inp, args, chunk)
            times[(name, chunk)].append(time.perf_counter() - t0)
            cpu_times[(name, chunk)].append(time.process_time() - c0)
    zero_grads(inp)
    n_loss, n_gh, n_gw = ref[("naive", None)]
    checks = {}
    for name, chunk in paths[1:]:
        c_loss, c_gh, c_gw = ref[(name, chunk)]
        checks[chunk] = {
            "loss": compare(n_loss.reshape(1), c_loss.reshape(1), args.tol)
            | {"naive": float(n_loss), "chunked": float(c_loss)},
            "grad_hidden": compare(n_gh, c_gh, args.tol),
            "grad_weight": compare(n_gw, c_gw, args.tol),
        }
    return {"times": times, "cpu_times": cpu_times, "checks": checks}


# ------------------------------------------------------------------------------------------------------------ report


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.measure:
        print(MEASURE_TAG + json.dumps(measure_child(args)), flush=True)
        return 0

    torch.manual_seed(args.seed)
    mode = ("autocast-bf16 " if args.bf16 else "") + args.dtype
    n, v, h = args.tokens, args.vocab, args.hidden
    elem = torch.finfo(DTYPES[args.dtype]).bits // 8
    logits_mib = n * v * 4 / MIB
    weight_mib = v * h * elem / MIB
    print(
        f"kd_loss benchmark: N={n} V={v} H={h} loss={args.loss} tau={args.temperature} w={args.kd_weight} "
        f"mode={mode} chunk_size={args.chunk_size} repeats={args.repeats} threads={torch.get_num_threads()}"
    )
    print(f"  one [N, V] fp32 logits tensor = {logits_mib:.1f} MiB; one [V, H] weight = {weight_mib:.1f} MiB")

    load_before = os.getloadavg()
    if load_before[0] > 0.5:
        print(
            f"  note: load average {load_before[0]:.2f} before the run; other processes may inflate the wall times "
            "(the CPU-time column is less sensitive to that)"
        )
    memory = {}
    if not args.no_memory:
        memory[("naive", None)] = measure_in_child(args, "naive")
        for c in args.chunk_size:
            memory[("chunked", c)] = measure_in_child(args, "chunked", c)
    tc = time_and_check(args)

    enforce = args.dtype in ("fp32", "fp64") and not args.bf16
    rows = []
    naive_mem = memory.get(("naive", None), {}).get("peak_extra_mib")
    naive_t = statistics.median(tc["times"][("naive", None)])
    naive_cpu = statistics.median(tc["cpu_times"][("naive", None)])
    for key, ts in tc["times"].items():
        name, chunk = key
        mem = memory.get(key, {}).get("peak_extra_mib")
        med = statistics.median(ts)
        cpu = statistics.median(tc["cpu_times"][key])
        row = {
            "path": name,
            "chunk_size": chunk,
            "peak_extra_mib": mem,
            "median_s": med,
            "times_s": ts,
            "median_cpu_s": cpu,
            "cpu_times_s": tc["cpu_times"][key],
            "mem_ratio": (mem / naive_mem) if (mem is not None and naive_mem) else None,
            "time_ratio": med / naive_t,
            "cpu_ratio": cpu / naive_cpu,
            "memory_detail": memory.get(key),
        }
        if name == "chunked":
            row["check"] = tc["checks"][chunk]
            row["meets_memory_goal"] = None if row["mem_ratio"] is None else row["mem_ratio"] <= 0.25
            row["meets_time_goal"] = row["time_ratio"] <= 1.0
        rows.append(row)

    fmt = lambda x, f: "-" if x is None else format(x, f)  # noqa: E731
    print()
    print(
        f"{'path':<8} {'chunk':>6} {'peak extra MiB':>15} {'median s':>9} {'cpu s':>7} {'mem x':>6} {'time x':>7} {'cpu x':>6} "
        f"{'|dloss|/|loss|':>14} {'dGrad_h abs':>11} {'(rel)':>8} {'dGrad_W abs':>11} {'(rel)':>8} {'grads':>5}"
    )
    for r in rows:
        c = r.get("check")
        print(
            f"{r['path']:<8} {fmt(r['chunk_size'], 'd'):>6} {fmt(r['peak_extra_mib'], '.1f'):>15} {r['median_s']:>9.3f} "
            f"{r['median_cpu_s']:>7.2f} "
            f"{fmt(r['mem_ratio'], '.3f'):>6} {r['time_ratio']:>7.3f} {r['cpu_ratio']:>6.3f} "
            + (
                f"{c['loss']['rel']:>14.2e} {c['grad_hidden']['max_abs']:>11.2e} {c['grad_hidden']['rel']:>8.1e} "
                f"{c['grad_weight']['max_abs']:>11.2e} {c['grad_weight']['rel']:>8.1e} "
                f"{('ok' if all(c[k]['ok'] for k in c) else 'FAIL') if enforce else 'n/a':>5}"
                if c
                else ""
            )
        )
    print()
    print(
        "goals: chunked peak extra <= 0.25 x naive, time <= 1.0 x naive, grads within "
        f"{args.tol:g} (abs, or relative to max|grad| when that exceeds 1){'' if enforce else ' [not enforced: not plain fp32]'}"
    )
    for r in rows[1:]:
        c = r["check"]
        mem_goal = {None: "not measured", True: "met", False: "MISSED"}[r["meets_memory_goal"]]
        print(
            f"  chunk {r['chunk_size']}: memory goal {mem_goal}, "
            f"time goal {'met' if r['meets_time_goal'] else 'MISSED'}; loss naive={c['loss']['naive']:.6f} "
            f"chunked={c['loss']['chunked']:.6f}; max|grad_h|={c['grad_hidden']['ref_max']:.3e} "
            f"max|grad_W|={c['grad_weight']['ref_max']:.3e}"
        )

    grads_ok = all(all(r["check"][k]["ok"] for k in r["check"]) for r in rows[1:])
    goals_ok = all(r["meets_memory_goal"] is not False and r["meets_time_goal"] for r in rows[1:])
    if args.json:
        result = {
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": {
                "platform": platform.platform(),
                "processor": platform.processor(),
                "cpus": os.cpu_count(),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
            },
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "measure"},
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "mode": mode,
            "logits_mib": logits_mib,
            "weight_mib": weight_mib,
            "rows": rows,
            "grads_ok": grads_ok,
            "grad_check_enforced": enforce,
            "goals_ok": goals_ok,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    if enforce and not grads_ok:
        print("FAIL: chunked and naive gradients/loss differ beyond tolerance", file=sys.stderr)
        return 1
    if args.strict_goals and not goals_ok:
        print("FAIL: a chunk size misses the memory or time goal", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
