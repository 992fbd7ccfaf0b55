"""kdlab: distil language models and measure what transfers (accuracy and fidelity).

The commands as Python functions (:mod:`kdlab.api`)::

    import kdlab
    run = kdlab.sft(model="smollm2-135m", data="train.json", out="runs/teacher")

KD in your own training loop: ``kdlab.DistillationLoss`` (:mod:`kdlab.distillation_loss`) and, for a transformers
``Trainer``, ``kdlab.DistillationTrainer`` (:mod:`kdlab.hf_trainer`). Everything is imported on first use, so
``import kdlab`` stays light (no torch).
"""

from kdlab.version import __version__

API = (
    "sft",
    "distill",
    "evaluate",
    "fidelity",
    "run_study",
    "RunResult",
    "EvalResult",
    "FidelityResult",
    "StudyResult",
)
__all__ = ["__version__", *API]


LOOP = {"DistillationLoss": "kdlab.distillation_loss", "DistillationTrainer": "kdlab.hf_trainer"}
__all__ += list(LOOP)


def __getattr__(name: str):
    if name in API:
        from kdlab import api

        return getattr(api, name)
    if name in LOOP:
        import importlib

        return getattr(importlib.import_module(LOOP[name]), name)
    raise AttributeError(f"module 'kdlab' has no attribute {name!r}")
