"""Config resolution: defaults < YAML < flags < --set, with clear errors."""

import re

import pytest

from kdlab.config import LOSS_NAMES, RECIPE_LOSSES, KDConfig, build_config, loss_kwargs
from kdlab.errors import KdlabError
from kdlab.losses.cross_tokenizer import CROSS_TOKENIZER_LOSSES
from kdlab.losses.divergences import DIVERGENCES

BASE = {"model": "s", "teacher": "t", "data": "d.json", "out": "o"}


def test_precedence_yaml_then_flags_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: from-yaml\ntrain:\n  lr: 0.1\n  batch_size: 4\nkd:\n  loss: gjsd\n  beta: 0.2\n")
    config = build_config(
        "distill", str(path), {"teacher": "t", "data": "d", "out": "o", "train.lr": "0.01"}, ["train.batch_size=2"]
    )
    assert config.model == "from-yaml" and config.train.lr == 0.01 and config.train.batch_size == 2
    assert config.kd.loss == "gjsd" and loss_kwargs(config.kd) == {"beta": 0.2}


def test_loss_choices_and_argument_fields_come_from_the_divergence_registry():
    fields = KDConfig.__dataclass_fields__
    assert fields["loss"].metadata["choices"] == LOSS_NAMES == (*DIVERGENCES, *CROSS_TOKENIZER_LOSSES, *RECIPE_LOSSES)
    for name, help_text in CROSS_TOKENIZER_LOSSES.items():
        assert f"{name} = {help_text}" in fields["loss"].metadata["help"]
    for name, spec in DIVERGENCES.items():
        assert spec.help in fields["loss"].metadata["help"]
        config = build_config("distill", None, {**BASE, "kd.loss": name}, [])
        assert loss_kwargs(config.kd) == {arg.keyword: arg.default for arg in spec.arguments}
        for arg in spec.arguments:
            assert fields[arg.field].default == arg.default and arg.bound in fields[arg.field].metadata["help"]
            with pytest.raises(KdlabError, match=re.escape(f"kd.{arg.field} must be {arg.bound}, got 1.5")):
                build_config("distill", None, {**BASE, "kd.loss": name}, [f"kd.{arg.field}=1.5"])
    assert loss_kwargs(build_config("distill", None, {**BASE, "kd.loss": "seqkd"}, []).kd) == {}


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.lr=abc", "train.lr: expected a number, got 'abc'"),
        ("train.batch_size=1.5", "train.batch_size: expected an integer"),
        ("lora.enabled=maybe", "lora.enabled: expected true or false"),
        ("kd.temperature=0", "temperature must be > 0"),
        ("kd.beta=-0.5", "kd.beta must be in [0, 1]"),
        ("kd.loss=kl", "kd.loss: 'kl' is not one of"),
        ("train.precision=fp16", "train.precision: 'fp16' is not one of auto, bf16, fp32"),
        ("nope.x=1", "unknown section 'nope'"),
        ("train.nope=1", "train.nope: unknown setting"),
        ("train.lr", "expected SECTION.FIELD=VALUE"),
        ("kd.lmbda=2", "kd.lmbda must be in [0, 1]"),
    ],
)
def test_bad_settings_name_the_field(override, message):
    with pytest.raises(KdlabError, match=message.replace("[", r"\[").replace("]", r"\]")):
        build_config("distill", None, BASE, [override])


