"""Model cards: the README.md of a run's ``final/`` folder (Hugging Face's format: YAML front matter, then Markdown).

Front matter::

    base_model: the student (SFT: the model) as a Hub id where kdlab knows one, else the spec given
    library_name: peft (a LoRA adapter) | transformers (a full model)
    tags: [kdlab, knowledge-distillation, sft | kd and the KD loss name, lora]
    datasets: [the training data file names]
    kdlab: {kind, teacher, evaluation: {task: metrics}, fidelity: {task: metrics, average: metrics}}

The body says the teacher, the method and its KD settings, the data, the training budget (steps, response tokens,
time) and, once the run was evaluated (in a study: the eval and fidelity nodes call :func:`update_model_card`),
the evaluation and fidelity results. Training writes the card with the weights (:func:`card_text`); an update
rewrites it from the run's ``config.yaml`` and ``result.json`` keeping the results already on it.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from kdlab.io import atomic_write_text
from kdlab.losses.divergences import argument_fields
from kdlab.outputs import read_config_mapping

#: kdlab model names -> the Hub id of the model they are
HUB_IDS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}
#: the kd settings a model card shows (the divergences' arguments: each its field, from the registry)
KD_FIELDS = (
    "loss",
    "temperature",
    "kd_weight",
    *argument_fields(),
    "lmbda",
    "teacher_noise",
    "answer_weight",
    "answer_target",
    "disagreement_gamma",
    "speculative_k",
)
_FRONT = re.compile(r"\A---\n(.*?)\n---\n?", re.S)


def hub_id(spec: str | None) -> str | None:
    return None if spec is None else HUB_IDS.get(spec, spec)


def is_kd(config: dict) -> bool:
    return config.get("kind") != "sft"


def front_matter(config: dict, evaluation: dict | None = None, fidelity: dict | None = None) -> dict:
    """The YAML header (see the module doc) of a run with resolved ``config`` (``RunConfig.to_dict()``)."""
    lora = bool(config.get("lora", {}).get("enabled"))
    tags = ["kdlab", "knowledge-distillation"]
    tags += ["kd", config["kd"]["loss"]] if is_kd(config) else ["sft"]
    tags += ["lora"] if lora else []
    kdlab = {
        "kind": "kd" if is_kd(config) else "sft",
        "teacher": hub_id(config.get("teacher")) if is_kd(config) else None,
    }
    if evaluation:
        kdlab["evaluation"] = evaluation
    if fidelity:
        kdlab["fidelity"] = fidelity
    return {
        "base_model": hub_id(config["model"]),
        "library_name": "peft" if lora else "transformers",
        "tags": tags,
        "datasets": [_data_name(config["data"])],
        "kdlab": kdlab,
    }


def card_text(
    config: dict,
    summary: dict,
    evaluation: dict | None = None,
    fidelity: dict | None = None,
    tokens: tuple[int, bool] | None = None,
) -> str:
    """The whole README.md: front matter and body. ``summary`` is the run's result.json, ``tokens`` the
    :func:`logged_tokens` of its log.csv."""
    lines = ["", f"# {Path(config.get('out') or 'model').name}", ""]
    lines += _method(config) + _budget(summary, tokens) + _results(evaluation, fidelity)
    lines += ["Trained with kdlab; the run's full settings are in its `config.yaml`.", ""]
    return format_card(front_matter(config, evaluation, fidelity), "\n".join(lines))


def read_model_card(path: str | Path) -> tuple[dict, str]:
    """(front matter, body) of a model card file or of a folder's README.md; ({}, text) without front matter."""
    path = Path(path)
    return parse_card((path / "README.md" if path.is_dir() else path).read_text())


def parse_card(text: str) -> tuple[dict, str]:
    """(front matter, body) of a card's text; ({}, text) without front matter."""
    match = _FRONT.match(text)
    if not match:
        return {}, text
    return yaml.safe_load(match.group(1)) or {}, text[match.end() :]


