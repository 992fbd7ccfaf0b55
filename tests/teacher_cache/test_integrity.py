"""Teacher cache integrity: per-array checksums in the manifest, checked on load; a damaged or altered cache is one
line naming the file and the array, and ``kdlab distill`` leaves no run folder."""

import json
import struct
import zipfile

import numpy as np
import pytest
import torch
from kdlab_testing import FAST, run_cli, small_data

from kdlab.errors import KdlabError
from kdlab.teacher_cache import build_cache, load_cache


@pytest.fixture(scope="module")
def built(setup, tmp_path_factory):
    """A quantised cache of the tiny teacher (k = 8), built once; tests damage copies of it."""
    path = tmp_path_factory.mktemp("integrity") / "cache"
    build_cache(setup["teacher"], setup["tok"], setup["data"], path, k=8, progress=False)
    return path


def _copy(built, tmp_path):
    target = tmp_path / "cache"
    target.mkdir()
    for name in ("cache.npz", "manifest.json"):
        (target / name).write_bytes((built / name).read_bytes())
    return target


def _resave(path, change):
    """Re-save cache.npz as a valid archive after ``change(arrays)``."""
    with np.load(path / "cache.npz") as data:
        arrays = {name: data[name].copy() for name in data.files}
    change(arrays)
    np.savez(path / "cache.npz", **arrays)


def _error(path, **kwargs) -> str:
    with pytest.raises(KdlabError) as error:
        load_cache(path, **kwargs)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_checksums_are_recorded_and_an_unchanged_cache_loads(setup, built, capsys):
    manifest = json.loads((built / "manifest.json").read_text())
    with np.load(built / "cache.npz") as data:
        names = set(data.files)
    assert set(manifest["checksums"]) == names == {"ids", "q", "scale", "lse", "tail_lse", "example_index", "offsets"}
    assert all(len(digest) == 64 for digest in manifest["checksums"].values())
    cache = load_cache(built, teacher=setup["teacher"], dataset=setup["data"])
    assert cache.tokens == manifest["tokens"] and "note" not in capsys.readouterr().err


@pytest.mark.parametrize("name", ["ids", "q", "scale", "lse", "tail_lse", "example_index"])
def test_an_altered_value_in_a_valid_archive_is_refused(name, built, tmp_path):
    path = _copy(built, tmp_path)

    def change(arrays):
        flat = arrays[name].reshape(-1)
        flat[0] = flat[1] if flat[0] != flat[1] else flat[0] + 1

    _resave(path, change)
    message = _error(path)
    assert str(path / "cache.npz") in message and f"array '{name}'" in message and "checksum" in message


def _flip_member_byte(path, member):
    """Flip one data byte of ``member`` inside cache.npz (its CRC no longer matches)."""
    archive = path / "cache.npz"
    with zipfile.ZipFile(archive) as handle:
        info = handle.getinfo(member)
    raw = bytearray(archive.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    raw[start + info.compress_size - 1] ^= 0xFF
    archive.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda p: (p / "cache.npz").write_bytes((p / "cache.npz").read_bytes()[:1000]), "not a readable archive"),
        (lambda p: (p / "cache.npz").write_bytes(b"garbage"), "not a readable archive"),
        (lambda p: _flip_member_byte(p, "lse.npy"), "array 'lse' cannot be read"),
        (lambda p: _resave(p, lambda a: a.pop("scale")), "array 'scale' is missing"),
        (lambda p: _resave(p, lambda a: a.update(lse=a["lse"][:-1])), "array 'lse' is float32"),
        (lambda p: _resave(p, lambda a: a.update(offsets=a["offsets"][::-1].copy())), "array 'offsets'"),
        (lambda p: _resave(p, lambda a: a.update(extra=np.zeros(2))), "array 'extra' has no checksum"),
        (lambda p: (p / "manifest.json").write_text("[1, 2]"), "manifest.json: not a teacher cache manifest"),
        (lambda p: (p / "manifest.json").write_text('{"format_version": 2}'), "manifest.json: 'k' must be a count"),
    ],
)
def test_a_damaged_cache_is_one_line_naming_the_file(damage, message, built, tmp_path):
    path = _copy(built, tmp_path)
    damage(path)
    text = _error(path)
    assert message in text and str(path) in text and "delete the folder to rebuild it" in text


def test_a_cache_without_checksums_is_checked_for_shape_and_used(setup, built, tmp_path, capsys):
    """A cache built before checksums existed: loaded after the structural checks, with a note; same rows."""
    path = _copy(built, tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["checksums"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    index = torch.tensor([setup["data"][0].index])
    rows = load_cache(path).rows(index)
    assert "has no checksums" in capsys.readouterr().err
    assert torch.equal(rows.logp, load_cache(built).rows(index).logp)
    _resave(path, lambda a: a.update(tail_lse=a["tail_lse"][:, :1].copy()))
    assert "array 'tail_lse' is float32" in _error(path)


def test_distill_refuses_a_damaged_cache_before_creating_the_run_folder(tiny_models, synth_train, tmp_path, capsys):
    """kdlab distill on a truncated or altered cache: exit 2, one line naming cache.npz (and the array), no run
    folder; the intact cache trains as before."""
    data = small_data(tmp_path / "eight.json", synth_train, 8)
    cache = tmp_path / "cache"
    common = {
        "teacher": tiny_models["teacher"],
        "student": tiny_models["student"],
        "data": data,
        "teacher_cache": cache,
        "cache_k": 16,
        "max_steps": 1,
        **FAST,
    }
    assert run_cli("distill", **common, out=tmp_path / "first") == 0  # builds the cache, then trains
    intact = (cache / "cache.npz").read_bytes()
    assert run_cli("distill", **common, out=tmp_path / "reused", loss="rkl") == 0  # the intact cache: reused
    capsys.readouterr()
    for damage, expected in [
        (lambda: (cache / "cache.npz").write_bytes(intact[: len(intact) // 2]), "not a readable archive"),
        (lambda: _resave(cache, lambda a: a["lse"].__setitem__(0, a["lse"][0] + 0.5)), "array 'lse'"),
    ]:
        (cache / "cache.npz").write_bytes(intact)
        damage()
        out = tmp_path / "damaged"
        assert run_cli("distill", **common, out=out) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("kdlab: error:") and "\n" not in err
        assert str(cache / "cache.npz") in err and expected in err
        assert not out.exists()
