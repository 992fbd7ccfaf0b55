"""The training loop shared by SFT and KD: data order, exact token normalisation, checkpoints, resume, logs.

One optimizer step = ``grad_accum`` micro-batches on each of ``W`` processes. Each micro-batch's objective returns
the SUM of its per-token losses over response tokens; the loop divides by the number of response tokens of the
whole step (all micro-batches, all processes), so the loss is the mean over response tokens whatever the
accumulation or the number of processes (DDP averages gradients over processes, hence the factor ``W``).

Data order: in epoch ``e`` the examples are permuted with ``seed`` and ``e``, cut into micro-batches, and process
``r`` takes micro-batches ``r, r + W, ...``; so processes see different data and the order is reproducible.
Resuming at step ``k`` skips the first ``k`` steps of that schedule.

A step whose loss or gradient norm is not finite stops the run before the optimizer step, with a
:class:`~kdlab.errors.KdlabError` naming the step and the last good checkpoint: no final model, no result.json.

Run folder layout::

    config.yaml          the resolved config
    inputs.json          content fingerprints of the local inputs (kdlab.train.run_inputs): changed ones stop a resume
    log.csv              step, epoch, loss, lr, tokens, tokens_per_s, elapsed_s (one row per log step)
    checkpoints/step-N/  trainable weights, optimizer, scheduler, RNG state: safetensors + JSON, no pickle (written
                         atomically; kdlab.train.checkpoints); a damaged one is skipped for the one before
    final/               the LoRA adapter or full model, with the tokenizer and a model card README.md (written atomically)
    result.json          summary, written last: its presence marks the run complete
    trackers/            TensorBoard / MLflow / W&B files when train.report_to names them (kdlab.train.trackers)
"""

from __future__ import annotations

import csv
import io
import math
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from kdlab.config import RunConfig
from kdlab.data.tokenize import Encoded, collate, count_response_tokens
from kdlab.errors import KdlabError
from kdlab.io import atomic_dir, atomic_write_json, atomic_write_text
from kdlab.model_card import card_text, logged_tokens
from kdlab.models.load import quiet_loading
from kdlab.precision import resolve_precision
from kdlab.train.checkpoints import (
    CheckpointError,
    CheckpointState,
    checkpoint_folders,
    folder_step,
    read_checkpoint,
    write_checkpoint,
)
from kdlab.train.trackers import prepare_resume, step_metrics

LOG_FIELDS = ["step", "epoch", "loss", "lr", "tokens", "tokens_per_s", "elapsed_s"]

#: objective(model, batch, step) -> sum of per-token losses over the batch's response tokens
Objective = Callable[[torch.nn.Module, dict, int], torch.Tensor]
#: batch_hook(model, batches, step) -> batches: a step's collated micro-batches before training on them (e.g.
#: :class:`kdlab.train.on_policy.OnPolicySampler` replaces their responses by the student's samples)
BatchHook = Callable[[torch.nn.Module, list, int], list]