def format_card(header: dict, body: str) -> str:
    """A card's text: ``header`` as YAML front matter, then ``body``."""
    return "---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n" + body


def run_card_text(run_dir: str | Path, evaluation: dict | None = None, fidelity: dict | None = None) -> str:
    """The card of a finished run, from its ``config.yaml``, ``result.json`` and ``log.csv`` (:func:`card_text`)."""
    run_dir = Path(run_dir)
    config = read_config_mapping(run_dir / "config.yaml")
    summary = yaml.safe_load((run_dir / "result.json").read_text())  # JSON is YAML
    return card_text(config, summary, evaluation, fidelity, logged_tokens(run_dir, summary.get("steps")))


def write_model_card(run_dir: str | Path, evaluation: dict | None = None, fidelity: dict | None = None) -> Path:
    """(Re)write ``run_dir/final/README.md`` from config.yaml and result.json; results given replace those on the
    card, the others are kept. Returns the card's path."""
    card = Path(run_dir) / "final" / "README.md"
    old = read_model_card(card)[0].get("kdlab", {}) if card.is_file() else {}
    atomic_write_text(
        card, run_card_text(run_dir, evaluation or old.get("evaluation"), fidelity or old.get("fidelity"))
    )
    return card


def logged_tokens(run_dir: str | Path, steps: int | None) -> tuple[int, bool] | None:
    """(response tokens summed over log.csv's rows, whether every step has a row), or None without a log."""
    import csv

    path = Path(run_dir) / "log.csv"
    if not path.is_file():
        return None
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    return sum(int(row["tokens"]) for row in rows), len(rows) == steps


def run_of(folder: str | Path | None) -> Path | None:
    """The run folder whose ``final/`` is ``folder`` (an evaluated model or adapter), or None for anything else."""
    if not folder:
        return None
    folder = Path(folder)
    run_dir = folder.parent
    if folder.name == "final" and (run_dir / "result.json").is_file() and (run_dir / "config.yaml").is_file():
        return run_dir
    return None


def update_model_card(evaluated: list, evaluation: dict | None = None, fidelity: dict | None = None) -> Path | None:
    """Add results to the card of the first kdlab run among ``evaluated`` (model / adapter folders); no run: no-op.

    ``evaluation`` is a metrics.json (its ``tasks`` are kept), ``fidelity`` a fidelity.json (``tasks`` and ``average``).
    """
    run_dir = next((run for run in map(run_of, evaluated) if run is not None), None)
    if run_dir is None or not (run_dir / "final").is_dir():
        return None
    return write_model_card(
        run_dir,
        evaluation=evaluation and evaluation["tasks"],
        fidelity=fidelity and {**fidelity["tasks"], "average": fidelity["average"]},
    )


def evaluated_run(eval_dir: str | Path) -> Path | None:
    """The kdlab run whose ``final/`` the evaluation folder ``eval_dir`` (its config.yaml) evaluated, or None."""
    settings = read_config_mapping(Path(eval_dir) / "config.yaml")
    return next((run for run in map(run_of, [settings.get("adapter"), settings.get("model")]) if run is not None), None)


def card_after_eval(eval_dir: str | Path, fidelity_dir: str | Path | None = None) -> Path | None:
    """After a study's eval node (``eval_dir``: config.yaml, metrics.json) or fidelity node (``fidelity_dir``:
    fidelity.json, about the student evaluated in ``eval_dir``): add the results to the evaluated run's card."""
    run_dir = evaluated_run(eval_dir)
    if run_dir is None:
        return None
    if fidelity_dir is not None:
        return update_model_card(
            [run_dir / "final"], fidelity=yaml.safe_load((Path(fidelity_dir) / "fidelity.json").read_text())
        )
    return update_model_card(
        [run_dir / "final"], evaluation=yaml.safe_load((Path(eval_dir) / "metrics.json").read_text())
    )


def _data_name(data: str) -> str:
    """A Hub dataset id for ``hf:NAME[:CONFIG][@SPLIT]``, else the file name."""
    return re.split(r"[:@]", data[3:])[0] if data.startswith("hf:") else Path(data).name


