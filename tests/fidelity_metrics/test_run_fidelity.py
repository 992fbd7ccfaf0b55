"""The fidelity command: run_fidelity's output folder and the CLI table (kdlab.fidelity_metrics)."""

import json
import math

import pytest
from kdlab_testing import cli_args

from kdlab import fidelity_metrics as fidelity
from kdlab.fidelity_metrics import run_fidelity


def test_run_fidelity_writes_summary_and_pairs(tmp_path, folders):
    teacher, student = folders(tmp_path)
    out = tmp_path / "fid"
    summary = run_fidelity(teacher, student, out, embeddings=False)
    written = json.loads((out / "fidelity.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert written == json.loads(json.dumps(summary))
    assert set(written) == {"tasks", "average", "settings"} and written["settings"]["mode"] == "generate"
    expected_keys = {
        "n",
        "agreement",
        "n_both_answered",
        "agreement_both_answered",
        "table",
        "agreement_teacher_right",
        "agreement_teacher_wrong",
        "teacher_accuracy",
        "student_accuracy",
        "bleu",
        "sentence_bleu",
        "rougeL",
        "cosine",
    }
    assert set(written["tasks"]["arith"]) == expected_keys
    pairs = [json.loads(line) for line in (out / "pairs" / "arith.jsonl").read_text().splitlines()]
    assert len(pairs) == 6 and set(pairs[0]) == set(fidelity.PAIR_FIELDS)
    assert [p["agree"] for p in pairs] == [True, False, True, False, True, False]
    assert (
        pairs[3]["teacher_pred"] is None and pairs[0]["cosine"] is None and pairs[1]["rougeL"] == pytest.approx(4 / 9)
    )
    run_fidelity(teacher, student, out, embeddings=False)  # a fidelity folder is replaced
    assert sorted(p.name for p in (out / "pairs").iterdir()) == ["arith.jsonl", "boolq.jsonl"]


def test_run_fidelity_with_models_adds_distribution_metrics(tiny_models, talker_eval, tmp_path):
    summary = run_fidelity(
        talker_eval,
        talker_eval,
        tmp_path / "fid",
        teacher_model=str(tiny_models["talker"]),
        student_model=str(tiny_models["teacher"]),
        embeddings=False,
    )
    arith = summary["tasks"]["arith"]
    assert arith["n"] == 4 and arith["table"]["teacher_right_student_wrong"] == 0  # the same folder on both sides
    assert arith["kl_teacher_student"] > 0 and arith["tokens"] > 0
    assert summary["average"]["kl_teacher_student"] == pytest.approx(arith["kl_teacher_student"])
    written = json.loads((tmp_path / "fid" / "fidelity.json").read_text())
    assert (
        written["settings"]["student_model"] == str(tiny_models["teacher"])
        and "top1_agreement" in written["tasks"]["arith"]
    )
    assert not math.isnan(written["average"]["top1_agreement"])


def test_cli_prints_a_table_and_exits_2_on_mismatched_folders(tmp_path, capsys, folders):
    from kdlab.cli import main

    teacher, student = folders(tmp_path)
    main(cli_args("fidelity", teacher=teacher, student=student, out=tmp_path / "fid", no_embeddings=True))
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["task", "n", "agree"] and out[-1].startswith("average")
    summary = json.loads((tmp_path / "fid" / "fidelity.json").read_text())
    assert out[-1].split()[1] == str(summary["average"]["n"])
    with pytest.raises(SystemExit) as info:
        main(cli_args("fidelity", teacher=teacher, student=tmp_path, out=tmp_path / "fid2"))
    assert info.value.code == 2 and "kdlab: error:" in capsys.readouterr().err
    assert not (tmp_path / "fid2").exists()
