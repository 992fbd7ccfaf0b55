"""Load causal LMs and tokenizers from a model spec, and attach or load LoRA adapters.

A model spec is one of:
- an embedded name (``smollm2-135m``), converted once from its GGUF file into a cached safetensors folder;
- a local folder with a transformers model (``config.json``);
- a local ``.gguf`` file (dequantised by transformers, through the ``gguf`` package);
- a Hugging Face Hub id (``Qwen/Qwen2.5-0.5B-Instruct``).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

from kdlab.errors import KdlabError
from kdlab.models.embedded import EMBEDDED_MODELS, convert_gguf, embedded_model_path


@contextmanager
def quiet_loading(local: bool = True):
    """Hide transformers' per-tensor loading/saving bars for local folders (they flash by in a fraction of a second)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if local:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def inference_device() -> torch.device:
    """Where evaluation and generation run: the first CUDA GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_model_path(spec: str) -> str:
    """A folder or Hub id transformers can load: embedded names and GGUF files become cached folders."""
    if spec in EMBEDDED_MODELS:
        return str(embedded_model_path(spec))
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise KdlabError(f"{spec}: GGUF file not found")
        import hashlib

        from kdlab.models.embedded import cache_root

        digest = hashlib.sha256(
            f"{path.resolve()}:{path.stat().st_size}:{path.stat().st_mtime_ns}".encode()
        ).hexdigest()[:16]
        out_dir = cache_root() / "gguf" / f"{path.stem}-{digest}"
        if not (out_dir / "config.json").is_file():
            convert_gguf(path.resolve(), out_dir)
        return str(out_dir)
    if path.exists():
        if not (path / "config.json").is_file():
            raise KdlabError(f"{spec}: not a model folder (no config.json)")
        return str(path)
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise KdlabError(f"{spec}: model folder not found")
    return spec  # a Hub id


def load_tokenizer(spec: str):
    """The tokenizer of a model spec, with a pad token (EOS when the model has none)."""
    from transformers import AutoTokenizer

    path = resolve_model_path(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as exc:
        raise KdlabError(f"{spec}: could not load tokenizer ({str(exc).splitlines()[0]})") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(spec: str, dtype: torch.dtype = torch.float32, adapter: str | None = None, merge_adapter: bool = False):
    """Load a causal LM from a spec; with ``adapter``, load that LoRA adapter on top (a failure is an error).

    ``merge_adapter`` folds the adapter into the weights (for frozen teachers: faster forward passes).
    """
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(spec)
    try:
        with quiet_loading(local=Path(path).exists()):
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as exc:
        raise KdlabError(f"{spec}: could not load model ({str(exc).splitlines()[0]})") from None
    if adapter:
        model = load_adapter(model, adapter, merge=merge_adapter)
    return model


ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def check_adapter_folder(adapter: str | Path) -> Path:
    """Refuse (naming what is missing) a LoRA adapter folder without ``adapter_config.json`` or a weights file
    (``adapter_model.safetensors`` / ``.bin``); peft would otherwise look for the weights on the Hub."""
    adapter_dir = Path(adapter)
    if not adapter_dir.is_dir():
        raise KdlabError(f"{adapter}: LoRA adapter folder not found")
    if not (adapter_dir / "adapter_config.json").is_file():
        raise KdlabError(f"{adapter}: not a LoRA adapter folder (no adapter_config.json)")
    if not any((adapter_dir / name).is_file() for name in ADAPTER_WEIGHTS):
        raise KdlabError(f"{adapter}: LoRA adapter folder has no weights file ({' or '.join(ADAPTER_WEIGHTS)})")
    return adapter_dir


def load_adapter(model, adapter: str, merge: bool = False, trainable: bool = False):
    """Attach a saved LoRA adapter; a missing or incompatible adapter is a hard error, never a silent fallback.

    ``merge`` folds it into the weights; ``trainable`` keeps its weights trainable (to continue training it).
    """
    from peft import PeftModel

    adapter_dir = check_adapter_folder(adapter)
    try:
        peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)
    except Exception as exc:  # shape mismatch, missing weights, wrong target modules
        raise KdlabError(
            f"{adapter}: LoRA adapter failed to load ({type(exc).__name__}: {str(exc).splitlines()[0][:300]})"
        ) from None
    return peft_model.merge_and_unload() if merge else peft_model


def check_same_tokenizer(teacher_tokenizer, student_tokenizer, teacher_name: str, student_name: str) -> int:
    """Refuse models with different tokenizers (naming both); return the shared vocabulary size."""
    teacher_vocab, student_vocab = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    if teacher_vocab != student_vocab:
        raise KdlabError(
            f"teacher '{teacher_name}' and student '{student_name}' use different tokenizers "
            f"({len(teacher_vocab)} vs {len(student_vocab)} tokens); token-level KD needs a shared tokenizer"
        )
    return len(teacher_vocab)
