"""Generation backends: HF ``generate`` in this process, or a vLLM engine; which one runs, and its generator.

``hf`` generates with a model loaded in this process (:func:`kdlab.generation.generate_ids`); ``vllm`` with a vLLM
engine (:mod:`kdlab.vllm_engine`): the same prompt token ids, budgets, stop strings and text path, so fp32 greedy
outputs are identical. ``auto`` (the default everywhere) takes vLLM when it is installed and can run the model here,
else HF, and says which and why. Both generators have one method, ``generate(prompt_ids, max_new_tokens,
stop_strings=(), do_sample=False, temperature=1.0, seed=None, progress=None, on_batch=None) -> list[list[int]]``
(response token ids, EOS kept, in the order of the prompts), and are context managers.

This module imports neither torch nor vLLM at load time (the config and the study spec name its ``BACKENDS``).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

from kdlab.errors import KdlabError

BACKENDS = ("auto", "hf", "vllm")


@dataclass(frozen=True)
class Backend:
    """The generation backend chosen for one model: ``name`` ("hf" or "vllm"), vLLM's ``version``, and ``why``."""

    name: str
    version: str | None
    why: str

    def describe(self) -> str:
        version = f" {self.version}" if self.version else ""
        return f"generation backend: {self.name}{version} ({self.why})"

    def record(self) -> dict:
        """What a results file records: ``{"backend": ..., "vllm_version": ...}``."""
        return {"backend": self.name, "vllm_version": self.version}


#: ``auto`` takes vLLM for a job of at least this many budgeted tokens (prompts x max new tokens): below it vLLM's
#: start-up (~21 s on 2 CPU cores: 8 s of imports, 13 s of engine) costs more than its faster decoding saves
#: (measured in benchmarks/generation.py: HF ~55 tokens/s, vLLM ~140 tokens/s on SmolLM2-135M, break-even ~1,900
#: generated tokens).
AUTO_MIN_TOKENS = 2048


def choose_backend(requested: str, spec: str, budget_tokens: int | None = None) -> Backend:
    """The backend for model ``spec``: "hf" when asked; "vllm" when asked and vLLM can run the model (else a
    KdlabError naming the reason); ``auto``: vLLM when it is installed, can run the model and the job budgets at
    least :data:`AUTO_MIN_TOKENS` new tokens (``budget_tokens``; None: a large job), else HF."""
    from kdlab.models.load import resolve_model_path
    from kdlab.vllm_engine import INSTALL_HINT, unsupported_reason, vllm_version

    if requested not in BACKENDS:
        raise KdlabError(f"--backend {requested!r}: choose {', '.join(BACKENDS)}")
    if requested == "hf":
        return Backend("hf", None, "asked for")
    version = vllm_version()
    if version is None:
        if requested == "vllm":
            raise KdlabError(f"--backend vllm: vLLM is not installed ({INSTALL_HINT})")
        return Backend("hf", None, "auto: vLLM is not installed")
    if requested == "auto" and budget_tokens is not None and budget_tokens < AUTO_MIN_TOKENS:
        return Backend(
            "hf", None, f"auto: {budget_tokens} budgeted tokens < {AUTO_MIN_TOKENS}, too few for vLLM's start-up"
        )
    reason = unsupported_reason(resolve_model_path(spec))
    if reason:
        if requested == "vllm":
            raise KdlabError(f"--backend vllm: {spec}: {reason}; use --backend hf")
        return Backend("hf", None, f"auto: vLLM cannot run this model here: {reason}")
    return Backend("vllm", version, f"{requested}: vLLM is installed and runs the model")


class HFGenerator:
    """HF ``generate`` on a loaded ``model`` (:func:`kdlab.generation.generate_ids`, ``batch_size`` prompts per
    batch), under bf16 autocast when ``bf16``."""

    def __init__(self, model, tokenizer, batch_size: int, bf16: bool = False) -> None:
        self.model, self.tokenizer, self.batch_size, self.bf16 = model, tokenizer, batch_size, bf16

    def __enter__(self) -> HFGenerator:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def generate(self, prompt_ids: list[list[int]], max_new_tokens: int, stop_strings=(), **options) -> list[list[int]]:
        import torch

        from kdlab.generation import generate_ids

        device_type = next(self.model.parameters()).device.type
        autocast = torch.autocast(device_type, dtype=torch.bfloat16) if self.bf16 else nullcontext()
        with autocast:
            return generate_ids(
                self.model,
                self.tokenizer,
                prompt_ids,
                max_new_tokens,
                self.batch_size,
                stop_strings=list(stop_strings) or None,
                **options,
            )


def open_generator(
    backend: Backend, spec: str, adapter: str | None, tokenizer, bf16: bool, context=None, model=None, batch_size=16
):
    """The generator of ``backend`` for model ``spec`` (+ ``adapter``): a vLLM engine (weights in bf16 when ``bf16``),
    or :class:`HFGenerator` over ``model`` (loaded, adapter merged, by the caller; bf16 autocast when ``bf16``).
    ``context``: the longest prompt + response the engine must hold (None: the model's)."""
    if backend.name == "vllm":
        from kdlab.vllm_engine import VllmEngine

        return VllmEngine(spec, adapter, tokenizer, "bf16" if bf16 else "fp32", context)
    return HFGenerator(model, tokenizer, batch_size, bf16)
