"""Staged studies: a method that starts from another stage's selected run (``init``), with its own budget."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from kdlab_testing import edited_spec
from safetensors.torch import load_file

from kdlab.errors import KdlabError
from kdlab.stats.results import collect_results
from kdlab.study.executors.local import run_plan
from kdlab.study.executors.progress import describe_node, format_status
from kdlab.study.folder import prepare_study
from kdlab.study.kinds import KINDS
from kdlab.study.plan import build_plan
from kdlab.study.runmeta import RunMeta
from kdlab.study.spec import load_spec, stage_chain

LRS = [1e-3, 2e-2]
STAGE2 = {"train": {"max_steps": 2}}


@pytest.fixture(scope="module")
def staged_spec(tiny_models, tmp_path_factory) -> Path:
    """1 teacher, 1 pruned student; SFT (3 steps), then from the selected SFT run: SFT continued, off-policy forward
    KL and on-policy reverse KL (2 steps each); lr tuned over two values per stage on a 6-example validation split."""
    from kdlab.data.synth import write_synth

    root = tmp_path_factory.mktemp("staged-spec")
    write_synth(root / "train.json", n=30, seed=0, split="train")
    write_synth(root / "eval" / "arith" / "test.json", n=6, seed=1, split="test")
    train = {"max_steps": 3, "batch_size": 4, "max_length": 320, "save_steps": 0, "lr": 1e-3}
    spec = {
        "name": "staged",
        "models": {
            "teacher": {"spec": str(tiny_models["teacher"])},
            "pruned-1l": {"prune": {"model": "teacher", "keep_layers": 1}},
        },
        "teachers": ["teacher"],
        "students": ["pruned-1l"],
        "domains": {"arith": {"train": "train.json", "tasks": ["arith"], "data_dir": "eval"}},
        "methods": {
            "more-sft": {"loss": "sft", "init": "sft", "training": STAGE2},
            "fkl": {"loss": "fkl", "init": "sft", "training": STAGE2},
            "opd": {"preset": "on-policy", "init": "sft", "training": STAGE2, "max_new_tokens": 8},
        },
        "temperatures": [1.0],
        "teacher_training": {"lora": {"enabled": True}, "train": dict(train)},
        "student_training": {"lora": {"enabled": False}, "train": dict(train)},
        "teacher_cache": {"enabled": True, "k": 16},
        "evaluation": {"limit": 4, "max_new_tokens": 8, "batch_size": 8},
        "fidelity": {"enabled": True, "token_kl": False, "embeddings": False},
        "tuning": {"params": {"train.lr": LRS}, "validation": {"n": 6, "seed": 3}},
    }
    path = root / "staged.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["methods"]["fkl"].update(init="rkl"), r"methods.fkl.init: unknown stage 'rkl' \(sft or a method"),
        (
            lambda d: d["methods"].update(a={"loss": "fkl", "init": "b"}, b={"loss": "fkl", "init": "a"}),
            "methods.a.init: the stages form a cycle: a -> b -> a",
        ),
        (lambda d: d["methods"]["more-sft"].pop("init"), "methods.more-sft: loss 'sft' continues a stage"),
        (lambda d: d["methods"]["fkl"].update(init=["sft"]), "methods.fkl.init: expected sft or a method name"),
        (
            lambda d: d["methods"]["fkl"].update(training={"train": {"max_steps": 5}}),
            r"methods.(fkl|more-sft).training: budget .* differs from methods.(more-sft|fkl)'s .*same optimizer steps",
        ),
        (
            lambda d: (d.pop("tuning"), d.update(temperatures=[1.0, 2.0]), d["methods"]["opd"].update(init="fkl")),
            r"methods.opd.init: method 'fkl' has one run per temperature \(1, 2\)",
        ),
        (lambda d: d["methods"]["fkl"].update(training={"kd": {}}), r"methods.fkl.training: unknown key\(s\) kd"),
        (
            lambda d: d["methods"]["fkl"].update(training={"lora": {"enabled": True}}),
            r"methods.fkl.training: unknown key\(s\) lora",
        ),
        (
            lambda d: d["models"]["pruned-1l"].update(student_training={"train": {"max_length": 64}}),
            r"models.pruned-1l.student_training.train.max_length: set in student_training for the whole study",
        ),
        (
            lambda d: d["methods"].update(solo={"loss": "fkl", "training": {"train": {"max_steps": 9}}}),
            r"methods.solo.training: budget .* differs from the SFT baseline's .*no init, student pruned-1l",
        ),
    ],
)
def test_stage_errors_are_one_line_at_load(staged_spec, tmp_path, edit, message):
    with pytest.raises(KdlabError, match=message):
        load_spec(edited_spec(staged_spec, tmp_path, edit), check_files=False)


def test_stage_chain_and_labels(staged_spec, tmp_path):
    spec = load_spec(
        edited_spec(staged_spec, tmp_path, lambda d: d["methods"].update(x={"loss": "rkl", "init": "fkl"}))
    )
    assert stage_chain(spec.methods, "x") == ["sft", "fkl", "x"]
    assert stage_chain(spec.methods, "fkl") == ["sft", "fkl"]
    meta = RunMeta(role="student-kd", method="x", init="sft>fkl", temperature=1.0)
    assert meta.label() == "x after SFT > fkl tau=1"
    assert RunMeta.from_row({"role": "student-kd", "method": "fkl", "init": float("nan")}).init is None


def test_plan_starts_each_second_stage_from_the_selected_first_stage(staged_spec):
    plan = build_plan(load_spec(staged_spec))
    sft_select = next(n for n in plan.nodes if n.kind == "select" and n.meta.role == "student-sft")
    stage2 = [n for n in plan.nodes if n.kind == "kd"]
    assert len(stage2) == 3 * len(LRS)
    for node in stage2:
        assert node.params["model"] == f"study:{sft_select.id}/selected/final"  # full fine-tuning: the model itself
        assert sft_select.id in node.deps and node.meta.init == "sft"
        assert ".after-sft.s0" in node.id
    # the same second-stage budget for every method: optimizer steps, batch, data
    budgets = {
        (n.params["flags"]["train.max_steps"], n.params["flags"]["train.batch_size"], n.params["data"]) for n in stage2
    }
    assert len(budgets) == 1 and next(iter(budgets))[0] == 2
    first = [n for n in plan.nodes if n.kind == "student-sft"]
    assert {n.params["flags"]["train.max_steps"] for n in first} == {3}
    # the plan's order: the first stage's selection precedes every second-stage run
    order = {n.id: i for i, n in enumerate(plan.nodes)}
    assert all(order[sft_select.id] < order[n.id] for n in stage2)
    sft_continued = next(n for n in stage2 if n.meta.method == "more-sft")
    assert sft_continued.params["kind"] == "sft" and "teacher_cache" not in sft_continued.params


def test_a_lora_stage_keeps_training_the_adapter_it_starts_from(staged_spec, tmp_path):
    def lora(d):
        d["student_training"]["lora"] = {"enabled": True}

    plan = build_plan(load_spec(edited_spec(staged_spec, tmp_path, lora)))
    sft_select = next(n for n in plan.nodes if n.kind == "select" and n.meta.role == "student-sft")
    for node in (n for n in plan.nodes if n.kind == "kd"):
        assert node.params["model"].startswith("study:models/pruned-1l")
        assert node.params["flags"]["adapter"] == f"study:{sft_select.id}/selected/final"


def test_single_stage_folders_are_unchanged_by_stages(staged_spec, tmp_path):
    """A study without init plans the same folders as before stages existed (their hashes hold no new setting)."""
    from kdlab.study.nodes import kd_slug

    assert kd_slug("t", "s", "d", "fkl", 1.0, 0.0, False, 0) == "t.s.d.fkl.t1.s0"
    spec = load_spec(
        edited_spec(staged_spec, tmp_path, lambda d: [d["methods"]["fkl"].pop(k) for k in ("init", "training")]),
        check_files=False,
    )
    node = next(n for n in build_plan(spec).nodes if n.kind == "kd" and n.meta.method == "fkl")
    assert "adapter" not in node.params["flags"] and ".after-" not in node.id and node.meta.init is None


def test_staged_study_runs_from_the_selected_weights_and_reads_test_last(staged_spec, tmp_path, monkeypatch):
    spec, study_dir = prepare_study(staged_spec, tmp_path / "study")
    plan = build_plan(spec)
    test_file = (staged_spec.parent / "eval" / "arith" / "test.json").resolve()
    events, starts = [], {}

    import kdlab.eval.task_examples as task_examples
    import kdlab.train.loop as loop

    real_load, real_select, real_train = task_examples.load_json_examples, KINDS["select"].runner, loop.Trainer.train

    def load(path):
        events.append(("read", Path(path).resolve()))
        return real_load(path)

    def select(p, out, where):
        real_select(p, out, where)
        events.append(("select", out))

    def train(self):  # the weights each training run starts from
        model = self.accelerator.unwrap_model(self.model)
        starts[self.run_dir.resolve()] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        events.append(("train", self.run_dir.resolve()))
        return real_train(self)

    monkeypatch.setattr(task_examples, "load_json_examples", load)
    monkeypatch.setitem(KINDS, "select", replace(KINDS["select"], runner=select))
    monkeypatch.setattr(loop.Trainer, "train", train)
    summary = run_plan(plan, study_dir, poll=0.1)
    assert summary.failed == 0 and summary.blocked == 0

    sft_select = next(n for n in plan.nodes if n.kind == "select" and n.meta.role == "student-sft")
    chosen = json.loads((sft_select.folder(study_dir) / "selection.json").read_text())["selected"]["run"]
    others = [c["run"].split(":", 1)[1] for c in sft_select.params["candidates"] if c["run"].split(":", 1)[1] != chosen]
    selected = load_file(str(study_dir / chosen / "final" / "model.safetensors"))
    other = load_file(str(study_dir / others[0] / "final" / "model.safetensors"))
    stage2 = [n for n in plan.nodes if n.kind == "kd"]
    for node in stage2:
        start = starts[node.folder(study_dir).resolve()]
        for name, value in selected.items():  # the second stage starts from the selected first-stage weights
            assert torch.equal(start[name], value), (node.id, name)
        assert any(not torch.equal(start[name], value) for name, value in other.items())
        config = yaml.safe_load((node.folder(study_dir) / "config.yaml").read_text())
        assert Path(config["model"]).resolve() == (study_dir / chosen / "final").resolve()

    # the first stage's selection comes before any second-stage training; no test read before both selections
    index = {event: i for i, event in enumerate(events)}
    sft_selected_at = index[("select", sft_select.folder(study_dir))]
    assert all(index[("train", n.folder(study_dir).resolve())] > sft_selected_at for n in stage2)
    selections = [i for i, event in enumerate(events) if event[0] == "select"]
    test_reads = [i for i, event in enumerate(events) if event == ("read", test_file)]
    assert len(selections) == 4 and test_reads and min(test_reads) > max(selections)

    # the results: staged KD compared with SFT continued (same start, same budget); SFT continued with the SFT
    frame = collect_results(plan, study_dir)
    kd = frame[frame.role == "student-kd"].set_index("method")
    assert set(kd.index) == {"more-sft", "fkl", "opd"} and (kd["init"] == "sft").all()
    assert kd.loc["fkl", "sft_eval_dir"] == kd.loc["opd", "sft_eval_dir"] == kd.loc["more-sft", "eval_dir"]
    assert kd.loc["fkl", "reference"] == "more-sft after SFT"
    sft_eval = frame[frame.role == "student-sft"]["eval_dir"].iloc[0]
    assert kd.loc["more-sft", "sft_eval_dir"] == sft_eval and kd.loc["more-sft", "reference"] == "SFT"

    # on-policy runs report their time split and their samples' accuracy
    opd_run = kd.loc["opd", "run"]
    result = json.loads((study_dir / opd_run / "result.json").read_text())
    split, sampled = result["time_split_this_session"], result["on_policy_this_session"]
    assert split["sampling"] > 0 and split["teacher"] > 0 and split["student"] > 0
    assert sampled["steps"] == 2 and 0 <= sampled["sample_accuracy"] <= 1

    from kdlab.stats.study import compute_stats
    from kdlab.study.report import write_report

    tables = compute_stats(study_dir, frame, study_dir / "stats")
    _, markdown = write_report(study_dir, frame, tables, study_dir / "report", title="staged")
    text = markdown.read_text()
    assert "## Staged comparison: each later stage against its reference" in text
    assert "| pruned-1l | arith | opd after SFT T=1 | 0 |" in text and "| more-sft after SFT | " in text
    assert "KD opd after SFT T=1" in text  # the overview names the chain too
    card = (study_dir / kd.loc["fkl", "run"] / "final" / "README.md").read_text()
    assert f"Training started from the result of the earlier run `{chosen}`" in card
    assert "after SFT" in describe_node(stage2[0])
    status = format_status(plan, study_dir)
    assert "stages: sft -> more-sft; sft -> fkl; sft -> opd" in status and "33 done" in status


def test_models_student_training_lengthens_every_run_of_that_student(staged_spec, tmp_path):
    def longer(d):
        d["models"]["pruned-1l"]["student_training"] = {"train": {"max_steps": 7}}

    plan = build_plan(load_spec(edited_spec(staged_spec, tmp_path, longer)))
    assert {n.params["flags"]["train.max_steps"] for n in plan.nodes if n.kind == "student-sft"} == {7}
    assert {n.params["flags"]["train.max_steps"] for n in plan.nodes if n.kind == "kd"} == {2}  # the stage's own


def test_method_budget_reads_steps_or_epochs():
    from types import SimpleNamespace

    from kdlab.study.spec import method_budget
    from kdlab.study.spec.load import Method

    Spec = SimpleNamespace(
        student_training={"train": {"epochs": 2, "batch_size": 4}},
        models={"s": SimpleNamespace(student_training={"train": {"max_steps": 5}})},
    )

    assert method_budget(Spec, Method("a", {"loss": "fkl"})) == {
        "max_steps": 0,
        "batch_size": 4,
        "grad_accum": 1,
        "epochs": 2,
    }
    staged = Method("b", {"loss": "fkl"}, training={"train": {"max_steps": 9}})
    assert method_budget(Spec, staged) == {"max_steps": 9, "batch_size": 4, "grad_accum": 1}
    assert method_budget(Spec, None, "s") == {"max_steps": 5, "batch_size": 4, "grad_accum": 1}  # the student's own
    assert method_budget(Spec, staged, "s")["max_steps"] == 9  # the stage's own wins
