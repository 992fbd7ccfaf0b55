"""The spec's resources and slurm sections: defaults, and errors that name the key."""

import pytest
import yaml

from kdlab.errors import KdlabError
from kdlab.study.kinds import KINDS
from kdlab.study.resources import Need, load_resources, load_slurm
from kdlab.study.spec import load_spec


def test_defaults_and_overrides():
    needs = load_resources({"kd": {"gpus": 0.25, "memory_gb": 40}, "teacher-sft": {"time_min": 600}}, "s: resources")
    assert needs["kd"] == Need(gpus=0.25, cpus=1.0, memory_gb=40.0)
    assert needs["teacher-sft"].gpus == 1.0 and needs["teacher-sft"].time_min == 600
    assert needs["select"].gpus == 0.0 and needs["fidelity"].gpus == 0.5 and set(needs) == set(KINDS)
    assert load_slurm(None, "s: slurm")["time_min"] == 240


@pytest.mark.parametrize(
    "section, value, message",
    [
        ("resources", {"kd-run": {"gpus": 1}}, "s: resources: unknown run kind\\(s\\) kd-run"),
        ("resources", {"kd": {"gpu": 1}}, "s: resources.kd: unknown key\\(s\\) gpu"),
        ("resources", {"kd": {"gpus": 2}}, "s: resources.kd.gpus: expected a number between 0 and 1, got 2"),
        ("resources", {"eval": {"cpus": "four"}}, "s: resources.eval.cpus: expected a number >= 0"),
        ("slurm", {"partitions": "gpu"}, "s: slurm: unknown key\\(s\\) partitions"),
        ("slurm", {"setup": "module load cuda"}, "s: slurm.setup: expected a list of shell lines"),
    ],
)
def test_errors_name_the_key(section, value, message):
    with pytest.raises(KdlabError, match=message):
        (load_resources if section == "resources" else load_slurm)(value, f"s: {section}")


def test_spec_reads_both_sections(tiny_study_spec, tmp_path):
    data = yaml.safe_load(tiny_study_spec.read_text())
    data.update(resources={"fidelity": {"gpus": 0.25}}, slurm={"partition": "gpu"})
    data["domains"]["arith"].update(
        train=str(tiny_study_spec.parent / "train.json"), data_dir=str(tiny_study_spec.parent / "eval")
    )
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    spec = load_spec(path)
    assert spec.resources["fidelity"].gpus == 0.25 and spec.slurm["partition"] == "gpu"
    data["resources"] = {"kd": {"gpus": -1}}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(KdlabError, match=f"{path}: resources.kd.gpus"):
        load_spec(path)
