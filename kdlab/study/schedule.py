"""Expected wall time of a study on N GPUs: list scheduling over the plan's dependency graph.

Each unfinished node takes the plan's cost-model time (:meth:`kdlab.study.plan.Plan.seconds`) and the GPUs of its
kind (``resources``; a fractional request shares a GPU at full speed, nodes without GPUs run at once). Nodes are
started greedily, longest remaining path first (the critical-path, or "b-level", priority), whenever their
dependencies have finished and enough GPUs are free. The result is what an engine such as Ray or SLURM can reach
with that many GPUs under the cost model; it is never below the critical path, nor below total GPU time / N.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from kdlab.study.nodes import Node
from kdlab.study.plan import Plan


@dataclass
class Estimate:
    gpus: int
    wall_seconds: float  # list schedule
    total_seconds: float  # sum of the nodes' times (one GPU, one node at a time)
    critical_seconds: float  # longest dependency chain


def _children(nodes: list[Node]) -> dict[str, list[str]]:
    """Node id -> ids of the nodes (among ``nodes``) that depend on it."""
    children: dict[str, list[str]] = {node.id: [] for node in nodes}
    for node in nodes:
        for dep in node.deps:
            if dep in children:
                children[dep].append(node.id)
    return children


def _ranks(nodes: list[Node], seconds: dict[str, float], children: dict[str, list[str]]) -> dict[str, float]:
    """Longest path from each node to the end of the plan, its own time included."""
    rank: dict[str, float] = {}
    for node in reversed(nodes):  # plan order is topological
        rank[node.id] = seconds[node.id] + max((rank[child] for child in children[node.id]), default=0.0)
    return rank


def estimate(plan: Plan, nodes: list[Node], gpus: int) -> Estimate:
    """The list-scheduled wall time of ``nodes`` (a dependency-closed part of the plan, in plan order) on ``gpus``."""
    seconds = {node.id: plan.seconds(node) for node in nodes}
    need = {node.id: min(plan.spec.resources[node.kind].gpus, gpus) if plan.spec.resources else 1.0 for node in nodes}
    children = _children(nodes)
    rank = _ranks(nodes, seconds, children)
    waiting = {node.id: sum(dep in children for dep in node.deps) for node in nodes}
    ready = [(-rank[i], i) for i, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    running: list[tuple[float, str]] = []
    now, free = 0.0, float(gpus)
    while ready or running:
        skipped = []
        while ready:
            item = heapq.heappop(ready)
            if need[item[1]] <= free + 1e-9:
                free -= need[item[1]]
                heapq.heappush(running, (now + seconds[item[1]], item[1]))
            else:
                skipped.append(item)
        for item in skipped:
            heapq.heappush(ready, item)
        now, done = heapq.heappop(running)
        free += need[done]
        for child in children[done]:
            waiting[child] -= 1
            if waiting[child] == 0:
                heapq.heappush(ready, (-rank[child], child))
    return Estimate(gpus, now, sum(seconds.values()), max(rank.values(), default=0.0))


def format_estimates(plan: Plan, nodes: list[Node], gpu_counts=(1, 4, 8, 32)) -> str:
    """A table of expected wall times for several GPU counts."""
    from kdlab.study.cost import format_seconds

    lines = [
        f"expected wall time on N GPUs (list schedule over the dependency graph, {plan.spec.cost['tflops']:g} "
        "TFLOP/s per GPU, GPUs per run from `resources`):",
        f"{'GPUs':>6}{'wall time':>12}{'total / N':>12}{'critical path':>15}",
    ]
    for count in gpu_counts:
        est = estimate(plan, nodes, count)
        lines.append(
            f"{count:>6}{format_seconds(est.wall_seconds):>12}{format_seconds(est.total_seconds / count):>12}"
            f"{format_seconds(est.critical_seconds):>15}"
        )
    return "\n".join(lines)
