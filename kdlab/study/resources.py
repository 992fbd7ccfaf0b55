"""What each kind of study run needs from a cluster (``resources``) and how SLURM jobs are submitted (``slurm``).

Two optional sections of a study spec, read by the Ray and SLURM executors (the local executor ignores them)::

    resources:                  # per kind of run: gpus (fractions share a GPU on Ray), cpus, memory_gb, time_min
      kd: {gpus: 1}
      eval: {gpus: 1}
      fidelity: {gpus: 0.5}
      teacher-sft: {gpus: 1, memory_gb: 80, time_min: 600}
    slurm:                      # sbatch settings of every job (flags of `kdlab study run` override them)
      partition: gpu
      account: null
      qos: null
      time_min: 240             # default time limit of a job, minutes (resources.<kind>.time_min overrides it)
      setup: ["source .venv/bin/activate"]   # shell lines run before each job
      additional: {constraint: h100}         # any other #SBATCH flag

Defaults: each kind's GPUs in :data:`kdlab.study.kinds.KINDS`, 1 CPU each. A run is one process on one GPU, so
``gpus`` is at most 1. On SLURM a fractional request takes one whole GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

from kdlab.errors import KdlabError
from kdlab.study.kinds import KIND_ORDER, KINDS

RESOURCE_KEYS = {"gpus", "cpus", "memory_gb", "time_min"}
SLURM_DEFAULTS = {"partition": None, "account": None, "qos": None, "time_min": 240, "setup": [], "additional": {}}


@dataclass(frozen=True)
class Need:
    """What one run asks of a cluster."""

    gpus: float = 0.0
    cpus: float = 1.0
    memory_gb: float | None = None
    time_min: int | None = None


def _number(value, where: str, low: float, high: float | None = None) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or value < low
        or (high is not None and value > high)
    ):
        bound = f"between {low:g} and {high:g}" if high is not None else f">= {low:g}"
        raise KdlabError(f"{where}: expected a number {bound}, got {value!r}")
    return float(value)


def load_resources(data, where: str) -> dict[str, Need]:
    """The ``resources`` section: a :class:`Need` for every kind of run (defaults filled in)."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise KdlabError(f"{where}: expected a mapping of run kinds, got {type(data).__name__}")
    unknown = sorted(set(data) - set(KIND_ORDER))
    if unknown:
        raise KdlabError(
            f"{where}: unknown run kind(s) {', '.join(map(str, unknown))} (known: {', '.join(KIND_ORDER)})"
        )
    needs = {}
    for kind in KIND_ORDER:
        entry = data.get(kind) or {}
        here = f"{where}.{kind}"
        if not isinstance(entry, dict):
            raise KdlabError(f"{here}: expected a mapping such as {{gpus: 1}}, got {entry!r}")
        bad = sorted(set(entry) - RESOURCE_KEYS)
        if bad:
            raise KdlabError(
                f"{here}: unknown key(s) {', '.join(map(str, bad))} (known: {', '.join(sorted(RESOURCE_KEYS))})"
            )
        needs[kind] = Need(
            gpus=_number(entry.get("gpus", KINDS[kind].gpus), f"{here}.gpus", 0.0, 1.0),
            cpus=_number(entry.get("cpus", 1), f"{here}.cpus", 0.0),
            memory_gb=_number(entry["memory_gb"], f"{here}.memory_gb", 0.0)
            if entry.get("memory_gb") is not None
            else None,
            time_min=int(_number(entry["time_min"], f"{here}.time_min", 1.0))
            if entry.get("time_min") is not None
            else None,
        )
    return needs


def load_slurm(data, where: str) -> dict:
    """The ``slurm`` section with its defaults."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise KdlabError(f"{where}: expected a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - set(SLURM_DEFAULTS))
    if unknown:
        raise KdlabError(
            f"{where}: unknown key(s) {', '.join(map(str, unknown))} (known: {', '.join(sorted(SLURM_DEFAULTS))})"
        )
    out = {**SLURM_DEFAULTS, **data}
    out["time_min"] = int(_number(out["time_min"], f"{where}.time_min", 1.0))
    if not isinstance(out["setup"], list) or not all(isinstance(line, str) for line in out["setup"]):
        raise KdlabError(f"{where}.setup: expected a list of shell lines, got {out['setup']!r}")
    if not isinstance(out["additional"], dict):
        raise KdlabError(f"{where}.additional: expected a mapping of sbatch flags, got {out['additional']!r}")
    return out
