"""Fixtures of the teacher cache tests: tiny teacher and student models, data, and an exact cache."""

import pytest
import torch

from kdlab.data.synth import generate_arith
from kdlab.data.tokenize import collate, encode_examples
from kdlab.teacher_cache import build_cache, load_cache


@pytest.fixture(scope="module")
def setup():
    from kdlab.models.tiny import build_tiny_model, build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    teacher = build_tiny_model(tok, layers=2, hidden=64, seed=1, vocab_padding=7, init_std=0.3)
    student = build_tiny_model(tok, layers=1, hidden=32, seed=2, init_std=0.3)
    data = encode_examples(tok, generate_arith(6, seed=0), max_length=400)
    batch = collate(data, tok.pad_token_id)
    V = len(tok)
    with torch.no_grad():
        t_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[..., :V]
        s_logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    keep = batch["labels"][:, 1:] != -100
    return {
        "tok": tok,
        "teacher": teacher,
        "data": data,
        "batch": batch,
        "V": V,
        "T": t_logits[:, :-1][keep],
        "S": s_logits[:, :-1][keep],
    }


@pytest.fixture(scope="module")
def objective_setup(synth_train, tmp_path_factory):
    """Teacher and student with padded output layers (sliced to the shared 384 tokens), 8 synth examples, and an
    exact (float32, k = V) cache of the teacher on them."""
    from kdlab.data.formats import load_examples
    from kdlab.models.tiny import build_tiny_model, build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    teacher = (
        build_tiny_model(tok, layers=2, hidden=64, seed=1, vocab_padding=7, init_std=0.3).eval().requires_grad_(False)
    )
    student = build_tiny_model(tok, layers=1, hidden=32, seed=2, vocab_padding=3, init_std=0.3)
    data = encode_examples(tok, load_examples(synth_train)[:8], max_length=256)
    V = len(tok)
    path = tmp_path_factory.mktemp("cache") / "exact"
    build_cache(teacher, tok, data, path, k=V, quantize=False, progress=False, chunk_size=64)
    return {
        "tok": tok,
        "teacher": teacher,
        "student": student,
        "data": data,
        "V": V,
        "cache": load_cache(path, teacher=teacher, dataset=data),
        "synth_train": synth_train,
    }