@dataclass
class Schedule:
    """Which examples each optimizer step of this process uses."""

    examples: int
    batch_size: int
    grad_accum: int
    world_size: int
    rank: int
    seed: int

    @property
    def micro_batches_per_epoch(self) -> int:
        """Micro-batches per process per epoch (equal on every process; a ragged tail is dropped)."""
        return max(1, math.ceil(self.examples / self.batch_size) // self.world_size)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.micro_batches_per_epoch / self.grad_accum)

    def total_steps(self, epochs: float, max_steps: int) -> int:
        return max_steps if max_steps > 0 else max(1, math.ceil(epochs * self.steps_per_epoch))

    def epoch_micro_batches(self, epoch: int) -> list[list[int]]:
        order = np.random.default_rng([self.seed, epoch]).permutation(self.examples).tolist()
        batches = [order[start : start + self.batch_size] for start in range(0, len(order), self.batch_size)]
        if len(batches) < self.world_size:  # fewer batches than processes: reuse examples
            batches = (batches * self.world_size)[: self.world_size]
        mine = batches[self.rank :: self.world_size]
        return mine[: self.micro_batches_per_epoch]

    def step_batches(self, start_step: int, total_steps: int) -> Iterator[tuple[int, int, list[list[int]]]]:
        """Yield (step, epoch, micro-batches) for steps ``start_step + 1 .. total_steps``."""
        step, epoch = 0, 0
        while True:
            batches = self.epoch_micro_batches(epoch)
            for start in range(0, len(batches), self.grad_accum):
                step += 1
                if step > total_steps:
                    return
                if step > start_step:
                    yield step, epoch, batches[start : start + self.grad_accum]
            epoch += 1


def make_accelerator(config: RunConfig, run_dir: Path):
    """A fresh Accelerator for this run. Runs executed one after another in one process (a study, the tests) may
    differ in precision: accelerate keeps its state in process-wide singletons, so that state is reset first (the
    process group of a multi-process launch, PartialState, is kept)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import ProjectConfiguration

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    from kdlab.train.trackers import build_trackers

    trackers = build_trackers(config.train.report_to, run_dir)
    return Accelerator(
        cpu=not _has_accelerator(),  # on CPU, multi-process runs (torchrun / accelerate launch) use gloo
        mixed_precision=resolve_precision(config.train.precision),
        log_with=trackers or None,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "trackers")),
    )


def _has_accelerator() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return torch.cuda.is_available() or bool(mps and mps.is_available())


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The parameters that train (LoRA weights, or everything in full fine-tuning), on CPU."""
    return {name: param.detach().cpu().clone() for name, param in model.named_parameters() if param.requires_grad}


class Trainer:
    """Runs the optimisation of one run; see the module docstring for the step and folder semantics."""

    def __init__(
        self,
        config: RunConfig,
        run_dir: Path,
        model,
        tokenizer,
        dataset: list[Encoded],
        objective: Objective,
        accelerator,
        batch_hook: BatchHook | None = None,
    ):
        self.config, self.run_dir, self.tokenizer = config, run_dir, tokenizer
        self.dataset, self.objective, self.batch_hook = dataset, objective, batch_hook
        self.loss_parts: dict | None = None  # the last step's KD and CE parts (KD objectives; see _step)
        self.last_checkpoint = 0  # step of the last checkpoint restored or written (0: none)
        self.session_seconds = 0.0  # set by train(): the time this session trained
        self.accelerator = accelerator
        train = config.train
        self.schedule = Schedule(
            len(dataset),
            train.batch_size,
            train.grad_accum,
            accelerator.num_processes,
            accelerator.process_index,
            train.seed,
        )
        self.total_steps = self.schedule.total_steps(train.epochs, train.max_steps)
        params = [param for param in model.parameters() if param.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)
        from transformers import get_linear_schedule_with_warmup

        self.scheduler = get_linear_schedule_with_warmup(
            optimizer, round(train.warmup_ratio * self.total_steps), self.total_steps
        )
        self.model, self.optimizer = accelerator.prepare(model, optimizer)

    # --- checkpoints --------------------------------------------------------------------------------------------
    def save_checkpoint(self, step: int) -> None:
        """Write ``checkpoints/step-N`` (atomically), then drop the oldest beyond ``train.keep_checkpoints`` and any
        later than ``step`` (left by an earlier session whose checkpoint could not be used: now superseded)."""
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            state = CheckpointState(
                step,
                trainable_state(self.accelerator.unwrap_model(self.model)),
                self.optimizer.state_dict(),
                self.scheduler.state_dict(),
                torch.get_rng_state(),
            )
            with atomic_dir(self.run_dir / "checkpoints" / f"step-{step:06d}", replace=True) as tmp:
                write_checkpoint(tmp, state)
            kept = [path for path in checkpoint_folders(self.run_dir) if folder_step(path) <= step]
            stale = [path for path in checkpoint_folders(self.run_dir) if folder_step(path) > step]
            for old in kept[: -self.config.train.keep_checkpoints] + stale:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def resume(self) -> int:
        """Restore the latest usable checkpoint and return its step (0: none). A damaged or old-format one
        (:mod:`kdlab.train.checkpoints`) is skipped with a message on stderr and the previous one is tried."""
        model = self.accelerator.unwrap_model(self.model)
        params = {name: param for name, param in model.named_parameters() if param.requires_grad}
        skipped = False
        for path in reversed(checkpoint_folders(self.run_dir)):
            try:
                state = read_checkpoint(path, params, self.optimizer.state_dict(), self.scheduler.state_dict())
            except CheckpointError as exc:
                self._warn(f"kdlab: {path}: checkpoint skipped: {exc}")
                skipped = True
                continue
            with torch.no_grad():
                for name, value in state.trainable.items():
                    params[name].copy_(value)
            self.optimizer.load_state_dict(state.optimizer)
            self.scheduler.load_state_dict(state.scheduler)
            torch.set_rng_state(state.torch_rng)
            return state.step
        if skipped:
            self._warn(f"kdlab: {self.run_dir}: no usable checkpoint left: training starts again from step 0")
        return 0

    def _warn(self, message: str) -> None:
        if self.accelerator.is_main_process:
            print(message, file=sys.stderr, flush=True)

    # --- logs ---------------------------------------------------------------------------------------------------
    def _log_rows(self, upto_step: int) -> list[dict]:
        path = self.run_dir / "log.csv"
        if not path.is_file():
            return []
        with path.open() as handle:
            return [row for row in csv.DictReader(handle) if int(row["step"]) <= upto_step]

    def _write_log(self, rows: list[dict]) -> None:
        if not self.accelerator.is_main_process:
            return
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=LOG_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.run_dir / "log.csv", buffer.getvalue())

    # --- the loop -----------------------------------------------------------------------------------------------
    def _step(self, step: int, batches: list[list[int]]) -> tuple[float, int]:
        """One optimizer step; returns (mean loss per response token, response tokens on all processes). A KD
        objective's parts (mean KD and CE terms per token, summing to the loss) are left in ``self.loss_parts``."""
        acc = self.accelerator
        collated = [collate([self.dataset[i] for i in batch], self.tokenizer.pad_token_id) for batch in batches]
        if self.batch_hook is not None:
            collated = self.batch_hook(self.model, collated, step)
        local_tokens = sum(count_response_tokens(batch["labels"]) for batch in collated)
        global_tokens = int(acc.reduce(torch.tensor(local_tokens, device=acc.device), reduction="sum").item())
        total = torch.zeros((), device=acc.device)
        for i, batch in enumerate(collated):
            batch = {key: value.to(acc.device) for key, value in batch.items()}
            sync = i == len(collated) - 1
            context = acc.no_sync(self.model) if not sync and acc.num_processes > 1 else nullcontext()
            with context, acc.autocast():
                loss_sum = self.objective(self.model, batch, step)
                loss = loss_sum * acc.num_processes / max(global_tokens, 1)
                acc.backward(loss)
            total += loss_sum.detach().float()
        trained = [p for p in self.model.parameters() if p.requires_grad]
        if self.config.train.max_grad_norm > 0:
            grad_norm = acc.clip_grad_norm_(trained, self.config.train.max_grad_norm)
        else:
            grad_norm = _grad_norm(trained)
        total = acc.reduce(total, reduction="sum")
        self._check_finite(step, float(total) / max(global_tokens, 1), float(grad_norm))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        parts = getattr(self.objective, "parts", None)
        if parts is not None:
            sums = acc.reduce(torch.tensor(parts.take(), device=acc.device, dtype=torch.float64), reduction="sum")
            self.loss_parts = {
                "kd_loss": float(sums[0]) / max(global_tokens, 1),
                "ce_loss": float(sums[1]) / max(global_tokens, 1),
            }
        return float(total) / max(global_tokens, 1), global_tokens

    def _check_finite(self, step: int, loss: float, grad_norm: float) -> None:
        """Stop the run (before the optimizer step: no NaN weights) when the loss or gradient norm is not finite;
        ``loss`` and ``grad_norm`` are the same on every process (reduced / computed on synchronised gradients)."""
        if math.isfinite(loss) and math.isfinite(grad_norm):
            return
        last = f"checkpoints/step-{self.last_checkpoint:06d}" if self.last_checkpoint else "none"
        raise KdlabError(
            f"{self.run_dir}: training diverged at step {step} (loss {loss}, gradient norm {grad_norm}): stopped, "
            f"no final model written (last good checkpoint: {last}); lower train.lr or check the data"
        )

    def train(self) -> dict:
        acc, train = self.accelerator, self.config.train
        start_step = self.last_checkpoint = self.resume()
        if start_step:
            acc.print(
                f"kdlab: resuming {self.run_dir} from step-{start_step:06d} (step {start_step}/{self.total_steps})"
            )
        rows = self._log_rows(start_step)
        trace = self._open_trace(start_step)
        prepare_resume(acc.log_with, start_step)
        acc.init_trackers(self.run_dir.name, config=_flat(self.config.to_dict()))
        self.model.train()
        started, tokens_seen = time.time(), 0
        elapsed_before = float(rows[-1]["elapsed_s"]) if rows else 0.0
        bar = tqdm(
            total=self.total_steps,
            initial=start_step,
            desc=f"{self.config.kind} {self.run_dir.name}",
            disable=not acc.is_local_main_process,
            dynamic_ncols=True,
        )
        loss = float("nan")
        try:
            for step, epoch, batches in self.schedule.step_batches(start_step, self.total_steps):
                if trace is not None:
                    trace.write(
                        f"{step}\t" + ",".join(str(self.dataset[i].index) for batch in batches for i in batch) + "\n"
                    )
                    trace.flush()
                loss, tokens = self._step(step, batches)
                tokens_seen += tokens
                elapsed = time.time() - started
                rate = tokens_seen / max(elapsed, 1e-9)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{rate:.0f}")
                if step % train.log_steps == 0 or step == self.total_steps:
                    self._log_step(rows, step, epoch, loss, tokens, rate, elapsed_before + elapsed)
                if train.save_steps > 0 and step % train.save_steps == 0 and step < self.total_steps:
                    self.save_checkpoint(step)
                    self.last_checkpoint = step
        finally:  # also when the run stops (a diverged loss, an interruption)
            self.session_seconds = time.time() - started  # this session's training time (the run's time split)
            bar.close()
            if trace is not None:
                trace.close()
        return {
            "steps": self.total_steps,
            "final_loss": loss,
            "train_seconds": elapsed_before + time.time() - started,
            "examples": len(self.dataset),
            "processes": acc.num_processes,
            "precision": acc.mixed_precision,
        }

    def _log_step(
        self, rows: list[dict], step: int, epoch: int, loss: float, tokens: int, rate: float, elapsed: float
    ) -> None:
        """Append the step's row to log.csv (rewritten atomically) and send its metrics to the trackers."""
        lr = self.scheduler.get_last_lr()[0]
        rows.append(
            {
                "step": step,
                "epoch": epoch,
                "loss": f"{loss:.6f}",
                "lr": f"{lr:.3e}",
                "tokens": tokens,
                "tokens_per_s": f"{rate:.1f}",
                "elapsed_s": f"{elapsed:.2f}",
            }
        )
        self._write_log(rows)
        on_policy = getattr(self.batch_hook, "on_policy_steps", None)
        self.accelerator.log(step_metrics(loss, lr, tokens, rate, epoch, on_policy, self.loss_parts), step=step)

    def _open_trace(self, start_step: int):
        if not self.config.train.trace_data:
            return None
        path = self.run_dir / "trace" / f"rank-{self.accelerator.process_index}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = [
            line
            for line in (path.read_text().splitlines() if path.exists() else [])
            if int(line.split("\t")[0]) <= start_step
        ]
        path.write_text("".join(line + "\n" for line in kept))
        return path.open("a")

    def save_final(self, summary: dict) -> None:
        """Write the adapter or model (+ tokenizer) to final/, then result.json; main process only."""
        acc = self.accelerator
        acc.wait_for_everyone()
        if acc.is_main_process:
            model = acc.unwrap_model(self.model)
            with atomic_dir(self.run_dir / "final", replace=True) as tmp, quiet_loading():
                model.save_pretrained(tmp)
                self.tokenizer.save_pretrained(tmp)
                (tmp / "README.md").write_text(
                    card_text(self.config.to_dict(), summary, tokens=logged_tokens(self.run_dir, summary["steps"]))
                )
            atomic_write_json(self.run_dir / "result.json", summary)
            shutil.rmtree(self.run_dir / "checkpoints", ignore_errors=True)
        acc.wait_for_everyone()
        acc.end_training()  # closes trackers (and, in accelerate, the process group): last


def _grad_norm(params: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of the gradients of ``params`` (what ``clip_grad_norm_`` returns), for the finiteness check."""
    grads = [param.grad.detach() for param in params if param.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(grad) for grad in grads]))


def _flat(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat
