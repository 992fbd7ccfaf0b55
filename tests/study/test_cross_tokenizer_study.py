"""A study with a student whose tokenizer differs from the teacher's: uld and gold runs train and are evaluated; a
same-tokenizer loss fails its runs with the clear error of ``kdlab distill``."""

import json

import yaml

from kdlab.stats.results import collect_results
from kdlab.study.executors.local import run_plan
from kdlab.study.folder import prepare_study
from kdlab.study.plan import build_plan


def test_cross_tokenizer_methods_run_in_a_study(tiny_models, tmp_path):
    from kdlab.data.synth import write_synth

    write_synth(tmp_path / "train.json", n=12, seed=0, split="train")
    write_synth(tmp_path / "eval" / "arith" / "test.json", n=4, seed=1, split="test")
    train = {"max_steps": 2, "batch_size": 4, "max_length": 320, "save_steps": 0, "lr": 1e-3}
    spec = {
        "name": "xtok",
        "models": {"teacher": {"spec": str(tiny_models["teacher"])}, "other": {"spec": str(tiny_models["other"])}},
        "teachers": ["teacher"],
        "students": ["other"],
        "pairs": "all",
        "domains": {"arith": {"train": "train.json", "tasks": ["arith"], "data_dir": "eval"}},
        "methods": {"uld": {"loss": "uld", "kd_weight": 0.5}, "gold": {"loss": "gold"}, "fkl": {"loss": "fkl"}},
        "temperatures": [1.0],
        "teacher_training": {"lora": {"enabled": True}, "train": dict(train)},
        "student_training": {"lora": {"enabled": False}, "train": dict(train)},
        "teacher_cache": {"enabled": True, "k": 8},  # fkl would read it; uld and gold run against the live teacher
        "evaluation": {"limit": 4, "max_new_tokens": 4, "batch_size": 8, "backend": "hf"},
        "fidelity": {"enabled": False},
    }
    path = tmp_path / "xtok.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    loaded, study_dir = prepare_study(path, tmp_path / "study")
    plan = build_plan(loaded)
    summary = run_plan(plan, study_dir, poll=0.1)
    assert summary.failed == 1  # fkl: the two tokenizers differ
    [failed] = list((study_dir / "state").glob("kd__*fkl*.json"))
    assert "use different tokenizers" in json.loads(failed.read_text())["error"]
    frame = collect_results(plan, study_dir)
    methods = set(frame.loc[frame["role"] == "student-kd", "method"])
    assert methods == {"uld", "gold"}
    for run in (study_dir / "kd").glob("*uld*"):
        assert json.loads((run / "result.json").read_text())["data"]["alignment"]["spans"] > 0
    kd_nodes = {n.meta.method: n for n in plan.nodes if n.kind == "kd"}
    assert "teacher_cache" in kd_nodes["fkl"].params
    assert "teacher_cache" not in kd_nodes["uld"].params and "teacher_cache" not in kd_nodes["gold"].params
