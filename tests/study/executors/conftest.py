"""A reduced tiny study (7 runs) for the executors' end-to-end tests, and a helper to read results tables."""

from pathlib import Path

import pytest
import yaml


@pytest.fixture(scope="session")
def small_study_spec(tiny_study_spec, tmp_path_factory) -> Path:
    """The tiny study cut to one student, forward KL at tau 1, one seed, no ablations, no fidelity: 7 runs (teacher SFT
    and evaluation, cache, student SFT and evaluation, KD and evaluation)."""
    data = yaml.safe_load(tiny_study_spec.read_text())
    data.update(
        name="small",
        students=["small"],
        methods={"fkl": {"loss": "fkl"}},
        temperatures=[1.0],
        seeds=[0],
        fidelity={"enabled": False},
    )
    data.pop("ablations")
    for domain in data["domains"].values():
        domain["train"] = str(tiny_study_spec.parent / domain["train"])
        domain["data_dir"] = str(tiny_study_spec.parent / domain["data_dir"])
    path = tmp_path_factory.mktemp("small-spec") / "small.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def results_table():
    """A function: study folder -> its results table without the columns that hold folder paths."""
    return _results_table


def _results_table(study_dir: Path):
    from kdlab.stats.results import collect_results
    from kdlab.study.folder import load_study
    from kdlab.study.plan import build_plan

    spec, study_dir = load_study(study_dir)
    frame = collect_results(build_plan(spec), study_dir)
    return frame.drop(columns=[c for c in frame.columns if c.endswith("_dir")]).reset_index(drop=True)
