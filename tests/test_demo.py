"""The embedded demo: its spec is a valid study, and (slow) `kdlab demo --quick` runs end to end."""

import pytest
import yaml

from kdlab.demo import FULL, QUICK, STAGE2_METHODS, demo_spec
from kdlab.study.plan import build_plan
from kdlab.study.spec import load_spec


@pytest.mark.parametrize("size, transfer", [(FULL, False), (QUICK, True)])
def test_demo_spec_is_the_promised_grid(tmp_path, size, transfer):
    from kdlab.data.synth import write_synth

    write_synth(tmp_path / "train.json", n=size.validation + 8, seed=0, split="train")
    write_synth(tmp_path / "teacher.json", n=8, seed=2, split="train")
    for task in ["arith", "AddSub", "SingleEq", "MultiArith", "SVAMP"]:
        (tmp_path / task).mkdir()
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(demo_spec(tmp_path, size, transfer)))
    spec = load_spec(path)
    assert set(spec.domains["arith"].tasks) == (
        {"arith", "AddSub", "SingleEq", "MultiArith", "SVAMP"} if transfer else {"arith"}
    )
    assert spec.evaluation["precision"] == "auto" and spec.tuning.params == {"train.lr": list(size.lrs)}
    plan = build_plan(spec)
    kd = [node.meta for node in plan.nodes if node.kind == "kd"]
    stage2 = [("fkl", 1.0), ("gkd", 1.0), ("on-policy", 1.0), ("sft-continued", -1)]
    for layers in size.student_layers:
        for seed in size.seeds:
            runs = sorted(
                (m.method, -1 if m.temperature is None else m.temperature)
                for m in kd
                if m.student == f"smollm2-{layers}l" and m.seed == seed
            )
            assert runs == sorted(stage2 * len(size.lrs))  # every candidate of the second stage
    assert all(m.init == "sft" for m in kd)  # every second-stage run starts from the selected SFT run
    steps = {node.params["flags"]["train.max_steps"] for node in plan.nodes if node.kind == "kd"}
    assert steps == {size.stage2_steps}  # the same second-stage budget for every method
    selects = [node.meta for node in plan.nodes if node.kind == "select"]
    assert sorted((m.method, m.seed) for m in selects) == sorted(
        (method, seed)
        for method in ("sft", "fkl", "gkd", "on-policy", "sft-continued")
        for seed in size.seeds
        for _ in size.student_layers
    )
    teacher = next(node for node in plan.nodes if node.kind == "teacher-sft")
    assert teacher.params["data"].endswith("/teacher.json")  # the teacher learns from its own problems
    assert sum(node.kind == "student-sft" for node in plan.nodes) == len(size.student_layers) * len(size.seeds) * len(
        size.lrs
    )


def test_demo_data_keeps_the_sets_apart(tmp_path):
    from kdlab.data.formats import load_json_examples
    from kdlab.demo import _prepare_data

    data = _prepare_data(tmp_path, QUICK, None)
    questions = {
        name: {e.instruction for e in load_json_examples(data / name)}
        for name in ("train.json", "teacher.json", "arith/test.json")
    }
    assert (
        len(questions["train.json"]) == QUICK.train + QUICK.validation
        and len(questions["teacher.json"]) == QUICK.teacher_train
    )
    assert not questions["train.json"] & questions["teacher.json"]
    assert not (questions["train.json"] | questions["teacher.json"]) & questions["arith/test.json"]


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path):
    from kdlab.demo import run_demo

    result = run_demo(tmp_path / "demo", quick=True)
    assert (tmp_path / "demo" / "study" / "report" / "report.html").is_file()
    assert set(result["students"]) == {f"smollm2-{n}l" for n in QUICK.student_layers}
    runs = result["students"][f"smollm2-{QUICK.student_layers[0]}l"]["runs"]
    assert len(runs) == (1 + len(STAGE2_METHODS)) * len(QUICK.seeds) and all(
        run["selected"].startswith(("train.lr", "kd.temperature")) for run in runs
    )
    assert 0.0 <= result["teacher"] <= 1.0


def _demo_data(folder) -> None:
    """The files a demo-derived spec names: train.json (validation + 8), teacher.json and an arith/ folder."""
    from kdlab.data.synth import write_synth

    write_synth(folder / "train.json", n=FULL.validation + 8, seed=0, split="train")
    write_synth(folder / "teacher.json", n=8, seed=2, split="train")
    (folder / "arith").mkdir()


