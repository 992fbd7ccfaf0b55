"""Teacher cache store: rows per example, size budget, determinism, manifest and format checks."""

import json

import pytest
import torch

from kdlab.data.tokenize import collate
from kdlab.errors import KdlabError
from kdlab.teacher_cache import build_cache, bytes_per_token, cached_divergence, load_cache


def _cache(setup, path, **kw):
    build_cache(setup["teacher"], setup["tok"], setup["data"], path, progress=False, **kw)
    return load_cache(path, teacher=setup["teacher"], dataset=setup["data"])


def test_old_format_cache_is_refused(setup, tmp_path):
    path = tmp_path / "old"
    build_cache(setup["teacher"], setup["tok"], setup["data"], path, k=8, progress=False)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format_version"] = 1
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(KdlabError, match=r"older kdlab.*delete the folder to rebuild it"):
        load_cache(path)


def test_rows_per_example_and_batch_order(setup, tmp_path):
    cache = _cache(setup, tmp_path / "c", k=8)
    data = setup["data"]
    assert cache.tokens == setup["S"].shape[0] == sum(len(e.response_ids) for e in data)
    order = torch.tensor([data[2].index, data[0].index])
    rows = cache.rows(order)
    parts = [cache.example_rows(data[2].index), cache.example_rows(data[0].index)]
    assert torch.equal(rows.ids, torch.cat([p.ids for p in parts]))
    with pytest.raises(KdlabError):
        cache.rows(torch.tensor([999]))


def test_bytes_per_token_large_vocab(setup, tmp_path):
    from kdlab.models.tiny import build_tiny_model

    tok, V = setup["tok"], 152064
    assert (
        bytes_per_token(64, V) == bytes_per_token(64, V, n_temperatures=3) == 274 <= 300
    )  # 3 tail sums (tau = 1, 2, 5)
    assert bytes_per_token(64, 65536) == 210
    big = build_tiny_model(tok, layers=1, hidden=16, seed=4, vocab_padding=V - len(tok), init_std=0.3)
    data = setup["data"][:2]
    info = build_cache(big, tok, data, tmp_path / "big", k=64, vocab_size=V, progress=False)
    assert info.manifest["bytes_per_token"] == 274 and info.manifest["temperatures"] == [1.0, 2.0, 5.0]
    assert info.manifest["bytes_per_token_file"] <= 300
    cache = load_cache(tmp_path / "big")
    batch = collate(data, tok.pad_token_id)
    with torch.no_grad():
        logits = big(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[..., :V]
    T = logits[:, :-1][batch["labels"][:, 1:] != -100]
    rows = cache.rows(batch["index"])
    top = torch.topk(T, 64).indices
    assert torch.equal(rows.ids, top) and (top > 65535).any()  # 24-bit packing round-trips
    assert torch.isfinite(cached_divergence(T, rows, "fkl", 1.0)).all()


def test_rebuild_is_deterministic(setup, tmp_path):
    a = build_cache(setup["teacher"], setup["tok"], setup["data"], tmp_path / "a", k=16, progress=False)
    b = build_cache(setup["teacher"], setup["tok"], setup["data"], tmp_path / "b", k=16, progress=False)
    assert (a.path / "cache.npz").read_bytes() == (b.path / "cache.npz").read_bytes()
    assert a.manifest == b.manifest


def test_manifest_mismatch_is_rejected(setup, tmp_path):
    from kdlab.models.tiny import build_tiny_model

    build_cache(
        setup["teacher"], setup["tok"], setup["data"], tmp_path / "c", k=8, progress=False, teacher_spec="tiny-teacher"
    )
    load_cache(tmp_path / "c", teacher=setup["teacher"], dataset=setup["data"], teacher_spec="tiny-teacher")
    other = build_tiny_model(setup["tok"], layers=2, hidden=64, seed=9, vocab_padding=7)
    with pytest.raises(KdlabError, match="another teacher"):
        load_cache(tmp_path / "c", teacher=other)
    with pytest.raises(KdlabError, match="teacher"):
        load_cache(tmp_path / "c", teacher_spec="someone-else")
    with pytest.raises(KdlabError, match="other data"):
        load_cache(tmp_path / "c", dataset=setup["data"][:3])
    with pytest.raises(KdlabError, match="not a teacher cache"):
        load_cache(tmp_path / "missing")
