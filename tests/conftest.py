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
