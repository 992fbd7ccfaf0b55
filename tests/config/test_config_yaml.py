"""A run's --config file is read strictly: a repeated key is an error naming the file, the key and its lines."""

import pytest

from kdlab.config import build_config
from kdlab.errors import KdlabError

BASE = {"model": "s", "teacher": "t", "data": "d.json", "out": "o"}


@pytest.mark.parametrize(
    "text, message",
    [
        ("model: a\nkd:\n  loss: fkl\nmodel: b\n", "line 4: duplicate key 'model' (first at line 1)"),
        ("kd:\n  loss: fkl\n  beta: 0.1\n  loss: rkl\n", "line 4: duplicate key 'loss' (first at line 2)"),
        ("kd: {loss: fkl}\ntrain: {lr: 0.1}\nkd: {loss: rkl}\n", "line 3: duplicate key 'kd' (first at line 1)"),
    ],
)
def test_a_repeated_key_in_a_config_file_is_refused(tmp_path, text, message):
    """Why: PyYAML keeps the last of two equal keys silently (kd.loss: fkl then rkl trained reverse KL)."""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(KdlabError) as info:
        build_config("distill", str(path), BASE, [])
    assert str(info.value) == f"{path}: {message}"


def test_a_merge_key_may_still_override(tmp_path):
    """`<<:` merges a mapping under explicit keys (YAML's own override), which is no repeated key."""
    path = tmp_path / "c.yaml"
    path.write_text("kd:\n  <<: {loss: gjsd, beta: 0.2}\n  beta: 0.3\ntrain: {lr: 0.1}\n")
    config = build_config("distill", str(path), BASE, [])
    assert config.kd.loss == "gjsd" and config.kd.beta == 0.3 and config.train.lr == 0.1


def test_a_malformed_set_value_is_one_line(tmp_path, capsys):
    """Why: `--set lora.r=[` gave a yaml ScannerError traceback (exit 1)."""
    from kdlab_testing import run_cli

    assert run_cli("sft", model="x", data="y", out=tmp_path / "run", set=["lora.r=["]) == 2
    err = capsys.readouterr().err
    assert "--set lora.r=[: the value is not valid YAML" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
