"""Study specs that must be refused before anything runs: repeated YAML keys, names that would leave the study
folder, and a study folder that is a file (issue 20, items 6 and 9). Specs are plain text over an embedded model
name, so nothing is loaded or trained."""

import re
from pathlib import Path

import pytest

from kdlab.data.synth import write_synth
from kdlab.errors import KdlabError
from kdlab.study.nodes import Node, resolve
from kdlab.study.plan import build_plan
from kdlab.study.spec import load_spec

SPEC = """\
name: {name}
models:
  {teacher}: {{spec: smollm2-135m, params: 135M}}
  small: {{prune: {{model: {teacher}, keep_layers: 2}}, params: 50M}}
teachers: [{teacher}]
students: [small]
domains:
  {domain}: {{train: train.json, tasks: [arith]}}
methods:
  {method}: {{loss: fkl}}
  rkl: {{loss: rkl}}
"""
GOOD = {"name": "safe", "teacher": "big", "domain": "arith", "method": "fkl"}


def _spec(tmp_path: Path, text: str | None = None, **names) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text if text is not None else SPEC.format(**{**GOOD, **names}))
    write_synth(tmp_path / "train.json", n=2, seed=0, split="train")
    return path


@pytest.mark.parametrize(
    "old, new, message",
    [
        # top level: a second `methods:` replaced the first
        ("rkl: {loss: rkl}\n", "rkl: {loss: rkl}\nmethods:\n  fkl: {loss: rkl}\n", "line 12: duplicate key 'methods'"),
        # methods.fkl twice: reverse KL trained under the name fkl
        (
            "rkl: {loss: rkl}\n",
            "rkl: {loss: rkl}\n  fkl: {loss: rkl}\n",
            "line 12: duplicate key 'fkl' \\(first at line 10",
        ),
        # a key inside a method twice
        ("fkl: {loss: fkl}", "fkl: {loss: fkl, loss: rkl}", "line 10: duplicate key 'loss' \\(first at line 10"),
    ],
)
def test_a_repeated_key_is_refused_with_its_lines(tmp_path, old, new, message):
    """Why: PyYAML keeps the last of two equal keys silently (a method written twice as `fkl:` trained reverse KL)."""
    path = _spec(tmp_path, SPEC.format(**GOOD).replace(old, new))
    with pytest.raises(KdlabError, match=f"^{path}: {message}"):
        load_spec(path, check_files=False)


def test_yaml_merge_keys_still_override(tmp_path):
    """A `<<: *anchor` merge is not a repeated key: the explicit keys win, as YAML says."""
    text = SPEC.format(**GOOD).replace(
        "  rkl: {loss: rkl}\n", "  rkl: &base {loss: rkl, beta: 0.2}\n  gkd:\n    <<: *base\n    loss: gjsd\n"
    )
    spec = load_spec(_spec(tmp_path, text), check_files=False)
    assert spec.methods["gkd"].kd["loss"] == "gjsd" and spec.methods["gkd"].kd["beta"] == 0.2


@pytest.mark.parametrize("field", ["name", "teacher", "domain", "method"])
@pytest.mark.parametrize("bad", ["../escape", "a/b", "..", "/abs", "''", ".hidden"])
def test_names_that_would_leave_the_study_folder_are_refused(tmp_path, field, bad):
    """Why: model, method and domain names holding `../` put a real study's run folders outside the study."""
    path = _spec(tmp_path, **{field: bad})
    if field == "name" and bad == "''":  # an empty study name means the spec file's name
        assert load_spec(path, check_files=False).name == "spec"
        return
    label = {"name": "name", "teacher": "models", "domain": "domains", "method": "methods"}[field]
    value = "''" if bad == "''" else repr(bad)
    with pytest.raises(KdlabError, match=re.escape(f": {label}: {value} is not a valid name")):
        load_spec(path, check_files=False)


def test_a_tuned_value_is_part_of_a_folder_name_and_is_checked(tmp_path):
    text = SPEC.format(**GOOD) + "tuning: {params: {lora.target_modules: [[q_proj], [../../x]]}}\n"
    with pytest.raises(KdlabError, match=re.escape("tuning.params.lora.target_modules: '../../x' is not a valid name")):
        load_spec(_spec(tmp_path, text), check_files=False)


def test_good_names_are_kept_and_every_folder_is_inside_the_study(tmp_path):
    names = {"name": "Study_1.0", "teacher": "Qwen2.5-7B_v1", "domain": "math-2", "method": "fkl.v2"}
    spec = load_spec(_spec(tmp_path, **names), check_files=False)
    assert (spec.name, list(spec.models), list(spec.domains), list(spec.methods)) == (
        "Study_1.0",
        ["Qwen2.5-7B_v1", "small"],
        ["math-2"],
        ["fkl.v2", "rkl"],
    )
    study = tmp_path / "study"
    for node in build_plan(spec).nodes:
        assert study.resolve() in node.folder(study).resolve().parents


@pytest.mark.parametrize("node_id", ["kd/../../escape-1", "../escape", "/tmp/escape", "kd/.."])
def test_run_folders_outside_the_study_are_refused(tmp_path, node_id):
    """Defence in depth behind the name rule: a run folder or a study: path may never leave the study folder."""
    with pytest.raises(KdlabError, match="is not inside the study folder"):
        Node(node_id, "kd", {}).folder(tmp_path / "study")
    with pytest.raises(KdlabError, match="is not inside the study folder"):
        resolve(f"study:{node_id}", tmp_path / "study")
    assert resolve("study:kd/a.b-1/final", tmp_path) == str(tmp_path / "kd/a.b-1/final")


@pytest.mark.parametrize(
    "args",
    [
        ["run", "{spec}", "--out", "{out}", "--dry-run"],
        ["run", "{spec}", "--out", "{out}", "--dry-run", "--executor", "slurm"],
        ["run", "{spec}", "--out", "{out}"],
        ["status", "{spec}", "--study-dir", "{out}"],
    ],
)
@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_study_folder_that_is_a_file_or_a_foreign_folder_is_refused(tmp_path, capsys, args, kind):
    """Why: `kdlab study run --dry-run --out FILE` reported every run as pending."""
    from kdlab.cli import main

    out = tmp_path / "out"
    if kind == "file":
        out.write_text("mine\n")
    else:
        out.mkdir()
        (out / "notes.txt").write_text("mine\n")
    spec = _spec(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["study", *(arg.format(spec=spec, out=out) for arg in args)])
    captured = capsys.readouterr()
    assert info.value.code == 2 and "pending" not in captured.out
    what = "is a file, not a study folder" if kind == "file" else "is not a study folder"
    assert captured.err.startswith(f"kdlab: error: {out}: exists and {what}") and captured.err.count("\n") == 1
    assert (out.read_text() if kind == "file" else sorted(p.name for p in out.iterdir())) == (
        "mine\n" if kind == "file" else ["notes.txt"]
    )
