"""The embedded demo: its spec is a valid study, and (slow) `kdlab demo --quick` runs end to end."""

import pytest
import yaml

from kdlab.demo import FULL, QUICK, demo_spec
from kdlab.study.plan import build_plan
from kdlab.study.spec import load_spec


@pytest.mark.parametrize("size, transfer", [(FULL, False), (QUICK, True)])
def test_demo_spec_is_the_promised_grid(tmp_path, size, transfer):
    from kdlab.data.synth import write_synth

    write_synth(tmp_path / "train.json", n=8, seed=0, split="train")
    for task in ["arith", "AddSub", "SingleEq", "MultiArith", "SVAMP"]:
        (tmp_path / task).mkdir()
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(demo_spec(tmp_path, size, transfer)))
    spec = load_spec(path)
    assert set(spec.domains["arith"].tasks) == ({"arith", "AddSub", "SingleEq", "MultiArith", "SVAMP"} if transfer else {"arith"})
    plan = build_plan(spec)
    kd = [node.meta for node in plan.nodes if node.kind == "kd"]
    smallest = f"smollm2-{min(size.student_layers)}l"
    for layers in size.student_layers:
        runs = {(m["method"], m["temperature"]) for m in kd if m["student"] == f"smollm2-{layers}l" and not m["noise"]
                and m["teacher_kind"] == "finetuned"}
        assert runs == {("fkl", 1.0), ("fkl", 2.0), ("rkl", 1.0), ("gjsd", 1.0)}
    assert [m["student"] for m in kd if m["noise"]] == [smallest]
    assert [m["student"] for m in kd if m["teacher_kind"] == "base"] == [smallest]
    assert sum(node.kind == "student-sft" for node in plan.nodes) == len(size.student_layers)


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path):
    from kdlab.demo import run_demo

    result = run_demo(tmp_path / "demo", quick=True)
    assert (tmp_path / "demo" / "study" / "report" / "report.html").is_file()
    assert set(result["students"]) == {f"smollm2-{n}l" for n in QUICK.student_layers}
    assert 0.0 <= result["teacher"] <= 1.0
