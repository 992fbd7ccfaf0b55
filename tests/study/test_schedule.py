"""Expected wall time on N GPUs: list scheduling over the plan's dependency graph."""

from pathlib import Path
from typing import ClassVar

import pytest

from kdlab.study.nodes import Node
from kdlab.study.plan import Plan, build_plan
from kdlab.study.resources import load_resources
from kdlab.study.schedule import estimate, format_estimates
from kdlab.study.spec import load_spec


class _Spec:
    """The two spec fields the estimate reads."""

    cost: ClassVar[dict] = {"tflops": 1e-12, "memory_gbps": 1.0}  # 1 FLOP per second: a node's flops are its seconds
    resources = load_resources({"eval": {"gpus": 0.5}}, "test")


def _plan(*nodes: tuple) -> Plan:
    return Plan(
        _Spec(), [Node(node_id, kind, {}, tuple(deps), flops=seconds) for node_id, kind, deps, seconds in nodes]
    )


def test_chain_and_fan_out():
    # a (10 s) -> b, c, d (5 s each) -> e (1 s, half a GPU)
    plan = _plan(
        ("a", "kd", (), 10),
        ("b", "kd", ("a",), 5),
        ("c", "kd", ("a",), 5),
        ("d", "kd", ("a",), 5),
        ("e", "eval", ("b", "c", "d"), 1),
    )
    one, two, three = (estimate(plan, plan.nodes, n) for n in (1, 2, 3))
    assert one.wall_seconds == 26 and one.total_seconds == 26 and one.critical_seconds == 16
    assert two.wall_seconds == 21 and three.wall_seconds == 16  # never below the critical path


def test_longest_path_first():
    # with 1 GPU the order does not matter; with 2, starting the long chain first saves time
    plan = _plan(("short1", "kd", (), 4), ("short2", "kd", (), 4), ("long", "kd", (), 4), ("tail", "kd", ("long",), 8))
    assert estimate(plan, plan.nodes, 2).wall_seconds == 12  # long+tail on one GPU, the shorts on the other


def test_fractional_gpus_share():
    plan = _plan(("e1", "eval", (), 10), ("e2", "eval", (), 10))
    assert estimate(plan, plan.nodes, 1).wall_seconds == 10


@pytest.mark.parametrize("gpus", [4, 8, 32])
def test_paper_spec_bounds(gpus):
    path = Path(__file__).resolve().parents[2] / "configs" / "studies" / "paper-qwen2.5.yaml"
    plan = build_plan(load_spec(path, check_files=False))
    est = estimate(plan, plan.nodes, gpus)
    assert est.wall_seconds >= max(est.critical_seconds, est.total_seconds / gpus * 0.9) * (1 - 1e-9)
    assert est.wall_seconds <= est.total_seconds / gpus + est.critical_seconds  # Graham's bound
    assert "32" in format_estimates(plan, plan.nodes)
