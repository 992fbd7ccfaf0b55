"""Entry points for ``kdlab sft`` and ``kdlab distill``.

Every input is checked (config, data file, models, adapters, tokenizers) before the run folder is created, so bad
input leaves no output. Re-running a command on the same ``--out`` resumes it, or reports that it is complete.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch
from accelerate.utils import set_seed

from kdlab.config import RunConfig
from kdlab.data.answer_span import with_answer_masks
from kdlab.data.formats import Example, load_examples, load_json_examples, write_json_examples
from kdlab.data.tokenize import encode_examples, encode_prompt
from kdlab.errors import KdlabError
from kdlab.generation import generate_ids
from kdlab.models.load import check_adapter_folder, check_same_tokenizer, load_adapter, load_model, load_tokenizer
from kdlab.locks import folder_lock
from kdlab.outputs import check_writable
from kdlab.run_folder import claim_run, run_state
from kdlab.precision import resolve_precision
from kdlab.train.loop import Trainer, make_accelerator
from kdlab.train.objectives import CachedDistillObjective, DistillObjective, OnPolicyWindows, sft_objective


def prepare_student(config: RunConfig):
    """Load the model to train: a new LoRA adapter, a saved adapter to continue, or all weights (full FT)."""
    set_seed(config.train.seed)
    model = load_model(config.model)
    if config.adapter:
        model = load_adapter(model, config.adapter, trainable=True)
    elif config.lora.enabled:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
                          target_modules=list(config.lora.target_modules), task_type="CAUSAL_LM")
        try:
            model = get_peft_model(model, lora)
        except ValueError as exc:
            raise KdlabError(f"lora.target_modules {config.lora.target_modules}: {str(exc).splitlines()[0]}") from None
    else:
        model.requires_grad_(True)
    model.config.use_cache = False
    return model


def load_teacher(config: RunConfig):
    """The frozen teacher (adapter merged), in bf16 when the run uses bf16."""
    dtype = torch.bfloat16 if resolve_precision(config.train.precision) == "bf16" else torch.float32
    teacher = load_model(config.teacher, dtype=dtype, adapter=config.teacher_adapter, merge_adapter=True)
    teacher.eval().requires_grad_(False)
    return teacher


def _report(run_dir: Path, summary: dict, accelerator) -> None:
    accelerator.print(f"kdlab: done: {run_dir}/final (steps {summary['steps']}, final loss {summary['final_loss']:.4f}, "
          f"{summary['train_seconds']:.1f} s)", flush=True)


def run_sft(config: RunConfig) -> Path:
    """Supervised fine-tuning (teacher or student baseline) on ``config.data``."""
    run_dir = Path(config.out)
    if run_state(config) == "done":
        print(f"kdlab: {run_dir} is complete (result.json); nothing to do", flush=True)
        return run_dir
    tokenizer = load_tokenizer(config.model)
    dataset = encode_examples(tokenizer, load_examples(config.data), config.train.max_length, source=config.data,
                              on_long=config.train.on_long)
    model = prepare_student(config)
    with claim_run(config, "kdlab sft") as claimed:
        if claimed is None:
            return run_dir
        accelerator = make_accelerator(config, run_dir)
        _warn_long(dataset, config.data, accelerator)
        trainer = Trainer(config, run_dir, model, tokenizer, dataset, sft_objective(config.train.chunk_size), accelerator)
        summary = trainer.train()
        summary["data"] = dataset.summary()
        trainer.save_final(summary)
        _report(run_dir, summary, accelerator)
    return run_dir


def _warn_long(dataset, source: str, accelerator) -> None:
    """Say how many training examples did not fit in max_length (dropped or cut), once, on the main process."""
    message = dataset.message(source)
    if message and accelerator.is_main_process:
        print(message, file=sys.stderr, flush=True)


def teacher_spec(config: RunConfig) -> str:
    """What identifies the teacher of a run in a teacher cache's manifest, without loading it: the model spec
    (local folders as absolute paths) and, with a teacher adapter, its folder and a hash of its weights file."""

    def name(spec: str) -> str:
        path = Path(spec).expanduser()
        return str(path.resolve()) if path.exists() else spec

    spec = name(config.teacher)
    if config.teacher_adapter:
        adapter = check_adapter_folder(config.teacher_adapter)
        weights = sorted(adapter.glob("adapter_model.*"))
        digest = hashlib.sha256(weights[0].read_bytes()).hexdigest()[:16]
        spec += f" + adapter {name(config.teacher_adapter)} ({digest})"
    return spec


def _cache_inputs(config: RunConfig):
    """The student's tokenizer, the shared vocabulary size and the encoded training data, exactly as run_distill."""
    tokenizer = load_tokenizer(config.model)
    vocab_size = check_same_tokenizer(load_tokenizer(config.teacher), tokenizer, config.teacher, config.model)
    dataset = encode_examples(tokenizer, load_examples(config.data), config.train.max_length, source=config.data,
                              on_long=config.train.on_long)
    return tokenizer, vocab_size, dataset


