"""Model cards: written with final/, valid YAML front matter, updated with a study's evaluation and fidelity."""

import json
from pathlib import Path

import pytest
import yaml
from kdlab_testing import FAST, run_cli

from kdlab.model_card import read_model_card, write_model_card
from kdlab.study.kinds import KINDS


@pytest.fixture(scope="module")
def arith_dir(tmp_path_factory):
    from kdlab.data.synth import write_synth

    root = tmp_path_factory.mktemp("card-eval-data")
    write_synth(root / "arith" / "test.json", n=6, seed=3, split="test")
    return root


def front(card: Path) -> dict:
    text = card.read_text()
    assert text.startswith("---\n")
    header = yaml.safe_load(text.split("---\n")[1])  # the front matter alone is valid YAML
    assert header == read_model_card(card)[0]
    return header


def test_sft_lora_card(tiny_models, synth_train, tmp_path):
    out = tmp_path / "sft"
    assert (
        run_cli("sft", model=tiny_models["student"], data=synth_train, out=out, **FAST, max_steps=2, batch_size=4) == 0
    )
    header = front(out / "final" / "README.md")
    assert header["base_model"] == str(tiny_models["student"]) and header["library_name"] == "peft"
    assert {"knowledge-distillation", "sft", "lora"} <= set(header["tags"]) and header["datasets"] == ["train.json"]
    body = read_model_card(out / "final")[1]
    assert "Supervised fine-tuning" in body and "optimizer steps: 2" in body and "response tokens:" in body


def test_kd_card_gets_the_study_evaluation_and_fidelity(tiny_models, synth_train, arith_dir, tmp_path):
    out = tmp_path / "kd"
    assert (
        run_cli(
            "distill",
            teacher=tiny_models["teacher"],
            student=tiny_models["student"],
            data=synth_train,
            out=out,
            loss="rkl",
            temperature=2,
            kd_weight=0.5,
            no_lora=True,
            **FAST,
            max_steps=2,
            batch_size=4,
        )
        == 0
    )
    header = front(out / "final" / "README.md")
    assert header["library_name"] == "transformers" and {"knowledge-distillation", "kd", "rkl"} <= set(header["tags"])
    assert header["kdlab"]["teacher"] == str(tiny_models["teacher"])
    body = read_model_card(out / "final")[1]
    assert "- loss: rkl" in body and "- temperature: 2.0" in body and "- kd_weight: 0.5" in body

    settings = {
        "tasks": ["arith"],
        "data_dir": str(arith_dir),
        "mode": "generate",
        "extraction": "strict",
        "batch_size": 6,
        "limit": None,
        "max_new_tokens": 6,
        "precision": "fp32",
    }
    KINDS["eval"].runner(
        {**settings, "model": str(out / "final"), "adapter": None}, tmp_path / "eval-student", tmp_path
    )
    KINDS["eval"].runner(
        {**settings, "model": str(tiny_models["teacher"]), "adapter": None}, tmp_path / "eval-teacher", tmp_path
    )
    metrics = json.loads((tmp_path / "eval-student" / "metrics.json").read_text())
    header = front(out / "final" / "README.md")
    assert header["kdlab"]["evaluation"] == metrics["tasks"]

    KINDS["fidelity"].runner(
        {
            "teacher_eval": str(tmp_path / "eval-teacher"),
            "student_eval": str(tmp_path / "eval-student"),
            "embeddings": False,
        },
        tmp_path / "fidelity",
        tmp_path,
    )
    fidelity = json.loads((tmp_path / "fidelity" / "fidelity.json").read_text())
    header = front(out / "final" / "README.md")
    assert header["kdlab"]["evaluation"] == metrics["tasks"]  # kept
    assert header["kdlab"]["fidelity"] == {**fidelity["tasks"], "average": fidelity["average"]}
    body = read_model_card(out / "final")[1]
    assert "## Evaluation" in body and "## Fidelity to the teacher" in body

    write_model_card(out)  # a rewrite keeps the results
    assert front(out / "final" / "README.md")["kdlab"]["fidelity"]["average"] == fidelity["average"]
