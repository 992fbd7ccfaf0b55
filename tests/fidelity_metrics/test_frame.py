"""The per-example fidelity frame and its summary (kdlab.fidelity_metrics.frame)."""

import pytest
import sacrebleu

from kdlab import fidelity_metrics as fidelity
from kdlab.fidelity_metrics import fidelity_frame, summarize


def test_agreement_table_and_no_answer_policy(tmp_path, folders):
    teacher, student = folders(tmp_path)
    frame = fidelity_frame(teacher, student, embeddings=False)
    assert list(frame.columns[:10]) == fidelity.FRAME_COLUMNS and len(frame) == 8
    assert frame[frame.task == "arith"]["agree"].tolist() == [True, False, True, False, True, False]
    assert frame["cosine"].isna().all()
    summary = summarize(frame)
    arith, boolq = summary["tasks"]["arith"], summary["tasks"]["boolq"]
    assert arith["n"] == 6 and arith["agreement"] == pytest.approx(3 / 6)
    assert arith["n_both_answered"] == 4 and arith["agreement_both_answered"] == pytest.approx(3 / 4)
    assert arith["table"] == {
        "teacher_right_student_right": 1,
        "teacher_right_student_wrong": 1,
        "teacher_wrong_student_right": 0,
        "teacher_wrong_student_wrong": 4,
    }
    assert arith["agreement_teacher_right"] == pytest.approx(1 / 2)
    assert arith["agreement_teacher_wrong"] == pytest.approx(2 / 4)  # copied mistakes: ids 2 and 4
    assert arith["teacher_accuracy"] == pytest.approx(2 / 6) and arith["student_accuracy"] == pytest.approx(1 / 6)
    assert boolq["table"]["teacher_wrong_student_right"] == 1 and boolq["table"]["teacher_wrong_student_wrong"] == 1
    assert boolq["agreement"] == pytest.approx(1 / 2) and boolq["agreement_teacher_right"] is None
    average = summary["average"]
    assert average["n"] == 8 and average["n_both_answered"] == 6
    assert average["agreement"] == pytest.approx((3 / 6 + 1 / 2) / 2)
    assert average["agreement_teacher_right"] == pytest.approx(1 / 2)  # only arith defines it
    assert average["table"]["teacher_wrong_student_wrong"] == 5


def test_bleu_and_sentence_bleu_match_sacrebleu(tmp_path, folders, answers):
    teacher, student = folders(tmp_path)
    summary = summarize(fidelity_frame(teacher, student, embeddings=False))
    t_out, s_out = answers.teacher_output, answers.student_output
    for task in answers.gold:
        expected = sacrebleu.corpus_bleu(s_out[task], [t_out[task]]).score
        assert summary["tasks"][task]["bleu"] == pytest.approx(expected)
        sentences = [sacrebleu.sentence_bleu(s, [t]).score for s, t in zip(s_out[task], t_out[task])]
        assert summary["tasks"][task]["sentence_bleu"] == pytest.approx(sum(sentences) / len(sentences))
    assert summary["tasks"]["arith"]["bleu"] > 0


def test_loglik_folders_have_no_rationale_metrics(tmp_path, folders):
    teacher, student = folders(tmp_path, mode="loglik")
    summary = summarize(fidelity_frame(teacher, student))
    arith = summary["tasks"]["arith"]
    assert arith["agreement"] == pytest.approx(3 / 6)
    assert (
        arith["bleu"] is None and arith["sentence_bleu"] is None and arith["rougeL"] is None and arith["cosine"] is None
    )
    assert summary["average"]["bleu"] is None