def _check_cache_manifest(config: RunConfig, dataset) -> dict:
    """Refuse a complete cache of an older format, or built for another teacher, other data (tokenisation,
    max_length) or another k; return its manifest."""
    from kdlab.teacher_cache import MANIFEST_FILE, check_format, data_hash

    path = Path(config.teacher_cache)
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise KdlabError(f"{path}: unreadable teacher cache manifest ({exc})") from None
    check_format(manifest, path)
    diffs, spec = [], teacher_spec(config)
    if manifest.get("teacher") != spec:
        diffs.append(f"teacher '{manifest.get('teacher')}', this run '{spec}'")
    if manifest.get("data_hash") != data_hash(dataset):
        tokens = sum(len(item.response_ids) for item in dataset)
        diffs.append(f"other data: built on {manifest.get('examples')} examples / {manifest.get('tokens')} response tokens, "
                     f"this run has {len(dataset)} / {tokens} (data file, tokenizer or max_length)")
    if manifest.get("k") != config.kd.cache_k:
        diffs.append(f"k = {manifest.get('k')}, this run kd.cache_k = {config.kd.cache_k}")
    if diffs:
        raise KdlabError(f"{path}: teacher cache does not match this run ({'; '.join(diffs)}); delete it or choose another --teacher-cache")
    return manifest


def _warn_cache_temperature(config: RunConfig, manifest: dict) -> None:
    """A reused cache without the exact tail sum at ``kd.temperature``: warn (the bucket tail is approximated)."""
    from kdlab.teacher_cache import temperature_index

    stored = manifest.get("temperatures", [])
    if config.kd.cache_tail == "bucket" and temperature_index(stored, config.kd.temperature) is None:
        print(f"kdlab: warning: teacher cache {config.teacher_cache} stores the exact tail mass at temperatures "
              f"{', '.join(f'{tau:g}' for tau in stored)}, not at kd.temperature = {config.kd.temperature:g}: the bucket tail "
              "is approximated as uniform (over-estimates the softened tail); delete the folder to rebuild it with this "
              "temperature", file=sys.stderr, flush=True)


def teacher_cache_ready(path) -> bool:
    """True for a complete cache folder, False for a missing or empty one; a folder holding anything else is refused
    (building a cache there would replace it)."""
    from kdlab.teacher_cache import CACHE_FILE, MANIFEST_FILE

    path = Path(path)
    if (path / MANIFEST_FILE).is_file() and (path / CACHE_FILE).is_file():
        return True
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise KdlabError(f"{path}: exists and is not a teacher cache (no {MANIFEST_FILE} and {CACHE_FILE}); choose another --teacher-cache")
    return False


def ensure_teacher_cache(config: RunConfig, teacher=None, progress: bool = True, _inputs=None) -> Path:
    """Make ``config.teacher_cache`` hold the teacher's top-``kd.cache_k`` signal on ``config.data``; return it.

    A complete cache is checked against the run without loading any model (tokenizers only): the teacher spec
    (:func:`teacher_spec`: model, adapter folder and adapter weights hash), the hash of the data encoded with the
    student's tokenizer and ``train.max_length`` (the examples and indices run_distill trains on), k and the format
    version (a cache of an older format must be deleted and rebuilt); a mismatch is a :class:`KdlabError` naming the
    folder and what differs. A ``kd.temperature`` without an exact tail sum in the cache is a warning (the bucket
    tail is then approximated), not a rebuild. The teacher's weight fingerprint is compared only
    when the teacher is loaded anyway (run_distill with ``kd.lmbda > 0``). A missing cache is built (atomically,
    with a progress bar) from ``teacher``, loaded with :func:`load_teacher` when not given, with the exact tail sums
    at ``kd.cache_temperatures`` plus ``kd.temperature``. Safe to call once per (teacher, data) before several runs
    that share the folder, and from several processes at once: the build holds the folder's lock
    (:mod:`kdlab.locks`); another process waits for it, then checks and reuses the cache.
    """
    if not config.teacher_cache:
        raise KdlabError("no teacher cache folder set (--teacher-cache DIR)")
    tokenizer, vocab_size, dataset = _inputs or _cache_inputs(config)
    path = Path(config.teacher_cache)
    if teacher_cache_ready(path):
        _warn_cache_temperature(config, _check_cache_manifest(config, dataset))
        return path
    with folder_lock(path, "building a teacher cache", wait=True):  # another process building it: wait, then reuse
        if teacher_cache_ready(path):
            _warn_cache_temperature(config, _check_cache_manifest(config, dataset))
            return path
        return _build_teacher_cache(config, teacher, progress, tokenizer, vocab_size, dataset)


