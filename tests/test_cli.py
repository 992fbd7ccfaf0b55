"""The command line: help on every subcommand, data commands, exit status 2 on bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from kdlab_testing import cli_args

from kdlab.cli import build_parser, main

COMMANDS = [
    ["sft"],
    ["distill"],
    ["models", "prune"],
    ["models", "convert"],
    ["data", "synth"],
    ["data", "overlap"],
    ["eval"],
    ["fidelity"],
    ["stats", "paper"],
    ["demo"],
    ["export"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([*command, "--help"])
    assert info.value.code == 0
    assert "usage: kdlab " + " ".join(command) in capsys.readouterr().out


def test_distill_help_documents_every_kd_setting(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["distill", "--help"])
    text = capsys.readouterr().out
    for flag in [
        "--loss",
        "--temperature",
        "--kd-weight",
        "--beta",
        "--skew-alpha",
        "--lmbda",
        "--teacher-noise",
        "--lora-r",
        "--lr",
        "--grad-accum",
        "--precision",
        "--teacher-adapter",
    ]:
        assert flag in text


def test_console_script_runs(tmp_path):
    done = subprocess.run(
        [sys.executable, *cli_args("-m", "kdlab.cli", "data", "synth", n=5, seed=3, out=tmp_path / "s.json")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert len(json.loads((tmp_path / "s.json").read_text())) == 5


def test_data_synth_is_byte_identical_and_bad_split_exits_2(tmp_path, capsys):
    main(cli_args("data", "synth", n=20, seed=7, out=tmp_path / "a.json"))
    main(cli_args("data", "synth", n=20, seed=7, out=tmp_path / "b.json"))
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    with pytest.raises(SystemExit) as info:
        main(cli_args("data", "synth", n=20, split="dev", out=tmp_path / "c.json"))
    assert info.value.code == 2 and "dev" in capsys.readouterr().err
    assert not (tmp_path / "c.json").exists()


def test_data_overlap_reports_exact_and_ngram_counts(tmp_path, capsys):
    main(cli_args("data", "synth", n=30, seed=1, out=tmp_path / "train.json"))
    main(cli_args("data", "synth", n=10, seed=2, split="test", out=tmp_path / "test.json"))
    capsys.readouterr()
    main(["data", "overlap", str(tmp_path / "train.json"), str(tmp_path / "train.json"), str(tmp_path / "test.json")])
    rows = {
        Path(line.split()[0]).name: line.split()[1:]
        for line in capsys.readouterr().out.splitlines()[2:]
        if line.strip()
    }
    assert rows["train.json"][:2] == ["30", "30"]  # n_test, exact: a file fully contains itself
    assert rows["test.json"][:2] == ["10", "0"]  # disjoint splits


def test_gsm8k_contamination_of_math_data(shared_dir, capsys):
    data = shared_dir / "data" / "paper-kd-generalization"
    main(["data", "overlap", str(data / "train" / "math_data.json"), str(data / "eval" / "gsm8k" / "test.json")])
    rows = {
        Path(line.split()[0]).name: line.split()[1:]
        for line in capsys.readouterr().out.splitlines()[2:]
        if line.strip()
    }
    assert rows["test.json"][:2] == ["1319", "1055"]


def test_stats_paper_writes_the_hypothesis_tables(shared_dir, tmp_path, capsys):
    results = shared_dir / "data" / "paper-kd-generalization" / "results"
    main(
        cli_args(
            "stats",
            "paper",
            results=[results / "math_results_main.csv", results / "llama_math_results.csv"],
            agreement=results / "EM1.csv",
            fidelity=results / "BLEU.csv",
            out=tmp_path / "paper",
        )
    )
    import pandas as pd

    table = pd.read_csv(tmp_path / "paper" / "hypotheses.csv")
    assert list(table.columns[:5]) == ["hypothesis", "group", "task", "statistic", "pvalue"]
    row = table[(table.hypothesis == "H3") & (table.group == "all") & (table.task == "MultiArith")]
    assert row.statistic.item() == pytest.approx(-0.83, abs=0.01)
    assert {"H1", "H1-anova", "H2", "H3", "H3b", "H4", "H5"} == set(table.hypothesis)
    assert "MultiArith" in (tmp_path / "paper" / "hypotheses.md").read_text()


@pytest.mark.parametrize(
    "command, flags",
    [
        (["data", "synth"], ["--task", "--seed", "--split", "--max-steps", "--min-steps", "--scale"]),
        (["eval"], ["--limit", "--max-new-tokens", "--batch-size", "--max-prompt-tokens", "--on-long"]),
        (["study", "run"], ["--max-wait", "--poll"]),
        (["fidelity"], ["--allow-partial"]),
        (["sft"], ["--on-long"]),
    ],
)
def test_options_state_their_defaults(command, flags, capsys):
    """Why: several options lacked their defaults in --help (data synth, eval --limit/--max-new-tokens, study --max-wait)."""
    with pytest.raises(SystemExit):
        build_parser().parse_args([*command, "--help"])
    text = " ".join(capsys.readouterr().out.split()).split("options:", 1)[1]  # past the usage line
    for flag in flags:
        help_text = text.split(flag, 1)[1].split(" --", 1)[0]
        assert "default" in help_text, (flag, help_text)
