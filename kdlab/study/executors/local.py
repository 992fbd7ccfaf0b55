"""``kdlab study run`` (``--executor local``, the default): run a study's plan in this process in dependency order,
skip what is done, resume what was cut.

The study folder and the state of its runs: :mod:`kdlab.study.folder`. Shards: ``--shard K/N`` (1-based K) runs the
nodes whose group hashes to K; nodes of other shards that it needs (e.g. the teacher's SFT) are waited for, polling
the shared study folder. Every machine must see the same folder.
"""

from __future__ import annotations

import time
from pathlib import Path

from kdlab.errors import KdlabError
from kdlab.study.cost import format_seconds
from kdlab.study.executors.progress import Clock, RunSummary, describe_node
from kdlab.study.folder import node_status, prepare_study, record_run
from kdlab.study.kinds import is_done
from kdlab.study.nodes import Node
from kdlab.study.plan import Plan, build_plan


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"K/N"`` (1-based) -> (K - 1, N); None -> (0, 1)."""
    if not text:
        return 0, 1
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise KdlabError(f"--shard {text!r}: expected K/N, e.g. 2/4") from None
    if not 1 <= index <= count:
        raise KdlabError(f"--shard {text!r}: K must be between 1 and N")
    return index - 1, count


def run_study(
    spec_path,
    out=None,
    shard: str | None = None,
    dry_run: bool = False,
    poll: float = 30.0,
    max_wait: float | None = None,
) -> tuple[Path, RunSummary | None]:
    """``kdlab study run`` on this machine: returns (study folder, run summary or None after a dry run)."""
    shard_index = parse_shard(shard)
    if dry_run:
        from kdlab.study.executors import print_dry_run

        return print_dry_run("local", spec_path, out, shard_index), None
    spec, study_dir = prepare_study(spec_path, out)
    plan = build_plan(spec)
    return study_dir, run_plan(plan, study_dir, shard_index, poll=poll, max_wait=max_wait)


def run_plan(
    plan: Plan,
    study_dir: Path,
    shard: tuple[int, int] = (0, 1),
    poll: float = 30.0,
    max_wait: float | None = None,
    stop_after: int | None = None,
) -> RunSummary:
    """Run this shard's unfinished nodes in dependency order; failures are recorded and their dependents skipped.

    ``stop_after`` (for tests) stops after that many nodes have run in this session.
    """
    run = _ShardRun(plan, Path(study_dir), shard)
    while run.pending:
        ready = run.next_ready()
        run.skip_blocked()
        if ready is None:
            if not run.pending:
                break
            run.wait(poll, max_wait)
            continue
        run.start(ready)
        if stop_after is not None and run.summary.ran + run.summary.failed >= stop_after:
            break
    return run.summary.finish(f"shard {shard[0] + 1}/{shard[1]}", run.mine, run.study_dir, run.began)


class _ShardRun:
    """One shard's session: its nodes, those left to run, those that failed (or were skipped), and the counts."""

    def __init__(self, plan: Plan, study_dir: Path, shard: tuple[int, int]):
        self.plan, self.study_dir, self.by_id = plan, study_dir, plan.by_id()
        self.mine = plan.shard(*shard)
        self.summary, self.clock = RunSummary(), Clock(plan)
        self.pending = [node for node in self.mine if node_status(study_dir, node) != "done"]
        self.summary.done = len(self.mine) - len(self.pending)
        self.total = len(self.pending)
        self.failed: set[str] = set()
        self.waited_since: float | None = None
        self.began = time.time()
        print(
            f"kdlab study: {plan.spec.name}: {len(self.mine)} runs in shard {shard[0] + 1}/{shard[1]}, "
            f"{self.summary.done} done, {self.total} to run (estimated {format_seconds(self.clock.left(self.pending))})",
            flush=True,
        )

    def _deps_done(self, node: Node) -> bool:
        return all(is_done(self.by_id[dep], self.study_dir) for dep in node.deps)

    def next_ready(self) -> Node | None:
        """The first pending node whose dependencies are done and that no other process is running."""
        for node in self.pending:
            if any(dep in self.failed for dep in node.deps):
                continue
            if self._deps_done(node) and node_status(self.study_dir, node) != "running":
                return node
        return None

    def skip_blocked(self) -> None:
        """Drop the pending nodes that need a failed (or skipped) one, counting them as skipped."""
        for node in [node for node in self.pending if any(dep in self.failed for dep in node.deps)]:
            print(
                f"kdlab study: skipping {node.id}: it needs "
                f"{', '.join(dep for dep in node.deps if dep in self.failed)}, which failed",
                flush=True,
            )
            self.failed.add(node.id)
            self.pending.remove(node)
            self.summary.blocked += 1

    def wait(self, poll: float, max_wait: float | None) -> None:
        """Wait ``poll`` seconds for runs of other shards or processes (at most ``max_wait`` in a row)."""
        waiting = sorted(
            {dep for node in self.pending for dep in node.deps if not is_done(self.by_id[dep], self.study_dir)}
            | {node.id for node in self.pending if node_status(self.study_dir, node) == "running"}
        )
        self.waited_since = self.waited_since or time.time()
        if max_wait is not None and time.time() - self.waited_since > max_wait:
            raise KdlabError(
                f"waited {format_seconds(max_wait)} for {len(waiting)} runs of other shards or processes "
                f"(e.g. {waiting[0]}); is their machine running `kdlab study run` on this folder?"
            )
        print(
            f"kdlab study: waiting for {len(waiting)} runs elsewhere (e.g. {waiting[0]}); checking every {poll:g} s",
            flush=True,
        )
        time.sleep(poll)

    def start(self, node: Node) -> None:
        """Run ``node`` here and count it (done, or failed: its dependents are then skipped)."""
        self.waited_since = None
        self.pending.remove(node)
        clock = self.clock
        print(
            f"\nkdlab study: [{self.total - len(self.pending)}/{self.total}] {describe_node(node)}  ->  {node.id}\n"
            f"kdlab study: this run ~{format_seconds(clock.left([node]))}, "
            f"study left ~{format_seconds(clock.left(self.pending + [node]))}",
            flush=True,
        )
        began = time.time()
        if record_run(node, self.study_dir):
            self.summary.ran += 1
            clock.record(node, time.time() - began)
        else:
            self.failed.add(node.id)
            self.summary.failed += 1