def _build_teacher_cache(config: RunConfig, teacher, progress: bool, tokenizer, vocab_size: int, dataset) -> Path:
    """Build the missing cache ``config.teacher_cache`` (see :func:`ensure_teacher_cache`); called under its lock."""
    from kdlab.teacher_cache import build_cache, normalize_temperatures

    path = Path(config.teacher_cache)
    check_writable(path)
    if teacher is None:
        teacher = load_teacher(config)
        teacher.to("cuda" if torch.cuda.is_available() else "cpu")
    vocab_size = min(vocab_size, teacher.get_output_embeddings().weight.shape[0])
    temperatures = normalize_temperatures([*config.kd.cache_temperatures, config.kd.temperature])
    print(f"kdlab: building the teacher cache {path} (k = {config.kd.cache_k}, tail sums at tau = "
          f"{', '.join(f'{tau:g}' for tau in temperatures)}, {len(dataset)} examples)", flush=True)
    info = build_cache(teacher, tokenizer, dataset, path, k=config.kd.cache_k, batch_size=config.train.batch_size,
                       vocab_size=vocab_size, progress=progress, teacher_spec=teacher_spec(config),
                       chunk_size=config.train.chunk_size, temperatures=temperatures)
    print(f"kdlab: teacher cache {path}: {info.tokens} tokens, {info.bytes_per_token:.0f} bytes/token", flush=True)
    return path


