"""Study specs: one YAML file declaring a whole KD grid (models, data, methods, temperatures, ablations, seeds).

Example (every key below except ``models``, ``teachers``, ``students``, ``domains`` and ``methods`` is optional)::

    name: smollm2-cpu
    models:                              # every model the study mentions, by a short name
      smollm2:   {spec: smollm2-135m, params: 135M}        # spec: embedded name, folder, .gguf or Hub id
      smollm2-6l: {prune: {model: smollm2, keep_layers: 6}} # a student pruned from another entry
    teachers: [smollm2]
    students: [smollm2-6l]
    pairs: smaller                       # KD only into students with fewer parameters than the teacher (or: all)
    domains:                             # a teacher and every student are fine-tuned per domain
      arith:
        train: data/train.json           # LLM-Adapters JSON or hf:NAME[:CONFIG][@SPLIT]; relative to the spec file;
                                         # $VARIABLES and ~ are expanded
        tasks: [arith]                   # evaluation tasks (kdlab eval names or groups)
        data_dir: data                   # folder holding <task>/test.json (optional for tasks with a Hub source)
        training: {train: {epochs: 3}}   # optional: settings of this domain's teacher and student runs
        teacher_train: data/teacher.json # optional: the teacher's SFT data, if not `train` (e.g. a larger, disjoint set)
        examples: 10000                  # optional: size of the training set, for --dry-run when it is not here
    methods:                             # KD methods: name -> kd settings (loss plus kd.* overrides)
      fkl: {loss: fkl}
      rkl: {loss: rkl}
      gkd: {loss: gjsd, beta: 0.5, lmbda: 0.5, temperatures: [1.0]}   # temperatures: only these for this method
      seqkd: {loss: seqkd}               # SFT on the teacher's greedy answers (no temperature)
      opd: {preset: on-policy}           # a named recipe (kdlab.config.KD_PRESETS); its kd.* values can be overridden
    temperatures: [1.0, 2.0]             # token-level methods run at each
    seeds: [0, 1]                        # student SFT and KD runs are repeated per seed
    ablations:                           # extra KD runs on a slice of the grid
      teacher_noise: [0.5, 1.0]          # Gaussian noise std on the teacher logits
      base_teacher: true                 # also distil from the teacher before its fine-tuning
      students: [smollm2-6l]             # default: the smallest student
      methods: [fkl]                     # default: the first token-level method
      temperature: 1.0                   # default: the first temperature
      seeds: [0]                         # default: all seeds
    teacher_training: {lora: {enabled: true}, train: {lr: 1e-3, epochs: 2}}   # run-config sections (kdlab sft)
    student_training: {lora: {enabled: false}, train: {lr: 5e-4, epochs: 2}}  # student SFT and KD runs
    kd: {max_new_tokens: 128}            # kd.* defaults for every method
    teacher_cache: {enabled: true, k: 64, tail: bucket}
    evaluation: {mode: generate, batch_size: 16, limit: null, max_new_tokens: null, extraction: strict, precision: auto}
    fidelity: {enabled: true, token_kl: true, embeddings: false}
    cost: {tflops: 0.05}                 # effective throughput for --dry-run estimates (2 CPU cores ~ 0.05)
    resources: {kd: {gpus: 1}, fidelity: {gpus: 0.5}}   # per run kind, for --executor ray|slurm (kdlab.study.resources)
    slurm: {partition: gpu, time_min: 240}              # sbatch settings for --executor slurm (kdlab.study.resources)
    tuning:                              # fair comparison: settings selected on validation data, per run
      params: {train.lr: [1.0e-4, 3.0e-4, 1.0e-3]}   # student run settings tried for SFT and every KD method alike
      temperature: validation            # validation: the temperatures are candidates too (one KD run carried on
                                         # per method); paper: every temperature goes to the test set (the paper's
                                         # max over test scores is then shown, labelled, as an optimistic view)
      validation: {n: 100, seed: 0}      # a seeded slice of the training file, removed from all training (the
                                         # teacher's too); or {file: val.json} for a separate validation split

With ``tuning``, every student run (SFT baseline, each KD method, each ablation) is trained once per candidate
setting (the product of ``tuning.params``, times the temperatures under ``temperature: validation``), each candidate
is evaluated on the validation split (the domain's first task, or ``validation.task``), and only the best one by
validation accuracy (ties: the first candidate in the listed order) is carried into test evaluation, fidelity and
statistics. Every method gets the same candidates, so the same training budget. The test split is read only after
the selections (plan order: training, validation, selection, then test evaluation).

Validation happens when the spec is loaded: unknown keys, unknown model names, missing data files, bad values and
run-config settings that :func:`kdlab.config.build_config` would refuse are reported with the spec path and the key.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from kdlab.config import KD_PRESETS, KDConfig, SECTIONS
from kdlab.errors import KdlabError

TOP_KEYS = {"name", "description", "models", "teachers", "students", "pairs", "domains", "methods", "temperatures", "seeds",
            "ablations", "teacher_training", "student_training", "kd", "teacher_cache", "evaluation", "fidelity", "cost",
            "tuning", "resources", "slurm"}
TOKEN_LOSSES = ("fkl", "rkl", "gjsd", "skl", "srkl", "tvd")
EVAL_DEFAULTS = {"mode": "generate", "batch_size": 16, "limit": None, "max_new_tokens": None, "extraction": "strict",
                 "precision": "auto"}
FIDELITY_DEFAULTS = {"enabled": True, "token_kl": True, "embeddings": False}
CACHE_DEFAULTS = {"enabled": True, "k": 64, "tail": "bucket"}
ABLATION_KEYS = {"teacher_noise", "base_teacher", "students", "methods", "temperature", "seeds"}
TUNING_KEYS = {"params", "temperature", "validation"}
VALIDATION_KEYS = {"n", "seed", "file", "task"}
UNTUNABLE = {"train.seed", "lora.enabled", "train.max_length", "train.on_long", "train.precision", "train.report_to", "train.trace_data"}


@dataclass
class ModelEntry:
    """A named model: ``spec`` (loadable) or ``prune`` = (parent name, kept layers); ``params`` if known."""

    name: str
    spec: str | None = None
    prune_from: str | None = None
    keep_layers: int | None = None
    params: float | None = None


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


@dataclass
class Method:
    """A KD method: its name in the study and its kd.* settings (``loss`` included)."""

    name: str
    kd: dict
    temperatures: list[float] | None = None  # overrides the study's temperatures for this method

    @property
    def loss(self) -> str:
        return self.kd["loss"]

    @property
    def uses_temperature(self) -> bool:
        return self.loss != "seqkd"


@dataclass
class Ablations:
    teacher_noise: list[float] = field(default_factory=list)
    base_teacher: bool = False
    students: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    temperature: float | None = None
    seeds: list[int] = field(default_factory=list)


@dataclass
class Tuning:
    """Selection of student run settings on a validation split (see the module docstring).

    ``params`` maps a dotted run setting (``train.lr``) to the values tried; ``temperature`` is ``validation``
    (temperatures are candidates) or ``paper`` (each temperature kept, the paper's max over test shown as a labelled
    view); the validation split is ``file`` or else a seeded (``seed``) slice of ``n`` training examples; ``task``
    scores it (default: the domain's first task).
    """

    params: dict[str, list]
    temperature: str = "validation"
    n: int = 100
    seed: int = 0
    file: str | None = None
    task: str | None = None

    def candidates(self) -> list[dict]:
        """Every combination of ``params``, in the listed order (the first key varies slowest)."""
        import itertools

        keys = list(self.params)
        return [dict(zip(keys, values)) for values in itertools.product(*(self.params[key] for key in keys))] or [{}]


@dataclass
class StudySpec:
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


_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kKmMbBtT]?)\s*$")


def parse_params(value, where: str) -> float:
    """``135M``, ``0.5B``, ``7b`` or a plain number -> number of parameters."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value <= 0:
            raise KdlabError(f"{where}: must be > 0, got {value}")
        return float(value)
    match = _SIZE.match(str(value))
    if not match:
        raise KdlabError(f"{where}: expected a size such as 135M or 0.5B, got {value!r}")
    scale = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}[match.group(2).lower()]
    return float(match.group(1)) * scale


