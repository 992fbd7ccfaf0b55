"""A run of a study plan (a "node"): what it does, its folder under the study, and the readable names of folders.

A run's folder is ``<kind folder>/<slug>-<h>`` (kind folders: :mod:`kdlab.study.kinds`; the hash ``<h>``:
:mod:`kdlab.study.training_runs`). Each node belongs to a shard group (the training run it evaluates, or itself), so
``--shard K/N`` keeps a run and its evaluation on the same machine.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from kdlab.errors import KdlabError
from kdlab.study.runmeta import RunMeta

STUDY_PREFIX = "study:"  # parameter values that are folders inside the study
SELECTED = "selected"  # a select node's link (in its folder) to the run it chose


@dataclass
class Node:
    """One run of the study: ``params`` say what to do (study-relative paths are ``study:`` prefixed)."""

    id: str
    kind: str
    params: dict
    deps: tuple[str, ...] = ()
    meta: RunMeta = field(default_factory=RunMeta)
    group: str = ""
    flops: float = 0.0
    read_bytes: float = 0.0  # bytes a generation reads from memory while decoding (kdlab.study.cost.Generation)

    def folder(self, study_dir: Path) -> Path:
        return inside_study(study_dir, self.id)

    def shard(self, count: int) -> int:
        """Deterministic shard (0-based) of this node's group among ``count`` shards."""
        return zlib.crc32((self.group or self.id).encode()) % count


def inside_study(study_dir: Path, relative: str) -> Path:
    """``study_dir / relative``, refused unless it names something inside the study folder.

    Defence in depth behind the spec's name rule (:func:`kdlab.study.spec.values.check_name`): a run folder built
    from a name holding ``..`` or an absolute path would write outside the study. The check is on the normalised
    path, not on symlinks (a study may keep, e.g., ``kd/`` on another disk through a link).
    """
    root = os.path.abspath(study_dir)
    path = os.path.abspath(os.path.join(root, relative))
    if path == root or os.path.commonpath([root, path]) != root:
        raise KdlabError(f"study plan: {relative!r} is not inside the study folder {study_dir}")
    return Path(study_dir) / relative


def study_path(node_id: str, *parts: str) -> str:
    """A parameter value naming a folder (or file) inside the study: ``study:<node id>/<parts>``."""
    return STUDY_PREFIX + "/".join((node_id,) + parts)


def resolve(value, study_dir: Path):
    """A parameter value with ``study:`` folders turned into real paths."""
    if isinstance(value, str) and value.startswith(STUDY_PREFIX):
        return str(inside_study(study_dir, value[len(STUDY_PREFIX) :]))
    return value


def run_name(node: Node) -> str:
    """A node's folder name without its kind folder and hash: ``kd/a.b.fkl.s0-1a2b3c4d`` -> ``a.b.fkl.s0``."""
    return node.id.split("/", 1)[1].rsplit("-", 1)[0]


def kd_slug(
    teacher: str,
    student: str,
    domain: str,
    method: str,
    temperature: float | None,
    noise: float,
    base: bool,
    seed: int,
    chain: str | None = None,
) -> str:
    """The readable part of a KD run's folder name; a later stage names the stages before it
    (``....after-sft.s0``, ``....after-sft-fkl.s0``)."""
    return ".".join(
        [teacher, student, domain, method]
        + ([f"t{temperature:g}"] if temperature is not None else [])
        + ([f"noise{noise:g}"] if noise else [])
        + (["base"] if base else [])
        + ([f"after-{chain.replace('>', '-')}"] if chain else [])
        + [f"s{seed}"]
    )


def setting_tag(overrides: dict | None) -> str:
    """A candidate's tuned settings in its folder name: ``{"train.lr": 3e-4}`` -> ``.lr0.0003``."""

    def text(value) -> str:
        return f"{value:g}" if isinstance(value, float) else str(value)

    return "".join(f".{key.split('.', 1)[1]}{text(value)}" for key, value in (overrides or {}).items())