def test_fidelity_study_spec_is_the_promised_grid_and_matches_the_config_file(tmp_path, monkeypatch):
    from pathlib import Path

    from kdlab.demo import fidelity_spec

    _demo_data(tmp_path)
    config = Path(__file__).resolve().parents[1] / "configs" / "studies" / "smollm2-fidelity.yaml"
    assert yaml.safe_load(config.read_text()) == yaml.safe_load(
        yaml.safe_dump(fidelity_spec(Path("$KDLAB_FIDELITY_DATA"), FULL))
    )
    monkeypatch.setenv("KDLAB_FIDELITY_DATA", str(tmp_path))
    spec = load_spec(config)
    assert spec.methods["speculative"].kd["speculative_k"] == 25 and spec.methods["decision"].kd["answer_weight"] == 5.0
    plan = build_plan(spec)
    kd = [node for node in plan.nodes if node.kind == "kd"]
    assert sorted({node.meta.method for node in kd}) == ["decision", "disagreement", "fkl", "speculative"]
    assert len(kd) == 4 * len(FULL.seeds[:2]) * len(FULL.lrs)  # the same learning-rate candidates for every method
    assert all(node.params.get("teacher_cache") for node in kd)  # one teacher cache; speculative adds the live teacher
    assert sum(node.kind == "fidelity" for node in plan.nodes) == 5 * len(FULL.seeds[:2])


def test_demo_help_describes_what_the_demo_runs(capsys):
    """Why: `kdlab demo --help` described students and times that no longer existed; it is now written from the
    demo's own sizes."""
    from kdlab.cli import build_parser
    from kdlab.demo import FULL, QUICK

    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    layers = " or ".join(map(str, FULL.student_layers))
    assert f"pruned to {layers} of its 30 layers" in text and f"{FULL.student_steps} steps of {FULL.batch_size}" in text
    assert f"pruned to {' or '.join(map(str, QUICK.student_layers))} of its 30 layers" in text
    assert f"{FULL.teacher_train} synthetic" in text and "two seeds" in text and "three seeds" in text
    assert f"then {FULL.stage2_steps} more steps per" in text and all(
        name in text.replace("- ", "-")
        for name in STAGE2_METHODS  # argparse may wrap after a hyphen
    )


def test_staged_config_is_the_demo_plus_a_smaller_student_and_the_base_teacher(tmp_path, monkeypatch):
    """configs/studies/smollm2-staged.yaml is kdlab.demo.staged_study_spec(), and its plan holds every run of the
    demo's plan (same folders), so run into the demo's study folder it resumes the demo's finished runs."""
    from pathlib import Path

    from kdlab.demo import ABLATION_METHOD, SMALL_STUDENT, staged_study_spec

    _demo_data(tmp_path)
    config = Path(__file__).resolve().parents[1] / "configs" / "studies" / "smollm2-staged.yaml"
    assert yaml.safe_load(config.read_text()) == yaml.safe_load(
        yaml.safe_dump(staged_study_spec(Path("$KDLAB_DEMO_DATA"), FULL))
    )
    monkeypatch.setenv("KDLAB_DEMO_DATA", str(tmp_path))
    staged = build_plan(load_spec(config))
    demo_path = tmp_path / "demo-spec.yaml"
    demo_path.write_text(yaml.safe_dump(demo_spec(tmp_path, FULL, False)))
    demo = build_plan(load_spec(demo_path))
    assert {n.id for n in demo.nodes} <= {n.id for n in staged.nodes}
    layers, steps = SMALL_STUDENT
    small = [n for n in staged.nodes if n.meta.student == f"smollm2-{layers}l" and n.kind in ("student-sft", "kd")]
    assert {n.params["flags"]["train.max_steps"] for n in small if n.kind == "student-sft"} == {steps}
    assert {n.params["flags"]["train.max_steps"] for n in small if n.kind == "kd"} == {FULL.stage2_steps}
    base = [n.meta for n in staged.nodes if n.kind == "kd" and n.meta.teacher_kind == "base"]
    assert {(m.method, m.student, m.init) for m in base} == {(ABLATION_METHOD, "smollm2-24l", "sft")}
    assert len(base) == len(FULL.seeds) * len(FULL.lrs)
