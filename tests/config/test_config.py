"""Config resolution: defaults < YAML < flags < --set, with clear errors."""

import pytest

from kdlab.config import build_config, loss_kwargs
from kdlab.errors import KdlabError

BASE = {"model": "s", "teacher": "t", "data": "d.json", "out": "o"}


def test_precedence_yaml_then_flags_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: from-yaml\ntrain:\n  lr: 0.1\n  batch_size: 4\nkd:\n  loss: gjsd\n  beta: 0.2\n")
    config = build_config(
        "distill", str(path), {"teacher": "t", "data": "d", "out": "o", "train.lr": "0.01"}, ["train.batch_size=2"]
    )
    assert config.model == "from-yaml" and config.train.lr == 0.01 and config.train.batch_size == 2
    assert config.kd.loss == "gjsd" and loss_kwargs(config.kd) == {"beta": 0.2}


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.lr=abc", "train.lr: expected a number, got 'abc'"),
        ("train.batch_size=1.5", "train.batch_size: expected an integer"),
        ("lora.enabled=maybe", "lora.enabled: expected true or false"),
        ("kd.temperature=0", "temperature must be > 0"),
        ("kd.beta=-0.5", "kd.beta must be in [0, 1]"),
        ("kd.loss=kl", "kd.loss: 'kl' is not one of"),
        ("train.precision=fp16", "train.precision: 'fp16' is not one of auto, bf16, fp32"),
        ("nope.x=1", "unknown section 'nope'"),
        ("train.nope=1", "train.nope: unknown setting"),
        ("train.lr", "expected SECTION.FIELD=VALUE"),
        ("kd.lmbda=2", "kd.lmbda must be in [0, 1]"),
    ],
)
def test_bad_settings_name_the_field(override, message):
    with pytest.raises(KdlabError, match=message.replace("[", r"\[").replace("]", r"\]")):
        build_config("distill", None, BASE, [override])


def test_missing_required_settings_and_bad_yaml(tmp_path):
    with pytest.raises(KdlabError, match="missing setting 'teacher'"):
        build_config("distill", None, {"model": "s", "data": "d", "out": "o"}, [])
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(KdlabError, match=r"bad.yaml: malformed YAML"):
        build_config("sft", str(bad), BASE, [])
    with pytest.raises(KdlabError, match="config file not found"):
        build_config("sft", str(tmp_path / "none.yaml"), BASE, [])
