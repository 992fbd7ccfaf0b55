"""Small checks for the values of a study spec.

Each takes a value as read from YAML and ``where`` (the spec path and the key, for the message) and returns the
value in its checked form, or raises a :class:`~kdlab.errors.KdlabError` that names the key and the value.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from kdlab.config import SECTIONS
from kdlab.errors import KdlabError

_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kKmMbBtT]?)\s*$")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_name(name, where: str) -> str:
    """A name that becomes part of a folder name (the study, a model, a domain, a method): letters, digits, '.', '_'
    and '-', starting with a letter or digit, without '..' (so no path separator, no way out of the study folder)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise KdlabError(
            f"{where}: {name!r} is not a valid name (letters, digits, '.', '_', '-'; starting with a letter or "
            "digit; no '..')"
        )
    return name


def parse_params(value, where: str) -> float:
    """``135M``, ``0.5B``, ``7b`` or a plain number -> number of parameters."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value <= 0:
            raise KdlabError(f"{where}: must be > 0, got {value}")
        return float(value)
    match = _SIZE.match(str(value))
    if not match:
        raise KdlabError(f"{where}: expected a size such as 135M or 0.5B, got {value!r}")
    scale = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}[match.group(2).lower()]
    return float(match.group(1)) * scale


def as_mapping(value, where: str) -> dict:
    """A YAML mapping (``None``, an empty section, reads as ``{}``)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise KdlabError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def as_names(value, where: str) -> list[str]:
    """A non-empty list of distinct names (one name alone reads as a list of one)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(item, str) and item for item in value):
        raise KdlabError(f"{where}: expected a non-empty list of names, got {value!r}")
    if len(set(value)) != len(value):
        raise KdlabError(f"{where}: names repeat in {value}")
    return value


def as_numbers(value, where: str, kind=float, positive: bool = False, allow_zero: bool = True) -> list:
    """A non-empty list of distinct numbers >= 0 (> 0 with ``positive``), each converted by ``kind`` (``int`` refuses
    fractions); one number alone reads as a list of one."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value:
        raise KdlabError(f"{where}: expected a non-empty list of numbers, got {value!r}")
    out = []
    for item in value:
        if (
            isinstance(item, bool)
            or not isinstance(item, (int, float))
            or (kind is int and not float(item).is_integer())
        ):
            raise KdlabError(f"{where}: expected {'integers' if kind is int else 'numbers'}, got {item!r}")
        if (positive and item <= 0) or (not allow_zero and item == 0) or item < 0:
            raise KdlabError(f"{where}: {item} is out of range (must be {'> 0' if positive else '>= 0'})")
        out.append(kind(item))
    if len(set(out)) != len(out):
        raise KdlabError(f"{where}: values repeat in {value}")
    return out


def check_keys(data: dict, allowed: set, where: str) -> None:
    """Refuse a key of ``data`` that is not in ``allowed``, listing the known ones."""
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise KdlabError(
            f"{where}: unknown key(s) {', '.join(map(str, unknown))} (known: {', '.join(sorted(allowed))})"
        )


def resolve_path(text: str, base: Path) -> str:
    """A data path with ``$VARIABLES`` and ``~`` expanded, relative to ``base``; ``hf:NAME`` is kept as it is."""
    if text.startswith("hf:"):
        return text
    path = Path(os.path.expandvars(text)).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def is_int(value) -> bool:
    """An integer that is not a bool (YAML's ``true`` is an int to Python)."""
    return isinstance(value, int) and not isinstance(value, bool)


def with_defaults(data, defaults: dict, where: str) -> dict:
    """A section whose keys are those of ``defaults``: the given values over the defaults."""
    data = as_mapping(data, where)
    check_keys(data, set(defaults), where)
    return {**defaults, **data}


def load_sections(data, where: str, allowed: tuple = ("lora", "train")) -> dict:
    """Run-config sections (``{"train": {"lr": 1e-4}}``): a mapping of mappings, sections among ``allowed``."""
    data = as_mapping(data, where)
    check_keys(data, set(allowed), where)
    return {section: as_mapping(value, f"{where}.{section}") for section, value in data.items()}


def flatten_sections(sections: dict) -> dict:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}`` (sections of :data:`kdlab.config.SECTIONS`)."""
    flat = {}
    for section, values in sections.items():
        if section not in SECTIONS:
            raise KdlabError(f"unknown run-config section {section!r}")
        flat.update({f"{section}.{key}": value for key, value in values.items()})
    return flat


def merge_sections(base: dict, overlay: dict) -> dict:
    """Run-config sections ``base`` with ``overlay``'s settings on top (``{"train": {"epochs": 3}}``)."""
    merged = {section: dict(values) for section, values in base.items()}
    for section, values in overlay.items():
        merged.setdefault(section, {}).update(values)
    return merged
