"""The kinds of run in a study plan, one record each: its study sub-folder, its done file, its runner and the GPUs it
asks for by default. Every other module reads the kinds from :data:`KINDS`.

Runs ("nodes") and their folders under the study folder, in dependency order::

    models/<student>-<h>                   prune: a student cut from a loadable model
    data/<domain>-<h>                      with tuning: train.json (training minus validation) and the validation split
    teacher/<teacher>.<domain>-<h>         teacher SFT on the domain's training data
    answers/<teacher>.<domain>[.base]-<h>  SeqKD data: the teacher's greedy answers to the training prompts
    cache/<teacher>.<domain>[.base]-<h>    teacher signal cache (top-k log-probs), shared by every KD run using it
    sft/<student>.<domain>.s<seed>-<h>     student SFT baseline
    kd/<teacher>.<student>.<domain>.<method>[.t<tau>][.noise<sigma>][.base].s<seed>-<h>   one KD run
    val/<run folder name>-<h>              with tuning: a candidate run scored on the validation split
    select/<run name>-<h>                  with tuning: the best candidate by validation accuracy (``selected`` links to it)
    eval/<run folder name>-<h>             evaluation of a teacher, base teacher, SFT or KD run on the domain's tasks
    fidelity/<run folder name>-<h>         the student's fidelity to the teacher it learned from (or the teacher, for SFT)

A kind's done file is written last, atomically: a node whose done file exists is done; any other existing folder is an
interrupted run, which its runner resumes. Default GPUs (``resources`` in the spec overrides them, see
:mod:`kdlab.study.resources`): training, teacher answers, caches and evaluations 1; fidelity 0.5 (it loads two models
for a short pass); pruning, validation splits and selections none.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kdlab.study import node_runners as run
from kdlab.study.nodes import Node, resolve


@dataclass(frozen=True)
class Kind:
    """One kind of run: ``folder`` under the study, ``done_file`` in the run's folder, ``runner(params, out,
    study_dir)`` and the ``gpus`` a run asks for by default."""

    name: str
    folder: str
    done_file: str
    runner: Callable[[dict, Path, Path], None]
    gpus: float


KINDS = {
    kind.name: kind
    for kind in (  # dependency order
        Kind("prune", "models", "config.json", run.prune, gpus=0.0),
        Kind("split", "data", "split.json", run.split, gpus=0.0),
        Kind("teacher-sft", "teacher", "result.json", run.sft, gpus=1.0),
        Kind("answers", "answers", "train.json", run.answers, gpus=1.0),
        Kind("cache", "cache", "manifest.json", run.cache, gpus=1.0),
        Kind("student-sft", "sft", "result.json", run.sft, gpus=1.0),
        Kind("kd", "kd", "result.json", run.kd, gpus=1.0),
        Kind("val-eval", "val", "metrics.json", run.evaluation, gpus=1.0),
        Kind("select", "select", "selection.json", run.select, gpus=0.0),
        Kind("eval", "eval", "metrics.json", run.evaluation_to_card, gpus=1.0),
        Kind("fidelity", "fidelity", "fidelity.json", run.fidelity, gpus=0.5),
    )
}
KIND_ORDER = tuple(KINDS)


def is_done(node: Node, study_dir: Path) -> bool:
    """Whether ``node``'s done file exists."""
    return (node.folder(study_dir) / KINDS[node.kind].done_file).is_file()


def unfinished(nodes: list[Node], study_dir: Path) -> list[Node]:
    """The nodes (in their order) that are not done."""
    return [node for node in nodes if not is_done(node, study_dir)]


def execute(node: Node, study_dir: Path) -> None:
    """Run ``node`` into its folder (resuming it if it was interrupted)."""
    study_dir = Path(study_dir)
    out = node.folder(study_dir)
    params = {key: resolve(value, study_dir) for key, value in node.params.items()}
    try:
        KINDS[node.kind].runner(params, out, study_dir)
    finally:
        gc.collect()
