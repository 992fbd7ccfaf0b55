"""Training recipes: ``kdlab sft`` and ``kdlab distill``, each a short sequence of steps.

Every input is checked (config, data file, models, adapters, tokenizers, a reused teacher cache: manifest and arrays)
before the run folder is created, so bad input leaves no output. Re-running a command on the same ``--out`` resumes
it, or reports that it is complete.
"""

from __future__ import annotations

import sys
from pathlib import Path

from accelerate.utils import set_seed

from kdlab.config import RunConfig
from kdlab.data.answer_span import with_answer_masks
from kdlab.data.formats import load_examples
from kdlab.data.tokenize import encode_examples
from kdlab.errors import KdlabError
from kdlab.models.load import load_adapter, load_model, load_tokenizer
from kdlab.run_folder import claim_run, run_state
from kdlab.teacher_cache.lifecycle import cache_vocab, check_student_vocab, check_teacher_cache, open_teacher_cache
from kdlab.teacher_cache.store import TeacherCache, load_cache
from kdlab.train.inputs import DistillInputs, distill_inputs, output_vocab
from kdlab.train.loop import Trainer, make_accelerator
from kdlab.train.objectives import CachedDistillObjective, DistillObjective, OnPolicyWindows, sft_objective
from kdlab.train.teachers import ANSWER_TARGET_FILE, load_teacher, seqkd_examples, teacher_target_examples


def prepare_student(config: RunConfig):
    """Load the model to train: a new LoRA adapter, a saved adapter to continue, or all weights (full FT)."""
    set_seed(config.train.seed)
    model = load_model(config.model)
    if config.adapter:
        model = load_adapter(model, config.adapter, trainable=True)
    elif config.lora.enabled:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=config.lora.r,
            lora_alpha=config.lora.alpha,
            lora_dropout=config.lora.dropout,
            target_modules=list(config.lora.target_modules),
            task_type="CAUSAL_LM",
        )
        try:
            model = get_peft_model(model, lora)
        except ValueError as exc:
            raise KdlabError(f"lora.target_modules {config.lora.target_modules}: {str(exc).splitlines()[0]}") from None
    else:
        model.requires_grad_(True)
    model.config.use_cache = False
    return model


def _report(run_dir: Path, summary: dict, accelerator) -> None:
    accelerator.print(
        f"kdlab: done: {run_dir}/final (steps {summary['steps']}, final loss {summary['final_loss']:.4f}, "
        f"{summary['train_seconds']:.1f} s)",
        flush=True,
    )


def run_sft(config: RunConfig) -> Path:
    """Supervised fine-tuning (teacher or student baseline) on ``config.data``."""
    run_dir = Path(config.out)
    if _complete(config, run_dir):
        return run_dir
    tokenizer = load_tokenizer(config.model)
    dataset = encode_examples(
        tokenizer, load_examples(config.data), config.train.max_length, source=config.data, on_long=config.train.on_long
    )
    model = prepare_student(config)
    with claim_run(config, "kdlab sft") as claimed:
        if claimed is None:
            return run_dir
        accelerator = make_accelerator(config, run_dir)
        _warn_long(dataset, config.data, accelerator)
        _train(
            config,
            run_dir,
            model,
            tokenizer,
            dataset,
            dataset.summary(),
            sft_objective(config.train.chunk_size),
            accelerator,
        )
    return run_dir


def _complete(config: RunConfig, run_dir: Path) -> bool:
    """A finished run (result.json) is reported and left as it is."""
    if run_state(config) != "done":
        return False
    print(f"kdlab: {run_dir} is complete (result.json); nothing to do", flush=True)
    return True


def _train(
    config: RunConfig,
    run_dir: Path,
    model,
    tokenizer,
    dataset,
    data_summary: dict,
    objective,
    accelerator,
    window_hook: OnPolicyWindows | None = None,
) -> None:
    """Train, then save the final model with its summary (the data's, and the on-policy steps of this session)."""
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


def _warn_long(dataset, source: str, accelerator) -> None:
    """Say how many training examples did not fit in max_length (dropped or cut), once, on the main process."""
    message = dataset.message(source)
    if message and accelerator.is_main_process:
        print(message, file=sys.stderr, flush=True)


