"""The SLURM executor: job scripts with afterok dependencies (dry run), and a study through submitit's local executor."""

import json
import re

import pandas as pd
import pytest
from kdlab_testing import cli_args

from kdlab.cli import main
from kdlab.errors import KdlabError
from kdlab.study.executors import run_with_executor
from kdlab.study.executors.local import run_study
from kdlab.study.executors.slurm import job_parameters, job_scripts, run_plan_submitit_local
from kdlab.study.folder import prepare_study, state_path
from kdlab.study.kinds import KINDS, is_done
from kdlab.study.nodes import Node
from kdlab.study.plan import Plan, build_plan
from kdlab.study.resources import load_resources, load_slurm


class _Spec:
    resources = load_resources({"eval": {"gpus": 0.5, "time_min": 30, "memory_gb": 16}}, "test")


def _chain() -> Plan:
    """teacher SFT -> KD -> evaluation, and a prune node that nothing depends on."""
    return Plan(
        _Spec(),
        [
            Node("models/p-1", "prune", {}),
            Node("teacher/t-2", "teacher-sft", {}),
            Node("kd/k-3", "kd", {}, ("teacher/t-2",)),
            Node("eval/e-4", "eval", {}, ("kd/k-3", "teacher/t-2")),
        ],
    )


def _scripts(text: str) -> dict[str, str]:
    """Dry-run text -> node id -> its sbatch script."""
    parts = re.split(r"^##### job \d+ \(dry run\): (\S+)$", text, flags=re.M)[1:]
    return dict(zip(parts[::2], parts[1::2]))


def test_dry_run_chain_carries_afterok_ids(tmp_path):
    slurm = load_slurm({"partition": "gpu", "account": "lab", "setup": ["source .venv/bin/activate"]}, "test")
    text = job_scripts(_chain(), tmp_path, slurm)
    ids = dict(re.findall(r"^##### job (\d+) \(dry run\): (\S+)$", text, flags=re.M))
    job = {node: number for number, node in ids.items()}
    scripts = _scripts(text)
    assert list(scripts) == ["models/p-1", "teacher/t-2", "kd/k-3", "eval/e-4"]
    assert "--dependency" not in scripts["teacher/t-2"] and "--dependency" not in scripts["models/p-1"]
    assert f"#SBATCH --dependency=afterok:{job['teacher/t-2']}\n" in scripts["kd/k-3"]
    assert f"#SBATCH --dependency=afterok:{job['kd/k-3']}:{job['teacher/t-2']}\n" in scripts["eval/e-4"]
    assert "#SBATCH --kill-on-invalid-dep=yes" in scripts["eval/e-4"]
    assert "#SBATCH --gpus-per-node=1" in scripts["eval/e-4"] and "--gpus-per-node" not in scripts["models/p-1"]
    assert "#SBATCH --time=30\n" in scripts["eval/e-4"] and "#SBATCH --time=240\n" in scripts["kd/k-3"]
    assert "#SBATCH --mem=16GB" in scripts["eval/e-4"] and "#SBATCH --partition=gpu" in scripts["kd/k-3"]
    assert "source .venv/bin/activate" in scripts["kd/k-3"] and f"{tmp_path.resolve()}/slurm/%j" in scripts["kd/k-3"]
    assert not (tmp_path / "slurm").exists()  # a dry run writes nothing


def test_dry_run_leaves_out_finished_runs(tmp_path):
    (tmp_path / "teacher" / "t-2").mkdir(parents=True)
    (tmp_path / "teacher" / "t-2" / KINDS["teacher-sft"].done_file).write_text("{}")
    scripts = _scripts(job_scripts(_chain(), tmp_path, load_slurm(None, "test")))
    assert "teacher/t-2" not in scripts and "--dependency" not in scripts["kd/k-3"]
    assert re.search(r"--dependency=afterok:(\d+)\n", scripts["eval/e-4"])


def test_job_parameters_for_cpu_runs():
    params = job_parameters(Node("select/s-1", "select", {}), _Spec.resources["select"], load_slurm(None, "t"), [])
    assert "gpus_per_node" not in params and "dependency" not in params["additional_parameters"]


def test_cli_refuses_shard_with_an_engine_and_slurm_without_sbatch(tiny_study_spec, tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit_info:
        main(cli_args("study", "run", tiny_study_spec, executor="ray", shard="1/2", out=tmp_path / "s"))
    assert exit_info.value.code == 2 and "--shard is for --executor local" in capsys.readouterr().err
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch
    with pytest.raises(KdlabError, match="no `sbatch` on this machine"):
        run_with_executor("slurm", tiny_study_spec, tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_cli_dry_run_prints_scripts_and_wall_times(tiny_study_spec, tmp_path, capsys):
    main(cli_args("study", "run", tiny_study_spec, executor="slurm", dry_run=True, partition="big", out=tmp_path / "s"))
    out = capsys.readouterr().out
    assert out.count("##### job ") == 85 and out.count("#SBATCH --partition=big") == 85
    assert "expected wall time on N GPUs" in out and not (tmp_path / "s").exists()


def test_chain_through_submitit_local(small_study_spec, tmp_path):
    """Two dependent runs (teacher SFT, then its evaluation), each a local process through submitit."""
    spec, study_dir = prepare_study(small_study_spec, tmp_path / "study")
    full = build_plan(spec)
    teacher = next(node for node in full.nodes if node.kind == "teacher-sft")
    evaluation = next(node for node in full.nodes if node.kind == "eval" and teacher.id in node.deps)
    summary = run_plan_submitit_local(Plan(spec, [teacher, evaluation]), study_dir, spec.slurm)
    assert summary.ran == 2 and summary.failed == 0 and all(is_done(node, study_dir) for node in (teacher, evaluation))
    started = json.loads(state_path(study_dir, evaluation).read_text())["started"]
    assert started >= json.loads(state_path(study_dir, teacher).read_text())["finished"]  # the driver kept the order
    assert list((study_dir / "slurm").glob("*/*_log.out"))  # submitit's logs in the study folder


@pytest.mark.slow
def test_small_study_through_submitit_local(small_study_spec, tmp_path, results_table):
    local_dir, _ = run_study(small_study_spec, tmp_path / "local")
    study_dir, summary = run_with_executor("slurm", small_study_spec, tmp_path / "submitit", submitit_local=True)
    assert summary.done == 7 and summary.ran == 7 and summary.failed == 0
    assert list((study_dir / "slurm").glob("*/*_log.out"))  # submitit's logs in the study folder
    pd.testing.assert_frame_equal(results_table(study_dir), results_table(local_dir))
    _again_dir, again = run_with_executor("slurm", small_study_spec, tmp_path / "submitit", submitit_local=True)
    assert again.ran == 0 and again.done == 7  # nothing finished is redone
