"""Training recipes: ``kdlab sft`` and ``kdlab distill`` (token-level KD, or SeqKD), each a short sequence of steps.

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
from kdlab.train.inputs import DistillInputs, alignment_summary, distill_inputs
from kdlab.train.loop import Trainer, make_accelerator
from kdlab.train.objectives import sft_objective
from kdlab.train.on_policy import OnPolicySampler, on_policy_sampler
from kdlab.train.teacher_signal import run_teacher
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
    dataset = _encode(config, tokenizer, load_examples(config.data), config.data)
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
    sampler: OnPolicySampler | None = None,
) -> None:
    """Train, then save the final model with its summary (the data's, and the on-policy steps of this session)."""
    trainer = Trainer(config, run_dir, model, tokenizer, dataset, objective, accelerator, batch_hook=sampler)
    summary = trainer.train()
    summary["data"] = data_summary
    teacher_seconds = getattr(objective, "teacher_seconds", 0.0)
    sampling = sampler.summary() if sampler is not None else {"sampling_seconds": 0.0}
    summary["time_split_this_session"] = {  # where the training time went (seconds, this session)
        "sampling": sampling["sampling_seconds"],
        "teacher": teacher_seconds,
        "student": trainer.session_seconds - sampling["sampling_seconds"] - teacher_seconds,
    }
    if sampler is not None:
        summary["on_policy_steps_this_session"] = sampler.on_policy_steps
        summary["on_policy_this_session"] = sampling
        if config.kd.speculative_k > 0:
            summary["speculative_tokens_this_session"] = sampler.proposed_tokens
            summary["speculative_replaced_this_session"] = sampler.replaced_tokens
    trainer.save_final(summary)
    _report(run_dir, summary, accelerator)


def _encode(config: RunConfig, tokenizer, examples, source: str):
    """Training examples encoded at ``train.max_length`` (too long ones: ``train.on_long``)."""
    return encode_examples(tokenizer, examples, config.train.max_length, source=source, on_long=config.train.on_long)


def _warn_long(dataset, source: str, accelerator) -> None:
    """Say how many training examples did not fit in max_length (dropped or cut), once, on the main process."""
    message = dataset.message(source)
    if message and accelerator.is_main_process:
        print(message, file=sys.stderr, flush=True)


def run_distill(config: RunConfig) -> Path:
    """Knowledge distillation from ``config.teacher`` into ``config.model`` with a token-level loss (SeqKD:
    :func:`run_seqkd`).

    Before any output: the inputs (tokenizers, data), the teacher signal (:func:`kdlab.train.teacher_signal.run_teacher`:
    the live teacher, a reused teacher cache checked and verified, or a cache to build), then the student (after the
    teacher: loading a teacher adapter draws random numbers, the seeded student must not see them). In the claimed run
    folder: the objective (a missing cache built first), the training data, on-policy sampling (``kd.lmbda > 0``),
    training.
    """
    if config.kd.loss == "seqkd":
        return run_seqkd(config)
    run_dir = Path(config.out)
    if _complete(config, run_dir):
        return run_dir
    inputs = distill_inputs(config)  # fails early, e.g. on empty data
    teacher = run_teacher(config, inputs)
    model = prepare_student(config)
    teacher.match_student(model)  # the shared vocabulary; a teacher cache's must fit the student
    with claim_run(config, "kdlab distill") as claimed:
        if claimed is None:
            return run_dir
        accelerator = make_accelerator(config, run_dir)
        objective = teacher.objective(accelerator)
        dataset, data_summary = _distill_data(config, inputs, teacher.model, run_dir, accelerator)
        sampler = on_policy_sampler(config, inputs.tokenizer, teacher.model, teacher.vocab, inputs.teacher_tokenizer)
        _train(config, run_dir, model, inputs.tokenizer, dataset, data_summary, objective, accelerator, sampler)
    return run_dir


def run_seqkd(config: RunConfig) -> Path:
    """SeqKD (``kd.loss: seqkd``): the teacher's greedy answers to the training prompts (generated once, kept in the
    run folder as ``seqkd_data.json``), then SFT on them (with ``kd.lmbda > 0`` some steps on the student's own
    samples)."""
    run_dir = Path(config.out)
    if _complete(config, run_dir):
        return run_dir
    inputs = distill_inputs(config)  # fails early, e.g. on empty data; the two tokenizers must match
    teacher = load_teacher(config)
    model = prepare_student(config)
    with claim_run(config, "kdlab distill") as claimed:
        if claimed is None:
            return run_dir
        accelerator = make_accelerator(config, run_dir)
        teacher.to(accelerator.device)
        examples = seqkd_examples(teacher, inputs.tokenizer, inputs.examples, config, run_dir, accelerator)
        source = str(run_dir / "seqkd_data.json")
        dataset = _encode(config, inputs.tokenizer, examples, source)
        _warn_long(dataset, source, accelerator)
        objective = sft_objective(config.train.chunk_size)
        sampler = on_policy_sampler(config, inputs.tokenizer, teacher, None)
        _train(config, run_dir, model, inputs.tokenizer, dataset, dataset.summary(), objective, accelerator, sampler)
    return run_dir


def _distill_data(config: RunConfig, inputs: DistillInputs, teacher, run_dir: Path, accelerator):
    """The training data and its summary: the data file (encoded once, by :func:`distill_inputs`), or with
    ``kd.answer_target: teacher`` the data with the teacher's decisions in it (written to the run folder); with
    decision-level KD the decision statement of every example marked."""
    examples, dataset, source = inputs.examples, inputs.encoded, config.data
    if config.kd.answer_target == "teacher":
        examples = teacher_target_examples(teacher, inputs.tokenizer, examples, config, run_dir, accelerator)
        source = str(run_dir / ANSWER_TARGET_FILE)
        dataset = _encode(config, inputs.tokenizer, examples, source)
    _warn_long(dataset, source, accelerator)
    data_summary = dataset.summary()
    if inputs.teacher_tokenizer is not None:
        data_summary["alignment"] = alignment = alignment_summary(dataset)
        accelerator.print(
            f"kdlab: cross-tokenizer KD ({config.kd.loss}): {alignment['spans']} spans of identical text over "
            f"{alignment['student_tokens']} student and {alignment['teacher_tokens']} teacher response tokens "
            f"({alignment['student_tokens_in_no_span']} student tokens in no span)",
            flush=True,
        )
    if needs_answer_masks(config.kd):
        dataset = with_answer_masks(inputs.tokenizer, examples, dataset)
        _report_answer_spans(dataset, accelerator)
    return dataset, data_summary


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
