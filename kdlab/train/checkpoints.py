"""Training checkpoints that hold no pickles: tensors in ``state.safetensors``, everything else in ``state.json``.

A checkpoint folder ``checkpoints/step-N/`` holds::

    state.safetensors  the trainable weights (``trainable/<name>``), the optimizer's per-parameter state tensors
                       (``optimizer/<index>/<key>``) and the torch RNG state (``rng/torch``, uint8)
    state.json         format, step, scheduler state, optimizer param groups and non-tensor state, the size of
                       state.safetensors and a random id that its header repeats (so the two files belong together)

Reading a checkpoint never runs code (safetensors and JSON are data), and everything is read and checked against
the model, optimizer and scheduler (names, shapes, dtypes, sizes, step) before anything is applied, so an unusable
checkpoint leaves the training state untouched. :func:`read_checkpoint` raises :class:`CheckpointError` for a folder
with a missing, truncated, unreadable or mismatched file; the training loop then tries the previous checkpoint.
A checkpoint written by kdlab before this format (``state.pt``, a pickle) is never unpickled (loading a pickle can
run arbitrary code): it is unusable like a damaged one.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

FORMAT = "kdlab-checkpoint-1"
TENSORS, META, LEGACY = "state.safetensors", "state.json", "state.pt"
_FOLDER = re.compile(r"step-(\d+)")


class CheckpointError(Exception):
    """A checkpoint folder that cannot be used; the message says why (one line)."""


@dataclass
class CheckpointState:
    """Everything a checkpoint restores, read and checked, not yet applied."""

    step: int
    trainable: dict[str, torch.Tensor]
    optimizer: dict
    scheduler: dict
    torch_rng: torch.Tensor


def checkpoint_folders(run_dir: Path) -> list[Path]:
    """The ``checkpoints/step-N`` folders of a run, oldest (lowest N) first."""
    found = [
        (int(match.group(1)), path)
        for path in (Path(run_dir) / "checkpoints").glob("step-*")
        if (match := _FOLDER.fullmatch(path.name)) and path.is_dir()
    ]
    return [path for _, path in sorted(found)]


def folder_step(path: Path) -> int:
    """N of a ``step-N`` folder."""
    return int(_FOLDER.fullmatch(path.name).group(1))


def write_checkpoint(folder: Path, state: CheckpointState) -> None:
    """Write ``state`` into the (new, empty) folder ``folder``: tensors to safetensors, the rest to JSON."""
    tensors = {f"trainable/{name}": value.detach().cpu().contiguous() for name, value in state.trainable.items()}
    values: dict[str, dict] = {}
    for index, entries in state.optimizer["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer/{index}/{key}"] = value.detach().cpu().contiguous()
            else:
                values.setdefault(str(index), {})[key] = value
    tensors["rng/torch"] = state.torch_rng.cpu()
    checkpoint_id = uuid.uuid4().hex
    save_file(tensors, str(folder / TENSORS), metadata={"format": FORMAT, "id": checkpoint_id})
    meta = {
        "format": FORMAT,
        "id": checkpoint_id,
        "step": state.step,
        "scheduler": state.scheduler,
        "optimizer": {"param_groups": state.optimizer["param_groups"], "state_values": values},
        "tensor_bytes": (folder / TENSORS).stat().st_size,
    }
    (folder / META).write_text(json.dumps(meta, indent=1, allow_nan=False) + "\n", encoding="utf-8")


def read_checkpoint(
    folder: Path, params: dict[str, torch.Tensor], optimizer_template: dict, scheduler_template: dict
) -> CheckpointState:
    """Read and check the checkpoint in ``folder`` against the trainable ``params`` (name -> tensor, in optimizer
    order) and the current optimizer's and scheduler's ``state_dict()``; :class:`CheckpointError` if unusable."""
    meta, tensors = _read_files(folder)
    try:
        if meta.get("format") != FORMAT or meta["step"] != folder_step(folder):
            raise CheckpointError(f"{META} is not a kdlab checkpoint of step {folder_step(folder)}")
        trainable = {
            key.removeprefix("trainable/"): value for key, value in tensors.items() if key.startswith("trainable/")
        }
        _check_tensors(trainable, params, "trainable weights")
        optimizer = _optimizer_state(meta["optimizer"], tensors, list(params.values()), optimizer_template)
        _check_scheduler(meta["scheduler"], scheduler_template)
        rng = tensors.get("rng/torch")
        if rng is None or rng.dtype != torch.uint8 or rng.shape != torch.get_rng_state().shape:
            raise CheckpointError("the RNG state is missing or malformed")
        if len(tensors) != len(trainable) + _count(optimizer) + 1:
            raise CheckpointError(f"{TENSORS} holds unexpected tensors")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{META} is malformed ({type(exc).__name__}: {exc})") from None
    return CheckpointState(meta["step"], trainable, optimizer, meta["scheduler"], rng)


def _read_files(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The parsed state.json and the tensors of state.safetensors (a state.pt alone is refused, never read)."""
    if not (folder / META).is_file() and (folder / LEGACY).exists():
        raise CheckpointError(f"old checkpoint format ({LEGACY}, a pickle: never loaded, as loading it can run code)")
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
        if (folder / TENSORS).stat().st_size != meta.get("tensor_bytes"):
            raise CheckpointError(f"{TENSORS} does not have the size recorded in {META} (truncated or replaced)")
        with safe_open(str(folder / TENSORS), framework="pt") as handle:
            if (handle.metadata() or {}).get("id") != meta.get("id"):
                raise CheckpointError(f"{TENSORS} and {META} come from different checkpoints")
            return meta, {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not iterable)
    except (OSError, UnicodeDecodeError, ValueError, SafetensorError) as exc:
        raise CheckpointError(f"unreadable ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None


def _check_tensors(found: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str) -> None:
    if found.keys() != expected.keys():
        raise CheckpointError(f"its {what} do not match the model's ({len(found)} vs {len(expected)} tensors)")
    for name, value in found.items():
        if value.shape != expected[name].shape or value.dtype != expected[name].dtype:
            raise CheckpointError(f"{what} '{name}': {tuple(value.shape)} {value.dtype} does not fit the model")


def _optimizer_state(saved: dict, tensors: dict, params: list[torch.Tensor], template: dict) -> dict:
    """The optimizer ``state_dict`` rebuilt from state.json and the ``optimizer/<index>/<key>`` tensors; tuples of
    the current param groups (e.g. AdamW's ``betas``) stay tuples."""
    groups = saved["param_groups"]
    if [group["params"] for group in groups] != [group["params"] for group in template["param_groups"]]:
        raise CheckpointError("its optimizer parameter groups do not match the model's")
    groups = [
        {key: tuple(value) if isinstance(current.get(key), tuple) else value for key, value in group.items()}
        for group, current in zip(groups, template["param_groups"], strict=True)
    ]
    state: dict[int, dict] = {int(index): dict(values) for index, values in saved["state_values"].items()}
    for key, value in tensors.items():
        if key.startswith("optimizer/"):
            _, index, name = key.split("/", 2)
            state.setdefault(int(index), {})[name] = value
    for index, entries in state.items():
        if not 0 <= index < len(params):
            raise CheckpointError(f"optimizer state for parameter {index} of {len(params)}")
        for name, value in entries.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != params[index].shape:
                raise CheckpointError(f"optimizer state '{index}/{name}' does not fit its parameter")
    return {"state": state, "param_groups": groups}


def _check_scheduler(saved: dict, template: dict) -> None:
    """The keys every LR scheduler state has, and as many ``lr_lambdas`` (None or attribute dicts) as this run's;
    other keys may differ between torch versions (``load_state_dict`` sets them as attributes)."""
    lambdas = saved.get("lr_lambdas", template.get("lr_lambdas")) if isinstance(saved, dict) else None
    if (
        not isinstance(saved, dict)
        or not {"last_epoch", "base_lrs"} <= set(saved)
        or (lambdas is not None and len(lambdas) != len(template.get("lr_lambdas") or ()))
        or not all(value is None or isinstance(value, dict) for value in lambdas or ())
    ):
        raise CheckpointError("the scheduler state does not fit this run")


def _count(optimizer: dict) -> int:
    return sum(isinstance(value, torch.Tensor) for entries in optimizer["state"].values() for value in entries.values())
