"""The teacher of a distill run: loading it frozen, naming it for a teacher cache, and its greedy answers (SeqKD).

One precision rule for every teacher pass: the run's ``train.precision`` resolved on this machine
(:func:`kdlab.precision.resolve_precision`, ``auto`` by default): bf16 weights and bf16 autocast where the hardware
computes bf16 natively, float32 elsewhere. The study's ``answers`` node and SeqKD inside a run both go through
:func:`answer_generator` and :func:`teacher_answers` (on the backend ``kd.generation_backend`` chooses: HF with
:func:`load_frozen_teacher`, or vLLM), so they give the same answers on the same machine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from kdlab.backends import Backend, choose_backend, open_generator
from kdlab.config import RunConfig
from kdlab.data.formats import Example, load_examples, load_json_examples, write_json_examples
from kdlab.data.tokenize import encode_prompt
from kdlab.errors import KdlabError
from kdlab.models.load import check_adapter_folder, load_model
from kdlab.precision import uses_bf16

ANSWER_TARGET_FILE = "answer_target_data.json"


def load_frozen_teacher(spec: str, adapter: str | None = None, precision: str = "auto"):
    """The frozen teacher (adapter merged), in bf16 when ``precision`` resolves to bf16 here, else float32."""
    dtype = torch.bfloat16 if uses_bf16(precision) else torch.float32
    teacher = load_model(spec, dtype=dtype, adapter=adapter, merge_adapter=True)
    teacher.eval().requires_grad_(False)
    return teacher


def load_teacher(config: RunConfig):
    """The run's frozen teacher (:func:`load_frozen_teacher` at ``train.precision``)."""
    return load_frozen_teacher(config.teacher, config.teacher_adapter, config.train.precision)


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


@contextmanager
def answer_generator(
    spec: str, adapter: str | None, tokenizer, precision: str, chosen: Backend, batch_size: int, teacher=None
) -> Iterator:
    """The generator of the teacher's answers on the ``chosen`` backend (:mod:`kdlab.backends`; printed): a vLLM
    engine, or HF ``generate`` on ``teacher`` (loaded frozen here when not given), at this module's precision rule."""
    from kdlab.models.load import inference_device

    print(f"kdlab: teacher answers: {chosen.describe()}", flush=True)
    if chosen.name == "hf" and teacher is None:
        teacher = load_frozen_teacher(spec, adapter, precision).to(inference_device())
    with open_generator(
        chosen, spec, adapter, tokenizer, uses_bf16(precision), model=teacher, batch_size=batch_size
    ) as g:
        yield g


def teacher_answers(
    generator, tokenizer, examples: list[Example], max_new_tokens: int, progress: str | None = "SeqKD: teacher answers"
) -> list[Example]:
    """``examples`` with their ``output`` replaced by the teacher's greedy answer to the prompt (SeqKD data), from
    ``generator`` (:func:`answer_generator`)."""
    prompts = [encode_prompt(tokenizer, example) for example in examples]
    responses = generator.generate(prompts, max_new_tokens, progress=progress)
    texts = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in responses]
    return [
        Example(instruction=e.instruction, input=e.input, output=text, answer=e.answer)
        for e, text in zip(examples, texts)
    ]


def seqkd_examples(
    teacher,
    tokenizer,
    examples: list[Example],
    config: RunConfig,
    run_dir: Path,
    accelerator,
    file_name: str = "seqkd_data.json",
) -> list[Example]:
    """SeqKD data: the teacher's greedy answers to the training prompts, generated once, cached in the run folder.

    With HF every process answers its share; a vLLM engine answers all of them on the main process."""
    from accelerate.utils import gather_object

    cache = run_dir / file_name
    if cache.is_file():
        return load_json_examples(cache)
    rank, world = accelerator.process_index, accelerator.num_processes
    chosen = choose_backend(config.kd.generation_backend, config.teacher, len(examples) * config.kd.max_new_tokens)
    on_vllm = chosen.name == "vllm"
    mine = list(range(rank, len(examples), world)) if not on_vllm else list(range(len(examples)))
    answered = []
    if mine and (accelerator.is_main_process or not on_vllm):
        with answer_generator(
            config.teacher,
            config.teacher_adapter,
            tokenizer,
            config.train.precision,
            chosen,
            config.kd.generation_batch_size,
            teacher,
        ) as generator:
            answered = teacher_answers(
                generator,
                tokenizer,
                [examples[i] for i in mine],
                config.kd.max_new_tokens,
                progress="SeqKD: teacher answers" if accelerator.is_local_main_process else None,
            )
    pairs = list(zip(mine, answered))
    generated = [
        example for _, example in sorted(gather_object(pairs) if world > 1 else pairs, key=lambda pair: pair[0])
    ]
    if accelerator.is_main_process:
        write_json_examples(generated, cache)
    accelerator.wait_for_everyone()
    return generated


def teacher_target_examples(
    teacher, tokenizer, examples: list[Example], config: RunConfig, run_dir: Path, accelerator
) -> list[Example]:
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
            raise KdlabError(
                f"{config.teacher_answers}: teacher answers do not match {config.data} "
                f"({len(answers)} vs {len(examples)} examples, or other instructions)"
            )
    else:
        answers = seqkd_examples(
            teacher, tokenizer, examples, config, run_dir, accelerator, file_name="teacher_answers.json"
        )
    rewritten, changed, missing = [], 0, 0
    for example, answer in zip(examples, answers):
        span = find_answer_span(answer.output.strip())
        new_output = replace_answer_value(example.output.strip(), span.value(answer.output.strip())) if span else None
        if new_output is None:
            missing += 1
            new_output = example.output
        changed += new_output.strip() != example.output.strip()
        rewritten.append(
            Example(instruction=example.instruction, input=example.input, output=new_output, answer=example.answer)
        )
    if accelerator.is_main_process:
        write_json_examples(rewritten, run_dir / ANSWER_TARGET_FILE)
    accelerator.print(
        f"kdlab: answer target = teacher: {changed} of {len(examples)} training answers changed to the teacher's "
        f"({missing} kept gold: no statement in the response or in the teacher's answer)",
        flush=True,
    )
    return rewritten
