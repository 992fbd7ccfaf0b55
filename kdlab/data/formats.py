"""Loading examples: LLM-Adapters JSON files and Hub datasets (through ``datasets``).

LLM-Adapters JSON is a list of objects with the string fields ``instruction``, ``input``, ``output`` and
``answer`` (``input`` and ``answer`` may be missing or empty in training files). Any problem is reported with the
file, the index of the example and the field.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from kdlab.errors import KdlabError

REQUIRED_FIELDS = ("instruction", "output")
OPTIONAL_FIELDS = ("input", "answer")


@dataclass(frozen=True)
class Example:
    """One instruction-following example; ``output`` is the response to train on, ``answer`` the gold answer."""

    instruction: str
    output: str
    input: str = ""
    answer: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _example_from_record(record: object, where: str) -> Example:
    if not isinstance(record, dict):
        raise KdlabError(
            f"{where}: expected an object with fields instruction/input/output/answer, got {type(record).__name__}"
        )
    values = {}
    for field in REQUIRED_FIELDS + OPTIONAL_FIELDS:
        value = record.get(field, "")
        if field in REQUIRED_FIELDS and field not in record:
            raise KdlabError(f"{where}: missing field '{field}'")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and field == "answer":
            value = str(value)
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise KdlabError(f"{where}: field '{field}' must be a string, got {type(value).__name__}")
        values[field] = value
    if not values["instruction"].strip():
        raise KdlabError(f"{where}: field 'instruction' is empty")
    return Example(**values)


def load_json_examples(path: str | Path) -> list[Example]:
    """Read an LLM-Adapters JSON file (a list of example objects); errors name the file, index and field."""
    path = Path(path)
    if not path.is_file():
        raise KdlabError(f"{path}: data file not found")
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise KdlabError(f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except UnicodeDecodeError as exc:
        raise KdlabError(f"{path}: not UTF-8 text ({exc.reason})") from None
    if not isinstance(records, list):
        raise KdlabError(f"{path}: expected a JSON list of examples, got {type(records).__name__}")
    if not records:
        raise KdlabError(f"{path}: the dataset is empty")
    return [_example_from_record(record, f"{path}[{index}]") for index, record in enumerate(records)]


def load_hub_examples(spec: str, field_map: dict[str, str] | None = None) -> list[Example]:
    """Load a Hub dataset as examples. ``spec`` is ``hf:NAME[:CONFIG][@SPLIT]`` (default split ``train``).

    ``field_map`` maps kdlab fields (instruction, input, output, answer) to the dataset's column names; by default
    columns with the kdlab names are used.
    """
    import datasets  # imported lazily: slow import

    body = spec[len("hf:") :]
    name, _, split = body.partition("@")
    name, _, config = name.partition(":")
    try:
        dataset = datasets.load_dataset(name, config or None, split=split or "train")
    except Exception as exc:  # network, missing dataset, bad split: one line for the user
        raise KdlabError(
            f"{spec}: could not load Hub dataset ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        ) from None
    field_map = field_map or {}
    columns = {field: field_map.get(field, field) for field in REQUIRED_FIELDS + OPTIONAL_FIELDS}
    for field in REQUIRED_FIELDS:
        if columns[field] not in dataset.column_names:
            raise KdlabError(
                f"{spec}: no column '{columns[field]}' for field '{field}' (columns: {dataset.column_names})"
            )
    examples = []
    for index, row in enumerate(dataset):
        record = {field: row[column] for field, column in columns.items() if column in row}
        examples.append(_example_from_record(record, f"{spec}[{index}]"))
    if not examples:
        raise KdlabError(f"{spec}: the dataset is empty")
    return examples


def load_examples(source: str | Path, field_map: dict[str, str] | None = None) -> list[Example]:
    """Examples from a JSON file path or a ``hf:`` Hub dataset spec."""
    if isinstance(source, str) and source.startswith("hf:"):
        return load_hub_examples(source, field_map)
    return load_json_examples(source)


def examples_json(examples: list[Example]) -> str:
    """Examples as LLM-Adapters JSON text (indented, UTF-8, stable key order)."""
    return json.dumps([example.to_dict() for example in examples], indent=2, ensure_ascii=False) + "\n"


def write_json_examples(examples: list[Example], path: str | Path) -> None:
    """Write examples as LLM-Adapters JSON (:func:`examples_json`), atomically."""
    from kdlab.io import atomic_write_text

    atomic_write_text(path, examples_json(examples))
