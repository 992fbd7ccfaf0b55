"""``kdlab eval``: zero-shot evaluation of one model on a list of tasks, written as predictions and metrics.

Output folder::

    config.yaml                the resolved settings (a folder holding other settings is refused)
    predictions/<task>.jsonl   one line per example, appended batch by batch (an interrupted run resumes)
    metrics.json               {"tasks": {task: {"accuracy", "n", "no_answer", "ci95", "truncated_long",
                               "dropped_long", ...}}, "groups": {...}, "settings": {...}}

Every input (test files, options, prompt lengths) is checked before the folder is written; an error during the run
removes the folder it created, an interrupt keeps it for the rerun to resume (:func:`_removed_on_error`).

Prompt length: each prompt fits the model's context less the generation budget (or ``--max-prompt-tokens``); a
longer one is truncated (its start cut, BOS and its end kept), dropped or an error, per ``--on-long``
(:mod:`kdlab.eval.prompts`, training's rule).

Modes:
- ``generate``: batched greedy decoding (left padding, KV cache, stop strings, length-sorted batches); the answer
  is extracted from the text with the ``strict`` or ``paper`` rules (:mod:`kdlab.eval.extract`); both are logged.
- ``loglik`` (choice tasks): each option's text is scored as the response to the prompt; ``accuracy`` takes the
  option with the highest summed log-probability, ``accuracy_norm`` the highest per-character log-probability.

Line fields: ``id`` (index of the example in its test file), ``prompt``, ``gold``, ``pred``, ``correct``; generate
mode adds ``output`` and ``preds`` / ``corrects`` per extraction mode; loglik mode adds ``options``, ``scores``,
``scores_norm``, ``pred_norm`` and ``correct_norm``; the line of a truncated prompt adds ``prompt_tokens_cut``.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from tqdm.auto import tqdm

from kdlab.backends import BACKENDS, Backend, choose_backend, open_generator
from kdlab.data.formats import Example, load_json_examples
from kdlab.data.overlap import normalise_question, question_text
from kdlab.data.tokenize import ON_LONG
from kdlab.errors import KdlabError
from kdlab.eval.extract import MODES, extract, is_correct
from kdlab.eval.metrics import group_metrics, task_metrics
from kdlab.eval.predictions import read_prediction_lines
from kdlab.eval.prompts import Prompt, PromptLimit, model_context, prepare_prompts
from kdlab.eval.task_examples import load_task_examples
from kdlab.eval.tasks import Task, resolve_tasks
from kdlab.generation import cut_at_stop
from kdlab.io import atomic_write_json, atomic_write_text, json_text
from kdlab.locks import folder_lock
from kdlab.models.heads import final_hidden, output_weight
from kdlab.outputs import (
    EVALUATION,
    absolute_paths,
    check_output_dir,
    read_config_mapping,
    record_output,
    same_settings,
)
from kdlab.precision import PRECISIONS, uses_bf16


@dataclass
class EvalSettings:
    """Everything that determines an evaluation's results (saved as config.yaml)."""

    model: str
    tasks: list[str]
    out: str
    adapter: str | None = None
    data_dir: str | None = None
    mode: str = "generate"
    extraction: str = "strict"
    batch_size: int = 16
    limit: int | None = None
    max_new_tokens: int | None = None
    exclude_overlap: str | None = None
    precision: str = "auto"  # auto: bf16 where the hardware has native bf16 (kdlab.precision), else fp32
    max_prompt_tokens: int | None = None  # None: the model's context less the budget (kdlab.eval.prompts)
    on_long: str = "truncate"  # a longer prompt: truncate (keep its end) | drop | error (kdlab.eval.prompts)
    backend: str = (
        "auto"  # generate mode: hf | vllm | auto (vLLM when installed and it runs the model; kdlab.generation)
    )

    def validate(self) -> None:
        if self.mode not in ("generate", "loglik"):
            raise KdlabError(f"--mode {self.mode!r}: choose generate or loglik")
        if self.extraction not in MODES:
            raise KdlabError(f"--extraction {self.extraction!r}: choose {' or '.join(MODES)}")
        if self.precision not in PRECISIONS:
            raise KdlabError(f"--precision {self.precision!r}: choose {', '.join(PRECISIONS)}")
        if self.backend not in BACKENDS:
            raise KdlabError(f"--backend {self.backend!r}: choose {', '.join(BACKENDS)}")
        if self.on_long not in ON_LONG:
            raise KdlabError(f"--on-long {self.on_long!r}: choose {', '.join(ON_LONG)}")
        for name in ("batch_size", "limit", "max_new_tokens", "max_prompt_tokens"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise KdlabError(f"--{name.replace('_', '-')} must be > 0, got {value}")


def _task_items(task: Task, settings: EvalSettings, excluded: set[str]) -> list[tuple[int, Example]]:
    examples = load_task_examples(task, settings.data_dir)
    items = [
        (index, example)
        for index, example in enumerate(examples)
        if normalise_question(question_text(example)) not in excluded
    ]
    if settings.mode == "loglik" and task.answer_type == "number":
        raise KdlabError(f"task {task.name}: loglik mode needs a choice task (its answers are numbers)")
    if not items:
        raise KdlabError(f"task {task.name}: no examples left to evaluate (after --exclude-overlap)")
    return items[: settings.limit] if settings.limit else items


EVAL_PATH_SETTINGS = ("model", "adapter", "data_dir", "exclude_overlap")
ADDED_SETTINGS = {
    "max_prompt_tokens": None,
    "on_long": "truncate",
    "backend": "auto",
}  # settings added since the first release


def _check_out(settings: EvalSettings) -> Path:
    """Refuse an output that is a file, a non-kdlab folder, unwritable, or an evaluation with other settings
    (compared by content: ``out`` ignored, paths as the files they name, so a moved folder resumes)."""
    out = check_output_dir(settings.out, EVALUATION, resume=True)
    config = out / "config.yaml"
    if config.is_file():
        old = {**ADDED_SETTINGS, **read_config_mapping(config)}  # a folder from before a setting existed
        changed = same_settings(old, asdict(settings), EVAL_PATH_SETTINGS)
        if changed:
            raise KdlabError(
                f"{out}: holds an evaluation with other settings ({'; '.join(changed[:3])}); choose another --out"
            )
    return out


def _read_done(path: Path) -> dict[int, dict]:
    """Lines already written (a last line cut by a kill is dropped and the file rewritten without it); a line that
    is not a prediction (:mod:`kdlab.eval.predictions`) is a KdlabError naming the file and line."""
    if not path.is_file():
        return {}
    done = {record["id"]: record for _, record in read_prediction_lines(path, cut_last=True)}
    if len(done) != sum(1 for line in path.read_bytes().split(b"\n") if line.strip()):
        atomic_write_text(path, "".join(json_text(record) + "\n" for record in done.values()))
    return done


def _select_tasks(settings: EvalSettings) -> tuple[list[Task], dict[str, list[tuple[int, Example]]]]:
    """The tasks to evaluate and their (index, example) items; a task of a named group without data is skipped."""
    tasks = resolve_tasks(settings.tasks)
    excluded = set()
    if settings.exclude_overlap:
        excluded = {
            normalise_question(question_text(example)) for example in load_json_examples(settings.exclude_overlap)
        }
    named = {part.strip().lower() for spec in settings.tasks for part in spec.split(",")}
    items = {}
    for task in tasks:
        try:
            items[task.name] = _task_items(task, settings, excluded)
        except KdlabError as exc:
            if task.name.lower() in named or "not found" not in str(exc):
                raise
            print(f"kdlab: skipping {task.name} (part of a group): {exc}", flush=True)
    tasks = [task for task in tasks if task.name in items]
    if not tasks:
        raise KdlabError(f"--tasks {','.join(settings.tasks)}: no task has data to evaluate")
    return tasks, items


def evaluate(settings: EvalSettings) -> dict:
    """Run the evaluation described by ``settings``; returns the metrics (also written to metrics.json).

    Every input is checked (data, options, prompt lengths) before the output folder is written; an error during
    the run removes the folder it created (:func:`_removed_on_error`). Generate mode runs on the chosen backend
    (:func:`kdlab.generation.choose_backend`, printed and recorded in metrics.json); loglik mode scores with HF."""
    from kdlab.models.load import load_tokenizer

    settings.validate()
    tasks, items = _select_tasks(settings)
    out = _check_out(settings)
    tokenizer = load_tokenizer(settings.model)
    tokenizer.padding_side = "left"
    limits = PromptLimit(settings.max_prompt_tokens, settings.on_long, model_context(settings.model, tokenizer))
    prompts = {
        task.name: prepare_prompts(
            task, items[task.name], tokenizer, settings.mode, settings.max_new_tokens or task.max_new_tokens, limits
        )
        for task in tasks
    }
    for task in tasks:
        message = prompts[task.name].message(task.name, settings.on_long)
        if message:
            print(message, file=sys.stderr, flush=True)
    backend = _eval_backend(settings, tasks, prompts)
    print(f"kdlab eval: {backend.describe()}", flush=True)
    with _model(settings, backend, tokenizer, limits.context) as (model, generator), folder_lock(out, "kdlab eval"):
        _check_out(settings)  # again, under the lock: another process may have started meanwhile
        with _removed_on_error(out):
            record_output(out, EVALUATION, ["config.yaml", "metrics.json", "predictions/"])
            (out / "predictions").mkdir(parents=True, exist_ok=True)
            atomic_write_text(
                out / "config.yaml",
                yaml.safe_dump(absolute_paths(asdict(settings), EVAL_PATH_SETTINGS), sort_keys=False),
            )
            return _run_tasks(model, generator, tokenizer, tasks, prompts, settings, out, limits.context, backend)


def _eval_backend(settings: EvalSettings, tasks: list[Task], prompts: dict) -> Backend:
    """Generate mode: the backend ``settings.backend`` chooses for this many budgeted tokens; loglik mode: HF."""
    if settings.mode == "loglik":
        return Backend("hf", None, "loglik mode scores options with HF")
    budget = sum(len(prompts[task.name].prompts) * (settings.max_new_tokens or task.max_new_tokens) for task in tasks)
    return choose_backend(settings.backend, settings.model, budget)


@contextmanager
def _model(settings: EvalSettings, backend: Backend, tokenizer, context):
    """(the HF model or None, the generator): the HF model in this process, or a vLLM engine and no HF model."""
    from kdlab.models.load import inference_device, load_model

    model = None
    if backend.name == "hf":
        model = load_model(settings.model, adapter=settings.adapter, merge_adapter=True).eval()
        model = model.to(inference_device())
    bf16 = uses_bf16(settings.precision)
    with open_generator(
        backend, settings.model, settings.adapter, tokenizer, bf16, context, model, settings.batch_size
    ) as generator:
        yield model, generator


@contextmanager
def _removed_on_error(out: Path) -> Iterator[None]:
    """On an error in the block (an exception: a KdlabError, MemoryError, CUDA out of memory), remove what this run
    wrote to a folder that was missing or empty: no half-written evaluation is left behind, and a retry with
    other settings (a smaller batch) is not refused as "other settings". An interrupt (Ctrl-C, a kill) keeps the
    folder, which a rerun of the same command resumes; so does an error in a folder that held an evaluation."""
    existed = out.exists()
    fresh = not existed or not any(out.iterdir())
    try:
        yield
    except Exception:
        if fresh:
            if not existed:
                shutil.rmtree(out, ignore_errors=True)
            for child in out.iterdir() if out.exists() else []:
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        raise


def _run_tasks(
    model, generator, tokenizer, tasks: list[Task], prompts: dict, settings: EvalSettings, out: Path, context, backend
) -> dict:
    """Evaluate each task (resuming its predictions file), then write and return the metrics."""
    results = {}
    bf16 = uses_bf16(settings.precision)
    device_type = next(model.parameters()).device.type if model is not None else "cpu"
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16 and model is not None):
        for task in tasks:
            path = out / "predictions" / f"{task.name}.jsonl"
            done = _read_done(path)
            pending = [prompt for prompt in prompts[task.name].prompts if prompt.index not in done]
            if pending:
                if settings.mode == "generate":
                    _generate_task(generator, tokenizer, task, pending, settings, path)
                else:
                    _loglik_task(model, tokenizer, task, pending, settings, path)
            records = _read_done(path)
            results[task.name] = {
                **task_metrics([records[prompt.index] for prompt in prompts[task.name].prompts], settings.mode),
                **prompts[task.name].counts(),
            }
    metrics = {
        "tasks": results,
        "groups": group_metrics(results),
        "settings": {
            "mode": settings.mode,
            "extraction": settings.extraction,
            "precision": "bf16" if bf16 else "fp32",
            "on_long": settings.on_long,
            "max_prompt_tokens": settings.max_prompt_tokens,
            "context": context,
            **backend.record(),
        },
    }
    atomic_write_json(out / "metrics.json", metrics)
    return metrics


