"""The prompts of an evaluation, tokenised and fitted to the model's context before anything is written.

Limit: a prompt has at most ``--max-prompt-tokens`` tokens when given; by default, the model's context
(:func:`model_context`) less what must follow the prompt: the generation budget (``generate``: ``max_new_tokens``)
or the example's longest answer option (``loglik``). No limit when the model states no context.

A longer prompt follows ``--on-long``, with training's rule (:func:`kdlab.data.tokenize.fit_length`):

- ``truncate`` (the default): cut the start of the prompt, keeping its leading special tokens (BOS) and its end
  (the end of the question and the template's ``### Response:``). Like training, which keeps the start of a cut
  response, it keeps the tokens nearest to where the response begins; cutting the prompt's end instead would lose
  the template's ``### Response:`` and leave nothing to answer;
- ``drop``: leave the example out (not in the predictions, not in ``n``);
- ``error``: stop with a one-line error naming the task and example, before anything is written.

``truncate`` is the default, as in training: the evaluation runs to the end and every example keeps its line, so
that evaluations of models with the same limit cover the same ids (``kdlab fidelity`` and the paired tests need
that). ``metrics.json`` counts the examples per task (``truncated_long``, ``dropped_long``) and a truncated line
records ``prompt_tokens_cut``; its ``prompt`` stays the full text, which identifies the example.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kdlab.data.formats import Example
from kdlab.data.prompt import format_prompt
from kdlab.data.tokenize import fit_length
from kdlab.errors import KdlabError
from kdlab.eval.options import parse_options
from kdlab.eval.tasks import Task

UNSET_LENGTH = 10_000_000  # a tokenizer's model_max_length from here up means "not set" (transformers writes 1e30)


def model_context(spec: str, tokenizer) -> int | None:
    """The context length of model ``spec``: the smaller of its config's ``max_position_embeddings`` (``n_positions``
    in GPT-2 style configs) and the tokenizer's ``model_max_length`` when that is set; None when neither says."""
    from transformers import AutoConfig

    from kdlab.models.load import resolve_model_path

    config = AutoConfig.from_pretrained(resolve_model_path(spec))
    positions = getattr(config, "max_position_embeddings", None)
    if positions is None:
        positions = getattr(config, "n_positions", None)
    lengths = (positions, getattr(tokenizer, "model_max_length", None))
    usable = [n for n in lengths if isinstance(n, int) and not isinstance(n, bool) and 0 < n < UNSET_LENGTH]
    return min(usable) if usable else None


@dataclass
class Prompt:
    """One example ready for the model: ``ids`` (fitted to the limit; ``cut`` tokens were cut from its start),
    ``text`` (the full prompt, recorded); in loglik mode its ``options`` and their token ids."""

    index: int
    example: Example
    text: str
    ids: list[int]
    cut: int = 0
    options: dict[str, str] | None = None
    option_ids: dict[str, list[int]] | None = None


@dataclass
class TaskPrompts:
    """The fitted prompts of one task, the indices of the examples dropped, and the limit in words."""

    prompts: list[Prompt]
    dropped: list[int] = field(default_factory=list)
    rule: str = ""

    def counts(self) -> dict:
        """``{"truncated_long", "dropped_long"}`` for the task's metrics."""
        return {"truncated_long": sum(p.cut > 0 for p in self.prompts), "dropped_long": len(self.dropped)}

    def message(self, task: str, on_long: str) -> str | None:
        """One warning line when prompts were truncated or dropped, else None."""
        counts = self.counts()
        if not any(counts.values()):
            return None
        return (
            f"kdlab: warning: task {task}: {counts['truncated_long']} of {len(self.prompts) + len(self.dropped)} "
            f"prompts truncated (their start cut) and {counts['dropped_long']} dropped to fit {self.rule} "
            f"(--on-long {on_long}; --max-prompt-tokens N sets the limit)"
        )


def _leading_special(ids: list[int], special: set[int]) -> int:
    """How many of the first ids are special tokens (BOS), kept when the prompt's start is cut."""
    lead = 0
    while lead < len(ids) and ids[lead] in special:
        lead += 1
    return lead


@dataclass(frozen=True)
class PromptLimit:
    """How prompts are fitted: ``max_prompt_tokens`` (None: from the model's ``context``) and ``on_long``."""

    max_prompt_tokens: int | None
    on_long: str
    context: int | None

    def tokens(self, after: int) -> int | None:
        """The prompt limit when ``after`` tokens must follow the prompt (None: no limit)."""
        if self.max_prompt_tokens is not None:
            return self.max_prompt_tokens
        return None if self.context is None else self.context - after

    def rule(self, after: str) -> str:
        """Where the limit comes from, in words."""
        if self.max_prompt_tokens is not None:
            return f"--max-prompt-tokens {self.max_prompt_tokens}"
        if self.context is None:
            return "no limit (the model states no context length)"
        return f"the model's context of {self.context} tokens less {after}"


def prepare_prompts(
    task: Task, items: list[tuple[int, Example]], tokenizer, mode: str, budget: int, limits: PromptLimit
) -> TaskPrompts:
    """Tokenise the prompts (and, in ``loglik`` mode, parse and tokenise the options) of ``items`` and fit each to
    its limit (``budget``: the generation budget); errors (``--on-long error``, unparsable options, no room left by
    the budget) are :class:`KdlabError`."""
    loglik = mode == "loglik"
    limit = limits.tokens(budget)
    if not loglik and limit is not None and limit < 1:
        raise KdlabError(
            f"task {task.name}: --max-new-tokens {budget} leaves no room for a prompt in the model's context of "
            f"{limits.context} tokens; lower it, or pass --max-prompt-tokens N"
        )
    special = set(tokenizer.all_special_ids)
    fitted = TaskPrompts([], rule=limits.rule("the longest option" if loglik else f"{budget} new tokens"))
    for index, example in items:
        prompt = Prompt(index, example, format_prompt(example.instruction, example.input), [])
        prompt.ids = tokenizer(prompt.text, add_special_tokens=True)["input_ids"]
        if loglik:
            prompt.options = parse_options(task, example.instruction)
            prompt.option_ids = {
                label: tokenizer(text, add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id]
                for label, text in prompt.options.items()
            }
            limit = limits.tokens(max(len(ids) for ids in prompt.option_ids.values()))
        if limit is None:
            fitted.prompts.append(prompt)
            continue
        lead = _leading_special(prompt.ids, special)
        keep = fit_length(
            lead,
            len(prompt.ids) - lead,
            limit,
            limits.on_long,
            f"task {task.name}, example {index}: the prompt has {len(prompt.ids)} tokens, more than {limit} "
            f"({fitted.rule}); pass --on-long truncate|drop, or --max-prompt-tokens N",
        )
        if keep is None:
            fitted.dropped.append(index)
            continue
        prompt.cut = len(prompt.ids) - lead - keep
        if prompt.cut:
            prompt.ids = prompt.ids[:lead] + prompt.ids[len(prompt.ids) - keep :]
        fitted.prompts.append(prompt)
    if not fitted.prompts:
        raise KdlabError(f"task {task.name}: no example fits {fitted.rule} (--on-long {limits.on_long})")
    return fitted