def run_distill(config: RunConfig) -> Path:
    """Knowledge distillation from ``config.teacher`` into ``config.model`` (token-level losses or SeqKD).

    With ``config.teacher_cache`` the teacher's signal on the training data comes from the cache
    (:func:`ensure_teacher_cache` checks it, or builds it on first use); the teacher is loaded only to build the
    cache or for on-policy steps (``kd.lmbda > 0``).
    """
    run_dir = Path(config.out)
    if run_state(config) == "done":
        print(f"kdlab: {run_dir} is complete (result.json); nothing to do", flush=True)
        return run_dir
    examples = load_examples(config.data)
    tokenizer = load_tokenizer(config.model)
    vocab_size = check_same_tokenizer(load_tokenizer(config.teacher), tokenizer, config.teacher, config.model)
    encoded = encode_examples(tokenizer, examples, config.train.max_length, source=config.data,  # fail early if empty
                              on_long=config.train.on_long)
    cached = bool(config.teacher_cache) and config.kd.loss != "seqkd"
    cache_ready = False
    if cached:
        cache_ready = teacher_cache_ready(config.teacher_cache)
        if cache_ready:  # check before any output; no model is loaded for it
            ensure_teacher_cache(config, _inputs=(tokenizer, vocab_size, encoded))
    teacher = load_teacher(config) if not cached or not cache_ready or config.kd.lmbda > 0 else None
    model = prepare_student(config)
    if cached:
        _check_student_vocab(config, model, teacher, cache_ready, vocab_size)
    with claim_run(config, "kdlab distill") as claimed:
        if claimed is None:
            return run_dir
        accelerator = make_accelerator(config, run_dir)
        if teacher is not None:
            teacher.to(accelerator.device)
        rank = accelerator.process_index
        source = config.data
        if cached:
            objective = _cached_objective(config, teacher, (tokenizer, vocab_size, encoded), cache_ready, accelerator)
            dataset = encoded
            if config.kd.lmbda == 0:
                teacher = None  # loaded only to build the cache: free it before training
            window_hook = _window_hook(config, tokenizer, teacher, objective.cache.vocab_size)
        elif config.kd.loss == "seqkd":
            examples = seqkd_examples(teacher, tokenizer, examples, config, run_dir, accelerator)
            source = str(run_dir / "seqkd_data.json")
            dataset = encode_examples(tokenizer, examples, config.train.max_length, source=source, on_long=config.train.on_long)
            objective, window_hook = sft_objective(config.train.chunk_size), None
        else:
            if config.kd.answer_target == "teacher":
                examples = teacher_target_examples(teacher, tokenizer, examples, config, run_dir, accelerator)
                source = str(run_dir / ANSWER_TARGET_FILE)
            dataset = encode_examples(tokenizer, examples, config.train.max_length, source=source, on_long=config.train.on_long)
            vocab_size = min(vocab_size, teacher.get_output_embeddings().weight.shape[0], model.get_output_embeddings().weight.shape[0])
            objective = DistillObjective(teacher, config.kd, vocab_size, config.train.chunk_size, config.train.seed, rank)
            window_hook = _window_hook(config, tokenizer, teacher, vocab_size)
        _warn_long(dataset, source, accelerator)
        data_summary = dataset.summary()
        if needs_answer_masks(config.kd):  # config validation refuses these settings with seqkd
            dataset = with_answer_masks(tokenizer, examples, dataset)
            _report_answer_spans(dataset, accelerator)
        trainer = Trainer(config, run_dir, model, tokenizer, dataset, objective, accelerator, prepare_window=window_hook)
        summary = trainer.train()
        summary["data"] = data_summary
        if window_hook is not None:
            summary["on_policy_steps_this_session"] = window_hook.on_policy_steps
            if config.kd.speculative_k > 0:
                summary["speculative_tokens_this_session"] = window_hook.proposed_tokens
                summary["speculative_replaced_this_session"] = window_hook.replaced_tokens
        trainer.save_final(summary)
        _report(run_dir, summary, accelerator)
    return run_dir


def _window_hook(config: RunConfig, tokenizer, teacher, vocab_size: int) -> OnPolicyWindows | None:
    """On-policy steps (``kd.lmbda > 0``), speculative when ``kd.speculative_k > 0`` (needs the teacher)."""
    if config.kd.lmbda == 0:
        return None
    return OnPolicyWindows(tokenizer, config.kd, config.train.max_length, config.train.seed, teacher=teacher, vocab_size=vocab_size)


def needs_answer_masks(kd) -> bool:
    """Decision-level KD needs the decision statement marked in every training example."""
    return kd.answer_weight != 1 or kd.answer_target == "teacher"


def _report_answer_spans(dataset, accelerator) -> None:
    marked = sum(1 for item in dataset if item.answer_mask and any(item.answer_mask))
    tokens = sum(sum(item.answer_mask or []) for item in dataset)
    accelerator.print(f"kdlab: decision-level KD: answer statement found in {marked} of {len(dataset)} training examples "
                      f"({tokens} tokens)", flush=True)
    if marked == 0:
        raise KdlabError("decision-level KD (kd.answer_weight / kd.answer_target): no training response states its answer "
                         "('The answer is N.' or 'the correct answer is X'): nothing to weight")


def _check_student_vocab(config: RunConfig, model, teacher, cache_ready: bool, vocab_size: int) -> None:
    """The student's logits are sliced to the cache's vocabulary: its output layer must have that many rows."""
    from kdlab.teacher_cache import MANIFEST_FILE

    if cache_ready:
        vocab = json.loads((Path(config.teacher_cache) / MANIFEST_FILE).read_text(encoding="utf-8"))["vocab_size"]
    else:
        vocab = min(vocab_size, teacher.get_output_embeddings().weight.shape[0])
    rows = model.get_output_embeddings().weight.shape[0]
    if rows < vocab:
        raise KdlabError(f"student '{config.model}' has {rows} output rows; the teacher cache needs {vocab} (its vocab_size)")


