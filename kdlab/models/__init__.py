"""Models: loading (Hub id, local folder, GGUF file, embedded names), LoRA adapters, pruning, tiny test models."""

from kdlab.models.load import check_same_tokenizer, load_model, load_tokenizer, resolve_model_path

__all__ = ["check_same_tokenizer", "load_model", "load_tokenizer", "resolve_model_path"]