def _method(config: dict) -> list[str]:
    lora = config.get("lora", {})
    lines = ["## Method", ""]
    if is_kd(config):
        teacher = hub_id(config.get("teacher"))
        adapter = f" with the LoRA adapter `{config['teacher_adapter']}`" if config.get("teacher_adapter") else ""
        lines += [
            f"Knowledge distillation of the teacher `{teacher}`{adapter} into the student `{hub_id(config['model'])}`.",
            "",
        ]
        lines += [f"- {field}: {config['kd'][field]}" for field in KD_FIELDS if field in config["kd"]]
        if config.get("teacher_cache"):
            lines += [
                f"- teacher cache: top-{config['kd'].get('cache_k')} log-probs, tail {config['kd'].get('cache_tail')}"
            ]
    else:
        lines += [f"Supervised fine-tuning of `{hub_id(config['model'])}` on the data's responses."]
    start = run_of(config.get("adapter")) or run_of(config.get("model"))
    if start is not None:  # a later stage of a study: the weights a run started from are another run's result
        start = start.resolve()  # through a study's ``selected`` link: the run itself
        lines += [f"Training started from the result of the earlier run `{start.parent.name}/{start.name}`.", ""]
    if config["model"] in HUB_IDS:
        lines += [
            "",
            f"The base model is kdlab's embedded `{config['model']}`: the Q4_1 GGUF of `{HUB_IDS[config['model']]}`, "
            "dequantised, so its weights differ slightly from the Hub's.",
        ]
    weights = (
        f"LoRA adapter (r={lora.get('r')}, alpha={lora.get('alpha')}, targets {', '.join(lora.get('target_modules', []))})"
        if lora.get("enabled")
        else "full fine-tuning"
    )
    lines += ["", f"- weights: {weights}"]
    train = config.get("train", {})
    lines += [
        f"- optimiser: AdamW, lr {train.get('lr')}, batch {train.get('batch_size')} x {train.get('grad_accum')} accumulation, "
        f"max length {train.get('max_length')}, seed {train.get('seed')}",
        "",
    ]
    lines += [
        "## Data",
        "",
        f"`{config['data']}`"
        + (f" (teacher answers: `{config['teacher_answers']}`)" if config.get("teacher_answers") else ""),
        "",
    ]
    return lines


def _budget(summary: dict, tokens: tuple[int, bool] | None) -> list[str]:
    data = summary.get("data", {})
    lines = [
        "## Training budget",
        "",
        f"- optimizer steps: {summary.get('steps')}",
        f"- examples: {summary.get('examples')}",
    ]
    if tokens is not None:
        lines.append(
            f"- response tokens: {tokens[0]}"
            + ("" if tokens[1] else " (in the logged steps only: train.log_steps > 1)")
        )
    lines += [
        f"- training time: {float(summary.get('train_seconds', 0)):.1f} s on {summary.get('processes')} process(es), "
        f"precision {summary.get('precision')}",
        f"- final loss: {float(summary.get('final_loss', float('nan'))):.4f}",
    ]
    if data.get("cut_responses") or data.get("dropped_long"):
        lines.append(f"- long examples: {data.get('cut_responses', 0)} cut, {data.get('dropped_long', 0)} dropped")
    return lines + [""]


def _results(evaluation: dict | None, fidelity: dict | None) -> list[str]:
    lines = []
    if evaluation:
        lines += ["## Evaluation", "", "| task | accuracy | n |", "| --- | --- | --- |"]
        lines += [
            f"| {task} | {_number(row.get('accuracy'))} | {row.get('n', '')} |" for task, row in evaluation.items()
        ]
        lines.append("")
    if fidelity:
        lines += ["## Fidelity to the teacher", "", "| task | agreement | n |", "| --- | --- | --- |"]
        lines += [
            f"| {task} | {_number(row.get('agreement'))} | {row.get('n', '')} |" for task, row in fidelity.items()
        ]
        lines.append("")
    return lines


def _number(value) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)