def _cached_objective(config: RunConfig, teacher, inputs, cache_ready: bool, accelerator) -> CachedDistillObjective:
    from kdlab.teacher_cache import load_cache

    if not cache_ready:  # built once, by the main process
        if accelerator.is_main_process:
            ensure_teacher_cache(config, teacher=teacher, progress=accelerator.is_local_main_process, _inputs=inputs)
        accelerator.wait_for_everyone()
    cache = load_cache(config.teacher_cache, teacher=teacher)  # the weight fingerprint too, when the teacher is loaded
    live = None
    if config.kd.lmbda > 0:  # on-policy steps: the live teacher, sliced to the cache's vocabulary
        live = DistillObjective(teacher, config.kd, cache.vocab_size, config.train.chunk_size, config.train.seed, accelerator.process_index)
    return CachedDistillObjective(cache, config.kd, config.train.chunk_size, config.train.seed, accelerator.process_index, live=live)


def teacher_answers(teacher, tokenizer, examples: list[Example], max_new_tokens: int, batch_size: int,
                    progress: str | None = "SeqKD: teacher answers") -> list[Example]:
    """``examples`` with their ``output`` replaced by the teacher's greedy answer to the prompt (SeqKD data)."""
    prompts = [encode_prompt(tokenizer, example) for example in examples]
    responses = generate_ids(teacher, tokenizer, prompts, max_new_tokens, batch_size, progress=progress)
    texts = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in responses]
    return [Example(instruction=e.instruction, input=e.input, output=text, answer=e.answer) for e, text in zip(examples, texts)]


def seqkd_examples(teacher, tokenizer, examples: list[Example], config: RunConfig, run_dir: Path, accelerator,
                   file_name: str = "seqkd_data.json") -> list[Example]:
    """SeqKD data: the teacher's greedy answers to the training prompts, generated once, cached in the run folder."""
    from accelerate.utils import gather_object

    cache = run_dir / file_name
    if cache.is_file():
        return load_json_examples(cache)
    rank, world = accelerator.process_index, accelerator.num_processes
    mine = list(range(rank, len(examples), world))
    with accelerator.autocast():
        answered = teacher_answers(teacher, tokenizer, [examples[i] for i in mine], config.kd.max_new_tokens,
                                   config.kd.generation_batch_size,
                                   progress="SeqKD: teacher answers" if accelerator.is_local_main_process else None)
    pairs = list(zip(mine, answered))
    generated = [example for _, example in sorted(gather_object(pairs) if world > 1 else pairs, key=lambda pair: pair[0])]
    if accelerator.is_main_process:
        write_json_examples(generated, cache)
    accelerator.wait_for_everyone()
    return generated


ANSWER_TARGET_FILE = "answer_target_data.json"


def teacher_target_examples(teacher, tokenizer, examples: list[Example], config: RunConfig, run_dir: Path, accelerator) -> list[Example]:
    """``kd.answer_target: teacher``: each training response with the value of its decision statement replaced by the
    value the teacher states in its own greedy answer to the prompt (:func:`kdlab.data.answer_span.replace_answer_value`);
    responses without a statement, or whose teacher answer states none, keep the gold value. The teacher's answers
    come from ``config.teacher_answers`` (same examples, same order) or are generated once and cached in the run
    folder; the rewritten data is written to ``run_dir / ANSWER_TARGET_FILE``.
    """
    from kdlab.data.answer_span import find_answer_span, replace_answer_value

    if config.teacher_answers:
        answers = load_examples(config.teacher_answers)
        if len(answers) != len(examples) or any(a.instruction != e.instruction for a, e in zip(answers, examples)):
            raise KdlabError(f"{config.teacher_answers}: teacher answers do not match {config.data} "
                             f"({len(answers)} vs {len(examples)} examples, or other instructions)")
    else:
        answers = seqkd_examples(teacher, tokenizer, examples, config, run_dir, accelerator, file_name="teacher_answers.json")
    rewritten, changed, missing = [], 0, 0
    for example, answer in zip(examples, answers):
        span = find_answer_span(answer.output.strip())
        new_output = replace_answer_value(example.output.strip(), span.value(answer.output.strip())) if span else None
        if new_output is None:
            missing += 1
            new_output = example.output
        changed += new_output.strip() != example.output.strip()
        rewritten.append(Example(instruction=example.instruction, input=example.input, output=new_output, answer=example.answer))
    if accelerator.is_main_process:
        write_json_examples(rewritten, run_dir / ANSWER_TARGET_FILE)
    accelerator.print(f"kdlab: answer target = teacher: {changed} of {len(examples)} training answers changed to the teacher's "
                      f"({missing} kept gold: no statement in the response or in the teacher's answer)", flush=True)
    return rewritten
