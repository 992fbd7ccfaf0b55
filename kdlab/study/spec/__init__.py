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
      more-sft: {loss: sft, init: sft, training: {train: {max_steps: 12}}}  # a second stage: SFT continued from the
                                         # selected SFT run, with its own budget (loss sft: only with init)
      opd-2: {preset: on-policy, init: sft, training: {train: {max_steps: 12}}}  # on-policy KD after SFT
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
    evaluation: {mode: generate, batch_size: 16, limit: null, max_new_tokens: null, extraction: strict, precision: auto,
                 backend: auto}  # generation backend: hf | vllm | auto (docs/generation.md)
    fidelity: {enabled: true, token_kl: true, embeddings: false}
    cost: {tflops: 0.05, memory_gbps: 10}  # effective throughputs for --dry-run estimates (2 CPU cores)
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
A repeated key is refused (``spec.yaml: line 12: duplicate key 'fkl' (first at line 8)``, see
:func:`kdlab.io.read_yaml`). Names become folder names, so the study's, the models', the domains' and the methods'
names (and string values under ``tuning.params``) may only hold letters, digits, '.', '_' and '-', start with a
letter or digit and hold no '..' (:func:`~kdlab.study.spec.values.check_name`).

The package: :mod:`~kdlab.study.spec.load` (the spec dataclasses, :func:`load_spec` and its checks),
:mod:`~kdlab.study.spec.tuning` and :mod:`~kdlab.study.spec.ablations` (those two sections) and
:mod:`~kdlab.study.spec.values` (the small value checks every section uses).
"""

from kdlab.study.spec.ablations import ABLATION_KEYS, Ablations
from kdlab.study.spec.load import (
    CACHE_DEFAULTS,
    EVAL_DEFAULTS,
    FIDELITY_DEFAULTS,
    SECTION_TYPES,
    STAGE_LOSSES,
    TOP_KEYS,
    Domain,
    Method,
    ModelEntry,
    StudySpec,
    check_models,
    load_spec,
    method_budget,
    missing_models,
    stage_chain,
)
from kdlab.study.spec.tuning import TUNING_KEYS, UNTUNABLE, VALIDATION_KEYS, Tuning
from kdlab.study.spec.values import flatten_sections, parse_params

__all__ = [
    "ABLATION_KEYS",
    "CACHE_DEFAULTS",
    "EVAL_DEFAULTS",
    "FIDELITY_DEFAULTS",
    "SECTION_TYPES",
    "STAGE_LOSSES",
    "TOP_KEYS",
    "TUNING_KEYS",
    "UNTUNABLE",
    "VALIDATION_KEYS",
    "Ablations",
    "Domain",
    "Method",
    "ModelEntry",
    "StudySpec",
    "Tuning",
    "check_models",
    "flatten_sections",
    "load_spec",
    "method_budget",
    "missing_models",
    "parse_params",
    "stage_chain",
]
