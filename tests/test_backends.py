"""The generation backend choice (kdlab.backends): the rules of ``auto``, the errors of a bad name or an unfit model."""

import subprocess
import sys

import pytest

from kdlab.backends import AUTO_MIN_TOKENS, BACKENDS, choose_backend
from kdlab.errors import KdlabError
from kdlab.vllm_engine import vllm_version


def test_hf_is_taken_when_asked(tiny_models):
    backend = choose_backend("hf", str(tiny_models["student"]))
    assert backend.name == "hf" and backend.record() == {"backend": "hf", "vllm_version": None}


def test_a_bad_backend_name_is_refused_naming_the_choices(tiny_models):
    with pytest.raises(KdlabError, match=r"--backend 'vlm': choose auto, hf, vllm"):
        choose_backend("vlm", str(tiny_models["student"]))
    assert BACKENDS == ("auto", "hf", "vllm")


def test_auto_falls_back_to_hf_for_a_model_vllm_cannot_run(tiny_models):
    """The tiny test models have attention heads of 8 dimensions, which vLLM's CPU kernels do not have."""
    if vllm_version() is None:
        backend = choose_backend("auto", str(tiny_models["student"]))
        assert backend.name == "hf" and "not installed" in backend.why
        return
    backend = choose_backend("auto", str(tiny_models["student"]))
    assert backend.name == "hf" and "head size 8" in backend.why
    with pytest.raises(KdlabError, match=r"--backend vllm: .*attention head size 8 .*use --backend hf"):
        choose_backend("vllm", str(tiny_models["student"]))


def test_auto_takes_hf_for_a_job_too_small_for_the_engine_start(vllm_models):
    vllm_model = vllm_models["model"]
    small = choose_backend("auto", str(vllm_model), budget_tokens=AUTO_MIN_TOKENS - 1)
    assert small.name == "hf" and "too few" in small.why
    large = choose_backend("auto", str(vllm_model), budget_tokens=AUTO_MIN_TOKENS)
    assert large.name == "vllm" and large.version == vllm_version()
    assert choose_backend("vllm", str(vllm_model), budget_tokens=1).name == "vllm"  # asked for: always


def test_importing_the_backends_imports_neither_torch_nor_vllm():
    code = "import sys, kdlab.backends, kdlab.vllm_engine; assert not {'torch', 'vllm'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)
