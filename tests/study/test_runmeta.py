"""Tests for kdlab.study.runmeta: one run label for the selection table, the report and the demo summary."""

import math

import pandas as pd

from kdlab.study.runmeta import RunMeta


def test_label_names_what_sets_a_run_apart():
    assert RunMeta(role="student-sft", method="sft", seed=0).label() == "SFT"
    assert RunMeta(role="student-kd", method="fkl", temperature=2.0).label() == "fkl tau=2"
    assert RunMeta(role="student-kd", method="fkl", temperature=2.0).label(temperature=False) == "fkl"
    assert RunMeta(role="student-kd", method="seqkd").label() == "seqkd"
    base = RunMeta(role="student-kd", method="rkl", temperature=1.0, noise=0.5, teacher_kind="base")
    assert base.label() == "rkl tau=1 noise=0.5 (base teacher)"
    assert base.label(teacher=False) == "rkl tau=1 noise=0.5"  # for lines that name the teacher


def test_from_row_reads_table_rows():
    row = pd.Series(
        {
            "role": "student-kd",
            "method": "fkl",
            "temperature": math.nan,
            "noise": 2.0,
            "teacher_kind": "finetuned",
            "seed": 1,
        }
    )
    meta = RunMeta.from_row(row)
    assert meta.temperature is None and meta.label() == "fkl noise=2"
    selection_row = {"role": "student-sft", "method": "sft", "noise": 0.0, "teacher_kind": "finetuned"}
    assert RunMeta.from_row(selection_row).label(temperature=False) == "SFT"