def _mapping(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise KdlabError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _names(value, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(item, str) and item for item in value):
        raise KdlabError(f"{where}: expected a non-empty list of names, got {value!r}")
    if len(set(value)) != len(value):
        raise KdlabError(f"{where}: names repeat in {value}")
    return value


def _numbers(value, where: str, kind=float, positive: bool = False, allow_zero: bool = True) -> list:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value:
        raise KdlabError(f"{where}: expected a non-empty list of numbers, got {value!r}")
    out = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, float)) or (kind is int and not float(item).is_integer()):
            raise KdlabError(f"{where}: expected {'integers' if kind is int else 'numbers'}, got {item!r}")
        if (positive and item <= 0) or (not allow_zero and item == 0) or item < 0:
            raise KdlabError(f"{where}: {item} is out of range (must be {'> 0' if positive else '>= 0'})")
        out.append(kind(item))
    if len(set(out)) != len(out):
        raise KdlabError(f"{where}: values repeat in {value}")
    return out


def _check_keys(data: dict, allowed: set, where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise KdlabError(f"{where}: unknown key(s) {', '.join(map(str, unknown))} (known: {', '.join(sorted(allowed))})")


def _resolve_path(text: str, base: Path) -> str:
    if text.startswith("hf:"):
        return text
    path = Path(os.path.expandvars(text)).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def _load_models(data: dict, where: str) -> dict[str, ModelEntry]:
    models = {}
    for name, entry in _mapping(data, where).items():
        here = f"{where}.{name}"
        if isinstance(entry, str):
            entry = {"spec": entry}
        entry = _mapping(entry, here)
        _check_keys(entry, {"spec", "prune", "params"}, here)
        if ("spec" in entry) == ("prune" in entry):
            raise KdlabError(f"{here}: give exactly one of 'spec' (a model to load) or 'prune' (a student cut from another entry)")
        params = parse_params(entry["params"], f"{here}.params") if entry.get("params") is not None else None
        if "spec" in entry:
            if not isinstance(entry["spec"], str) or not entry["spec"]:
                raise KdlabError(f"{here}.spec: expected a model spec string, got {entry['spec']!r}")
            models[name] = ModelEntry(name, spec=entry["spec"], params=params)
        else:
            prune = _mapping(entry["prune"], f"{here}.prune")
            _check_keys(prune, {"model", "keep_layers"}, f"{here}.prune")
            keep = prune.get("keep_layers")
            if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
                raise KdlabError(f"{here}.prune.keep_layers: expected an integer >= 1, got {keep!r}")
            models[name] = ModelEntry(name, prune_from=prune.get("model"), keep_layers=keep, params=params)
    if not models:
        raise KdlabError(f"{where}: no models")
    for entry in models.values():
        if entry.prune_from is not None:
            parent = models.get(entry.prune_from)
            if parent is None:
                raise KdlabError(f"{where}.{entry.name}.prune.model: unknown model {entry.prune_from!r} (models: {', '.join(models)})")
            if parent.spec is None:
                raise KdlabError(f"{where}.{entry.name}.prune.model: {entry.prune_from!r} is itself pruned; prune from a loadable model")
    return models


def _load_domains(data: dict, where: str, base: Path, check_files: bool) -> dict[str, Domain]:
    from kdlab.eval.tasks import resolve_tasks

    domains = {}
    for name, entry in _mapping(data, where).items():
        here = f"{where}.{name}"
        entry = _mapping(entry, here)
        _check_keys(entry, {"train", "tasks", "data_dir", "training", "examples", "teacher_train"}, here)
        paths = {}
        for key in ("train", "teacher_train"):
            if key not in entry or (key == "teacher_train" and entry[key] is None):
                continue
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise KdlabError(f"{here}.{key}: expected a training data path or hf:NAME, got {entry.get(key)!r}")
            paths[key] = _resolve_path(entry[key], base)
            if check_files and not paths[key].startswith("hf:") and not Path(paths[key]).is_file():
                raise KdlabError(f"{here}.{key}: file not found: {paths[key]}")
        if "train" not in paths:
            raise KdlabError(f"{here}.train: expected a training data path or hf:NAME, got None")
        train = paths["train"]
        tasks = _names(entry.get("tasks"), f"{here}.tasks")
        try:
            tasks = [task.name for task in resolve_tasks(",".join(tasks))]
        except KdlabError as exc:
            raise KdlabError(f"{here}.tasks: {exc}") from None
        data_dir = _resolve_path(entry["data_dir"], base) if entry.get("data_dir") else None
        if check_files and data_dir and not Path(data_dir).is_dir():
            raise KdlabError(f"{here}.data_dir: folder not found: {data_dir}")
        examples = entry.get("examples")
        if examples is not None and (isinstance(examples, bool) or not isinstance(examples, int) or examples < 1):
            raise KdlabError(f"{here}.examples: expected a positive integer, got {examples!r}")
        domains[name] = Domain(name, train, tasks, data_dir, _load_sections(entry.get("training"), f"{here}.training"), examples,
                               paths.get("teacher_train"))
    if not domains:
        raise KdlabError(f"{where}: no domains")
    return domains


def _load_methods(data: dict, where: str, kd_defaults: dict) -> dict[str, Method]:
    kd_fields = {item for item in KDConfig.__dataclass_fields__}
    methods = {}
    for name, entry in _mapping(data, where).items():
        here = f"{where}.{name}"
        if name == "sft":
            raise KdlabError(f"{here}: 'sft' is the baseline every study runs; it is not a KD method")
        if isinstance(entry, str):
            entry = {"loss": entry}
        entry = _mapping(entry, here)
        _check_keys(entry, kd_fields | {"temperatures", "preset"}, here)
        entry = dict(entry)
        preset = entry.pop("preset", None)
        if preset is not None:
            if preset not in KD_PRESETS:
                raise KdlabError(f"{here}.preset: unknown preset {preset!r} (choose from {', '.join(KD_PRESETS)})")
            entry = {**KD_PRESETS[preset], **entry}
        if "loss" not in entry:
            raise KdlabError(f"{here}: missing 'loss' (one of {', '.join(TOKEN_LOSSES + ('seqkd',))}) or 'preset'")
        temperatures = entry.pop("temperatures", None)
        if temperatures is not None:
            temperatures = _numbers(temperatures, f"{here}.temperatures", positive=True)
        methods[name] = Method(name, {**kd_defaults, **entry}, temperatures)
    if not methods:
        raise KdlabError(f"{where}: no methods")
    return methods


def _load_sections(data, where: str, allowed: tuple = ("lora", "train")) -> dict:
    data = _mapping(data, where)
    _check_keys(data, set(allowed), where)
    return {section: _mapping(value, f"{where}.{section}") for section, value in data.items()}


def _with_defaults(data, defaults: dict, where: str) -> dict:
    data = _mapping(data, where)
    _check_keys(data, set(defaults), where)
    return {**defaults, **data}


def load_spec(path: str | Path, base: str | Path | None = None, check_files: bool = True) -> StudySpec:
    """Read and validate a study spec; relative paths inside it are resolved against ``base`` (default: its folder).

    ``check_files=False`` (for ``--dry-run``) accepts training files and data folders that are not here.
    """
    path = Path(path)
    if not path.is_file():
        raise KdlabError(f"{path}: study spec not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise KdlabError(f"{path}: malformed YAML ({str(exc).splitlines()[0]})") from None
    data = _mapping(data, str(path))
    where = str(path)
    _check_keys(data, TOP_KEYS, where)
    for key in ("models", "teachers", "students", "domains", "methods"):
        if key not in data:
            raise KdlabError(f"{where}: missing '{key}'")
    base = Path(base).resolve() if base else path.resolve().parent
    name = str(data.get("name") or path.stem)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise KdlabError(f"{where}: name {name!r} may only hold letters, digits, '.', '_' and '-'")
    models = _load_models(data["models"], f"{where}: models")
    teachers = _names(data["teachers"], f"{where}: teachers")
    students = _names(data["students"], f"{where}: students")
    for role, names in (("teachers", teachers), ("students", students)):
        for item in names:
            if item not in models:
                raise KdlabError(f"{where}: {role}: unknown model {item!r} (models: {', '.join(models)})")
    for item in teachers:
        if models[item].spec is None:
            raise KdlabError(f"{where}: teachers: {item!r} is a pruned model; a teacher must be loadable (spec)")
    kd_defaults = _mapping(data.get("kd"), f"{where}: kd")
    _check_keys(kd_defaults, set(KDConfig.__dataclass_fields__) - {"loss"}, f"{where}: kd")
    methods = _load_methods(data["methods"], f"{where}: methods", kd_defaults)
    token_methods = [m for m in methods.values() if m.uses_temperature]
    temperatures = _numbers(data.get("temperatures", [1.0]), f"{where}: temperatures", positive=True)
    seeds = _numbers(data.get("seeds", [0]), f"{where}: seeds", kind=int)
    ablations = _load_ablations(data.get("ablations"), f"{where}: ablations", students, methods, temperatures, seeds, models)
    spec = StudySpec(
        name=name, path=path.resolve(), models=models, teachers=teachers, students=students,
        pairs=_pairs(data.get("pairs", "smaller"), f"{where}: pairs"),
        domains=_load_domains(data["domains"], f"{where}: domains", base, check_files), methods=methods,
        temperatures=temperatures, seeds=seeds, ablations=ablations,
        teacher_training=_load_sections(data.get("teacher_training"), f"{where}: teacher_training"),
        student_training=_load_sections(data.get("student_training"), f"{where}: student_training"),
        kd=kd_defaults, teacher_cache=_with_defaults(data.get("teacher_cache"), CACHE_DEFAULTS, f"{where}: teacher_cache"),
        evaluation=_with_defaults(data.get("evaluation"), EVAL_DEFAULTS, f"{where}: evaluation"),
        fidelity=_with_defaults(data.get("fidelity"), FIDELITY_DEFAULTS, f"{where}: fidelity"),
        cost=_with_defaults(data.get("cost"), {"tflops": 0.05}, f"{where}: cost"),
        description=str(data.get("description") or ""), raw=data,
        tuning=_load_tuning(data.get("tuning"), f"{where}: tuning", base, check_files) if "tuning" in data else None,
    )
    _check_types(spec, where)
    if not token_methods and (ablations.teacher_noise or ablations.base_teacher):
        raise KdlabError(f"{where}: ablations need a token-level method (noise acts on teacher logits)")
    _check_run_configs(spec)
    from kdlab.study.resources import load_resources, load_slurm  # executors' sections (imports kdlab.study.plan)

    spec.resources = load_resources(data.get("resources"), f"{where}: resources")
    spec.slurm = load_slurm(data.get("slurm"), f"{where}: slurm")
    if spec.tuning is not None:
        _check_tuning(spec, f"{where}: tuning", check_files)
    return spec


def _load_tuning(data, where: str, base: Path, check_files: bool) -> Tuning:
    data = _mapping(data, where)
    _check_keys(data, TUNING_KEYS, where)
    params = {}
    for key, values in _mapping(data.get("params"), f"{where}.params").items():
        if not isinstance(key, str) or key.count(".") != 1 or key.split(".")[0] not in ("train", "lora"):
            raise KdlabError(f"{where}.params: {key!r} is not a student run setting (train.NAME or lora.NAME)")
        if key in UNTUNABLE:
            raise KdlabError(f"{where}.params.{key}: cannot be tuned (seeds are the study's 'seeds'; the others change "
                             "what a run is, not how well it trains)")
        if isinstance(values, (int, float, str)) and not isinstance(values, bool):
            values = [values]
        if not isinstance(values, list) or not values:
            raise KdlabError(f"{where}.params.{key}: expected a non-empty list of values, got {values!r}")
        if len(set(map(repr, values))) != len(values):
            raise KdlabError(f"{where}.params.{key}: values repeat in {values}")
        params[key] = values
    rule = data.get("temperature", "validation")
    if rule not in ("validation", "paper"):
        raise KdlabError(f"{where}.temperature: {rule!r} is not one of validation (select on the validation split), "
                         "paper (every temperature to the test set; the paper's max over test scores shown as a labelled view)")
    validation = _mapping(data.get("validation"), f"{where}.validation")
    _check_keys(validation, VALIDATION_KEYS, f"{where}.validation")
    n = validation.get("n", 100)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise KdlabError(f"{where}.validation.n: expected a positive integer, got {n!r}")
    seed = validation.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise KdlabError(f"{where}.validation.seed: expected an integer, got {seed!r}")
    file = validation.get("file")
    if file is not None:
        if not isinstance(file, str) or not file:
            raise KdlabError(f"{where}.validation.file: expected a path, got {file!r}")
        file = _resolve_path(file, base)
        if check_files and not Path(file).is_file():
            raise KdlabError(f"{where}.validation.file: file not found: {file}")
    task = validation.get("task")
    if task is not None and not isinstance(task, str):
        raise KdlabError(f"{where}.validation.task: expected a task name, got {task!r}")
    return Tuning(params, rule, n, seed, file, task)


def _check_tuning(spec: StudySpec, where: str, check_files: bool) -> None:
    """Every candidate builds a valid run config; the validation task exists; the slice leaves training data."""
    from kdlab.config import build_config
    from kdlab.eval.tasks import TASKS

    tuning = spec.tuning
    if tuning.task is not None and tuning.task not in TASKS:
        raise KdlabError(f"{where}.validation.task: unknown task {tuning.task!r}")
    for candidate in tuning.candidates():
        flags = {"model": "m", "data": "d", "out": "o", **flatten_sections(spec.student_training), **candidate}
        try:
            build_config("sft", None, flags, [])
        except KdlabError as exc:
            raise KdlabError(f"{where}.params: {exc}") from None
    if tuning.file is None and check_files:
        from kdlab.data.formats import load_examples

        for domain in spec.domains.values():
            if domain.train.startswith("hf:"):
                continue
            count = len(load_examples(domain.train))
            if tuning.n >= count:
                raise KdlabError(f"{where}.validation.n: {tuning.n} validation examples would leave no training data in "
                                 f"domains.{domain.name}.train ({count} examples)")


def _pairs(value, where: str) -> str:
    if value not in ("smaller", "all"):
        raise KdlabError(f"{where}: {value!r} is not one of smaller (distil only into students with fewer parameters), all")
    return value


def _load_ablations(data, where: str, students: list[str], methods: dict[str, Method], temperatures: list[float],
                    seeds: list[int], models: dict[str, ModelEntry]) -> Ablations:
    data = _mapping(data, where)
    _check_keys(data, ABLATION_KEYS, where)
    noise = _numbers(data["teacher_noise"], f"{where}.teacher_noise", positive=True) if data.get("teacher_noise") else []
    base_teacher = data.get("base_teacher", False)
    if not isinstance(base_teacher, bool):
        raise KdlabError(f"{where}.base_teacher: expected true or false, got {base_teacher!r}")
    if not noise and not base_teacher:
        return Ablations()
    chosen_students = _names(data["students"], f"{where}.students") if "students" in data else [students[0]]
    for item in chosen_students:
        if item not in students:
            raise KdlabError(f"{where}.students: {item!r} is not one of the study's students ({', '.join(students)})")
    token = [name for name, method in methods.items() if method.uses_temperature]
    chosen_methods = _names(data["methods"], f"{where}.methods") if "methods" in data else token[:1]
    for item in chosen_methods:
        if item not in token:
            raise KdlabError(f"{where}.methods: {item!r} is not a token-level method of the study ({', '.join(token)})")
    temperature = data.get("temperature", temperatures[0])
    _numbers(temperature, f"{where}.temperature", positive=True)
    chosen_seeds = _numbers(data["seeds"], f"{where}.seeds", kind=int) if "seeds" in data else list(seeds)
    for item in chosen_seeds:
        if item not in seeds:
            raise KdlabError(f"{where}.seeds: {item} is not one of the study's seeds ({seeds})")
    return Ablations(noise, base_teacher, chosen_students, chosen_methods, float(temperature), chosen_seeds)


#: section -> key -> (check, what it expects); None is allowed where the default is None
SECTION_TYPES = {
    "evaluation": {"mode": (lambda v: v in ("generate", "loglik"), "generate or loglik"),
                   "batch_size": (lambda v: _is_int(v) and v > 0, "an integer > 0"),
                   "limit": (lambda v: v is None or (_is_int(v) and v > 0), "an integer > 0 or null"),
                   "max_new_tokens": (lambda v: v is None or (_is_int(v) and v > 0), "an integer > 0 or null"),
                   "extraction": (lambda v: v in ("strict", "paper"), "strict or paper"),
                   "precision": (lambda v: v in ("auto", "fp32", "bf16"), "auto, fp32 or bf16")},
    "fidelity": {"enabled": (lambda v: isinstance(v, bool), "true or false"),
                 "token_kl": (lambda v: isinstance(v, bool), "true or false"),
                 "embeddings": (lambda v: isinstance(v, bool), "true or false")},
    "teacher_cache": {"enabled": (lambda v: isinstance(v, bool), "true or false"),
                      "k": (lambda v: _is_int(v) and v > 0, "an integer > 0"),
                      "tail": (lambda v: v in ("bucket", "renormalize"), "bucket or renormalize")},
    "cost": {"tflops": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0, "a number > 0")},
}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
    samples = [("sft", "teacher_training", spec.teacher_training, {}), ("sft", "student_training", spec.student_training, {})]
    samples += [("distill", f"methods.{m.name}", spec.student_training, m.kd) for m in spec.methods.values() if m.uses_temperature]
    for kind, label, sections, kd in samples:
        flags = {"model": "m", "data": "d", "out": "o", **({"teacher": "t"} if kind == "distill" else {})}
        flags.update(flatten_sections(sections))
        flags.update({f"kd.{key}": value for key, value in kd.items()})
        try:
            build_config(kind, None, flags, [])
        except KdlabError as exc:
            raise KdlabError(f"{where}: {label}: {exc}") from None


def flatten_sections(sections: dict) -> dict:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}`` (sections of :data:`kdlab.config.SECTIONS`)."""
    flat = {}
    for section, values in sections.items():
        if section not in SECTIONS:
            raise KdlabError(f"unknown run-config section {section!r}")
        flat.update({f"{section}.{key}": value for key, value in values.items()})
    return flat
