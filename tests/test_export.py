"""kdlab export: merged LoRA loads with plain transformers and generates as base + adapter; round trips; refusals."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from kdlab_testing import FAST, run_cli
from safetensors.torch import load_file

from kdlab.model_card import read_model_card


@pytest.fixture(scope="module")
def runs(tiny_models, synth_train, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export-runs")
    data = root / "eight.json"
    data.write_text(json.dumps(json.loads(synth_train.read_text())[:8]))
    assert (
        run_cli(
            "sft",
            model=tiny_models["talker"],
            data=data,
            out=root / "lora",
            max_steps=3,
            lr=1e-2,
            lora_r=4,
            **FAST,
            batch_size=4,
        )
        == 0
    )
    assert (
        run_cli(
            "sft",
            model=tiny_models["student"],
            data=data,
            out=root / "full",
            max_steps=1,
            no_lora=True,
            **FAST,
            batch_size=4,
        )
        == 0
    )
    return {"lora": root / "lora", "full": root / "full"}


def greedy(model, tokenizer, prompt: str = "Question: 3 + 4 = ?", tokens: int = 8) -> list[int]:
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return output[0, inputs["input_ids"].shape[1] :].tolist()


def test_merged_lora_loads_without_peft_and_generates_as_base_plus_adapter(tiny_models, runs, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kdlab.models.load import load_model

    out = tmp_path / "merged"
    assert run_cli("export", runs["lora"], out=out, merge_lora=True) == 0
    assert not (out / "adapter_config.json").exists() and (out / "config.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(merged).__module__.startswith("transformers.") and not any(
        "lora" in name for name in merged.state_dict()
    )
    tokenizer = AutoTokenizer.from_pretrained(out)
    with_adapter = load_model(str(tiny_models["talker"]), adapter=str(runs["lora"] / "final")).eval()
    assert type(with_adapter).__name__ == "PeftModelForCausalLM"  # not merged: the reference path
    base = AutoModelForCausalLM.from_pretrained(tiny_models["talker"]).eval()
    inputs = tokenizer("Question: 3 + 4 = ?", return_tensors="pt")
    with torch.no_grad():
        logits_merged, logits_adapter = merged(**inputs).logits, with_adapter(**inputs).logits
        assert not torch.allclose(logits_merged, base(**inputs).logits, atol=1e-4)  # the adapter changed something
    torch.testing.assert_close(logits_merged, logits_adapter, rtol=1e-4, atol=1e-4)
    assert greedy(merged, tokenizer) == greedy(with_adapter, tokenizer)
    header, body = read_model_card(out)
    assert header["library_name"] == "transformers" and "merged-lora" in header["tags"] and "merge_and_unload" in body


def test_lora_export_without_merge_is_the_adapter_with_its_card(tiny_models, runs, tmp_path):
    out = tmp_path / "adapter"
    assert run_cli("export", runs["lora"], out=out) == 0
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert (out / "tokenizer.json").is_file()
    header = read_model_card(out)[0]
    assert header["library_name"] == "peft" and header["base_model"] == str(tiny_models["talker"])


def test_full_model_export_round_trip(runs, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "full"
    assert run_cli("export", runs["full"], out=out) == 0
    exported, final = load_file(out / "model.safetensors"), load_file(runs["full"] / "final" / "model.safetensors")
    assert exported.keys() == final.keys() and all(torch.equal(exported[k], final[k]) for k in final)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    assert len(greedy(model, tokenizer, tokens=3)) == 3
    assert read_model_card(out)[0]["library_name"] == "transformers"
    assert not list(tmp_path.glob(".full.*"))  # no temporary folder left beside


def test_refusals(runs, tmp_path, monkeypatch, capsys):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text("kind: sft\n")
    assert run_cli("export", unfinished, out=tmp_path / "a") == 2
    assert "unfinished run (no final/" in capsys.readouterr().err and not (tmp_path / "a").exists()

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    for force in ({}, {"force": True}):  # a folder of the user's files: refused, --force or not
        assert run_cli("export", runs["full"], out=busy, **force) == 2
        assert "is not a kdlab export folder" in capsys.readouterr().err
    assert [path.name for path in busy.iterdir()] == ["keep.txt"]
    assert run_cli("export", runs["full"], out=tmp_path / "e") == 0
    assert run_cli("export", runs["full"], out=tmp_path / "e") == 2
    assert "add --force to replace it" in capsys.readouterr().err
    assert run_cli("export", runs["full"], out=tmp_path / "e", force=True) == 0  # an earlier export is replaced
    (tmp_path / "e" / "keep.txt").write_text("mine")
    assert run_cli("export", runs["full"], out=tmp_path / "e", force=True) == 2
    assert "holds keep.txt, which kdlab did not write" in capsys.readouterr().err
    assert (tmp_path / "e" / "keep.txt").read_text() == "mine"

    assert run_cli("export", runs["full"], out=tmp_path / "b", merge_lora=True) == 2
    assert "no LoRA adapter" in capsys.readouterr().err

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))  # no saved login either
    assert run_cli("export", runs["full"], out=tmp_path / "c", push_to_hub="me/model") == 2
    err = capsys.readouterr().err
    assert "needs a Hugging Face token" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "c").exists()


def test_force_never_replaces_the_run_or_a_folder_around_it(runs, tmp_path, capsys):
    """Why: `kdlab export p/run1 --out p --force` replaced p wholesale: the run and the user's thesis.tex were gone
    (exit 0). An --out that is, contains or lies inside the run is refused on resolved paths (links, ..)."""
    project = tmp_path / "p"
    shutil.copytree(runs["full"], project / "run1")
    (project / "thesis.tex").write_text("years of work")
    (tmp_path / "link").symlink_to(project)
    before = sorted(path.relative_to(tmp_path) for path in project.rglob("*"))
    outs = {
        project: "contains the run folder",
        tmp_path / "link": "contains the run folder",
        project / "run1": "is the run folder",
        project / "x" / ".." / "run1": "is the run folder",
        project / "run1" / "export": "is inside the run folder",
        tmp_path / "link" / "run1" / "final": "is inside the run folder",
    }
    for out, message in outs.items():
        assert run_cli("export", project / "run1", out=out, force=True) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, (out, err)
    assert sorted(path.relative_to(tmp_path) for path in project.rglob("*")) == before
    assert (project / "thesis.tex").read_text() == "years of work"


def test_a_truncated_adapter_is_not_exported(runs, tmp_path, capsys):
    """Why: export copied a truncated adapter with exit 0; now final/'s weights are read back first."""
    run = tmp_path / "lora"
    shutil.copytree(runs["lora"], run)
    weights = run / "final" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    assert run_cli("export", run, out=tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"kdlab: error: {weights}: damaged weights") and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
