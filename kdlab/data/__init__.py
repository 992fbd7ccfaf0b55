"""Data: LLM-Adapters JSON and Hub datasets, the prompt template, tokenisation, synthetic tasks, overlap checks."""

from kdlab.data.formats import Example, load_examples, load_json_examples
from kdlab.data.prompt import PROMPT_TEMPLATE, format_prompt

__all__ = ["PROMPT_TEMPLATE", "Example", "format_prompt", "load_examples", "load_json_examples"]
