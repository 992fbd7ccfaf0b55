"""The teacher signal of a token-level distill run, decided once: the live teacher, its cache, or both.

:func:`run_teacher` takes every live / cache decision of a run before any output (``kd.loss: seqkd`` is its own
recipe and never gets here; config validation refuses a cache with SeqKD or with ``kd.answer_target: teacher``):

- no ``--teacher-cache``: the teacher is loaded, and its forward pass gives the signal of every batch;
- a complete ``--teacher-cache``: checked against the run without loading any model, then loaded with its arrays
  verified (:mod:`kdlab.train.cache_lifecycle`); the teacher is loaded only for on-policy steps (``kd.lmbda > 0``),
  and then its weight fingerprint is compared with the cache's;
- a missing one: the teacher is loaded; the cache is built once the run folder is claimed, then loaded.

:meth:`RunTeacher.objective` then gives the run's one objective (:class:`kdlab.train.objectives.DistillObjective`).
"""

from __future__ import annotations

from dataclasses import dataclass

from kdlab.config import RunConfig
from kdlab.data.token_alignment import shared_vocabulary
from kdlab.errors import KdlabError
from kdlab.losses.cross_tokenizer import SharedVocab
from kdlab.teacher_cache.store import TeacherCache, load_cache
from kdlab.train.cache_lifecycle import build_teacher_cache, check_teacher_cache
from kdlab.train.inputs import DistillInputs, output_vocab
from kdlab.train.objectives import CrossTokenizerObjective, DistillObjective, cross_spec, kd_spec
from kdlab.train.teachers import load_teacher


@dataclass
class RunTeacher:
    """What a distill run trains against: the loaded teacher ``model`` (None: a reused cache and no on-policy steps),
    the ``cache`` (loaded; None: no cache, or one still to build) and ``vocab``, the vocabulary the logits are sliced
    to (set by :meth:`match_student`)."""

    config: RunConfig
    inputs: DistillInputs
    model: object | None
    cache: TeacherCache | None
    vocab: int | None = None

    def match_student(self, student) -> None:
        """The vocabulary shared with the student: a teacher cache's (the student's output layer must cover it), else
        the tokenizer size cut to both output layers (Qwen pads its lm_head); with a cross-tokenizer loss, the
        student's own tokenizer size cut to its output layer."""
        if self.inputs.teacher_tokenizer is not None:
            self.vocab = output_vocab(len(self.inputs.tokenizer), student)
            return
        if not self.config.teacher_cache:
            self.vocab = output_vocab(self.inputs.vocab_size, self.model, student)
            return
        self.vocab = (
            self.cache.vocab_size if self.cache is not None else output_vocab(self.inputs.vocab_size, self.model)
        )
        rows = student.get_output_embeddings().weight.shape[0]
        if rows < self.vocab:
            raise KdlabError(
                f"student '{self.config.model}' has {rows} output rows; the teacher cache needs {self.vocab} "
                "(its vocab_size)"
            )

    def objective(self, accelerator) -> DistillObjective | CrossTokenizerObjective:
        """The run's objective, once the run folder is claimed: the teacher on the training device; a missing cache
        built (by the main process; the others wait), then loaded, the teacher's weight fingerprint checked; the
        teacher freed when it only built the cache (``kd.lmbda = 0``)."""
        config = self.config
        if self.model is not None:
            self.model.to(accelerator.device)
        if config.teacher_cache and self.cache is None:
            if accelerator.is_main_process:
                build_teacher_cache(config, self.inputs, self.model, self.vocab, accelerator.is_local_main_process)
            accelerator.wait_for_everyone()
            self.cache = load_cache(config.teacher_cache, teacher=self.model)
        if self.cache is not None and config.kd.lmbda == 0:
            self.model = None
        if self.inputs.teacher_tokenizer is not None:
            return cross_objective(config, self.inputs, self.model, self.vocab)
        spec = kd_spec(config.kd, config.train.chunk_size)
        rank = accelerator.process_index
        return DistillObjective(spec, config.train.seed, rank, self.model, self.cache, self.vocab)


def run_teacher(config: RunConfig, inputs: DistillInputs) -> RunTeacher:
    """The teacher side of a token-level distill run (module docstring), before the run folder is created: a reused
    cache is checked and loaded here (a damaged one leaves no output), the teacher loaded when anything needs it."""
    if not config.teacher_cache:
        return RunTeacher(config, inputs, load_teacher(config), None)
    manifest = check_teacher_cache(config, inputs)  # None: the cache is still to be built
    teacher = load_teacher(config) if manifest is None or config.kd.lmbda > 0 else None
    cache = load_cache(config.teacher_cache, teacher=teacher, manifest=manifest) if manifest is not None else None
    return RunTeacher(config, inputs, teacher, cache)


def cross_objective(config: RunConfig, inputs: DistillInputs, teacher, student_vocab: int) -> CrossTokenizerObjective:
    """The cross-tokenizer objective (``kd.loss: uld | gold``): each model on its own vocabulary; for gold, the
    vocabulary pairs of the two tokenizers (:func:`kdlab.data.token_alignment.shared_vocabulary`)."""
    teacher_vocab = output_vocab(len(inputs.teacher_tokenizer), teacher)
    shared = None
    if config.kd.loss == "gold":
        student_ids, teacher_ids = shared_vocabulary(inputs.tokenizer, inputs.teacher_tokenizer)
        shared = SharedVocab.build(student_ids, teacher_ids, student_vocab, teacher_vocab)
    spec = cross_spec(config.kd, config.train.chunk_size)
    return CrossTokenizerObjective(spec, teacher, student_vocab, teacher_vocab, shared)