def _append(path: Path, records: list[dict]) -> None:
    with path.open("a") as handle:
        handle.write("".join(json_text(record) + "\n" for record in records))
        handle.flush()


def _cut_field(prompt: Prompt) -> dict:
    """``{"prompt_tokens_cut": n}`` on the line of a truncated prompt (kdlab.eval.prompts), else nothing."""
    return {"prompt_tokens_cut": prompt.cut} if prompt.cut else {}


def _generate_task(generator, tokenizer, task: Task, pending: list[Prompt], settings: EvalSettings, path: Path) -> None:
    def write_batch(indices: list[int], responses: list[list[int]]) -> None:
        records = []
        for i, response in zip(indices, responses):
            prompt, example = pending[i], pending[i].example
            text = cut_at_stop(tokenizer.decode(response, skip_special_tokens=True), task.stop).strip()
            preds = {mode: extract(task, text, mode) for mode in MODES}
            corrects = {mode: is_correct(task, preds[mode], example.answer) for mode in MODES}
            records.append(
                {
                    "id": prompt.index,
                    "prompt": prompt.text,
                    "output": text,
                    "gold": example.answer,
                    "pred": preds[settings.extraction],
                    "correct": corrects[settings.extraction],
                    "preds": preds,
                    "corrects": corrects,
                    **_cut_field(prompt),
                }
            )
        _append(path, records)

    generator.generate(
        [prompt.ids for prompt in pending],
        settings.max_new_tokens or task.max_new_tokens,
        stop_strings=list(task.stop),
        on_batch=write_batch,
        progress=f"eval {task.name}",
    )


