"""``kdlab sft|distill``: the command-line side of :mod:`kdlab.train` (through :mod:`kdlab.api`).

Each field of a config section (:data:`kdlab.config.SECTIONS`: ``lora``, ``train``, ``kd``) gets its own flag
(``--lr``, ``--lora-r``...); :func:`kdlab.config.build_config` resolves defaults < ``--preset`` (distill) <
``--config FILE`` < flags < ``--set SECTION.FIELD=VALUE``.
"""

from __future__ import annotations

import argparse
import dataclasses

from kdlab.config import KD_PRESETS, SECTIONS, build_config


def _add_section_flags(parser: argparse.ArgumentParser, section: str) -> None:
    """One flag per field of a config section (``--lr``, ``--lora-r``...); unset flags leave the config alone."""
    group = parser.add_argument_group(f"{section} settings (also: --set {section}.FIELD=VALUE or a YAML file)")
    for item in dataclasses.fields(SECTIONS[section]):
        flag = item.metadata.get("flag") or "--" + item.name.replace("_", "-")
        default = item.default if item.default is not dataclasses.MISSING else item.default_factory()
        help_text = f"{item.metadata['help']} (default: {default})"
        dest = f"{section}.{item.name}"
        if item.type in ("bool", bool):
            group.add_argument(
                flag, dest=dest, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text
            )
        else:
            group.add_argument(
                flag,
                dest=dest,
                default=argparse.SUPPRESS,
                metavar=item.name.upper(),
                help=help_text,
                choices=item.metadata.get("choices"),
            )


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file with settings (top-level keys, and sections lora/train/kd)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override one setting (repeatable), e.g. --set train.lr=1e-4",
    )
    parser.add_argument(
        "--data", default=argparse.SUPPRESS, help="training data: LLM-Adapters JSON file or hf:NAME[:CONFIG][@SPLIT]"
    )
    parser.add_argument("--out", default=argparse.SUPPRESS, help="run folder (re-running the same command resumes it)")


def _run_flags(args: argparse.Namespace) -> dict:
    ignore = {
        "command",
        "config",
        "overrides",
        "preset",
        "func",
        "models_command",
        "data_command",
        "stats_command",
        "study_command",
    }
    flags = {key: value for key, value in vars(args).items() if key not in ignore}
    if "student" in flags:
        flags["model"] = flags.pop("student")
    return {key: value for key, value in flags.items() if value is not None}


def cmd_sft(args: argparse.Namespace) -> None:
    from kdlab.api import sft

    sft(build_config("sft", args.config, _run_flags(args), args.overrides))


def cmd_distill(args: argparse.Namespace) -> None:
    from kdlab.api import distill

    distill(build_config("distill", args.config, _run_flags(args), args.overrides, preset=args.preset))


def add_train_commands(commands) -> None:
    """Add ``sft`` and ``distill`` to the ``kdlab`` subcommands (``commands``: the parser's ``add_subparsers()``)."""
    sft = commands.add_parser(
        "sft",
        help="supervised fine-tuning (teachers, student baselines)",
        description="Fine-tune a model (LoRA or full) on instruction data.",
    )
    sft.add_argument(
        "--model", default=argparse.SUPPRESS, help="model: smollm2-135m, a folder, a .gguf file or a Hub id"
    )
    sft.add_argument("--adapter", default=argparse.SUPPRESS, help="continue training this LoRA adapter")
    _add_common(sft)
    _add_section_flags(sft, "lora")
    _add_section_flags(sft, "train")
    sft.set_defaults(func=cmd_sft)

    distill = commands.add_parser(
        "distill",
        help="knowledge distillation from a teacher into a student",
        description="Distil a teacher into a student with a token-level divergence or SeqKD.",
    )
    distill.add_argument("--teacher", default=argparse.SUPPRESS, help="teacher model (spec as for --student)")
    distill.add_argument(
        "--teacher-adapter",
        dest="teacher_adapter",
        default=argparse.SUPPRESS,
        help="teacher LoRA adapter (omit for a base, task-unaware teacher)",
    )
    distill.add_argument(
        "--teacher-cache",
        dest="teacher_cache",
        default=argparse.SUPPRESS,
        metavar="DIR",
        help="teacher signal cache folder: built once (top --cache-k log-probs per token), then reused by "
        "every run on the same teacher and data; no teacher forward pass on off-policy steps",
    )
    distill.add_argument(
        "--student", default=argparse.SUPPRESS, help="student: smollm2-135m, a folder, a .gguf file or a Hub id"
    )
    distill.add_argument("--adapter", default=argparse.SUPPRESS, help="start the student from this LoRA adapter")
    distill.add_argument(
        "--teacher-answers",
        dest="teacher_answers",
        default=argparse.SUPPRESS,
        metavar="JSON",
        help="the teacher's greedy answers to the training prompts (for kd.answer_target: teacher; "
        "default: generated at the start of the run)",
    )
    distill.add_argument(
        "--preset",
        default=None,
        choices=sorted(KD_PRESETS),
        help="a named KD recipe (explicit settings win): "
        + "; ".join(
            f"{name} = {', '.join(f'{k}={v}' for k, v in values.items())}" for name, values in KD_PRESETS.items()
        ),
    )
    _add_common(distill)
    _add_section_flags(distill, "kd")
    _add_section_flags(distill, "lora")
    _add_section_flags(distill, "train")
    distill.set_defaults(func=cmd_distill)
