"""Run configuration: dataclasses with help text, YAML files, dotted overrides, validation.

A run config is resolved in this order (later wins): dataclass defaults, ``--config FILE.yaml``, command-line flags,
``--set section.field=value``. The resolved config is written to the run folder as ``config.yaml``.
Every field of :class:`LoraConfig`, :class:`TrainConfig` and :class:`KDConfig` is also a command-line flag
(``--lr``, ``--lora-r``, ``--temperature``, ...); its help text is the field's ``help`` metadata.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from kdlab.backends import BACKENDS
from kdlab.errors import KdlabError
from kdlab.io import read_yaml
from kdlab.losses.cross_tokenizer import CROSS_TOKENIZER_LOSSES
from kdlab.losses.divergences import DIVERGENCES, argument_fields, check_loss_args


def option(default, help: str, flag: str | None = None, choices: tuple | None = None, **kwargs):
    """A dataclass field carrying its CLI help, flag name and allowed choices."""
    metadata = {"help": help, "flag": flag, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata, **kwargs)
    return field(default=default, metadata=metadata, **kwargs)


#: Losses that are a training recipe rather than a divergence per token (:mod:`kdlab.train.recipes`): name -> help.
RECIPE_LOSSES = {"seqkd": "SFT on the teacher's greedy answers (SeqKD: a recipe, no temperature)"}
#: Every ``kd.loss``: the token-level divergences (:data:`kdlab.losses.divergences.DIVERGENCES`), the losses for a
#: teacher with another tokenizer (:data:`kdlab.losses.cross_tokenizer.CROSS_TOKENIZER_LOSSES`), then the recipes.
LOSS_NAMES = (*DIVERGENCES, *CROSS_TOKENIZER_LOSSES, *RECIPE_LOSSES)
LOSS_HELP = "; ".join(
    [
        *(spec.help for spec in DIVERGENCES.values()),
        *(f"{k} = {v}" for k, v in {**CROSS_TOKENIZER_LOSSES, **RECIPE_LOSSES}.items()),
    ]
)


def _divergence_arguments(cls):
    """Class decorator (under ``@dataclass``): after ``kd_weight``, a float field per divergence argument (``beta``,
    ``skew_alpha``: :func:`kdlab.losses.divergences.argument_fields`)."""
    fields = {name: option(arg.default, arg.config_help(users)) for name, (arg, users) in argument_fields().items()}
    names = list(own := inspect.get_annotations(cls))
    names[names.index("kd_weight") + 1 : names.index("kd_weight") + 1] = fields
    cls.__annotations__ = {name: own.get(name, "float") for name in names}
    for name, value in fields.items():
        setattr(cls, name, value)
    return cls


@dataclass
class LoraConfig:
    """LoRA settings (paper: r=8, alpha=16); ``enabled: false`` means full fine-tuning."""

    enabled: bool = option(True, "train a LoRA adapter (false: full fine-tuning)", flag="--lora")
    r: int = option(8, "LoRA rank", flag="--lora-r")
    alpha: int = option(16, "LoRA alpha (scale = alpha / r)", flag="--lora-alpha")
    dropout: float = option(0.05, "LoRA dropout", flag="--lora-dropout")
    target_modules: list = option(
        ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"],
        "modules that get LoRA (LLM-Adapters' setting)",
        flag="--lora-targets",
    )


@dataclass
class TrainConfig:
    """Optimisation settings shared by SFT and KD."""

    lr: float = option(3e-4, "peak learning rate (linear warm-up then linear decay)")
    batch_size: int = option(8, "examples per micro-batch per process")
    grad_accum: int = option(1, "micro-batches per optimizer step")
    epochs: float = option(1.0, "passes over the data (ignored when max_steps > 0)")
    max_steps: int = option(0, "optimizer steps; 0 = derived from epochs")
    max_length: int = option(256, "max prompt+response tokens per training example (see on_long)")
    on_long: str = option(
        "truncate",
        "an example longer than max_length: truncate = cut its response (drop it when the "
        "prompt alone is too long), drop = leave it out, error = stop; counts in the output and "
        "result.json",
        choices=("truncate", "drop", "error"),
    )
    warmup_ratio: float = option(0.03, "fraction of steps spent warming up")
    weight_decay: float = option(0.0, "AdamW weight decay")
    max_grad_norm: float = option(1.0, "gradient clipping norm (0 = off)")
    seed: int = option(0, "random seed (data order, init, noise, on-policy choices)")
    precision: str = option(
        "auto", "auto (bf16 where supported) | bf16 | fp32; fp16 is not offered", choices=("auto", "bf16", "fp32")
    )
    save_steps: int = option(50, "checkpoint every N optimizer steps (0 = only at the end)")
    keep_checkpoints: int = option(2, "how many recent checkpoints to keep")
    log_steps: int = option(1, "log the loss every N optimizer steps")
    chunk_size: int = option(
        256, "tokens per chunk when computing the loss from hidden states (memory ~ chunk x vocab)"
    )
    report_to: list = option(
        [],
        "trackers: tensorboard, mlflow, wandb, all (the installed ones) or none; files go to "
        "RUN/trackers/ (pip install 'kdlab[trackers]'; see kdlab.train.trackers)",
    )
    trace_data: bool = option(False, "write the example ids each process trains on to trace/rank-K.txt")


@dataclass
@_divergence_arguments  # the divergences' arguments: from the registry, like the loss choices
class KDConfig:
    """Distillation settings (paper: fkl/rkl/gjsd, tau in {1, 2, 5}, w = 1, gjsd beta = 0.5, lambda = 0.5)."""

    loss: str = option("fkl", LOSS_HELP, choices=LOSS_NAMES)
    temperature: float = option(1.0, "temperature tau on both distributions; the loss is scaled by tau^2")
    kd_weight: float = option(1.0, "w in loss = (1 - w) * CE + w * KD (paper: 1)")
    lmbda: float = option(0.0, "fraction of optimizer steps trained on student-generated (on-policy) responses")
    teacher_noise: float = option(0.0, "std of Gaussian noise added to the teacher logits")
    max_new_tokens: int = option(128, "max response tokens when generating (on-policy samples, SeqKD answers)")
    sample_temperature: float = option(1.0, "sampling temperature of on-policy student responses")
    generation_batch_size: int = option(16, "prompts per batch when generating")
    generation_backend: str = option(
        "auto",
        "backend of the teacher's answers (SeqKD, answer_target teacher): hf = transformers generate; vllm = a vLLM "
        "engine; auto = vllm when installed and it runs the teacher, else hf (on-policy samples always use hf)",
        choices=BACKENDS,
    )
    cache_k: int = option(64, "top-k teacher log-probs stored per token when building a --teacher-cache")
    cache_temperatures: list = option(
        [1.0, 2.0, 5.0], "temperatures whose exact tail mass the teacher cache stores (4 bytes per token each)"
    )
    cache_tail: str = option(
        "bucket",
        "how the KD loss treats the teacher mass outside the cached top-k (with --teacher-cache): "
        "bucket = one extra 'rest of the vocabulary' outcome for both models (exact tail mass); "
        "renormalize = both distributions restricted to the top-k and renormalised (tail ignored)",
        choices=("bucket", "renormalize"),
    )
    answer_weight: float = option(
        1.0,
        "decision-level KD: multiply the divergence on the tokens of the response's decision statement "
        "('The answer is N.', 'the correct answer is X') by this factor (1 = plain KD)",
    )
    answer_target: str = option(
        "gold",
        "decision-level KD: what the decision statement is trained on: gold = the training data's "
        "answer, by the (weighted) divergence; teacher = the teacher's own greedy answer written into the "
        "response, by answer_weight x CE (needs the live teacher or --teacher-answers)",
        choices=("gold", "teacher"),
    )
    disagreement_gamma: float = option(
        0.0,
        "disagreement-weighted KD: weight each token's divergence by 1 + gamma * "
        "[argmax p_S != argmax p_T] * max p_T (0 = plain KD)",
    )
    shared_weight: float = option(
        -1.0,
        "gold: weight a of the exact divergence on the vocabulary entries both tokenizers share (ULD on the rest gets "
        "1 - a), in [0, 1]; -1 = the shared share of the teacher's vocabulary (TRL GOLD's default)",
    )
    speculative_k: int = option(
        0,
        "speculative KD (Xu et al. 2025): on on-policy steps (kd.lmbda) the student samples and every "
        "token outside the teacher's top-k is replaced by a teacher sample from its top-k (0 = plain "
        "on-policy sampling)",
    )


@dataclass
class RunConfig:
    """One training run: ``kind`` is sft or distill."""

    kind: str = "sft"
    model: str = ""  # SFT model / KD student
    adapter: str | None = None  # start the student from this adapter
    teacher: str | None = None
    teacher_adapter: str | None = None
    teacher_cache: str | None = None  # folder of the teacher signal cache (kdlab.teacher_cache), built on first use
    teacher_answers: str | None = (
        None  # the teacher's greedy answers to the training prompts (LLM-Adapters JSON, same order)
    )
    data: str = ""
    out: str = ""
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    kd: KDConfig = field(default_factory=KDConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTIONS = {"lora": LoraConfig, "train": TrainConfig, "kd": KDConfig}


def _coerce(value, annotation, where: str):
    """Convert ``value`` (from YAML or a string override) to the field type, or raise a clear error."""
    args = typing.get_args(annotation)
    if args:  # an optional field such as ``str | None``
        if value is None or value == "":
            return None
        annotation = next(arg for arg in args if arg is not type(None))
    kind = annotation
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise KdlabError(f"{where}: expected true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool) or not (
            isinstance(value, int) or (isinstance(value, str) and value.strip().lstrip("-").isdigit())
        ):
            raise KdlabError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if kind is float:
        try:
            result = float(value)
        except (TypeError, ValueError):
            raise KdlabError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not math.isfinite(result):
            raise KdlabError(f"{where}: expected a finite number, got {value!r}")
        return result
    if kind is list:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        if not isinstance(value, list):
            raise KdlabError(f"{where}: expected a list, got {value!r}")
        return value
    if value is not None and not isinstance(value, str):
        raise KdlabError(f"{where}: expected a string, got {value!r}")
    return value


def _apply(config: RunConfig, key: str, value, source: str) -> None:
    """Set dotted ``key`` (``train.lr`` or ``model``) on ``config`` from ``source``."""
    section, _, name = key.partition(".")
    where = f"{source}: {key}"
    if name:
        if section not in SECTIONS:
            raise KdlabError(f"{where}: unknown section '{section}' (sections: {', '.join(SECTIONS)})")
        target = getattr(config, section)
    else:
        target, name = config, section
    hints = typing.get_type_hints(type(target))
    if name not in hints or name in SECTIONS:
        raise KdlabError(
            f"{where}: unknown setting (known: {', '.join(sorted(k for k in hints if k not in SECTIONS))})"
        )
    setattr(target, name, _coerce(value, hints[name], where))


def load_yaml(path: str | Path) -> dict:
    """A YAML config file as a flat dict of dotted keys."""
    path = Path(path)
    if not path.is_file():
        raise KdlabError(f"{path}: config file not found")
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise KdlabError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    flat = {}
    for key, value in data.items():
        if key in SECTIONS and isinstance(value, dict):
            flat.update({f"{key}.{name}": item for name, item in value.items()})
        else:
            flat[key] = value
    return flat


def parse_override(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise KdlabError(f"--set {text!r}: expected SECTION.FIELD=VALUE")
    return key.strip(), value.strip()


def build_config(
    kind: str, config_file: str | None, flags: dict, overrides: list[str], preset: str | None = None
) -> RunConfig:
    """Resolve a run config: defaults < ``preset`` (:data:`KD_PRESETS`) < YAML file < flags < ``--set`` overrides;
    then validate it."""
    config = RunConfig(kind=kind)
    if preset is not None:
        if preset not in KD_PRESETS:
            raise KdlabError(f"unknown preset '{preset}' (choose from {', '.join(KD_PRESETS)})")
        for key, value in KD_PRESETS[preset].items():
            _apply(config, f"kd.{key}", value, f"preset {preset}")
    if config_file:
        for key, value in load_yaml(config_file).items():
            _apply(config, key, value, config_file)
    for key, value in flags.items():
        _apply(config, key, value, "command line")
    for text in overrides:
        key, value = parse_override(text)
        _apply(config, key, _override_value(text, value), "--set")
    validate(config)
    return config


def _override_value(text: str, value: str):
    """The value of ``--set key=value`` read as a YAML scalar or list; malformed YAML is a one-line error."""
    try:
        return yaml.safe_load(value) if value else value
    except yaml.YAMLError as exc:
        raise KdlabError(f"--set {text}: the value is not valid YAML ({str(exc).splitlines()[0]})") from None


def validate(config: RunConfig) -> None:
    """Check ranges and required fields; raise :class:`KdlabError` naming the setting."""
    required = ["model", "data", "out"] + (["teacher"] if config.kind == "distill" else [])
    for name in required:
        if not getattr(config, name):
            raise KdlabError(
                f"missing setting '{name}' (flag --{'student' if name == 'model' and config.kind == 'distill' else name})"
            )
    for section in SECTIONS:
        for item in dataclasses.fields(SECTIONS[section]):
            choices = item.metadata.get("choices")
            value = getattr(getattr(config, section), item.name)
            if choices and value not in choices:
                raise KdlabError(f"{section}.{item.name}: {value!r} is not one of {', '.join(choices)}")
    _check_ranges(config)
    kd = config.kd
    temperatures = []
    for value in kd.cache_temperatures:
        try:
            tau = float(value)
        except (TypeError, ValueError):
            tau = float("nan")
        if isinstance(value, bool) or not (math.isfinite(tau) and tau > 0):
            raise KdlabError(f"kd.cache_temperatures: expected numbers > 0, got {value!r}")
        temperatures.append(tau)
    kd.cache_temperatures = temperatures
    if config.kind == "distill" and config.teacher_cache and kd.loss == "seqkd":
        raise KdlabError(
            "--teacher-cache works with token-level losses only; seqkd trains on generated answers (drop --teacher-cache)"
        )
    _validate_fidelity_options(config)
    _validate_cross_tokenizer(config)
    if config.kind == "distill" and kd.loss in DIVERGENCES:
        if not (math.isfinite(kd.temperature) and kd.temperature > 0):
            raise KdlabError(f"kd.temperature must be > 0, got {kd.temperature}")
        check_loss_args(kd.loss, kd.temperature, **loss_kwargs(kd))


MAX_SEED = 2**32 - 1  # numpy's limit (accelerate's set_seed seeds numpy too)
_IN_RANGE = {
    "> 0": lambda v: v > 0,
    ">= 0": lambda v: v >= 0,
    "in [0, 1]": lambda v: 0 <= v <= 1,
    "in [0, 1)": lambda v: 0 <= v < 1,
}  # written so that a NaN is out of every range
#: The range of each numeric lora/train/kd setting (kd.temperature: in :func:`validate`, token-level KD only):
#: ``> 0`` (integers: >= 1), ``>= 0``, ``[0, 1]``, ``[0, 1)`` (skew alpha = 1 makes the divergence identically 0;
#: dropout p = 1 drops every LoRA input); the divergences' arguments are added below, with the ranges they register.
RANGES = {
    "> 0": "train.lr train.batch_size train.grad_accum train.max_length train.chunk_size train.keep_checkpoints "
    "train.log_steps lora.r lora.alpha kd.max_new_tokens kd.generation_batch_size kd.cache_k kd.sample_temperature",
    ">= 0": "train.epochs train.max_steps train.save_steps train.weight_decay train.max_grad_norm kd.teacher_noise "
    "kd.answer_weight kd.disagreement_gamma kd.speculative_k",
    "in [0, 1]": "kd.kd_weight kd.lmbda train.warmup_ratio",
    "in [0, 1)": "lora.dropout",
}
for _name, (_arg, _) in argument_fields().items():  # kd.beta, kd.skew_alpha: after the other kd fields of their range
    _names = RANGES.get(_arg.bound, "").split()
    _names.insert(max((i + 1 for i, item in enumerate(_names) if item.startswith("kd.")), default=0), f"kd.{_name}")
    RANGES[_arg.bound] = " ".join(_names)
    _IN_RANGE.setdefault(_arg.bound, _arg.contains)


def _check_ranges(config: RunConfig) -> None:
    """Every setting of :data:`RANGES` in its range, ``train.seed`` in [0, :data:`MAX_SEED`], training length set,
    tracker names known; each error names the setting and its value."""
    for bound, names in RANGES.items():
        for name in names.split():
            section, _, field_name = name.partition(".")
            value = getattr(getattr(config, section), field_name)
            if not _IN_RANGE[bound](value):
                raise KdlabError(f"{name} must be {bound}, got {value}")
    train = config.train
    if not 0 <= train.seed <= MAX_SEED:
        raise KdlabError(f"train.seed must be in [0, {MAX_SEED}], got {train.seed}")
    if train.epochs == 0 and train.max_steps == 0:
        raise KdlabError("train.epochs must be > 0 or train.max_steps > 0 (got epochs=0, max_steps=0)")
    _check_report_to(train.report_to)


def _check_report_to(names: list) -> None:
    """``train.report_to``: names of :data:`kdlab.train.trackers.KNOWN`, ``all`` or ``none`` (comma lists too)."""
    from kdlab.train.trackers import KNOWN

    allowed = (*KNOWN, "all", "none")
    for item in names:
        for name in str(item).split(","):
            if name.strip() and name.strip().lower() not in allowed:
                raise KdlabError(f"train.report_to: unknown tracker {name.strip()!r} (known: {', '.join(allowed)})")


def _validate_fidelity_options(config: RunConfig) -> None:
    """Combinations of the fidelity-aware KD settings (answer_weight, answer_target, disagreement_gamma,
    speculative_k; their ranges: :func:`_check_ranges`)."""
    kd = config.kd
    if config.kind != "distill":
        return
    fidelity_set = [
        name
        for name, on in (
            ("kd.answer_weight", kd.answer_weight != 1),
            ("kd.answer_target", kd.answer_target != "gold"),
            ("kd.disagreement_gamma", kd.disagreement_gamma > 0),
            ("kd.speculative_k", kd.speculative_k > 0),
        )
        if on
    ]
    if kd.loss == "seqkd" and fidelity_set:
        raise KdlabError(
            f"{', '.join(fidelity_set)}: token-level KD settings; seqkd trains on generated answers (use a token-level loss)"
        )
    if kd.speculative_k > 0 and kd.lmbda == 0:
        raise KdlabError(
            "kd.speculative_k applies to on-policy steps: set kd.lmbda > 0 (e.g. 0.5, or 1 for every step)"
        )
    if kd.answer_target == "teacher" and config.teacher_cache:
        raise KdlabError(
            "kd.answer_target: teacher rewrites the training responses, so the teacher cache (built on the "
            "original data) does not apply: drop --teacher-cache"
        )
    if config.teacher_answers and kd.answer_target != "teacher":
        raise KdlabError("--teacher-answers is used by kd.answer_target: teacher only")


def _validate_cross_tokenizer(config: RunConfig) -> None:
    """``kd.loss: uld | gold``: a temperature > 0, ``kd.shared_weight`` in [0, 1] or -1, and none of the settings
    these losses do not implement (each named)."""
    kd = config.kd
    if not (kd.shared_weight == -1 or 0 <= kd.shared_weight <= 1):
        raise KdlabError(f"kd.shared_weight must be in [0, 1] or -1 (adaptive), got {kd.shared_weight}")
    if config.kind == "distill" and kd.shared_weight != -1 and kd.loss != "gold":
        raise KdlabError(f"kd.shared_weight applies to kd.loss gold only (kd.loss is {kd.loss})")
    if config.kind != "distill" or kd.loss not in CROSS_TOKENIZER_LOSSES:
        return
    if not (math.isfinite(kd.temperature) and kd.temperature > 0):
        raise KdlabError(f"kd.temperature must be > 0, got {kd.temperature}")
    unsupported = [
        name
        for name, on in (
            ("--teacher-cache", bool(config.teacher_cache)),
            ("kd.speculative_k", kd.speculative_k > 0),
            ("kd.teacher_noise", kd.teacher_noise > 0),
            ("kd.answer_weight", kd.answer_weight != 1),
            ("kd.answer_target", kd.answer_target != "gold"),
            ("kd.disagreement_gamma", kd.disagreement_gamma > 0),
        )
        if on
    ]
    if unsupported:
        raise KdlabError(
            f"kd.loss {kd.loss} (cross-tokenizer) runs against the live teacher, without teacher-side token settings: "
            f"{', '.join(unsupported)} not supported with it"
        )


#: Named KD recipes: ``kdlab distill --preset NAME`` and ``preset: NAME`` in a study method set these kd.* values
#: (explicit settings win).
KD_PRESETS: dict[str, dict] = {
    # GKD (Agarwal et al. 2024) with every step on-policy and reverse KL: "on-policy distillation"
    "on-policy": {"loss": "rkl", "lmbda": 1.0},
    # GKD as in the paper and TRL's default recipe: JSD(beta = 0.5), half the steps on student samples
    "gkd": {"loss": "gjsd", "beta": 0.5, "lmbda": 0.5},
    # Speculative KD (Xu et al., ICLR 2025): student proposals, teacher top-25 check, half the steps
    "speculative-kd": {"loss": "fkl", "lmbda": 0.5, "speculative_k": 25},
    # decision-level KD: the divergence on the decision statement weighted 5x
    "decision-kd": {"loss": "fkl", "answer_weight": 5.0},
    # decision-level KD on the teacher's own answers (agreement-seeking)
    "decision-kd-teacher": {"loss": "fkl", "answer_weight": 5.0, "answer_target": "teacher"},
    # disagreement-weighted token KL
    "disagreement-kd": {"loss": "fkl", "disagreement_gamma": 2.0},
}


def loss_kwargs(kd: KDConfig) -> dict:
    """The keyword arguments of the configured divergence from their kd fields (``{"beta": kd.beta}`` for gjsd,
    ``{"alpha": kd.skew_alpha}`` for skl/srkl; none for the others and for recipe-level losses)."""
    spec = DIVERGENCES.get(kd.loss)
    return {arg.keyword: getattr(kd, arg.field) for arg in spec.arguments} if spec else {}
