"""Tests for kdlab.study.report: the HTML is self-contained with one embedded PNG per figure, the Markdown
points at PNG files that exist, missing study dimensions give a note instead of a crash, and the findings
restate the statistics tables. The slow test renders the report in headless Chromium."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import synthetic_study as synthetic  # tests/stats/fixtures (pytest pythonpath)

from kdlab.errors import KdlabError
from kdlab.stats.study import compute_study_stats
from kdlab.study.report import FIGURE_KEYS, make_figures, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
IMG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="([^"]*)"')


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    """A study with every dimension: 2 students, 3 methods, 2 temperatures, 2 tasks, 2 seeds, both ablations."""
    root = tmp_path_factory.mktemp("report") / "study"
    frame = synthetic.make_study(root, n_examples=60)
    stats = compute_study_stats(root, frame, n_boot=300)
    html_path, md_path = write_report(root, frame, stats, root / "report", title="Synthetic <KD> study")
    return root, frame, stats, html_path, md_path


def test_html_is_self_contained_with_one_png_per_figure(full_report):
    _, _, _, html_path, _ = full_report
    assert html_path == html_path.parent / "report.html" and html_path.is_file()
    text = html_path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    # nothing fetched from elsewhere: no http(s) src/href, no external stylesheet, no script
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
    assert "http://" not in text and "https://" not in text
    assert "<script" not in text.lower() and "<link" not in text.lower() and "@import" not in text
    images = IMG.findall(text)
    assert len(images) == len(FIGURE_KEYS) == 7
    assert text.count("<img") == len(images)
    for data, _ in images:
        png = base64.b64decode(data, validate=True)
        assert png.startswith(PNG_MAGIC) and len(png) > 10_000
    alts = [alt for _, alt in images]
    assert len(set(alts)) == len(alts)
    assert "not in this study" not in text
    # the title is escaped, not interpreted
    assert "Synthetic &lt;KD&gt; study" in text and "<KD>" not in text


def test_markdown_references_png_files_that_exist(full_report):
    _, _, _, html_path, md_path = full_report
    assert md_path.parent == html_path.parent
    md = md_path.read_text(encoding="utf-8")
    refs = re.findall(r"!\[[^\]]*\]\((figures/[^)]+\.png)\)", md)
    assert sorted(refs) == sorted(f"figures/{k}.png" for k in FIGURE_KEYS)
    for ref in refs:
        data = (md_path.parent / ref).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    # the same pictures as in the HTML
    embedded = {base64.b64decode(d) for d, _ in IMG.findall(html_path.read_text(encoding="utf-8"))}
    assert {(md_path.parent / ref).read_bytes() for ref in refs} == embedded


def test_report_sections_tables_and_footer(full_report):
    _, frame, stats, html_path, md_path = full_report
    text = html_path.read_text(encoding="utf-8")
    for heading in (
        "Findings",
        "Results overview",
        "Figures",
        "Hypothesis tests (H1–H5)",
        "Paired tests: KD vs SFT on the same examples",
    ):
        assert heading in text and heading in md_path.read_text(encoding="utf-8")
    # one figcaption per figure, each a sentence
    captions = re.findall(r"<figcaption><b>[^<]*</b> ([^<]+)</figcaption>", text)
    assert len(captions) == 7 and all(c.rstrip().endswith(".") for c in captions)
    # the hypothesis table marks Holm-adjusted significance: the pooled H1 row of this study is significant
    hyp = stats["hypotheses"]
    h1 = hyp[(hyp.hypothesis == "H1") & (hyp.group == "all") & (hyp.task == "all")].iloc[0]
    assert h1.pvalue_holm < 0.01
    row = re.search(r"<tr><td class=\"l\">H1</td><td class=\"l\">all</td><td class=\"l\">all</td>(.*?)</tr>", text)
    assert row and re.search(r"\*\*+</td>", row.group(1))
    # overview: the teacher's accuracy on gsm8k appears with its Wilson interval, in percent
    teacher = frame[(frame.role == "teacher") & (frame.task == "gsm8k")].iloc[0]
    assert f"{100 * teacher.accuracy:.1f} [{100 * teacher.ci_low:.1f}, {100 * teacher.ci_high:.1f}]" in text
    # footer: study name, date and number of runs
    footer = re.search(r"<footer>(.*?)</footer>", text).group(1)
    assert "Study: study" in footer and re.search(r"\d{4}-\d{2}-\d{2}", footer)
    assert f"{frame.run.nunique()} runs" in footer


def test_findings_restate_the_numbers(full_report):
    _, frame, stats, html_path, _ = full_report
    text = html_path.read_text(encoding="utf-8")
    findings = re.search(r'<ul class="findings">(.*?)</ul>', text, re.S).group(1)
    paired = stats["paired"]
    main = paired[(paired.teacher_kind == "finetuned") & (paired.noise == 0)]
    ahead = int((main["diff"] > 0).sum())
    better = int(((main.pvalue_holm < 0.05) & (main["diff"] > 0)).sum())
    worse = int(((main.pvalue_holm < 0.05) & (main["diff"] < 0)).sum())
    assert f"KD was ahead of SFT in {ahead} of {len(main)} paired comparisons" in findings
    assert f"{better} significantly better and {worse} significantly worse after Holm" in findings
    hyp = stats["hypotheses"]
    h1 = hyp[(hyp.hypothesis == "H1") & (hyp.group == "all") & (hyp.task == "all")].iloc[0]
    assert f"{100 * h1['mean']:+.1f} percentage points" in findings
    agreement = frame[(frame.role == "student-kd") & (frame.teacher_kind == "finetuned") & (frame.noise == 0)].agreement
    assert f"mean {100 * agreement.mean():.1f}% ± {100 * agreement.std():.1f}%" in findings
    h4 = hyp[(hyp.hypothesis == "H4") & (hyp.group == "all") & (hyp.task == "all")].iloc[0]
    expected = "significant at 0.05" if h4.pvalue < 0.05 else "not significant at 0.05"
    assert f"Gain vs answer agreement: Spearman ρ = {h4.statistic:.2f}" in findings
    assert re.search(r"Gain vs answer agreement: [^<]*\(" + expected, findings)


def _minimal(tmp_path, **kwargs):
    options = {
        "students": {"Tiny-0.5B": 0.5},
        "methods": {"fkl": "fkl", "rkl": "rkl"},
        "temperatures": (2.0,),
        "seeds": (0,),
        "noise": (),
        "base_teacher": False,
        "fidelity": False,
        "n_examples": 30,
    }
    options.update(kwargs)
    root = tmp_path / "study"
    return root, synthetic.make_study(root, **options)


def test_missing_dimensions_give_notes_not_crashes(tmp_path):
    root, frame = _minimal(tmp_path)
    out = tmp_path / "out"
    # a full report first, so the figures the smaller study lacks exist as stale files
    full_root = tmp_path / "full"
    full = synthetic.make_study(full_root, n_examples=30, seeds=(0,))
    write_report(full_root, full, compute_study_stats(full_root, full, n_boot=50), out)
    assert len(list((out / "figures").glob("*.png"))) == 7

    html_path, md_path = write_report(root, frame, compute_study_stats(root, frame, n_boot=50), out, title="small")
    text = html_path.read_text(encoding="utf-8")
    notes = re.findall(r'<p class="note">(not in this study: [^<]*)</p>', text)
    assert len(notes) == 6
    joined = " ".join(notes)
    for words in (
        "one student size only (0.5B)",
        "more than one temperature (T = 2)",
        "no teacher-noise ablation",
        "base (task-unaware) teacher",
        "agreement was not computed",
        "BLEU",
    ):
        assert words in joined
    assert len(IMG.findall(text)) == 1  # the methods comparison is still there
    md = md_path.read_text(encoding="utf-8")
    assert md.count("> not in this study:") == 6
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["methods.png"]  # stale figures removed
    assert re.findall(r"\]\((figures/[^)]+)\)", md) == ["figures/methods.png"]


def test_seqkd_without_temperature_and_missing_stats_are_computed(tmp_path):
    root, frame = _minimal(
        tmp_path,
        methods={"fkl": "fkl", "seqkd": "seqkd"},
        temperatures=(1.0, 2.0),
        students={"Tiny-0.5B": 0.5, "Tiny-1.5B": 1.5},
        seeds=(0, 1),
    )
    assert frame.loc[frame.method == "seqkd", "temperature"].isna().all()
    html_path, _ = write_report(root, frame, {}, tmp_path / "out")
    text = html_path.read_text(encoding="utf-8")
    # gain vs size, temperature (fkl only), methods: drawn; noise, base teacher, agreement, BLEU: notes
    assert len(IMG.findall(text)) == 3
    assert "seqkd" in text and "fkl T=1" in text
    figures = {f.key: f for f in make_figures(frame)}
    assert figures["temperature"].png is not None and figures["gain_vs_size"].png is not None


def test_report_input_errors(tmp_path):
    root, frame = _minimal(tmp_path)
    with pytest.raises(KdlabError, match=r"missing column.*bleu"):
        write_report(root, frame.drop(columns=["bleu"]), {}, tmp_path / "out")
    with pytest.raises(KdlabError, match="empty"):
        write_report(root, frame.iloc[:0], {}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_report_without_kd_runs_says_so(tmp_path):
    root, frame = _minimal(tmp_path)
    only_sft = frame[frame.role != "student-kd"]
    html_path, _ = write_report(root, only_sft, {}, tmp_path / "out")
    text = html_path.read_text(encoding="utf-8")
    assert "not in this study: results table: no student-kd rows" in text
    assert "No KD run with a paired SFT run yet" in text
    assert len(IMG.findall(text)) == 0


CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.slow
def test_headless_chromium_renders_the_report(full_report, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    from PIL import Image

    _, _, _, html_path, _ = full_report
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1400,9000",
            html_path.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=180,
    )
    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.shape[:2] == (9000, 1400)
    rows = np.where((image < 245).any(axis=(1, 2)))[0]
    assert rows.max() > 6000  # the page is long: tables and seven figures were laid out
    # figures were decoded: plenty of the Okabe-Ito blue (#0072B2) and orange (#E69F00) pixels
    blue = np.all(np.abs(image.astype(int) - [0, 114, 178]) < 12, axis=2).sum()
    orange = np.all(np.abs(image.astype(int) - [230, 159, 0]) < 12, axis=2).sum()
    assert blue > 5000 and orange > 5000
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)


def test_dropped_and_cut_training_examples_are_in_the_report(tmp_path):
    """Why: examples over max_length were dropped or cut without a word; the report now lists such runs."""
    root, frame = _minimal(tmp_path)
    run = root / "kd" / "t.s.arith.fkl.t2.s0-abc"
    run.mkdir(parents=True)
    (run / "result.json").write_text(
        json.dumps(
            {
                "steps": 1,
                "data": {
                    "examples_in_data": 9,
                    "examples": 8,
                    "dropped_long": 1,
                    "cut_responses": 2,
                    "max_length": 256,
                    "on_long": "truncate",
                },
            }
        )
    )
    _, md_path = write_report(root, frame, {}, tmp_path / "out")
    md = md_path.read_text(encoding="utf-8")
    assert "Training examples that did not fit max_length" in md
    assert "| kd/t.s.arith.fkl.t2.s0-abc | 8 of 9 | 1 | 2 | 256 | truncate |" in md
    clean_root, clean = _minimal(tmp_path / "clean")
    _, clean_md = write_report(clean_root, clean, {}, tmp_path / "clean-out")
    assert "did not fit max_length" not in clean_md.read_text(encoding="utf-8")
