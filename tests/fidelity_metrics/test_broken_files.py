"""The readers of evaluation folders (kdlab fidelity, the study's paired tests) on broken files: one-line errors
naming the file and line, never tracebacks."""

import pytest
from kdlab_testing import run_cli

from kdlab.errors import KdlabError
from kdlab.fidelity_metrics import run_fidelity
from kdlab.stats.paired import read_flags

BAD_LINES = {
    "no id": ('{"pred": "1", "correct": true}', r":2: a record needs keys 'id'"),
    "a list": ("[1, 2]", r":2: a record must be a JSON object, not a list"),
    "not json": ("{oops", r":2: not a JSON line"),
    "list id": ('{"id": [1], "pred": "1", "correct": true}', r":2: field 'id' must be an integer"),
}
BROKEN_CONFIGS = {
    "list": ("- a\n- b\n", "holds a YAML list, not a mapping of settings"),
    "scalar": ("5\n", "holds a YAML int, not a mapping of settings"),
    "invalid": ("model: [unclosed\n", "not valid YAML"),
}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("kdlab: error:") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("kind", sorted(BAD_LINES))
def test_fidelity_and_study_stats_read_broken_lines_as_one_line(kind, tmp_path, folders):
    line, message = BAD_LINES[kind]
    teacher, student = folders(tmp_path)
    path = student / "predictions" / "arith.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], line, *lines[1:]]) + "\n")
    with pytest.raises(KdlabError, match=rf"arith.jsonl{message}"):
        run_fidelity(teacher, student, tmp_path / "fid")
    with pytest.raises(KdlabError, match=rf"arith.jsonl{message}"):
        read_flags(path)
    assert not (tmp_path / "fid").exists()


@pytest.mark.parametrize("kind", sorted(BROKEN_CONFIGS))
def test_fidelity_of_a_folder_whose_config_is_not_a_mapping(kind, tmp_path, folders, capsys):
    text, message = BROKEN_CONFIGS[kind]
    teacher, student = folders(tmp_path)
    (student / "config.yaml").write_text(text)
    assert run_cli("fidelity", teacher=teacher, student=student, out=tmp_path / "fid") == 2
    assert message in one_error_line(capsys) and not (tmp_path / "fid").exists()
