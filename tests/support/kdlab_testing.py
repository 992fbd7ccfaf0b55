"""Helpers shared by the test files: run the ``kdlab`` CLI in-process and read a training run back.

``run_cli("sft", model=m, data=d, max_steps=4, no_lora=True, **FAST)`` runs
``kdlab sft --model m --data d --max-steps 4 --no-lora --precision fp32 --save-steps 0``.
"""

import csv
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from kdlab.cli import main

# the task folders of ../shared/data/paper-kd-generalization/eval (13 of the paper's 14 tasks, no HellaSwag; plus mathqa)
SHARED_TASKS = [
    "AQuA",
    "ARC-Challenge",
    "ARC-Easy",
    "AddSub",
    "MultiArith",
    "SVAMP",
    "SingleEq",
    "boolq",
    "gsm8k",
    "mathqa",
    "openbookqa",
    "piqa",
    "social_i_qa",
    "winogrande",
]

FAST = {"precision": "fp32", "save_steps": 0}
"""Settings that make a tiny training run quick: no mixed precision, no checkpoints."""


def cli_args(*words, **flags) -> list[str]:
    """The argv for ``kdlab``: ``words`` (command, positional arguments, raw flag tokens) as str, then the flags.

    Each keyword, in the order given, becomes a flag, ``_`` written ``-``:
    ``max_steps=4`` -> ``--max-steps 4``; ``True`` -> ``--name`` alone (``no_lora=True`` -> ``--no-lora``);
    ``False`` -> ``--no-name``; a list or tuple -> the flag repeated once per value (``set=["a=1", "b=2"]`` ->
    ``--set a=1 --set b=2``). Flags that are not Python names (``--set`` is fine, ``--in`` is not) go in ``words``.
    """
    argv = [str(word) for word in words]
    for name, value in flags.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is False:
            argv.append("--no-" + flag[2:])
        elif isinstance(value, (list, tuple)):
            for item in value:
                argv += [flag, str(item)]
        else:
            argv += [flag, str(value)]
    return argv


def run_cli(*words, **flags) -> int:
    """Run ``kdlab`` in-process with :func:`cli_args` ``(*words, **flags)``; return its exit status."""
    try:
        main(cli_args(*words, **flags))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def small_data(path: Path, source: Path, n: int) -> Path:
    """Write the first ``n`` examples of the JSON list ``source`` to ``path``; return ``path``."""
    path.write_text(json.dumps(json.loads(source.read_text())[:n]))
    return path


def losses(run_dir: Path) -> list[float]:
    """The loss column of a run's log.csv, one value per logged step."""
    with (run_dir / "log.csv").open() as handle:
        return [float(row["loss"]) for row in csv.DictReader(handle)]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The final weights of a run: the LoRA adapter's if it saved one, else the full model's."""
    final = run_dir / "final"
    name = "adapter_model.safetensors" if (final / "adapter_model.safetensors").exists() else "model.safetensors"
    return load_file(final / name)


def edited_spec(path: Path, tmp_path: Path, edit) -> Path:
    """A copy of the study spec at ``path`` changed by ``edit(data)``, its domain ``arith`` pointing at the data
    beside the original (``train.json``, ``eval/``), written to ``tmp_path/edited.yaml``."""
    import yaml

    data = yaml.safe_load(path.read_text())
    edit(data)
    data["domains"]["arith"].update(train=str(path.parent / "train.json"), data_dir=str(path.parent / "eval"))
    out = tmp_path / "edited.yaml"
    out.write_text(yaml.safe_dump(data))
    return out


def distill_config(max_length: int = 256, **settings):
    """A resolved ``kdlab distill`` config (:func:`kdlab.config.build_config`) for code that reads one: student ``S``,
    teacher ``T``, data ``d.json``, ``train.max_length``, and any dotted ``settings`` (``{"kd.loss": "gold"}``)."""
    from kdlab.config import build_config

    base = {"model": "S", "teacher": "T", "data": "d.json", "out": "o", "train.max_length": max_length}
    return build_config("distill", None, {**base, **settings}, [])
