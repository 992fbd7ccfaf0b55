"""A tiny study over models built in code: 1 teacher, 2 students, 3 methods, 2 temperatures, 2 tasks, 2 seeds."""

from pathlib import Path

import pytest
import yaml


@pytest.fixture(scope="session")
def tiny_study_spec(tiny_models, tmp_path_factory) -> Path:
    """A study spec file (with its data) that runs in about a minute on 2 CPU cores."""
    from kdlab.data.synth import write_synth

    root = tmp_path_factory.mktemp("study-spec")
    write_synth(root / "train.json", n=24, seed=0, split="train")
    write_synth(root / "eval" / "arith" / "test.json", n=6, seed=1, split="test")
    write_synth(root / "eval" / "AddSub" / "test.json", n=6, seed=2, split="test")
    train = {"max_steps": 2, "batch_size": 4, "max_length": 320, "save_steps": 0, "lr": 1e-3}
    spec = {
        "name": "tiny",
        "models": {
            "teacher": {"spec": str(tiny_models["teacher"])},
            "pruned-1l": {"prune": {"model": "teacher", "keep_layers": 1}},
            "small": {"spec": str(tiny_models["student"])},
        },
        "teachers": ["teacher"],
        "students": ["pruned-1l", "small"],
        "domains": {"arith": {"train": "train.json", "tasks": ["arith", "AddSub"], "data_dir": "eval"}},
        "methods": {"fkl": {"loss": "fkl"}, "rkl": {"loss": "rkl"}, "seqkd": {"loss": "seqkd", "max_new_tokens": 8}},
        "temperatures": [1.0, 2.0],
        "seeds": [0, 1],
        "ablations": {"teacher_noise": [1.0], "base_teacher": True, "students": ["pruned-1l"], "seeds": [0]},
        "teacher_training": {"lora": {"enabled": True}, "train": dict(train)},
        "student_training": {"lora": {"enabled": False}, "train": dict(train)},
        "kd": {"max_new_tokens": 8},
        "teacher_cache": {"enabled": True, "k": 16},
        "evaluation": {"limit": 4, "max_new_tokens": 8, "batch_size": 8},
        "fidelity": {"enabled": True, "token_kl": True, "embeddings": False},
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path
