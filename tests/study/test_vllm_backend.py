"""A study's evaluations on vLLM give the results table of HF in float32 (``evaluation.backend``), and the backend
setting at its default leaves every folder name as it was."""

import json

import pandas as pd
import yaml

import kdlab


def study_spec(models: dict, root, backend: str):
    from kdlab.data.synth import write_synth

    write_synth(root / "train.json", n=16, seed=0, split="train")
    write_synth(root / "eval" / "arith" / "test.json", n=8, seed=1, split="test")
    train = {"max_steps": 1, "batch_size": 4, "max_length": 256, "save_steps": 0, "lr": 1e-3, "precision": "fp32"}
    spec = {
        "name": f"vllm-{backend}",
        "models": {"teacher": {"spec": str(models["model"])}, "small": {"spec": str(models["student"])}},
        "teachers": ["teacher"],
        "students": ["small"],
        "domains": {"arith": {"train": "train.json", "tasks": ["arith"], "data_dir": "eval"}},
        "methods": {
            "fkl": {"loss": "fkl"},
            "seqkd": {"loss": "seqkd", "max_new_tokens": 16, "generation_backend": backend},
        },
        "temperatures": [1.0],
        "seeds": [0],
        "teacher_training": {"lora": {"enabled": True}, "train": dict(train)},
        "student_training": {"lora": {"enabled": False}, "train": dict(train)},
        "teacher_cache": {"enabled": False},
        "evaluation": {"max_new_tokens": 16, "batch_size": 4, "precision": "fp32", "backend": backend},
        "fidelity": {"enabled": True, "token_kl": False, "embeddings": False},
    }
    path = root / f"{backend}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_study_on_vllm_gives_the_results_table_of_hf(vllm_models, tmp_path, monkeypatch):
    import torch

    # the answers node generates at precision auto (kdlab.study.node_runners): pin it to fp32, where the two backends
    # are exact, also on CPUs with native bf16 (there auto means bf16, and greedy bf16 drifts on either backend)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    tables, backends = {}, {}
    for backend in ("hf", "vllm"):
        study = kdlab.run_study(study_spec(vllm_models, tmp_path, backend), out=tmp_path / backend)
        assert study.failed == 0 and study.blocked == 0
        tables[backend] = study.results()
        backends[backend] = {
            json.loads(path.read_text())["settings"]["backend"]
            for path in (tmp_path / backend).glob("eval/*/metrics.json")
        }
    assert backends == {"hf": {"hf"}, "vllm": {"vllm"}}
    columns = ["role", "method", "task", "n", "correct", "accuracy", "agreement"]
    columns = [column for column in columns if column in tables["hf"].columns]
    assert len(tables["hf"]) == 4 and "correct" in columns
    for backend in ("hf", "vllm"):  # the SeqKD answers node ran on the backend of the method's kd section
        (answers,) = (tmp_path / backend).glob("answers/*/train.json")
        tables[f"{backend} answers"] = json.loads(answers.read_text())
    assert tables["hf answers"] == tables["vllm answers"]
    pd.testing.assert_frame_equal(tables["hf"][columns], tables["vllm"][columns])


def test_the_default_backend_keeps_folder_names(tiny_study_spec, tmp_path):
    """``backend: auto`` is in every evaluation and answers node's settings but not in its folder hash, so a study
    planned before the setting existed keeps its folders; another backend is another evaluation."""
    from kdlab.study.plan import build_plan
    from kdlab.study.spec import load_spec
    from kdlab.study.training_runs import HASH_NEUTRAL

    nodes = build_plan(load_spec(tiny_study_spec)).nodes
    generating = [node for node in nodes if node.kind in ("eval", "val-eval", "answers")]
    assert generating and all(node.params["backend"] == "auto" for node in generating)
    assert HASH_NEUTRAL == {"backend": "auto"}
    edited = yaml.safe_load(tiny_study_spec.read_text())
    edited["evaluation"]["backend"] = "hf"
    path = tiny_study_spec.parent / "hf-backend.yaml"
    path.write_text(yaml.safe_dump(edited))
    changed = build_plan(load_spec(path)).nodes
    trained = ("prune", "split", "teacher-sft", "answers", "cache", "student-sft", "kd")
    assert {n.id for n in changed if n.kind in trained} == {n.id for n in nodes if n.kind in trained}
    assert not {n.id for n in changed if n.kind == "eval"} & {n.id for n in nodes if n.kind == "eval"}