@torch.no_grad()
def sequence_logprobs(model, tokenizer, prompt_ids: list[list[int]], continuation_ids: list[list[int]]) -> list[float]:
    """Sum of log p(continuation | prompt) for each pair, in one right-padded batch."""
    lengths = [len(p) + len(c) for p, c in zip(prompt_ids, continuation_ids)]
    input_ids = torch.full((len(lengths), max(lengths)), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    targets = torch.full_like(input_ids, -100)
    for row, (prompt, continuation) in enumerate(zip(prompt_ids, continuation_ids)):
        ids = prompt + continuation
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        targets[row, len(prompt) : len(ids)] = torch.tensor(continuation)
    device = next(model.parameters()).device
    hidden = final_hidden(model, input_ids.to(device), attention_mask.to(device))
    keep = targets[:, 1:] != -100
    logits = F.linear(hidden[:, :-1][keep.to(device)], output_weight(model)).float()
    token_logprobs = logits.log_softmax(-1).gather(-1, targets[:, 1:][keep].to(device)[:, None])[:, 0]
    rows = keep.nonzero()[:, 0].to(device)
    return (
        torch.zeros(len(lengths), device=device, dtype=token_logprobs.dtype)
        .index_add_(0, rows, token_logprobs)
        .tolist()
    )


def _loglik_task(
    model, tokenizer, task: Task, pending: list[Prompt], settings: EvalSettings, path: Path, chunk: int = 64
) -> None:
    """Score every option of every pending example, writing results ``chunk`` examples at a time."""
    for start in tqdm(range(0, len(pending), chunk), desc=f"loglik {task.name}", leave=False):
        part = pending[start : start + chunk]
        _append(
            path,
            [
                _loglik_record(task, prompt, scores)
                for prompt, scores in zip(part, _score_options(model, tokenizer, part, settings))
            ],
        )


def _score_options(model, tokenizer, prompts: list[Prompt], settings: EvalSettings) -> list[dict[str, float]]:
    """The summed log-probability of each option (by label) for each prompt; pairs batched by length."""
    pairs = [  # (prompt position, label, prompt ids, option ids)
        (position, label, prompt.ids, ids)
        for position, prompt in enumerate(prompts)
        for label, ids in prompt.option_ids.items()
    ]
    scores: list[dict[str, float]] = [{} for _ in prompts]
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][2]) + len(pairs[i][3]))
    for start in range(0, len(order), settings.batch_size):
        batch = order[start : start + settings.batch_size]
        values = sequence_logprobs(model, tokenizer, [pairs[i][2] for i in batch], [pairs[i][3] for i in batch])
        for i, value in zip(batch, values):
            scores[pairs[i][0]][pairs[i][1]] = value
    return scores


def _loglik_record(task: Task, prompt: Prompt, raw: dict) -> dict:
    options, answer = prompt.options, prompt.example.answer
    norm = {label: raw[label] / max(1, len(options[label])) for label in raw}
    pred, pred_norm = max(raw, key=raw.get), max(norm, key=norm.get)
    return {
        "id": prompt.index,
        "prompt": prompt.text,
        "gold": answer,
        "options": options,
        "scores": raw,
        "scores_norm": norm,
        "pred": pred,
        "correct": is_correct(task, pred, answer),
        "pred_norm": pred_norm,
        "correct_norm": is_correct(task, pred_norm, answer),
        **_cut_field(prompt),
    }
