"""Broken files in evaluation and run folders are one-line errors naming the file (and line), never tracebacks:
a config.yaml that is not a mapping, predictions lines that are not JSON objects or lack an ``id``."""

import re

import pytest
from kdlab_testing import run_cli

from kdlab.config import RunConfig
from kdlab.errors import KdlabError
from kdlab.outputs import read_config_mapping
from kdlab.run_folder import run_state

BROKEN_CONFIGS = {
    "list": ("- a\n- b\n", "holds a YAML list, not a mapping of settings"),
    "scalar": ("5\n", "holds a YAML int, not a mapping of settings"),
    "invalid": ("model: [unclosed\n", "not valid YAML"),
}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("kdlab: error:") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def arith_dir(tmp_path_factory):
    from kdlab.data.synth import write_synth

    root = tmp_path_factory.mktemp("eval-data")
    write_synth(root / "arith" / "test.json", n=3, seed=3, split="test")
    return root


@pytest.mark.parametrize("kind", sorted(BROKEN_CONFIGS))
def test_read_config_mapping(kind, tmp_path):
    text, message = BROKEN_CONFIGS[kind]
    (tmp_path / "config.yaml").write_text(text)
    with pytest.raises(KdlabError, match=rf"config.yaml: .*{message}"):
        read_config_mapping(tmp_path / "config.yaml")
    (tmp_path / "config.yaml").write_text("")
    assert read_config_mapping(tmp_path / "config.yaml") == {}


@pytest.mark.parametrize("kind", sorted(BROKEN_CONFIGS))
def test_an_eval_folder_whose_config_is_not_a_mapping(kind, tiny_models, arith_dir, tmp_path, capsys):
    """Why: a config.yaml holding a list (or a scalar, or invalid YAML) in --out was an AttributeError traceback."""
    text, message = BROKEN_CONFIGS[kind]
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "config.yaml").write_text(text)
    code = run_cli("eval", model=tiny_models["student"], tasks="arith", data_dir=arith_dir, out=tmp_path / "out")
    assert code == 2 and message in one_error_line(capsys)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.yaml"]


@pytest.mark.parametrize("kind", sorted(BROKEN_CONFIGS))
def test_a_run_folder_whose_config_is_not_a_mapping(kind, tmp_path):
    """Why: the same config.yaml in a training run's --out was an AttributeError traceback."""
    text, message = BROKEN_CONFIGS[kind]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(text)
    with pytest.raises(KdlabError, match=message):
        run_state(RunConfig(kind="sft", model="m", data="d", out=str(tmp_path / "run")))


BAD_LINES = {
    "no id": ('{"pred": "1", "correct": true}', r":2: a record needs keys 'id'"),
    "a list": ("[1, 2]", r":2: a record must be a JSON object, not a list"),
    "not json": ("{oops", r":2: not a JSON line"),
    "list id": ('{"id": [1], "pred": "1", "correct": true}', r":2: field 'id' must be an integer"),
}


@pytest.mark.parametrize("kind", sorted(BAD_LINES))
def test_a_resumed_evaluation_with_a_broken_predictions_line(kind, tiny_models, arith_dir, tmp_path, capsys):
    """Why: kdlab eval resuming a folder whose predictions held a line without id was a KeyError traceback."""
    flags = {"model": tiny_models["student"], "tasks": "arith", "data_dir": arith_dir, "max_new_tokens": 4}
    assert run_cli("eval", **flags, out=tmp_path / "out") == 0
    path = tmp_path / "out" / "predictions" / "arith.jsonl"
    lines = path.read_text().splitlines()
    line, message = BAD_LINES[kind]
    path.write_text("\n".join([lines[0], line, *lines[1:]]) + "\n")
    (tmp_path / "out" / "metrics.json").unlink()
    capsys.readouterr()
    assert run_cli("eval", **flags, out=tmp_path / "out") == 2
    err = one_error_line(capsys)
    assert str(path) in err and re.search(message, err), err
