"""The generation cost model (kdlab.study.cost.Generation): FLOPs and bytes read, by backend, against hand counts."""

import pytest

from kdlab.study import cost
from kdlab.study.cost import Generation, seconds


@pytest.fixture(autouse=True)
def unit_efficiency(monkeypatch):
    monkeypatch.setattr(cost, "BACKEND_EFFICIENCY", {"hf": 1.0, "vllm": 1.0})


def job(backend: str, batch: int = 16, prompts: float = 1000) -> Generation:
    return Generation(
        params=1e9, kv=1e4, prompts=prompts, prompt_tokens=100, new_tokens=50, backend=backend, batch=batch
    )


def test_flops_are_prefill_and_decoding():
    assert job("hf").flops() == 2 * 1e9 * 1000 * (100 + 50)


def test_decoding_reads_the_weights_once_per_step_of_the_running_sequences():
    kv_reads = 1000 * 50 * 1e4 * 2 * (100 + 25)  # every generated token reads its context's KV cache (2 bytes each)
    hf_steps, vllm_steps = 1000 * 50 / 16, 1000 * 50 / 256
    assert job("hf").bytes() == pytest.approx(hf_steps * 1e9 * 2 + kv_reads)
    assert job("vllm").bytes() == pytest.approx(vllm_steps * 1e9 * 2 + kv_reads)
    assert job("vllm", prompts=10).bytes() == pytest.approx(50 * 1e9 * 2 + 10 * 50 * 1e4 * 2 * 125)  # 10 run at once


def test_the_backend_efficiency_divides_both(monkeypatch):
    full_flops, full_bytes = job("hf").flops(), job("hf").bytes()
    monkeypatch.setattr(cost, "BACKEND_EFFICIENCY", {"hf": 0.5, "vllm": 1.0})
    assert job("hf").flops() == 2 * full_flops and job("hf").bytes() == pytest.approx(2 * full_bytes)


def test_time_adds_compute_and_memory():
    assert seconds(2e12, 1.0, 3e9, 1.0) == pytest.approx(2.0 + 3.0)


def test_auto_is_priced_as_the_backend_choice_would_take_it(monkeypatch):
    import kdlab.vllm_engine

    monkeypatch.setattr(kdlab.vllm_engine, "vllm_version", lambda: "0.32.0")
    assert cost.assumed_backend("auto", 4096) == "vllm" and cost.assumed_backend("auto", 100) == "hf"
    assert cost.assumed_backend("hf", 10**9) == "hf"
    monkeypatch.setattr(kdlab.vllm_engine, "vllm_version", lambda: None)
    assert cost.assumed_backend("auto", 10**9) == "hf"


def test_token_kl_is_priced_on_forward_passes_whatever_backend_generated_the_answers(monkeypatch):
    monkeypatch.setattr(cost, "BACKEND_EFFICIENCY", {"hf": 0.5, "vllm": 1.3})
    expected = 2 * 1e9 * 1000 * (100 + 50) * cost.TOKEN_KL_SHARE
    assert cost.token_kl_flops(job("hf")) == cost.token_kl_flops(job("vllm")) == expected
    assert job("hf").flops() != job("vllm").flops()
