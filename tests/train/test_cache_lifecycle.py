"""The teacher cache of a distill run: built once, checked against the run without loading a model, refused by name
when it does not match; its temperatures."""

import json

import pytest
from kdlab_testing import FAST, run_cli, small_data

from kdlab.errors import KdlabError


def test_a_teacher_cache_for_other_data_is_refused(tiny_models, synth_train, tmp_path, capsys, monkeypatch):
    """ensure_teacher_cache standalone builds the cache; other data, max_length, k or teacher are refused by name."""
    from kdlab.config import build_config
    from kdlab.train import cache_lifecycle as lifecycle

    data = small_data(tmp_path / "eight.json", synth_train, 8)
    cache = tmp_path / "cache"

    def config(**changes):
        flags = {
            "teacher": str(tiny_models["teacher"]),
            "model": str(tiny_models["student"]),
            "data": str(data),
            "out": str(tmp_path / "out"),
            "teacher_cache": str(cache),
            "kd.cache_k": 16,
            "train.precision": "fp32",
        }
        return build_config("distill", None, {**flags, **changes}, [])

    assert lifecycle.ensure_teacher_cache(config(), progress=False) == cache
    monkeypatch.setattr(lifecycle, "load_teacher", lambda config: pytest.fail("the teacher was loaded"))
    assert lifecycle.ensure_teacher_cache(config()) == cache  # complete: checked, not rebuilt
    other = small_data(tmp_path / "other.json", synth_train, 6)
    for changes, message in [
        ({"data": str(other)}, "other data: built on 8 examples"),
        ({"train.max_length": 200}, "other data"),
        ({"kd.cache_k": 8}, "k = 16, this run kd.cache_k = 8"),
        ({"teacher": str(tiny_models["talker"])}, "teacher '"),
    ]:
        with pytest.raises(KdlabError, match="does not match this run") as error:
            lifecycle.ensure_teacher_cache(config(**changes))
        assert str(cache) in str(error.value) and message in str(error.value)
    out = tmp_path / "refused"
    assert (
        run_cli(
            "distill",
            teacher=tiny_models["teacher"],
            student=tiny_models["student"],
            data=other,
            teacher_cache=cache,
            cache_k=16,
            out=out,
            max_steps=1,
            **FAST,
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("kdlab: error:") and "other data" in err and "\n" not in err
    assert not out.exists()


def test_teacher_cache_temperatures(tiny_models, synth_train, tmp_path, capsys, monkeypatch):
    """A cache is built with kd.cache_temperatures plus kd.temperature; a reused cache without kd.temperature is a
    warning (approximate tail), not a rebuild; a cache of the older format is refused with a message to delete it."""
    from kdlab.config import build_config
    from kdlab.train import cache_lifecycle as lifecycle

    data = small_data(tmp_path / "eight.json", synth_train, 8)
    cache = tmp_path / "cache"

    def config(**changes):
        flags = {
            "teacher": str(tiny_models["teacher"]),
            "model": str(tiny_models["student"]),
            "data": str(data),
            "out": str(tmp_path / "out"),
            "teacher_cache": str(cache),
            "kd.cache_k": 16,
            "train.precision": "fp32",
            "kd.cache_temperatures": "2,5",
            "kd.temperature": 3.0,
        }
        return build_config("distill", None, {**flags, **changes}, [])

    assert config().kd.cache_temperatures == [2.0, 5.0]
    with pytest.raises(KdlabError, match=r"kd.cache_temperatures"):
        config(**{"kd.cache_temperatures": "2,-1"})
    lifecycle.ensure_teacher_cache(config(), progress=False)
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["temperatures"] == [1.0, 2.0, 3.0, 5.0] and manifest["bytes_per_token"] == 16 * 3 + 6 + 16
    capsys.readouterr()
    monkeypatch.setattr(lifecycle, "load_teacher", lambda config: pytest.fail("the teacher was loaded"))
    stamp = (cache / "cache.npz").stat().st_mtime_ns
    lifecycle.ensure_teacher_cache(config(**{"kd.temperature": 2.0}))
    assert "warning" not in capsys.readouterr().err
    lifecycle.ensure_teacher_cache(config(**{"kd.temperature": 4.0}))
    err = capsys.readouterr().err
    assert "kd.temperature = 4" in err and "1, 2, 3, 5" in err and "approximated" in err
    assert (cache / "cache.npz").stat().st_mtime_ns == stamp
    manifest["format_version"] = 1
    (cache / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(KdlabError, match=r"older kdlab.*delete the folder"):
        lifecycle.ensure_teacher_cache(config())
