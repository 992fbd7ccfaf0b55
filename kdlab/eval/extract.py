"""Answer extraction from generated text, in two named modes, and answer comparison.

``extract(task, text, mode)`` returns the answer as a normalised string (``"12"``, ``"0.5"``, ``"C"``,
``"answer2"``) or ``None`` when the text states none (counted wrong, and as "no answer" by the evaluator).

- ``paper`` reproduces LLM-Adapters' ``evaluate.py`` / ``commonsense_evaluate.py`` (used by the paper), bugs
  included, so its numbers can be reproduced: last number of the text, first capital A-E anywhere, first label.
- ``strict`` (the default) takes the answer the model *states*: the final-answer sentence for numbers, the stated
  option letter for AQuA/mathqa, the label in the answer for commonsense, never an echo of the prompt.

Extractors are registered in :data:`EXTRACTORS` as ``"<mode>-<answer_type>"`` (e.g. ``"strict-letter"``), each a
function ``(text, task) -> str | None``; a config may name one of them directly as the mode.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from fractions import Fraction

from kdlab.errors import KdlabError
from kdlab.eval.tasks import Task, get_task

MODES = ("paper", "strict")
TOLERANCE = 1e-3  # |pred - gold| <= 1e-3, as LLM-Adapters (`abs(label - predict) <= miss`, miss = 0.001)

# ---------------------------------------------------------------------------------------------------------------
# Numbers


def format_number(value: float | Fraction) -> str:
    """Canonical string of a number: integers without ``.0`` (``12``, ``-5``), others as Python floats (``0.5``)."""
    value = float(value)
    if not math.isfinite(value):
        return repr(value)
    if value == int(value):
        return str(int(value))
    text = repr(value)
    if "e" in text:  # 1e-05 -> 0.00001: keep the plain form that parse_number reads back
        text = f"{value:.20f}".rstrip("0").rstrip(".")
    return text


# One number token. Rules (``strict`` mode):
# - a minus sign (``-`` or U+2212) counts only when not glued to a preceding word, digit or closing bracket:
#   "-5", "x = -5", "(-5)" and "-$5" are negative; "5-3", "x-5" and "2-3 hours" are not (a hyphen/subtraction);
# - currency signs ($ EUR GBP YEN) are skipped; a currency amount may group thousands by spaces ("$118 000");
# - thousands separators are commas between groups of exactly three digits: "1,234,567" is one number, "3, 4" and
#   "1,23" are two;
# - decimals "12.5" and ".5"; a trailing period is punctuation ("12." is 12); "50%" is 50;
# - fractions "a/b" without spaces ("1/2" is 0.5; "1 / 2" is two numbers); a whole number, one space and a proper
#   fraction form a mixed number ("1 1/2" is 1.5).
_NUMBER = re.compile(
    r"(?P<neg>(?<![\w)\]}])[-\u2212])?"
    r"(?P<cur>[$\u20ac\u00a3\u00a5]\s?)?"
    r"(?:"
    r"(?P<num>\d+)/(?P<den>\d+)(?![\d/])"
    r"|(?P<dec>\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)?|\d+(?:\.\d+)?|(?<![\d.])\.\d+)"
    r")"
)
_SPACED_CURRENCY = re.compile(r"([$\u20ac\u00a3\u00a5]\s?)(\d{1,3}(?:[ \u00a0\u202f]\d{3})+)(?![\d/])(?!\s\d)")


def _number_tokens(text: str) -> list[tuple[int, int, Fraction]]:
    """All numbers in ``text`` as (start, end, value), following the rules above."""
    # "$118 000" -> "$118000  " (same length, so positions stay valid)
    text = _SPACED_CURRENCY.sub(
        lambda m: m.group(1) + re.sub(r"[ \u00a0\u202f]", "", m.group(2)).ljust(len(m.group(2))), text
    )
    tokens: list[tuple[int, int, Fraction, bool]] = []  # (start, end, value, is_proper_fraction)
    for match in _NUMBER.finditer(text):
        sign = -1 if match.group("neg") else 1
        if match.group("num") is not None:
            num, den = int(match.group("num")), int(match.group("den"))
            if den == 0:  # "3/0": not a fraction, keep the numerator
                tokens.append((match.start(), match.end(), Fraction(sign * num), False))
                continue
            tokens.append((match.start(), match.end(), Fraction(sign * num, den), 0 < num < den))
        else:
            tokens.append((match.start(), match.end(), sign * Fraction(match.group("dec").replace(",", "")), False))
    merged: list[tuple[int, int, Fraction]] = []
    for start, end, value, proper in tokens:
        if (
            proper
            and value > 0
            and merged
            and text[merged[-1][1] : start] == " "
            and merged[-1][2].denominator == 1
            and "." not in text[merged[-1][0] : merged[-1][1]]
        ):
            prev_start, _, whole = merged.pop()
            value = whole + value if whole >= 0 else whole - value
            start = prev_start
        merged.append((start, end, value))
    return merged


def parse_number(text: str) -> float | None:
    """The single number written in ``text`` (``"576.0"``, ``"$1,234.50"``, ``"1/2"``, ``"-5"``, ``"50%"``).

    ``None`` when ``text`` holds no number or several (``"3, 4"``).
    """
    tokens = _number_tokens(text)
    if len(tokens) != 1:
        return None
    return float(tokens[0][2])


# "The answer is", "the answer is:", "Answer:", "answer =", "####", "\boxed{"
_ANSWER_MARKER = re.compile(r"(?i)\banswer\s*(?:is|=|:)\s*:?|####|\\boxed\{")
# the answer sentence ends at a newline or at a period that is not a decimal point
_SENTENCE_END = re.compile(r"\n|\.(?!\d)")


def paper_number(text: str, task: Task | None = None) -> str | None:
    """LLM-Adapters math rule: remove commas, take the LAST match of ``-?\\d+\\.?\\d*``; ``None`` if none.

    >>> paper_number("The answer is 12. Check: 12 + 3 = 15")
    '15'
    >>> paper_number("5-3")   # the hyphen becomes a minus sign
    '-3'
    """
    found = re.findall(r"-?\d+\.?\d*", text.replace(",", ""))
    return format_number(float(found[-1])) if found else None


def strict_number(text: str, task: Task | None = None) -> str | None:
    """The number the model states as its answer.

    The LAST final-answer sentence ("The answer is ...", "answer: ...", "#### ...", "\\boxed{...}"; the sentence
    ends at a newline or a period that is not a decimal point) gives its first number, or the first number after its
    last ``=`` ("The answer is 220 + 90 + 60 = 370." -> 370). An answer sentence without a number is skipped for the
    one before it; with none, the last number of the text. Numbers follow the rules of ``_NUMBER``.

    >>> strict_number("The answer is 12. Check: 12 + 3 = 15")
    '12'
    >>> strict_number("The answer is $1,234.50"), strict_number("The answer is 1/2"), strict_number("is -5")
    ('1234.5', '0.5', '-5')
    """
    for marker in reversed(list(_ANSWER_MARKER.finditer(text))):
        rest = text[marker.end() :]
        body = rest.lstrip()
        end = _SENTENCE_END.search(body)
        sentence = body[: end.start()] if end else body
        if "=" in sentence:
            after = sentence.rsplit("=", 1)[1]
            if _number_tokens(after):
                sentence = after
        tokens = _number_tokens(sentence)
        if tokens:
            return format_number(tokens[0][2])
    tokens = _number_tokens(text)
    return format_number(tokens[-1][2]) if tokens else None


# ---------------------------------------------------------------------------------------------------------------
# Option letters (AQuA, mathqa)


def paper_letter(text: str, task: Task | None = None) -> str | None:
    """LLM-Adapters AQuA rule: the FIRST match of ``A|B|C|D|E`` anywhere in the stripped text.

    Reproduces the known bug that any capital A-E counts, even inside a word: "Each train ..." gives ``"E"``.
    """
    found = re.findall(r"A|B|C|D|E", text.strip())
    return found[0] if found else None


# an option letter: "(C)", "C)", or a bare "C" that is not part of a word and not followed by a lowercase word
# (so "The answer is A train ..." is not read as option A), except "because/since/as/is" ("answer is C because",
# "B is the correct answer")
_L = (
    r"(?:\((?-i:([A-E]))\)|\(([a-e])\)|(?-i:([A-E]))\)"
    r"|(?<![\w])(?-i:([A-E]))(?![\w])(?!\s+(?!because\b|since\b|as\b|is\b)(?-i:[a-z])))"
)
_LETTER_PATTERNS = [
    # "the answer is (D)", "answer is D", "Answer: (C)", "the correct answer is C", "answer choice is B",
    # "answer is option C", "answer would be E"
    re.compile(
        r"(?i)\banswer(?:\s+(?:choice|option))?\s*(?:is|would be|will be|should be|must be|=|:)\s*:?\s*"
        r"(?:(?:option|choice)\s*)?" + _L
    ),
    # "answer choice (B)", "answer option B"
    re.compile(r"(?i)\banswer\s+(?:choice|option)\s*" + _L),
    # "the correct option is B", "best choice: (B)"
    re.compile(r"(?i)\b(?:correct|right|best|final)\s+(?:option|choice)\s*(?:is|would be|=|:)?\s*:?\s*" + _L),
    # "(E) is correct", "B is the correct answer", "option C is right"
    re.compile(r"(?i)" + _L + r"\s+is\s+(?:the\s+)?(?:correct|right)\b"),
]
# the whole output is the letter: "C", "(C)", "C)", "C.", or one line starting with "(C)" / "C)" / "C )", the
# way the options are written in AQuA / mathqa prompts: "C) 62 m", "C ) 30"
_LETTER_ONLY = re.compile(r"\s*(?:\(?([A-E])\)?\.?|\(?([A-E])\s?\)[^\n]*)\s*")


def _letter_of(match: re.Match) -> str:
    return next(g for g in match.groups() if g).upper()


def strict_letter(text: str, task: Task | None = None) -> str | None:
    """The option letter the model states as its answer; the LAST statement wins; ``None`` if none is stated.

    Statements: "answer is (D)", "answer is D", "Answer: (C)", "the correct answer is C", "answer choice (B)",
    "correct option is B", "(E) is correct", or an output that is just "C", "(C)", "C)" (or one line "C) 62 m").
    Never the first capital of a word ("Each ...", "A train ...").

    >>> strict_letter("Each train is 100 m long. The answer is (D)."), strict_letter("Each train is 100 m long.")
    ('D', None)
    """
    whole = _LETTER_ONLY.fullmatch(text)
    if whole:
        return _letter_of(whole)
    best: tuple[int, str] | None = None
    for pattern in _LETTER_PATTERNS:
        for match in pattern.finditer(text):
            if best is None or match.end() > best[0]:
                best = (match.end(), _letter_of(match))
    return best[1] if best else None


# ---------------------------------------------------------------------------------------------------------------
# Commonsense labels

# LLM-Adapters' label alternatives per dataset (commonsense_evaluate.py), e.g. answer1..answer5 for social_i_qa
_PAPER_LABELS = {
    "boolq": ("true", "false"),
    "piqa": ("solution1", "solution2"),
    "social_i_qa": tuple(f"answer{i}" for i in range(1, 6)),
    "ARC-Challenge": tuple(f"answer{i}" for i in range(1, 6)),
    "ARC-Easy": tuple(f"answer{i}" for i in range(1, 6)),
    "openbookqa": tuple(f"answer{i}" for i in range(1, 6)),
    "hellaswag": tuple(f"ending{i}" for i in range(1, 5)),
    "winogrande": ("option1", "option2"),
}


def paper_label(text: str, task: Task) -> str | None:
    """LLM-Adapters commonsense rule: the FIRST match in the stripped text of the label alternatives, case-sensitive.

    Their alternatives are used (``answer1|...|answer5`` for social_i_qa, ARC and openbookqa), without word
    boundaries, so an echoed "Answer format: answer1/answer2" line gives ``"answer1"``.
    """
    labels = _PAPER_LABELS.get(task.name, task.labels)
    found = re.findall("|".join(re.escape(label) for label in labels), text.strip())
    return found[0] if found else None


def _label_regex(label: str) -> str:
    """A label as a whole word, case-insensitive, with an optional space before a trailing number ("option 2")."""
    word, number = re.fullmatch(r"(.*?)(\d*)", label).groups()
    body = re.escape(word) + (r"\s?" + number if word and number else number)
    return r"(?<![A-Za-z0-9])" + body + r"(?![A-Za-z0-9])"


def _label_patterns(task: Task) -> tuple[re.Pattern, re.Pattern, re.Pattern]:
    alternatives = "|".join(f"(?P<l{i}>{_label_regex(label)})" for i, label in enumerate(task.labels))
    any_label = r"(?:" + "|".join(_label_regex(label) for label in task.labels) + r")"
    # "Answer format: answer1/answer2/answer3" and any bare "true/false" list: an echo of the prompt, not an answer
    echo = re.compile(
        r"(?i)answer\s*format\s*:\s*(?:" + any_label + r"(?:\s*/\s*" + any_label + r")*)?"
        r"|" + any_label + r"(?:\s*/\s*" + any_label + r")+"
    )
    # "the correct answer is answer2", "Answer: true", "the correct option is option1", "answer would be (ending3)"
    sentence = re.compile(
        r"(?i)\b(?:answer|solution|option|ending|choice)\s*(?:is|would be|should be|=|:)\s*:?\s*"
        r"[\"'(\[]?(?:" + alternatives + r")"
    )
    lone = re.compile(r"(?i)" + alternatives)
    return echo, sentence, lone


_LABEL_CACHE: dict[tuple[str, tuple[str, ...]], tuple[re.Pattern, re.Pattern, re.Pattern]] = {}


def _which_label(task: Task, match: re.Match) -> str:
    return next(task.labels[int(k[1:])] for k, v in match.groupdict().items() if v is not None)


def strict_label(text: str, task: Task) -> str | None:
    """The task label the model gives as its answer, case-insensitive, returned in canonical form ("True" -> "true").

    Echoes of the prompt's "Answer format: answer1/answer2/..." line (and any "label/label" list) are removed
    first. Then the LAST answer sentence ("the correct answer is X", "answer: X", "correct option is X") wins; without
    one, the text must mention exactly one distinct label; several different labels are ambiguous -> ``None``.

    >>> strict_label("Answer format: true/false\\nthe correct answer is False", get_task("boolq"))
    'false'
    """
    key = (task.name, task.labels)
    if key not in _LABEL_CACHE:
        _LABEL_CACHE[key] = _label_patterns(task)
    echo, sentence, lone = _LABEL_CACHE[key]
    cleaned = echo.sub(" ", text)
    stated = list(sentence.finditer(cleaned))
    if stated:
        return _which_label(task, stated[-1])
    found = {_which_label(task, match) for match in lone.finditer(cleaned)}
    return found.pop() if len(found) == 1 else None


# ---------------------------------------------------------------------------------------------------------------
# Registry and public API

EXTRACTORS: dict[str, Callable[[str, Task], str | None]] = {
    "paper-number": paper_number,
    "paper-letter": paper_letter,
    "paper-label": paper_label,
    "strict-number": strict_number,
    "strict-letter": strict_letter,
    "strict-label": strict_label,
}


def get_extractor(task: str | Task, mode: str = "strict") -> Callable[[str, Task], str | None]:
    """The extractor for ``task`` in ``mode`` (``"paper"``/``"strict"``, or a full name of :data:`EXTRACTORS`)."""
    task = get_task(task)
    if mode in EXTRACTORS:
        name = mode
        if not name.endswith("-" + task.answer_type):
            raise KdlabError(f"extractor {mode!r} does not fit task {task.name} (answer type {task.answer_type})")
    elif mode in MODES:
        name = f"{mode}-{task.answer_type}"
    else:
        raise KdlabError(
            f"unknown extraction mode {mode!r} (modes: {', '.join(MODES)}; extractors: {', '.join(EXTRACTORS)})"
        )
    return EXTRACTORS[name]


def extract(task: str | Task, text: str | None, mode: str = "strict") -> str | None:
    """The answer stated in ``text`` for ``task`` (a name or a :class:`Task`), or ``None``; see the module doc."""
    task = get_task(task)
    extractor = get_extractor(task, mode)
    return extractor(text or "", task)


def normalize_gold(task: str | Task, gold: str) -> str:
    """The canonical form of a gold answer; :class:`KdlabError` when it is not a number / allowed letter or label."""
    task = get_task(task)
    text = str(gold).strip()
    if task.answer_type == "number":
        value = parse_number(text)
        if value is None:
            raise KdlabError(f"gold answer {gold!r} of task {task.name} is not a number")
        return format_number(value)
    canon = {label.lower(): label for label in task.labels}
    key = text.strip("()").strip().lower()
    if key not in canon:
        raise KdlabError(f"gold answer {gold!r} of task {task.name} is not one of {', '.join(task.labels)}")
    return canon[key]


def is_correct(task: str | Task, pred: str | None, gold: str) -> bool:
    """Whether ``pred`` (from :func:`extract`) matches ``gold``: numbers within 1e-3 (``"576"`` == ``"576.0"``),
    letters and labels exactly after normalisation (case, surrounding parentheses and spaces); ``None`` is wrong.
    A gold answer of the wrong kind raises :class:`KdlabError`."""
    task = get_task(task)
    gold_norm = normalize_gold(task, gold)
    if pred is None:
        return False
    if task.answer_type == "number":
        value = parse_number(str(pred))
        return value is not None and abs(value - float(gold_norm)) <= TOLERANCE
    return str(pred).strip().strip("()").strip().lower() == gold_norm.lower()
