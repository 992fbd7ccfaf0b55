"""The one prompt template used for training and evaluation (Alpaca, no input field).

The paper's training and evaluation templates differed in whitespace; kdlab uses this single template everywhere.
"""

PROMPT_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


def format_prompt(instruction: str, input_text: str = "") -> str:
    """The prompt for one example; a non-empty ``input`` is appended to the instruction after a blank line."""
    instruction = instruction.strip()
    if input_text and input_text.strip():
        instruction = f"{instruction}\n\n{input_text.strip()}"
    return PROMPT_TEMPLATE.format(instruction=instruction)
