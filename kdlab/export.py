"""``kdlab export RUN --out DIR``: a finished run's ``final/`` as a self-contained folder ready to upload.

The folder holds the weights, their config, the tokenizer and the model card (README.md, :mod:`kdlab.model_card`):

- a full fine-tuning run: the model as saved (loads with ``AutoModelForCausalLM.from_pretrained(DIR)``);
- a LoRA run: the adapter (``adapter_config.json`` + weights; the card's ``base_model`` names the base model), or
  with ``merge_lora`` the adapter folded into the base model's weights (PEFT ``merge_and_unload``) and saved as a
  plain transformers model: ``W' = W + (alpha / r) * B @ A`` on every adapted matrix, no peft needed to load it.

The folder is written beside ``DIR`` under a temporary name and renamed into place, so a failure leaves no half
folder; kdlab's manifest in it (:data:`kdlab.outputs.MANIFEST`) marks it as an export. Refused before any work:
``DIR`` that is, contains or lies inside the run folder (compared on resolved paths); an existing non-empty ``DIR``
unless it is an earlier export holding only what kdlab wrote and ``force`` is given (then only those files are
replaced: a folder of the user's files is never replaced, with or without ``force``); weights in ``final/`` that
do not read back (a truncated or damaged ``*.safetensors``). ``push_to_hub`` then uploads the folder with
``huggingface_hub`` (``create_repo(exist_ok=True)`` + ``upload_folder``); it needs network and a token
(``HF_TOKEN`` or ``hf auth login``), checked before any work.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from kdlab.errors import KdlabError
from kdlab.io import atomic_dir
from kdlab.model_card import format_card, parse_card, read_model_card, run_card_text
from kdlab.outputs import EXPORT, MANIFEST, check_output_dir, read_config_mapping

MERGED_NOTE = (
    "The LoRA adapter trained by this run is merged into the base model's weights (PEFT `merge_and_unload`): "
    "this folder is a plain transformers model."
)


def finished_final(run: str | Path) -> Path:
    """``RUN/final`` of a finished run (result.json written); a clear error otherwise."""
    run_dir = Path(run)
    if not run_dir.is_dir():
        raise KdlabError(f"{run}: run folder not found")
    final = run_dir / "final"
    if not final.is_dir() or not (run_dir / "result.json").is_file():
        raise KdlabError(f"{run}: unfinished run (no final/ and result.json); rerun its training command to finish it")
    return final


def check_out(run: str | Path, out: Path, force: bool) -> None:
    """Refuse an ``out`` that overlaps the run folder, is not an earlier export, or is one and ``force`` is not set."""
    run_path, out_path = Path(os.path.realpath(run)), Path(os.path.realpath(out))
    if out_path == run_path or run_path.is_relative_to(out_path) or out_path.is_relative_to(run_path):
        where = "is" if out_path == run_path else "contains" if run_path.is_relative_to(out_path) else "is inside"
        raise KdlabError(f"{out}: {where} the run folder {run}; choose an --out outside it")
    check_output_dir(out, EXPORT)
    if out.is_dir() and any(out.iterdir()) and not force:
        raise KdlabError(f"{out}: holds an earlier export; choose another --out or add --force to replace it")


def check_weights(final: Path) -> None:
    """Refuse ``final/`` without weights, or with a ``*.safetensors`` file that does not read back (truncated)."""
    from safetensors import SafetensorError, safe_open

    weights = sorted(final.glob("*.safetensors"))
    if not weights and not any(final.glob("*.bin")):
        raise KdlabError(f"{final}: holds no weights (*.safetensors); rerun its training command to finish it")
    for path in weights:
        try:
            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
        except (SafetensorError, OSError) as exc:
            raise KdlabError(
                f"{path}: damaged weights ({str(exc).splitlines()[0][:200]}); kdlab does not export it"
            ) from None


def hub_token() -> str:
    """The Hugging Face token (HF_TOKEN or a saved login); a one-line error without one."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise KdlabError(
            "--push-to-hub needs a Hugging Face token: set HF_TOKEN or run `hf auth login` (and network access)"
        )
    return token


def export_run(
    run: str | Path, out: str | Path, merge_lora: bool = False, force: bool = False, push_to_hub: str | None = None
) -> Path:
    """Write the export folder ``out`` (see the module doc); returns it."""
    final, out = finished_final(run), Path(out)
    check_out(run, out, force)
    check_weights(final)
    token = hub_token() if push_to_hub else None
    is_lora = (final / "adapter_config.json").is_file()
    if merge_lora and not is_lora:
        raise KdlabError(f"{run}: --merge-lora: the run trained the full model (no LoRA adapter in final/)")
    with atomic_dir(out, kind=EXPORT) as tmp:
        if merge_lora:
            _write_merged(Path(run), final, tmp)
        else:
            shutil.copytree(final, tmp, dirs_exist_ok=True)
            if not (tmp / "README.md").is_file() or not read_model_card(tmp / "README.md")[0]:
                (tmp / "README.md").write_text(run_card_text(run))
    if push_to_hub:
        upload(out, push_to_hub, token)
    return out


def _write_merged(run_dir: Path, final: Path, tmp: Path) -> None:
    """The base model with the adapter merged, the tokenizer and a card saying so, into ``tmp``."""
    from transformers import AutoTokenizer

    from kdlab.models.load import load_model, quiet_loading

    config = read_config_mapping(run_dir / "config.yaml")
    model = load_model(config["model"], adapter=str(final), merge_adapter=True)
    with quiet_loading():
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(final).save_pretrained(tmp)
    header, body = read_model_card(final) if (final / "README.md").is_file() else ({}, "")
    if not header:
        header, body = parse_card(run_card_text(run_dir))
    header["library_name"] = "transformers"
    header["tags"] = [tag for tag in header.get("tags", []) if tag != "lora"] + ["merged-lora"]
    (tmp / "README.md").write_text(format_card(header, body.rstrip() + "\n\n" + MERGED_NOTE + "\n"))


def upload(folder: Path, repo: str, token: str) -> None:
    """Create (if needed) the Hub model repository ``repo`` and upload ``folder`` to it."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        api.create_repo(repo, repo_type="model", exist_ok=True)
        api.upload_folder(
            folder_path=str(folder),
            repo_id=repo,
            repo_type="model",
            commit_message="Upload from kdlab export",
            ignore_patterns=[MANIFEST],
        )
    except Exception as exc:  # no network, a bad token, no rights on the repository
        raise KdlabError(
            f"--push-to-hub {repo}: upload failed ({type(exc).__name__}: {str(exc).splitlines()[0][:300]})"
        ) from None
    print(f"kdlab: uploaded {folder} to https://huggingface.co/{repo}", flush=True)
