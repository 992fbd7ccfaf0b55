"""What every executor prints about a study: a run in words, the plan with each run's status and estimate (the dry
run), the ``kdlab study status`` table, the time left, and the closing summary of a session."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from kdlab.study.cost import format_seconds
from kdlab.study.folder import STATUSES, node_status, read_state, state_path
from kdlab.study.kinds import KIND_ORDER, is_done
from kdlab.study.nodes import Node
from kdlab.study.plan import Plan
from kdlab.study.spec import stage_chain


@dataclass
class RunSummary:
    done: int = 0
    ran: int = 0
    failed: int = 0
    blocked: int = 0
    seconds: float = 0.0

    def finish(self, where: str, nodes: list[Node], study_dir: Path, began: float) -> RunSummary:
        """Count the done nodes among ``nodes`` and print the session's closing line (``where``: shard, engine)."""
        self.seconds = time.time() - began
        self.done = sum(is_done(node, study_dir) for node in nodes)
        print(
            f"\nkdlab study: {where}: {self.done}/{len(nodes)} runs done ({self.ran} run now in "
            f"{format_seconds(self.seconds)}), {self.failed} failed, {self.blocked} skipped",
            flush=True,
        )
        return self


class Clock:
    """Estimated time left: the plan's FLOP estimate, calibrated by the runs finished in this session.

    Each kind of run (training, evaluation, ...) gets its own correction factor once one of its runs has been
    measured; kinds not measured yet use the factor of all measured runs.
    """

    def __init__(self, plan: Plan):
        self.plan = plan
        self.estimated: dict[str, float] = {}
        self.measured: dict[str, float] = {}

    def record(self, node: Node, seconds: float) -> None:
        if node.flops > 0:
            self.estimated[node.kind] = self.estimated.get(node.kind, 0.0) + self.plan.seconds(node)
            self.measured[node.kind] = self.measured.get(node.kind, 0.0) + seconds

    def scale(self, kind: str | None = None) -> float:
        if kind in self.estimated and self.estimated[kind] > 1.0:
            return self.measured[kind] / self.estimated[kind]
        estimated = sum(self.estimated.values())
        return sum(self.measured.values()) / estimated if estimated > 1.0 else 1.0

    def left(self, nodes) -> float:
        return sum(self.plan.seconds(node) * self.scale(node.kind) for node in nodes) + 3.0 * len(nodes)


def describe_node(node: Node) -> str:
    """A node for the progress lines: ``kd teacher (base) -> student fkl tau=2 noise=1 seed 0 [domain]`` (the run
    itself in words: :meth:`kdlab.study.runmeta.RunMeta.label`)."""
    m = node.meta
    teacher = f"{m.teacher}{' (base)' if m.teacher_kind == 'base' else ''}"
    if m.role == "student-kd":
        what = f"{teacher} -> {m.student} {m.label(teacher=False)} seed {m.seed}"
    elif m.role == "student-sft":
        what = f"{m.student} {m.label()} seed {m.seed}"
    else:
        what = teacher if m.teacher else m.model
    return " ".join(part for part in (node.kind, what, f"[{m.domain}]" if m.domain else None) if part)


def generation_backends(plan: Plan) -> str:
    """The backends the plan's generation estimates assume (:func:`kdlab.study.cost.assumed_backend`), in words."""
    from kdlab.backends import AUTO_MIN_TOKENS
    from kdlab.vllm_engine import vllm_version

    asked = sorted({node.params["backend"] for node in plan.nodes if "backend" in node.params})
    words = {
        "auto": f"vLLM for jobs of {AUTO_MIN_TOKENS}+ new tokens, else HF (auto)"
        if vllm_version() is not None
        else "HF (auto; vLLM is not installed here)",
        "hf": "HF",
        "vllm": "vLLM",
    }
    return "; ".join(words[name] for name in asked) or "nothing (no generation)"


