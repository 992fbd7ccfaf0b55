"""Reading and pairing the teacher's and the student's evaluation folders (kdlab.fidelity_metrics.folders)."""

import json

import pytest

from kdlab.errors import KdlabError
from kdlab.fidelity_metrics import distribution_fidelity, run_fidelity


def test_validation_errors_write_nothing(tmp_path, folders, write_eval, answers):
    teacher, student = folders(tmp_path)
    out = tmp_path / "fid"
    (tmp_path / "plain").mkdir()
    with pytest.raises(KdlabError, match="not a kdlab evaluation folder"):
        run_fidelity(teacher, tmp_path / "plain", out)
    rows = {t: list(zip(answers.student[t], answers.gold[t], answers.student_output[t])) for t in answers.gold}
    fewer = write_eval(tmp_path / "fewer", {"arith": rows["arith"], "gsm8k": [("1", "1", "1")]})
    with pytest.raises(KdlabError, match=r"missing from student .*: boolq; missing from teacher .*: gsm8k"):
        run_fidelity(teacher, fewer, out)
    short = write_eval(tmp_path / "short", {"arith": rows["arith"][:4], "boolq": rows["boolq"]})
    with pytest.raises(KdlabError, match=r"task arith: 2 example ids differ"):
        run_fidelity(teacher, short, out)
    loglik = write_eval(tmp_path / "loglik", rows, mode="loglik")
    with pytest.raises(KdlabError, match=r"generate evaluation .* loglik"):
        run_fidelity(teacher, loglik, out)
    with pytest.raises(KdlabError, match="needs a generate evaluation"):
        distribution_fidelity("teacher-model", "student-model", loglik)
    with pytest.raises(KdlabError, match="both"):
        run_fidelity(teacher, student, out, teacher_model="x")
    assert not out.exists()
    with pytest.raises(KdlabError, match="not a fidelity folder"):
        run_fidelity(teacher, student, teacher)  # never overwrite an evaluation folder


def test_same_ids_over_different_questions_are_refused(tmp_path, folders):
    """Why: examples were paired by id only, so two evaluations of different test files gave agreement and BLEU
    over different questions."""
    teacher, student = folders(tmp_path)
    path = student / "predictions" / "arith.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    lines[2]["prompt"] = "another question"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(KdlabError, match=r"task arith, example id 2: .*different examples \(prompt differs"):
        run_fidelity(teacher, student, tmp_path / "fid")
    lines[2]["prompt"], lines[3]["gold"] = "question 2", "41"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(KdlabError, match=r"example id 3: .*gold differs"):
        run_fidelity(teacher, student, tmp_path / "fid")
    assert not (tmp_path / "fid").exists()


def test_an_unfinished_evaluation_is_refused_unless_allow_partial(tmp_path, capsys, folders):
    """Why: a half-finished evaluation folder (killed, no metrics.json) was accepted."""
    teacher, student = folders(tmp_path)
    (student / "metrics.json").unlink()
    path = student / "predictions" / "arith.jsonl"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:4]))  # killed after 4 examples
    with pytest.raises(
        KdlabError, match=r"student folder .*unfinished evaluation \(no metrics.json\).*--allow-partial"
    ):
        run_fidelity(teacher, student, tmp_path / "fid")
    assert not (tmp_path / "fid").exists()
    summary = run_fidelity(teacher, student, tmp_path / "fid", embeddings=False, allow_partial=True)
    assert summary["tasks"]["arith"]["n"] == 4 and summary["settings"]["allow_partial"] is True
    assert "2 examples are in only one" in capsys.readouterr().out
