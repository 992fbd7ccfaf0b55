"""``kdlab export RUN --out DIR``: a finished run's ``final/`` as a self-contained folder ready to upload.

The folder holds the weights, their config, the tokenizer and the model card (README.md, :mod:`kdlab.model_card`):

- a full fine-tuning run: the model as saved (loads with ``AutoModelForCausalLM.from_pretrained(DIR)``);
- a LoRA run: the adapter (``adapter_config.json`` + weights; the card's ``base_model`` names the base model), or
  with ``merge_lora`` the adapter folded into the base model's weights (PEFT ``merge_and_unload``) and saved as a
  plain transformers model: ``W' = W + (alpha / r) * B @ A`` on every adapted matrix, no peft needed to load it.

The folder is written beside ``DIR`` under a temporary name and renamed into place, so a failure leaves no half
folder. An existing non-empty ``DIR`` is refused unless ``force``. ``push_to_hub`` then uploads the folder with
``huggingface_hub`` (``create_repo(exist_ok=True)`` + ``upload_folder``); it needs network and a token
(``HF_TOKEN`` or ``hf auth login``), checked before any work.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from kdlab.errors import KdlabError
from kdlab.io import atomic_dir
from kdlab.model_card import format_card, parse_card, read_model_card, run_card_text

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


def check_out(out: Path, force: bool) -> None:
    if out.exists() and not force and (not out.is_dir() or any(out.iterdir())):
        raise KdlabError(f"{out}: exists and is not empty; choose another --out or add --force to replace it")


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
    check_out(out, force)
    token = hub_token() if push_to_hub else None
    is_lora = (final / "adapter_config.json").is_file()
    if merge_lora and not is_lora:
        raise KdlabError(f"{run}: --merge-lora: the run trained the full model (no LoRA adapter in final/)")
    with atomic_dir(out, replace=True) as tmp:
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

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
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
            folder_path=str(folder), repo_id=repo, repo_type="model", commit_message="Upload from kdlab export"
        )
    except Exception as exc:  # no network, a bad token, no rights on the repository
        raise KdlabError(
            f"--push-to-hub {repo}: upload failed ({type(exc).__name__}: {str(exc).splitlines()[0][:300]})"
        ) from None
    print(f"kdlab: uploaded {folder} to https://huggingface.co/{repo}", flush=True)
