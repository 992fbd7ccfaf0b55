"""``kdlab eval``: zero-shot evaluation of one model on a list of tasks, written as predictions and metrics.

Output folder::

    config.yaml                the resolved settings (a folder holding other settings is refused)
    predictions/<task>.jsonl   one line per example, appended batch by batch (an interrupted run resumes)
    metrics.json               {"tasks": {task: {"accuracy", "n", "no_answer", "ci95", ...}}, "groups": {...}}

Modes:
- ``generate``: batched greedy decoding (left padding, KV cache, stop strings, length-sorted batches); the answer
  is extracted from the text with the ``strict`` or ``paper`` rules (:mod:`kdlab.eval.extract`); both are logged.
- ``loglik`` (choice tasks): each option's text is scored as the response to the prompt; ``accuracy`` takes the
  option with the highest summed log-probability, ``accuracy_norm`` the highest per-character log-probability.

Line fields: ``id`` (index of the example in its test file), ``prompt``, ``gold``, ``pred``, ``correct``; generate
mode adds ``output`` and ``preds`` / ``corrects`` per extraction mode; loglik mode adds ``options``, ``scores``,
``scores_norm``, ``pred_norm`` and ``correct_norm``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from tqdm.auto import tqdm

from kdlab.data.formats import Example, load_json_examples
from kdlab.data.overlap import normalise_question, question_text
from kdlab.data.prompt import format_prompt
from kdlab.errors import KdlabError
from kdlab.eval.extract import MODES, extract, is_correct
from kdlab.eval.metrics import group_metrics, task_metrics
from kdlab.eval.options import parse_options
from kdlab.eval.task_examples import load_task_examples
from kdlab.eval.tasks import Task, resolve_tasks
from kdlab.generation import cut_at_stop, generate_ids
from kdlab.io import atomic_write_json, atomic_write_text
from kdlab.locks import folder_lock
from kdlab.models.heads import final_hidden, output_weight
from kdlab.outputs import EVALUATION, absolute_paths, check_output_dir, record_output, same_settings
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

    def validate(self) -> None:
        if self.mode not in ("generate", "loglik"):
            raise KdlabError(f"--mode {self.mode!r}: choose generate or loglik")
        if self.extraction not in MODES:
            raise KdlabError(f"--extraction {self.extraction!r}: choose {' or '.join(MODES)}")
        if self.precision not in PRECISIONS:
            raise KdlabError(f"--precision {self.precision!r}: choose {', '.join(PRECISIONS)}")
        for name in ("batch_size", "limit", "max_new_tokens"):
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


def _check_out(settings: EvalSettings) -> Path:
    """Refuse an output that is a file, a non-kdlab folder, unwritable, or an evaluation with other settings
    (compared by content: ``out`` ignored, paths as the files they name, so a moved folder resumes)."""
    out = check_output_dir(settings.out, EVALUATION, resume=True)
    config = out / "config.yaml"
    if config.is_file():
        old = yaml.safe_load(config.read_text()) or {}
        changed = same_settings(old, asdict(settings), EVAL_PATH_SETTINGS)
        if changed:
            raise KdlabError(
                f"{out}: holds an evaluation with other settings ({'; '.join(changed[:3])}); choose another --out"
            )
    return out


def _read_done(path: Path) -> dict[int, dict]:
    """Lines already written (a line cut by a kill is dropped and the file rewritten without it)."""
    if not path.is_file():
        return {}
    done, lines = {}, path.read_text().splitlines()
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        done[record["id"]] = record
    if len(done) != len(lines):
        atomic_write_text(path, "".join(json.dumps(record) + "\n" for record in done.values()))
    return done


def evaluate(settings: EvalSettings) -> dict:
    """Run the evaluation described by ``settings``; returns the metrics (also written to metrics.json)."""
    from kdlab.models.load import inference_device, load_model, load_tokenizer

    settings.validate()
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
    out = _check_out(settings)
    tokenizer = load_tokenizer(settings.model)
    tokenizer.padding_side = "left"
    device = inference_device()
    model = load_model(settings.model, adapter=settings.adapter, merge_adapter=True).eval().to(device)
    with folder_lock(out, "kdlab eval"):
        _check_out(settings)  # again, under the lock: another process may have started meanwhile
        record_output(out, EVALUATION, ["config.yaml", "metrics.json", "predictions/"])
        (out / "predictions").mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            out / "config.yaml", yaml.safe_dump(absolute_paths(asdict(settings), EVAL_PATH_SETTINGS), sort_keys=False)
        )
        return _run_tasks(model, tokenizer, device, tasks, items, settings, out)


def _run_tasks(model, tokenizer, device, tasks: list[Task], items: dict, settings: EvalSettings, out: Path) -> dict:
    """Evaluate each task (resuming its predictions file), then write and return the metrics."""
    results = {}
    bf16 = uses_bf16(settings.precision)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for task in tasks:
            path = out / "predictions" / f"{task.name}.jsonl"
            done = _read_done(path)
            pending = [(index, example) for index, example in items[task.name] if index not in done]
            if pending:
                run = _generate_task if settings.mode == "generate" else _loglik_task
                run(model, tokenizer, task, pending, settings, path)
            records = _read_done(path)
            results[task.name] = task_metrics([records[index] for index, _ in items[task.name]], settings.mode)
    metrics = {
        "tasks": results,
        "groups": group_metrics(results),
        "settings": {"mode": settings.mode, "extraction": settings.extraction, "precision": "bf16" if bf16 else "fp32"},
    }
    atomic_write_json(out / "metrics.json", metrics)
    return metrics


def _append(path: Path, records: list[dict]) -> None:
    with path.open("a") as handle:
        handle.write("".join(json.dumps(record) + "\n" for record in records))
        handle.flush()


def _generate_task(model, tokenizer, task: Task, pending, settings: EvalSettings, path: Path) -> None:
    prompts = [format_prompt(example.instruction, example.input) for _, example in pending]
    prompt_ids = [tokenizer(prompt, add_special_tokens=True)["input_ids"] for prompt in prompts]

    def write_batch(indices: list[int], responses: list[list[int]]) -> None:
        records = []
        for i, response in zip(indices, responses):
            index, example = pending[i]
            text = cut_at_stop(tokenizer.decode(response, skip_special_tokens=True), task.stop).strip()
            preds = {mode: extract(task, text, mode) for mode in MODES}
            corrects = {mode: is_correct(task, preds[mode], example.answer) for mode in MODES}
            records.append(
                {
                    "id": index,
                    "prompt": prompts[i],
                    "output": text,
                    "gold": example.answer,
                    "pred": preds[settings.extraction],
                    "correct": corrects[settings.extraction],
                    "preds": preds,
                    "corrects": corrects,
                }
            )
        _append(path, records)

    generate_ids(
        model,
        tokenizer,
        prompt_ids,
        settings.max_new_tokens or task.max_new_tokens,
        settings.batch_size,
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


def _loglik_task(model, tokenizer, task: Task, pending, settings: EvalSettings, path: Path, chunk: int = 64) -> None:
    """Score every option of every pending example, writing results ``chunk`` examples at a time."""
    for start in tqdm(range(0, len(pending), chunk), desc=f"loglik {task.name}", leave=False):
        _append(
            path,
            [
                _loglik_record(task, index, example, *scores)
                for (index, example), scores in zip(
                    pending[start : start + chunk],
                    _score_options(model, tokenizer, task, pending[start : start + chunk], settings),
                )
            ],
        )


def _score_options(model, tokenizer, task: Task, items, settings: EvalSettings) -> list[tuple[dict, dict]]:
    """(options, summed log-probability per label) for each example; pairs batched by length."""
    pairs, options = [], []  # pairs: (item position, label, prompt ids, option ids)
    for position, (_, example) in enumerate(items):
        prompt_ids = tokenizer(format_prompt(example.instruction, example.input), add_special_tokens=True)["input_ids"]
        options.append(parse_options(task, example.instruction))
        for label, text in options[-1].items():
            pairs.append(
                (
                    position,
                    label,
                    prompt_ids,
                    tokenizer(text, add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id],
                )
            )
    scores: list[dict[str, float]] = [{} for _ in items]
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][2]) + len(pairs[i][3]))
    for start in range(0, len(order), settings.batch_size):
        batch = order[start : start + settings.batch_size]
        values = sequence_logprobs(model, tokenizer, [pairs[i][2] for i in batch], [pairs[i][3] for i in batch])
        for i, value in zip(batch, values):
            scores[pairs[i][0]][pairs[i][1]] = value
    return list(zip(options, scores))


def _loglik_record(task: Task, index: int, example: Example, options: dict, raw: dict) -> dict:
    norm = {label: raw[label] / max(1, len(options[label])) for label in raw}
    pred, pred_norm = max(raw, key=raw.get), max(norm, key=norm.get)
    return {
        "id": index,
        "prompt": format_prompt(example.instruction, example.input),
        "gold": example.answer,
        "options": options,
        "scores": raw,
        "scores_norm": norm,
        "pred": pred,
        "correct": is_correct(task, pred, example.answer),
        "pred_norm": pred_norm,
        "correct_norm": is_correct(task, pred_norm, example.answer),
    }