def test_missing_required_settings_and_bad_yaml(tmp_path):
    with pytest.raises(KdlabError, match="missing setting 'teacher'"):
        build_config("distill", None, {"model": "s", "data": "d", "out": "o"}, [])
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(KdlabError, match=r"bad.yaml: malformed YAML"):
        build_config("sft", str(bad), BASE, [])
    with pytest.raises(KdlabError, match="config file not found"):
        build_config("sft", str(tmp_path / "none.yaml"), BASE, [])


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.seed=-1", "train.seed must be in [0, 4294967295], got -1"),
        ("train.seed=4294967296", "train.seed must be in [0, 4294967295], got 4294967296"),
        ("lora.alpha=0", "lora.alpha must be > 0, got 0"),
        ("lora.r=0", "lora.r must be > 0, got 0"),
        ("lora.dropout=1", "lora.dropout must be in [0, 1), got 1.0"),
        ("lora.dropout=-0.1", "lora.dropout must be in [0, 1), got -0.1"),
        ("train.save_steps=-1", "train.save_steps must be >= 0, got -1"),
        ("train.max_grad_norm=-1", "train.max_grad_norm must be >= 0, got -1.0"),
        ("train.weight_decay=-0.1", "train.weight_decay must be >= 0, got -0.1"),
        ("train.report_to=tensorbord", "train.report_to: unknown tracker 'tensorbord' (known: tensorboard, mlflow"),
        ("train.report_to=[mlflow, a.b]", "train.report_to: unknown tracker 'a.b'"),
        ("train.epochs=-1", "train.epochs must be >= 0, got -1.0"),
        ("train.max_steps=-2", "train.max_steps must be >= 0, got -2"),
        ("train.epochs=0", "train.epochs must be > 0 or train.max_steps > 0"),
        ("train.warmup_ratio=1.5", "train.warmup_ratio must be in [0, 1], got 1.5"),
        ("train.batch_size=0", "train.batch_size must be > 0, got 0"),
        ("train.grad_accum=0", "train.grad_accum must be > 0, got 0"),
        ("train.keep_checkpoints=0", "train.keep_checkpoints must be > 0, got 0"),
        ("train.log_steps=0", "train.log_steps must be > 0, got 0"),
        ("train.lr=0", "train.lr must be > 0, got 0.0"),
        ("kd.temperature=-2", "kd.temperature must be > 0, got -2.0"),
        ("kd.kd_weight=1.5", "kd.kd_weight must be in [0, 1], got 1.5"),
        ("kd.lmbda=-0.5", "kd.lmbda must be in [0, 1], got -0.5"),
        ("kd.skew_alpha=1", "kd.skew_alpha must be in [0, 1), got 1.0"),
        ("kd.teacher_noise=-1", "kd.teacher_noise must be >= 0, got -1.0"),
        ("kd.cache_k=0", "kd.cache_k must be > 0, got 0"),
        ("kd.sample_temperature=0", "kd.sample_temperature must be > 0, got 0.0"),
        ("kd.generation_batch_size=0", "kd.generation_batch_size must be > 0, got 0"),
        ("kd.speculative_k=-1", "kd.speculative_k must be >= 0, got -1"),
    ],
)
def test_out_of_range_settings_name_the_field_and_value(override, message):
    with pytest.raises(KdlabError) as error:
        build_config("distill", None, BASE, [override])
    assert message in str(error.value) and "\n" not in str(error.value)


def test_in_range_edges_are_accepted():
    config = build_config(
        "distill",
        None,
        BASE,
        [
            "train.seed=4294967295",
            "train.save_steps=0",
            "train.max_grad_norm=0",
            "train.weight_decay=0",
            "train.epochs=0",
            "train.max_steps=3",
            "lora.dropout=0",
            "train.report_to=TensorBoard,none",
            "train.report_to=[all]",
        ],
    )
    assert config.train.seed == 4294967295 and config.train.report_to == ["all"]


@pytest.mark.parametrize(
    "flags,message",
    [
        ({"seed": -1}, "train.seed must be in [0, 4294967295], got -1"),
        ({"lora_alpha": 0}, "lora.alpha must be > 0, got 0"),
        ({"report_to": "tensorbord"}, "train.report_to: unknown tracker 'tensorbord'"),
    ],
)
def test_out_of_range_flags_exit_2_without_output(flags, message, tiny_models, synth_train, tmp_path, capsys):
    """Through the CLI: one line, exit status 2, no run folder (before: a traceback, or a run that trained)."""
    from kdlab_testing import FAST, run_cli

    out = tmp_path / "out"
    code = run_cli("sft", model=tiny_models["student"], data=synth_train, out=out, max_steps=1, **flags, **FAST)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("kdlab: error:") and message in err and "\n" not in err
    assert not out.exists()


def test_a_nan_set_in_code_is_refused():
    """kdlab.api passes configs built in code to validate: a NaN is out of every range."""
    from kdlab.config import validate

    config = build_config("distill", None, BASE, [])
    config.train.max_grad_norm = float("nan")
    with pytest.raises(KdlabError, match=r"train\.max_grad_norm must be >= 0, got nan"):
        validate(config)