def format_plan(plan: Plan, study_dir: Path, shard: tuple[int, int] = (0, 1)) -> str:
    """The runs of this shard with their status and estimated time, then totals per kind."""
    nodes = plan.shard(*shard)
    lines = [
        f"study {plan.spec.name}: {len(plan.nodes)} runs"
        + (f", shard {shard[0] + 1}/{shard[1]}: {len(nodes)}" if shard[1] > 1 else "")
        + f"; estimates at {plan.spec.cost['tflops']:g} TFLOP/s and {plan.spec.cost['memory_gbps']:g} GB/s effective "
        f"(cost in the spec); generation priced on {generation_backends(plan)}",
        "",
    ]
    width = max((len(node.id) for node in nodes), default=10)
    lines.append(f"{'status':<12}{'run':<{width + 2}}{'est.':>9}  what")
    for node in nodes:
        lines.append(
            f"{node_status(study_dir, node):<12}{node.id:<{width + 2}}{format_seconds(plan.seconds(node)):>9}  "
            f"{describe_node(node)}"
        )
    lines += ["", f"{'kind':<14}{'runs':>6}{'left':>7}{'est. left':>11}"]
    left_total = 0.0
    for kind in KIND_ORDER:
        group = [node for node in nodes if node.kind == kind]
        if not group:
            continue
        left = [node for node in group if not is_done(node, study_dir)]
        seconds = sum(plan.seconds(node) for node in left)
        left_total += seconds
        lines.append(f"{kind:<14}{len(group):>6}{len(left):>7}{format_seconds(seconds):>11}")
    flops = sum(node.flops for node in nodes if not is_done(node, study_dir))
    lines.append(
        f"{'total':<14}{len(nodes):>6}{sum(not is_done(n, study_dir) for n in nodes):>7}{format_seconds(left_total):>11}"
        f"   ({flops:.2e} FLOP left)"
    )
    return "\n".join(lines)


def study_status(plan: Plan, study_dir: Path) -> dict[str, list[Node]]:
    """Nodes grouped by status (``done``, ``running``, ``failed``, ``interrupted``, ``pending``)."""
    groups: dict[str, list[Node]] = {status: [] for status in STATUSES}
    for node in plan.nodes:
        groups[node_status(study_dir, node)].append(node)
    return groups


def format_status(plan: Plan, study_dir: Path) -> str:
    groups = study_status(plan, study_dir)
    lines = [f"study {plan.spec.name} ({study_dir}): " + ", ".join(f"{len(groups[s])} {s}" for s in STATUSES)]
    chains = [" -> ".join(stage_chain(plan.spec.methods, m.name)) for m in plan.spec.methods.values() if m.init]
    if chains:  # a staged study: each later stage starts from the selected run of the stage before
        lines.append("stages: " + "; ".join(chains))
    lines.append(f"{'kind':<14}" + "".join(f"{s:>13}" for s in STATUSES))
    for kind in KIND_ORDER:
        counts = [sum(node.kind == kind for node in groups[s]) for s in STATUSES]
        if sum(counts):
            lines.append(f"{kind:<14}" + "".join(f"{c:>13}" for c in counts))
    for node in groups["running"]:
        state = read_state(study_dir, node)
        lines.append(
            f"running      {node.id} on {state.get('host')} (pid {state.get('pid')}) for "
            f"{format_seconds(time.time() - float(state.get('started', time.time())))}"
        )
    for node in groups["failed"]:
        lines.append(
            f"failed       {node.id}: {read_state(study_dir, node).get('error')} (log: {state_path(study_dir, node, '.log')})"
        )
    for node in groups["interrupted"]:
        lines.append(f"interrupted  {node.id} (re-run `kdlab study run` to resume it)")
    left = [node for status in ("running", "interrupted", "pending", "failed") for node in groups[status]]
    lines.append(f"estimated time left: {format_seconds(sum(plan.seconds(node) for node in left))}")
    return "\n".join(lines)
