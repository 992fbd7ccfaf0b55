"""Entry points for ``kdlab sft`` and ``kdlab distill``.

Every input is checked (config, data file, models, adapters, tokenizers) before the run folder is created, so bad
input leaves no output. Re-running a command on the same ``--out`` resumes it, or reports that it is complete.
"""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate.utils import set_seed

from kdlab.config import RunConfig
from kdlab.data.formats import Example, load_examples, load_json_examples, write_json_examples
from kdlab.data.tokenize import encode_examples, encode_prompt
from kdlab.errors import KdlabError
from kdlab.generation import generate_ids
from kdlab.models.load import check_same_tokenizer, load_adapter, load_model, load_tokenizer
from kdlab.runs import run_state, start_run
from kdlab.train.loop import Trainer, make_accelerator, resolve_precision
from kdlab.train.objectives import DistillObjective, OnPolicyWindows, sft_objective


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
    dataset = encode_examples(tokenizer, load_examples(config.data), config.train.max_length, source=config.data)
    model = prepare_student(config)
    run_dir = start_run(config)
    accelerator = make_accelerator(config, run_dir)
    trainer = Trainer(config, run_dir, model, tokenizer, dataset, sft_objective(config.train.chunk_size), accelerator)
    summary = trainer.train()
    trainer.save_final(summary)
    _report(run_dir, summary, accelerator)
    return run_dir


def run_distill(config: RunConfig) -> Path:
    """Knowledge distillation from ``config.teacher`` into ``config.model`` (token-level losses or SeqKD)."""
    run_dir = Path(config.out)
    if run_state(config) == "done":
        print(f"kdlab: {run_dir} is complete (result.json); nothing to do", flush=True)
        return run_dir
    examples = load_examples(config.data)
    tokenizer = load_tokenizer(config.model)
    vocab_size = check_same_tokenizer(load_tokenizer(config.teacher), tokenizer, config.teacher, config.model)
    encode_examples(tokenizer, examples, config.train.max_length, source=config.data)  # fail early if empty
    teacher = load_teacher(config)
    model = prepare_student(config)
    run_dir = start_run(config)
    accelerator = make_accelerator(config, run_dir)
    teacher.to(accelerator.device)
    rank = accelerator.process_index
    if config.kd.loss == "seqkd":
        examples = seqkd_examples(teacher, tokenizer, examples, config, run_dir, accelerator)
        dataset = encode_examples(tokenizer, examples, config.train.max_length, source=str(run_dir / "seqkd_data.json"))
        objective, window_hook = sft_objective(config.train.chunk_size), None
    else:
        dataset = encode_examples(tokenizer, examples, config.train.max_length, source=config.data)
        vocab_size = min(vocab_size, teacher.get_output_embeddings().weight.shape[0], model.get_output_embeddings().weight.shape[0])
        objective = DistillObjective(teacher, config.kd, vocab_size, config.train.chunk_size, config.train.seed, rank)
        window_hook = OnPolicyWindows(tokenizer, config.kd, config.train.max_length, config.train.seed) if config.kd.lmbda > 0 else None
    trainer = Trainer(config, run_dir, model, tokenizer, dataset, objective, accelerator, prepare_window=window_hook)
    summary = trainer.train()
    if window_hook is not None:
        summary["on_policy_steps_this_session"] = window_hook.on_policy_steps
    trainer.save_final(summary)
    _report(run_dir, summary, accelerator)
    return run_dir


def seqkd_examples(teacher, tokenizer, examples: list[Example], config: RunConfig, run_dir: Path, accelerator) -> list[Example]:
    """SeqKD data: the teacher's greedy answers to the training prompts, generated once, cached in the run folder."""
    from accelerate.utils import gather_object

    cache = run_dir / "seqkd_data.json"
    if cache.is_file():
        return load_json_examples(cache)
    rank, world = accelerator.process_index, accelerator.num_processes
    mine = list(range(rank, len(examples), world))
    prompts = [encode_prompt(tokenizer, examples[i]) for i in mine]
    with accelerator.autocast():
        responses = generate_ids(teacher, tokenizer, prompts, config.kd.max_new_tokens, config.kd.generation_batch_size,
                                 progress="SeqKD: teacher answers" if accelerator.is_local_main_process else None)
    texts = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in responses]
    pairs = sorted(gather_object(list(zip(mine, texts))) if world > 1 else list(zip(mine, texts)))
    generated = [Example(instruction=examples[i].instruction, input=examples[i].input, output=text, answer=examples[i].answer)
                 for i, text in pairs]
    if accelerator.is_main_process:
        write_json_examples(generated, cache)
    accelerator.wait_for_everyone()
    return generated
