"""Read a study spec (YAML) into a :class:`StudySpec`, checking every key and value (see :mod:`kdlab.study.spec`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from kdlab.backends import BACKENDS
from kdlab.config import KD_PRESETS, LOSS_NAMES, RECIPE_LOSSES, KDConfig
from kdlab.errors import KdlabError
from kdlab.io import read_yaml
from kdlab.losses.divergences import DIVERGENCES
from kdlab.study.spec.ablations import Ablations, load_ablations
from kdlab.study.spec.tuning import Tuning, check_tuning, load_tuning
from kdlab.study.spec.values import (
    as_mapping,
    as_names,
    as_numbers,
    check_keys,
    check_name,
    flatten_sections,
    is_int,
    load_sections,
    merge_sections,
    parse_params,
    resolve_path,
    with_defaults,
)

TOP_KEYS = {
    "name",
    "description",
    "models",
    "teachers",
    "students",
    "pairs",
    "domains",
    "methods",
    "temperatures",
    "seeds",
    "ablations",
    "teacher_training",
    "student_training",
    "kd",
    "teacher_cache",
    "evaluation",
    "fidelity",
    "cost",
    "tuning",
    "resources",
    "slurm",
}
EVAL_DEFAULTS = {
    "mode": "generate",
    "batch_size": 16,
    "limit": None,
    "max_new_tokens": None,
    "extraction": "strict",
    "precision": "auto",
    "backend": "auto",
}
FIDELITY_DEFAULTS = {"enabled": True, "token_kl": True, "embeddings": False}
CACHE_DEFAULTS = {"enabled": True, "k": 64, "tail": "bucket"}
# effective throughputs of the machine a run gets (kdlab.study.cost); the defaults are a 2-core CPU's
COST_DEFAULTS = {"tflops": 0.05, "memory_gbps": 10.0}
POSITIVE_NUMBER = (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0, "a number > 0")


@dataclass
class ModelEntry:
    """A named model: ``spec`` (loadable) or ``prune`` = (parent name, kept layers); ``params`` if known."""

    name: str
    spec: str | None = None
    prune_from: str | None = None
    keep_layers: int | None = None
    params: float | None = None
    student_training: dict = field(default_factory=dict)  # run settings of this model's student runs (all methods)


@dataclass
class Domain:
    """Training data and evaluation tasks; ``training`` overlays teacher and student run settings (e.g. epochs)."""

    name: str
    train: str
    tasks: list[str]
    data_dir: str | None = None
    training: dict = field(default_factory=dict)
    examples: int | None = None  # size hint for --dry-run when the training file is not available here
    teacher_train: str | None = None  # the teacher's SFT data when it is not ``train``


#: losses a study method may have besides kdlab's (:data:`kdlab.config.LOSS_NAMES`): only in a later stage
STAGE_LOSSES = {"sft": "SFT continued on the training responses (a later stage: needs init)"}


@dataclass
class Method:
    """A KD method: its name in the study and its kd.* settings (``loss`` included).

    ``init`` names the stage it starts from: ``sft`` (the student's selected SFT run) or another method (its selected
    run for the same student and seed); None starts from the student model. ``training`` holds the method's own run
    settings (``{"train": {"max_steps": 12}}``: its stage's budget), over the study's and the student's.
    """

    name: str
    kd: dict
    temperatures: list[float] | None = None  # overrides the study's temperatures for this method
    init: str | None = None
    training: dict = field(default_factory=dict)

    @property
    def loss(self) -> str:
        return self.kd["loss"]

    @property
    def uses_temperature(self) -> bool:
        """A token-level method (a divergence, run at the study's temperatures), not a recipe-level loss (seqkd,
        or SFT continued)."""
        return self.loss not in (*RECIPE_LOSSES, *STAGE_LOSSES)  # by ==: a malformed loss (a list) is reported later


@dataclass
class StudySpec:
    """A loaded, checked study spec: every section of the YAML file (see :mod:`kdlab.study.spec`), paths resolved."""

    name: str
    path: Path
    models: dict[str, ModelEntry]
    teachers: list[str]
    students: list[str]
    pairs: str
    domains: dict[str, Domain]
    methods: dict[str, Method]
    temperatures: list[float]
    seeds: list[int]
    ablations: Ablations
    teacher_training: dict
    student_training: dict
    kd: dict
    teacher_cache: dict
    evaluation: dict
    fidelity: dict
    cost: dict
    description: str = ""
    raw: dict = field(default_factory=dict)
    tuning: Tuning | None = None
    resources: dict = field(default_factory=dict)  # kind -> kdlab.study.resources.Need (Ray and SLURM executors)
    slurm: dict = field(default_factory=dict)  # sbatch settings (kdlab.study.resources.load_slurm)


def _load_models(data: dict, where: str) -> dict[str, ModelEntry]:
    """The ``models`` section: a spec string or a mapping (``spec`` or ``prune``, optional ``params``) per name;
    a pruned entry must name a loadable one."""
    models = {}
    for name, entry in as_mapping(data, where).items():
        here = f"{where}.{check_name(name, where)}"
        if isinstance(entry, str):
            entry = {"spec": entry}
        entry = as_mapping(entry, here)
        check_keys(entry, {"spec", "prune", "params", "student_training"}, here)
        if ("spec" in entry) == ("prune" in entry):
            raise KdlabError(
                f"{here}: give exactly one of 'spec' (a model to load) or 'prune' (a student cut from another entry)"
            )
        params = parse_params(entry["params"], f"{here}.params") if entry.get("params") is not None else None
        training = load_overlay(entry.get("student_training"), f"{here}.student_training")
        if "spec" in entry:
            if not isinstance(entry["spec"], str) or not entry["spec"]:
                raise KdlabError(f"{here}.spec: expected a model spec string, got {entry['spec']!r}")
            models[name] = ModelEntry(name, spec=entry["spec"], params=params, student_training=training)
        else:
            prune = as_mapping(entry["prune"], f"{here}.prune")
            check_keys(prune, {"model", "keep_layers"}, f"{here}.prune")
            keep = prune.get("keep_layers")
            if not is_int(keep) or keep < 1:
                raise KdlabError(f"{here}.prune.keep_layers: expected an integer >= 1, got {keep!r}")
            models[name] = ModelEntry(
                name, prune_from=prune.get("model"), keep_layers=keep, params=params, student_training=training
            )
    if not models:
        raise KdlabError(f"{where}: no models")
    for entry in models.values():
        if entry.prune_from is not None:
            parent = models.get(entry.prune_from)
            if parent is None:
                raise KdlabError(
                    f"{where}.{entry.name}.prune.model: unknown model {entry.prune_from!r} (models: {', '.join(models)})"
                )
            if parent.spec is None:
                raise KdlabError(
                    f"{where}.{entry.name}.prune.model: {entry.prune_from!r} is itself pruned; prune from a loadable model"
                )
    return models


def _load_domains(data: dict, where: str, base: Path, check_files: bool) -> dict[str, Domain]:
    """The ``domains`` section: data paths resolved against ``base`` (checked to exist with ``check_files``), tasks
    resolved to :mod:`kdlab.eval.tasks` names."""
    from kdlab.eval.tasks import resolve_tasks

    domains = {}
    for name, entry in as_mapping(data, where).items():
        here = f"{where}.{check_name(name, where)}"
        entry = as_mapping(entry, here)
        check_keys(entry, {"train", "tasks", "data_dir", "training", "examples", "teacher_train"}, here)
        paths = {}
        for key in ("train", "teacher_train"):
            if key not in entry or (key == "teacher_train" and entry[key] is None):
                continue
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise KdlabError(f"{here}.{key}: expected a training data path or hf:NAME, got {entry.get(key)!r}")
            paths[key] = resolve_path(entry[key], base)
            if check_files and not paths[key].startswith("hf:") and not Path(paths[key]).is_file():
                raise KdlabError(f"{here}.{key}: file not found: {paths[key]}")
        if "train" not in paths:
            raise KdlabError(f"{here}.train: expected a training data path or hf:NAME, got None")
        train = paths["train"]
        tasks = as_names(entry.get("tasks"), f"{here}.tasks")
        try:
            tasks = [task.name for task in resolve_tasks(",".join(tasks))]
        except KdlabError as exc:
            raise KdlabError(f"{here}.tasks: {exc}") from None
        data_dir = resolve_path(entry["data_dir"], base) if entry.get("data_dir") else None
        if check_files and data_dir and not Path(data_dir).is_dir():
            raise KdlabError(f"{here}.data_dir: folder not found: {data_dir}")
        examples = entry.get("examples")
        if examples is not None and (not is_int(examples) or examples < 1):
            raise KdlabError(f"{here}.examples: expected a positive integer, got {examples!r}")
        domains[name] = Domain(
            name,
            train,
            tasks,
            data_dir,
            load_sections(entry.get("training"), f"{here}.training"),
            examples,
            paths.get("teacher_train"),
        )
    if not domains:
        raise KdlabError(f"{where}: no domains")
    return domains


def _load_methods(data: dict, where: str, kd_defaults: dict) -> dict[str, Method]:
    """The ``methods`` section: a loss name or kd.* settings (optionally a ``preset``) per method, over ``kd_defaults``."""
    kd_fields = set(KDConfig.__dataclass_fields__)
    methods = {}
    for name, entry in as_mapping(data, where).items():
        here = f"{where}.{check_name(name, where)}"
        if name == "sft":
            raise KdlabError(f"{here}: 'sft' is the baseline every study runs; it is not a KD method")
        if isinstance(entry, str):
            entry = {"loss": entry}
        entry = as_mapping(entry, here)
        check_keys(entry, kd_fields | {"temperatures", "preset", "init", "training"}, here)
        entry = dict(entry)
        init = entry.pop("init", None)
        if init is not None and not isinstance(init, str):
            raise KdlabError(f"{here}.init: expected sft or a method name, got {init!r}")
        training = load_overlay(entry.pop("training", None), f"{here}.training")
        preset = entry.pop("preset", None)
        if preset is not None:
            if preset not in KD_PRESETS:
                raise KdlabError(f"{here}.preset: unknown preset {preset!r} (choose from {', '.join(KD_PRESETS)})")
            entry = {**KD_PRESETS[preset], **entry}
        if "loss" not in entry:
            raise KdlabError(f"{here}: missing 'loss' (one of {', '.join(LOSS_NAMES)}) or 'preset'")
        if entry["loss"] in STAGE_LOSSES and init is None:
            raise KdlabError(
                f"{here}: loss {entry['loss']!r} continues a stage ({STAGE_LOSSES[entry['loss']]}); give its "
                "init (e.g. init: sft), or leave the method out: the SFT baseline runs in every study"
            )
        temperatures = entry.pop("temperatures", None)
        if temperatures is not None:
            temperatures = as_numbers(temperatures, f"{here}.temperatures", positive=True)
        divergence = DIVERGENCES.get(entry["loss"]) if isinstance(entry["loss"], str) else None
        if divergence is not None and not divergence.temperature:  # taken at tau = 1, not at the study's temperatures
            if temperatures not in (None, [1.0]):
                raise KdlabError(f"{here}.temperatures: loss {entry['loss']!r} takes no temperature (only 1)")
            temperatures = [1.0]
        methods[name] = Method(name, {**kd_defaults, **entry}, temperatures, init, training)
    if not methods:
        raise KdlabError(f"{where}: no methods")
    _check_stages(methods, where)
    return methods


#: run settings a student's or a method's own ``training`` may not change: what the teacher cache and the teacher's
#: answers are built with (they follow the study's ``student_training``), and the seed (the study's ``seeds``)
SHARED_TRAIN = ("max_length", "on_long", "precision", "seed")


def load_overlay(data, where: str) -> dict:
    """``models.NAME.student_training`` or ``methods.NAME.training``: ``train`` settings only -- LoRA or full
    fine-tuning is the study's choice for every stage (a stage keeps training what the stage before trained), and
    :data:`SHARED_TRAIN` stay the study's."""
    sections = load_sections(data, where, allowed=("train",))
    for key in SHARED_TRAIN:
        if key in sections.get("train", {}):
            raise KdlabError(
                f"{where}.train.{key}: set in student_training for the whole study (the teacher cache, the teacher's "
                "answers and every stage share it)"
            )
    return sections


def _check_stages(methods: dict[str, Method], where: str) -> None:
    """Every ``init`` names ``sft`` or a method of the study, and no chain of inits comes back to where it began."""
    for method in methods.values():
        if method.init is not None and method.init != "sft" and method.init not in methods:
            raise KdlabError(
                f"{where}.{method.name}.init: unknown stage {method.init!r} (sft or a method: {', '.join(methods)})"
            )
        seen = [method.name]
        stage = method.init
        while stage not in (None, "sft"):
            if stage in seen:
                raise KdlabError(f"{where}.{method.name}.init: the stages form a cycle: {' -> '.join(seen + [stage])}")
            seen.append(stage)
            stage = methods[stage].init


def stage_chain(methods: dict[str, Method], name: str) -> list[str]:
    """The stages a method's runs go through, first to last: ``["sft", "fkl", "opd"]`` for ``opd`` with ``init: fkl``
    and ``fkl`` with ``init: sft``; ``["opd"]`` for a method without init."""
    chain = [name]
    while chain[0] != "sft" and methods[chain[0]].init is not None:
        chain.insert(0, methods[chain[0]].init)
    return chain


def load_spec(path: str | Path, base: str | Path | None = None, check_files: bool = True) -> StudySpec:
    """Read and validate a study spec; relative paths inside it are resolved against ``base`` (default: its folder).

    ``check_files=False`` (for ``--dry-run``) accepts training files and data folders that are not here.
    """
    path = Path(path)
    if not path.is_file():
        raise KdlabError(f"{path}: study spec not found")
    data = as_mapping(read_yaml(path), str(path))
    where = str(path)
    check_keys(data, TOP_KEYS, where)
    for key in ("models", "teachers", "students", "domains", "methods"):
        if key not in data:
            raise KdlabError(f"{where}: missing '{key}'")
    base = Path(base).resolve() if base else path.resolve().parent
    name = check_name(str(data.get("name") or path.stem), f"{where}: name")
    models = _load_models(data["models"], f"{where}: models")
    teachers = as_names(data["teachers"], f"{where}: teachers")
    students = as_names(data["students"], f"{where}: students")
    for role, names in (("teachers", teachers), ("students", students)):
        for item in names:
            if item not in models:
                raise KdlabError(f"{where}: {role}: unknown model {item!r} (models: {', '.join(models)})")
    for item in teachers:
        if models[item].spec is None:
            raise KdlabError(f"{where}: teachers: {item!r} is a pruned model; a teacher must be loadable (spec)")
    kd_defaults = as_mapping(data.get("kd"), f"{where}: kd")
    check_keys(kd_defaults, set(KDConfig.__dataclass_fields__) - {"loss"}, f"{where}: kd")
    methods = _load_methods(data["methods"], f"{where}: methods", kd_defaults)
    token_methods = [m for m in methods.values() if m.uses_temperature]
    temperatures = as_numbers(data.get("temperatures", [1.0]), f"{where}: temperatures", positive=True)
    seeds = as_numbers(data.get("seeds", [0]), f"{where}: seeds", kind=int)
    ablations = load_ablations(
        data.get("ablations"), f"{where}: ablations", students, [m.name for m in token_methods], temperatures, seeds
    )
    spec = StudySpec(
        name=name,
        path=path.resolve(),
        models=models,
        teachers=teachers,
        students=students,
        pairs=_pairs(data.get("pairs", "smaller"), f"{where}: pairs"),
        domains=_load_domains(data["domains"], f"{where}: domains", base, check_files),
        methods=methods,
        temperatures=temperatures,
        seeds=seeds,
        ablations=ablations,
        teacher_training=load_sections(data.get("teacher_training"), f"{where}: teacher_training"),
        student_training=load_sections(data.get("student_training"), f"{where}: student_training"),
        kd=kd_defaults,
        teacher_cache=with_defaults(data.get("teacher_cache"), CACHE_DEFAULTS, f"{where}: teacher_cache"),
        evaluation=with_defaults(data.get("evaluation"), EVAL_DEFAULTS, f"{where}: evaluation"),
        fidelity=with_defaults(data.get("fidelity"), FIDELITY_DEFAULTS, f"{where}: fidelity"),
        cost=with_defaults(data.get("cost"), COST_DEFAULTS, f"{where}: cost"),
        description=str(data.get("description") or ""),
        raw=data,
        tuning=load_tuning(data.get("tuning"), f"{where}: tuning", base, check_files) if "tuning" in data else None,
    )
    _check_types(spec, where)
    if not token_methods and (ablations.teacher_noise or ablations.base_teacher):
        raise KdlabError(f"{where}: ablations need a token-level method (noise acts on teacher logits)")
    _check_run_configs(spec)
    from kdlab.study.resources import load_resources, load_slurm  # executors' sections (imports kdlab.study.plan)

    spec.resources = load_resources(data.get("resources"), f"{where}: resources")
    spec.slurm = load_slurm(data.get("slurm"), f"{where}: slurm")
    if spec.tuning is not None:
        check_tuning(spec.tuning, spec.student_training, spec.domains, f"{where}: tuning", check_files)
    _check_stage_inputs(spec, where)
    return spec


def _check_stage_inputs(spec: StudySpec, where: str) -> None:
    """A method another starts from has one carried run per student and seed (not one per temperature), and the
    methods starting from the same stage get the same budget (steps, batch, accumulation, epochs)."""
    selects_temperature = spec.tuning is not None and spec.tuning.temperature == "validation"
    for method in spec.methods.values():
        parent = spec.methods.get(method.init) if method.init else None
        if parent is not None and parent.uses_temperature:
            temperatures = parent.temperatures or spec.temperatures
            if len(temperatures) > 1 and not selects_temperature:
                raise KdlabError(
                    f"{where}: methods.{method.name}.init: method {parent.name!r} has one run per temperature "
                    f"({', '.join(f'{t:g}' for t in temperatures)}) for each student and seed; give it one temperature "
                    "or select temperatures on validation (tuning.temperature: validation)"
                )
    for student in spec.students:  # per student: its own student_training applies to all its runs
        budgets: dict = {None: [("the SFT baseline", method_budget(spec, None, student))]}
        for method in spec.methods.values():
            budgets.setdefault(method.init, []).append((f"methods.{method.name}", method_budget(spec, method, student)))
        for init, entries in budgets.items():
            first_name, first = entries[0]
            for name, budget in entries[1:]:
                if budget != first:
                    stage = f"init {init}" if init else "no init"
                    raise KdlabError(
                        f"{where}: {name}.training: budget {budget} differs from {first_name}'s {first} ({stage}, "
                        f"student {student}): methods compared with each other get the same optimizer steps and "
                        "examples"
                    )


def method_budget(spec: StudySpec, method: Method | None, student: str | None = None) -> dict:
    """What a method's runs (None: the SFT baseline's) of ``student`` may train on: ``train.max_steps`` / ``epochs``,
    ``batch_size`` and ``grad_accum`` from the study's student settings, the student's own and the method's own (the
    domains' settings apply to every method alike)."""
    from kdlab.config import TrainConfig

    sections = spec.student_training
    if student is not None:
        sections = merge_sections(sections, spec.models[student].student_training)
    if method is not None:
        sections = merge_sections(sections, method.training)
    train, defaults = sections.get("train", {}), TrainConfig()
    budget = {key: train.get(key, getattr(defaults, key)) for key in ("max_steps", "batch_size", "grad_accum")}
    if not budget["max_steps"]:
        budget["epochs"] = train.get("epochs", defaults.epochs)
    return budget


def _pairs(value, where: str) -> str:
    """The ``pairs`` rule: ``smaller`` (KD only into students with fewer parameters than the teacher) or ``all``."""
    if value not in ("smaller", "all"):
        raise KdlabError(
            f"{where}: {value!r} is not one of smaller (distil only into students with fewer parameters), all"
        )
    return value


#: section -> key -> (check, what it expects); None is allowed where the default is None
SECTION_TYPES = {
    "evaluation": {
        "mode": (lambda v: v in ("generate", "loglik"), "generate or loglik"),
        "batch_size": (lambda v: is_int(v) and v > 0, "an integer > 0"),
        "limit": (lambda v: v is None or (is_int(v) and v > 0), "an integer > 0 or null"),
        "max_new_tokens": (lambda v: v is None or (is_int(v) and v > 0), "an integer > 0 or null"),
        "extraction": (lambda v: v in ("strict", "paper"), "strict or paper"),
        "precision": (lambda v: v in ("auto", "fp32", "bf16"), "auto, fp32 or bf16"),
        "backend": (lambda v: v in BACKENDS, "auto, hf or vllm"),
    },
    "fidelity": {
        "enabled": (lambda v: isinstance(v, bool), "true or false"),
        "token_kl": (lambda v: isinstance(v, bool), "true or false"),
        "embeddings": (lambda v: isinstance(v, bool), "true or false"),
    },
    "teacher_cache": {
        "enabled": (lambda v: isinstance(v, bool), "true or false"),
        "k": (lambda v: is_int(v) and v > 0, "an integer > 0"),
        "tail": (lambda v: v in ("bucket", "renormalize"), "bucket or renormalize"),
    },
    "cost": dict.fromkeys(COST_DEFAULTS, POSITIVE_NUMBER),
}


def _check_types(spec: StudySpec, where: str) -> None:
    """Type-check the plain sections (evaluation, fidelity, teacher_cache, cost): a KdlabError names the key and
    the value (``evaluation.limit: expected an integer > 0 or null, got '2'``)."""
    for section, checks in SECTION_TYPES.items():
        values = getattr(spec, section)
        for key, (check, expected) in checks.items():
            if not check(values[key]):
                raise KdlabError(f"{where}: {section}.{key}: expected {expected}, got {values[key]!r}")


def missing_models(spec: StudySpec) -> list[str]:
    """``models.NAME: PATH (why)`` for every model entry that names a local folder or GGUF file that is not usable
    here (missing, a folder without config.json, a GGUF path that is no file). Embedded names and Hub ids
    (``org/name``) are not checked (they load by name)."""
    from kdlab.models.embedded import EMBEDDED_MODELS

    problems = []
    for entry in spec.models.values():
        text = entry.spec
        if text is None or text in EMBEDDED_MODELS:
            continue
        path = Path(os.path.expandvars(text)).expanduser()
        looks_local = text.startswith((".", "/", "~")) or text.count("/") > 1 or path.suffix == ".gguf"
        if path.suffix == ".gguf":
            why = None if path.is_file() else "GGUF file not found"
        elif path.exists():
            why = None if (path / "config.json").is_file() else "not a model folder (no config.json)"
        else:
            why = "model folder not found" if looks_local else None
        if why:
            problems.append(f"models.{entry.name}: {text} ({why})")
    return problems


def check_models(spec: StudySpec) -> None:
    """Refuse a spec naming a local model folder or GGUF file that is not here (see :func:`missing_models`)."""
    problems = missing_models(spec)
    if problems:
        raise KdlabError(f"{spec.path}: {'; '.join(problems)}")


def _check_run_configs(spec: StudySpec) -> None:
    """Build one run config per kind with the spec's settings, so a bad lr or loss is reported before any run."""
    from kdlab.config import build_config

    where = str(spec.path)
    samples = [
        ("sft", "teacher_training", spec.teacher_training, {}),
        ("sft", "student_training", spec.student_training, {}),
    ]
    samples += [
        (
            "distill" if m.uses_temperature else "sft",
            f"methods.{m.name}",
            merge_sections(spec.student_training, m.training),
            m.kd,
        )
        for m in spec.methods.values()
        if m.uses_temperature or m.training
    ]
    samples += [
        ("sft", f"models.{m.name}.student_training", merge_sections(spec.student_training, m.student_training), {})
        for m in spec.models.values()
        if m.student_training
    ]
    for kind, label, sections, kd in samples:
        flags = {"model": "m", "data": "d", "out": "o", **({"teacher": "t"} if kind == "distill" else {})}
        flags.update(flatten_sections(sections))
        if kind == "distill":
            flags.update({f"kd.{key}": value for key, value in kd.items()})
        try:
            build_config(kind, None, flags, [])
        except KdlabError as exc:
            raise KdlabError(f"{where}: {label}: {exc}") from None
