"""Fidelity statistics: the Pareto front, Wilson intervals and the paired agreement tests, against scipy and hand counts."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from kdlab.errors import KdlabError
from kdlab.stats.fidelity import agreement_tests, fidelity_tables, pareto_front


def test_pareto_front_by_hand():
    points = [(0.3, 0.5), (0.4, 0.4), (0.2, 0.6), (0.3, 0.4), (0.4, 0.4)]
    # (0.3, 0.4) is beaten by (0.3, 0.5); the two equal points (0.4, 0.4) both stay
    assert pareto_front(points) == [True, True, True, False, True]


def _write(study, folder, kind, task, flags):
    path = study / folder / kind / f"{task}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    field = "agree" if kind == "pairs" else "correct"
    path.write_text("".join(json.dumps({"id": i, field: bool(f)}) + "\n" for i, f in enumerate(flags)))


def _row(run, method, seed, agree, correct, role="student-kd"):
    n = len(agree)
    acc = float(np.mean(correct))
    wilson = stats.binomtest(int(sum(correct)), n).proportion_ci(method="wilson")
    return {
        "run": run,
        "role": role,
        "teacher": "t",
        "teacher_kind": "finetuned",
        "student": "s",
        "domain": "d",
        "task": "arith",
        "seed": seed,
        "method": method,
        "temperature": 1.0,
        "noise": 0.0,
        "n": n,
        "accuracy": acc,
        "ci_low": wilson.low,
        "ci_high": wilson.high,
        "agreement": float(np.mean(agree)),
        "eval_dir": f"eval/{run}",
        "fidelity_dir": f"fidelity/{run}",
    }


@pytest.fixture
def study(tmp_path):
    rng = np.random.default_rng(0)
    n = 60
    base_agree = rng.random(n) < 0.4
    runs = {
        "sft": ("sft", base_agree, rng.random(n) < 0.3, "student-sft"),
        "fkl": ("fkl", base_agree ^ (rng.random(n) < 0.1), rng.random(n) < 0.3, "student-kd"),
        "dec": ("decision", np.ones(n, bool), rng.random(n) < 0.3, "student-kd"),
    }
    rows = []
    for run, (method, agree, correct, role) in runs.items():
        _write(tmp_path, f"fidelity/{run}", "pairs", "arith", agree)
        _write(tmp_path, f"eval/{run}", "predictions", "arith", correct)
        rows.append(_row(run, method, 0, agree, correct, role))
    return tmp_path, pd.DataFrame(rows), runs


def test_agreement_tests_against_scipy(study):
    study_dir, frame, runs = study
    table = agreement_tests(frame, study_dir, reference="fkl", n_boot=2000)
    assert list(table["method"]) == ["decision"]
    row = table.iloc[0]
    agree, ref = runs["dec"][1], runs["fkl"][1]
    b, c = int((agree & ~ref).sum()), int((~agree & ref).sum())
    assert (row["b_agree"], row["c_agree"]) == (b, c) and row["agree_diff"] == pytest.approx((b - c) / 60)
    assert row["agree_pvalue"] == pytest.approx(stats.binomtest(b, b + c, 0.5).pvalue)
    assert row["agree_pvalue"] < 1e-6 and row["agree_ci_low"] > 0  # always agreeing vs ~40%: clearly up
    correct, ref_correct = runs["dec"][2], runs["fkl"][2]
    bc, cc = int((correct & ~ref_correct).sum()), int((~correct & ref_correct).sum())
    assert row["acc_pvalue"] == pytest.approx(stats.binomtest(bc, bc + cc, 0.5).pvalue if bc + cc else 1.0)
    assert row["verdict"].startswith("agreement up")


def test_tables_against_sft_and_fkl_with_holm(study):
    study_dir, frame, _ = study
    tables = fidelity_tables(study_dir, frame, n_boot=500)
    agreement = tables["agreement"]
    assert sorted(zip(agreement["reference"], agreement["method"])) == [
        ("fkl", "decision"),
        ("sft", "decision"),
        ("sft", "fkl"),
    ]
    sft = agreement[agreement["reference"] == "sft"]
    p = np.sort(sft["agree_pvalue"].to_numpy())
    holm = np.minimum(1, np.maximum.accumulate(p * np.arange(len(p), 0, -1)))
    assert np.allclose(np.sort(sft["agree_pvalue_holm"].to_numpy()), holm)
    plane = tables["fidelity_plane"]
    assert len(plane) == 3 and plane.set_index("method").loc["decision", "pareto"]
    row = plane.set_index("method").loc["fkl"]
    k = round(row["agreement"] * row["n"])  # Wilson interval, written out
    z, n, phat = stats.norm.ppf(0.975), row["n"], k / row["n"]
    centre = (phat + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert row["agree_low"] == pytest.approx(centre - half) and row["agree_high"] == pytest.approx(centre + half)


def test_mismatched_examples_are_refused(study):
    study_dir, frame, _ = study
    _write(study_dir, "fidelity/dec", "pairs", "arith", [True] * 59)  # one example fewer than its predictions
    with pytest.raises(KdlabError, match="other examples"):
        agreement_tests(frame, study_dir, reference="fkl")


def test_no_fidelity_folders_no_tables():
    frame = pd.DataFrame([{"role": "student-kd", "fidelity_dir": None, "method": "fkl"}])
    tables = fidelity_tables(".", frame)
    assert tables["agreement"].empty and tables["fidelity_plane"].empty


def test_report_parts(study):
    from kdlab.study.report.fidelity_figures import plane_figure
    from kdlab.study.report.tables import AGREEMENT_HEADER, agreement_rows

    study_dir, frame, _ = study
    tables = fidelity_tables(study_dir, frame, n_boot=200)
    png = plane_figure(tables["fidelity_plane"], {"arith": 0.9})
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    rows = agreement_rows(tables["agreement"])
    assert len(rows) == 3 and all(len(r) == len(AGREEMENT_HEADER) for r in rows)
    assert any(r[0] == "decision" and r[1] == "fkl" and r[6].startswith("+") for r in rows)


def test_agreement_files_are_read_by_the_predictions_rule(study):
    """The pairs files go through the same reader as the predictions: a broken line is one error naming file and
    line, a repeated example id is refused."""
    root, frame, _ = study
    path = root / "fidelity/dec/pairs/arith.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], '{"id": 1}', *lines[2:]]) + "\n")
    with pytest.raises(KdlabError, match=r"dec/pairs/arith.jsonl:2: a record needs keys 'id' and 'agree'"):
        agreement_tests(frame, root, reference="sft", n_boot=10)
    path.write_text("\n".join([lines[0], lines[0], *lines[2:]]) + "\n")
    with pytest.raises(KdlabError, match=r"dec/pairs/arith.jsonl: example id 0 appears more than once"):
        agreement_tests(frame, root, reference="sft", n_boot=10)
    path.unlink()
    with pytest.raises(KdlabError, match=r"dec/pairs/arith.jsonl: fidelity pairs file not found"):
        agreement_tests(frame, root, reference="sft", n_boot=10)