def run_distill(config: RunConfig) -> Path:
    """Knowledge distillation from ``config.teacher`` into ``config.model`` (token-level losses or SeqKD).

    With ``config.teacher_cache`` the teacher's signal on the training data comes from the cache
    (:mod:`kdlab.teacher_cache.lifecycle`: checked before any output, or built on first use); the teacher is loaded
    only to build the cache or for on-policy steps (``kd.lmbda > 0``).
    """
    run_dir = Path(config.out)
    if _complete(config, run_dir):
        return run_dir
    inputs = distill_inputs(config)  # fails early, e.g. on empty data
    cached = bool(config.teacher_cache) and config.kd.loss != "seqkd"
    manifest = check_teacher_cache(config, inputs) if cached else None  # a reused cache: checked, no model loaded
    teacher = load_teacher(config) if not cached or manifest is None or config.kd.lmbda > 0 else None
    # a reused cache is loaded and verified (checksums, teacher fingerprint) before the run folder exists
    cache = load_cache(config.teacher_cache, teacher=teacher, manifest=manifest) if manifest is not None else None
    model = prepare_student(config)
    vocab = _distill_vocab(config, inputs, cached, manifest, teacher, model)
    with claim_run(config, "kdlab distill") as claimed:
        if claimed is None:
            return run_dir
        accelerator = make_accelerator(config, run_dir)
        if teacher is not None:
            teacher.to(accelerator.device)
        examples, dataset, source = _distill_data(config, inputs, teacher, run_dir, accelerator)
        objective = _distill_objective(config, inputs, teacher, cache, vocab, accelerator)
        if cached and config.kd.lmbda == 0:
            teacher = None  # loaded only to build the cache: free it before training
        window_hook = _window_hook(config, inputs.tokenizer, teacher, vocab)
        _warn_long(dataset, source, accelerator)
        data_summary = dataset.summary()
        if needs_answer_masks(config.kd):  # config validation refuses these settings with seqkd
            dataset = with_answer_masks(inputs.tokenizer, examples, dataset)
            _report_answer_spans(dataset, accelerator)
        _train(config, run_dir, model, inputs.tokenizer, dataset, data_summary, objective, accelerator, window_hook)
    return run_dir


def _distill_vocab(
    config: RunConfig, inputs: DistillInputs, cached: bool, manifest: dict | None, teacher, model
) -> int | None:
    """The shared vocabulary the logits are sliced to, computed once: the teacher cache's (the student's output layer
    must cover it), else the tokenizer size cut to both output layers; None for SeqKD (plain SFT)."""
    if config.kd.loss == "seqkd":
        return None
    if not cached:
        return output_vocab(inputs.vocab_size, teacher, model)
    vocab = cache_vocab(manifest, inputs, teacher)
    check_student_vocab(config, model, vocab)
    return vocab


def _distill_data(config: RunConfig, inputs: DistillInputs, teacher, run_dir: Path, accelerator):
    """The training examples, their encoding and where they come from: the data file (encoded once, by
    :func:`distill_inputs`), the teacher's answers (SeqKD) or the data with the teacher's decisions in it
    (``kd.answer_target: teacher``), both written to the run folder."""
    if config.kd.loss == "seqkd":
        examples = seqkd_examples(teacher, inputs.tokenizer, inputs.examples, config, run_dir, accelerator)
        source = str(run_dir / "seqkd_data.json")
    elif config.kd.answer_target == "teacher" and not config.teacher_cache:
        examples = teacher_target_examples(teacher, inputs.tokenizer, inputs.examples, config, run_dir, accelerator)
        source = str(run_dir / ANSWER_TARGET_FILE)
    else:
        return inputs.examples, inputs.encoded, config.data
    dataset = encode_examples(
        inputs.tokenizer, examples, config.train.max_length, source=source, on_long=config.train.on_long
    )
    return examples, dataset, source


def _distill_objective(
    config: RunConfig, inputs: DistillInputs, teacher, cache: TeacherCache | None, vocab: int | None, accelerator
):
    """SFT on the teacher's answers (SeqKD), the live KD objective, or the cached one (``cache``: the reused cache,
    already loaded; None: built first, then loaded; on-policy steps with ``kd.lmbda > 0`` use the live teacher,
    sliced to the cache's vocabulary)."""
    kd, train, rank = config.kd, config.train, accelerator.process_index
    if kd.loss == "seqkd":
        return sft_objective(train.chunk_size)
    if not config.teacher_cache:
        return DistillObjective(teacher, kd, vocab, train.chunk_size, train.seed, rank)
    cache = open_teacher_cache(config, teacher, inputs, cache, vocab, accelerator)
    live = DistillObjective(teacher, kd, cache.vocab_size, train.chunk_size, train.seed, rank) if kd.lmbda > 0 else None
    return CachedDistillObjective(cache, kd, train.chunk_size, train.seed, rank, live=live)


def _window_hook(config: RunConfig, tokenizer, teacher, vocab_size: int) -> OnPolicyWindows | None:
    """On-policy steps (``kd.lmbda > 0``), speculative when ``kd.speculative_k > 0`` (needs the teacher)."""
    if config.kd.lmbda == 0:
        return None
    return OnPolicyWindows(
        tokenizer, config.kd, config.train.max_length, config.train.seed, teacher=teacher, vocab_size=vocab_size
    )


def needs_answer_masks(kd) -> bool:
    """Decision-level KD needs the decision statement marked in every training example."""
    return kd.answer_weight != 1 or kd.answer_target == "teacher"


def _report_answer_spans(dataset, accelerator) -> None:
    marked = sum(1 for item in dataset if item.answer_mask and any(item.answer_mask))
    tokens = sum(sum(item.answer_mask or []) for item in dataset)
    accelerator.print(
        f"kdlab: decision-level KD: answer statement found in {marked} of {len(dataset)} training examples "
        f"({tokens} tokens)",
        flush=True,
    )
    if marked == 0:
        raise KdlabError(
            "decision-level KD (kd.answer_weight / kd.answer_target): no training response states its answer "
            "('The answer is N.' or 'the correct answer is X'): nothing to weight"
        )
