"""Synthetic arithmetic word problems with step-by-step rationales, in LLM-Adapters format.

Each problem is a short story about a person and a quantity (objects or dollars) followed by a question ending
with ``?``; solving it takes 1 to 3 arithmetic steps with ``+``, ``-``, ``x`` and exact ``/``. Every number in a
story, every intermediate result and the answer is an integer >= 2. The generated :class:`Example` has:

- ``instruction``: the story and the question, e.g. ``"Tom has 12 apples. Then Tom buys 5 more apples. How many
  apples does Tom have now?"``;
- ``input``: ``""``;
- ``output``: one sentence per step, each stating its computation as ``a op b = c`` (op one of ``+ - x /``), then
  exactly ``"The answer is N."``, e.g. ``"Tom starts with 12 apples and buys 5 more, so he has 12 + 5 = 17 apples.
  The answer is 17."``;
- ``answer``: ``str(N)``, e.g. ``"17"``.

Generation is deterministic: it uses only a ``random.Random`` seeded from sha256 of (seed, split, step range),
so the same arguments give byte-identical files on any machine. Splits are disjoint by construction: a question
belongs to the test split iff the sha256 of its normalised text (:func:`kdlab.data.overlap.normalise_question`)
falls in a fixed 20% bucket, so no question can be in both a train file and a test file, whatever the seeds.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, replace
from pathlib import Path

from kdlab.data.formats import Example, examples_json
from kdlab.data.overlap import normalise_question
from kdlab.errors import KdlabError
from kdlab.io import atomic_write_text

SPLITS = ("train", "test")
MAX_STEPS = 3
TEST_PERCENT = 20  # share of all possible questions that belong to the test split

PEOPLE = [
    ("Tom", "he"),
    ("Maria", "she"),
    ("Sam", "he"),
    ("Lena", "she"),
    ("Omar", "he"),
    ("Priya", "she"),
    ("Jack", "he"),
    ("Emma", "she"),
    ("Luis", "he"),
    ("Aisha", "she"),
    ("Ben", "he"),
    ("Nora", "she"),
    ("Kenji", "he"),
    ("Zoe", "she"),
    ("Ravi", "he"),
    ("Mia", "she"),
]
ITEMS = [
    "apples",
    "marbles",
    "stickers",
    "pencils",
    "books",
    "cookies",
    "stamps",
    "cards",
    "shells",
    "balloons",
    "toy cars",
    "crayons",
    "oranges",
    "beads",
    "coins",
    "cupcakes",
]
CONTAINERS = [("box", "boxes"), ("bag", "bags"), ("jar", "jars"), ("pack", "packs"), ("basket", "baskets")]
GOODS = ["notebooks", "pens", "tickets", "sandwiches", "comic books", "plants", "mugs"]
CONNECTORS = ["", "", "Then ", "Later, ", "After that, "]
FRACTIONS = {2: "half", 3: "a third", 4: "a quarter", 5: "a fifth"}

# (story predicate, rationale predicate); {b} is the amount, {f} another person, {u} the unit
ADD_ACTIONS = {
    "items": [
        ("buys {b} more {u}", "buys {b} more"),
        ("gets {b} more {u} from {f}", "gets {b} more from {f}"),
        ("finds {b} more {u}", "finds {b} more"),
        ("wins {b} more {u} in a game", "wins {b} more"),
    ],
    "money": [
        ("earns {b} more dollars", "earns {b} more"),
        ("gets {b} dollars from {f}", "gets {b} more from {f}"),
        ("finds {b} dollars", "finds {b} more"),
    ],
}
SUB_ACTIONS = {
    "items": [
        ("gives {b} {u} to {f}", "gives {b} to {f}"),
        ("sells {b} of the {u}", "sells {b}"),
        ("loses {b} {u}", "loses {b}"),
        ("uses {b} of the {u}", "uses {b}"),
    ],
    "money": [
        ("spends {b} dollars on a gift", "spends {b}"),
        ("gives {b} dollars to {f}", "gives {b} to {f}"),
        ("pays {b} dollars for lunch", "pays {b}"),
    ],
}
QUESTIONS = {
    "now": ["How many {u} does {h} have now?", "How many {u} does {h} have in total?"],
    "left": ["How many {u} does {h} have left?", "How many {u} does {h} have now?"],
    "": ["How many {u} does {h} have?"],
}


@dataclass(frozen=True)
class Scale:
    """Number ranges of the generated problems (inclusive upper bounds)."""

    start_items: int = 60  # plain starting amount of objects (from 5; from 3 at small scale)
    start_money: int = 100  # plain starting amount of dollars (from 20; from 5 at small scale)
    add: int = 30  # amount added to objects (money: add + 10)
    sub: int = 40  # amount removed
    more: int = 25  # "b more than"
    fewer: int = 30  # "b fewer than"
    times: int = 5  # "b times as many as"
    divisor: int = 12  # packing into containers of b (sharing: divisor - 2 friends)
    product_k: int = 9  # k containers ...
    product_p: int = 15  # ... of p objects each (money: p + 5 dollars an hour)
    low: bool = False


SCALES = {
    "standard": Scale(),
    # single-digit operands: facts a small (or pruned) model can still get right
    "small": Scale(
        start_items=12,
        start_money=20,
        add=9,
        sub=9,
        more=9,
        fewer=9,
        times=3,
        divisor=4,
        product_k=5,
        product_p=5,
        low=True,
    ),
}


@dataclass(frozen=True)
class _State:
    """The running quantity: ``value`` of ``unit`` held by ``holder`` (name, pronoun)."""

    holder: tuple[str, str]
    unit: str
    kind: str  # "items" or "money"
    value: int
    container: tuple[str, str]
    names: tuple[str, ...]  # people already in the story


@dataclass(frozen=True)
class _Step:
    story: str
    rationale: list[str]
    state: _State
    question: str


def _other_person(rng: random.Random, state: _State) -> tuple[str, str]:
    return rng.choice([person for person in PEOPLE if person[0] not in state.names])


def _question(rng: random.Random, tag: str, unit: str, holder: str) -> str:
    return rng.choice(QUESTIONS[tag]).format(u=unit, h=holder)


def _divisors(value: int, largest: int) -> list[int]:
    return [d for d in range(2, largest + 1) if value % d == 0 and value // d >= 2]


# ---- operations: each returns a _Step, or None when it does not apply to the state. ``first`` is True for the
# first operation after a plain start ("Tom has 12 apples."), whose rationale then restates the starting amount.

_SCALE = SCALES["standard"]  # set by generate_arith for the duration of one call


def _add(rng: random.Random, s: _State, first: bool) -> _Step:
    b = rng.randint(2, _SCALE.add if s.kind == "items" else _SCALE.add + 10 * (not _SCALE.low))
    friend = _other_person(rng, s)
    story_pred, rat_pred = rng.choice(ADD_ACTIONS[s.kind])
    return _action(rng, s, first, story_pred, rat_pred, "+", b, s.value + b, friend, "now")


def _sub(rng: random.Random, s: _State, first: bool) -> _Step | None:
    if s.value < 4:
        return None
    b = rng.randint(2, min(s.value - 2, _SCALE.sub))
    friend = _other_person(rng, s)
    story_pred, rat_pred = rng.choice(SUB_ACTIONS[s.kind])
    return _action(rng, s, first, story_pred, rat_pred, "-", b, s.value - b, friend, "left")


def _action(rng, s: _State, first, story_pred, rat_pred, op, b, y, friend, tag) -> _Step:
    name, pronoun = s.holder
    story = f"{rng.choice(CONNECTORS)}{name} {story_pred.format(b=b, u=s.unit, f=friend[0])}."
    rat_pred = rat_pred.format(b=b, f=friend[0])
    lead = f"{name} starts with {s.value} {s.unit} and {rat_pred}" if first else f"{name} {rat_pred}"
    rationale = f"{lead}, so {pronoun} has {s.value} {op} {b} = {y} {s.unit}{' left' if op == '-' else ''}."
    if "{f}" in story_pred:
        s = replace(s, names=s.names + (friend[0],))
    new = replace(s, value=y)
    return _Step(story, [rationale], new, _question(rng, tag, s.unit, name))


def _compare(rng: random.Random, s: _State, first: bool) -> _Step | None:
    """Another person has b more / b fewer / b times as many / a fraction as many; they become the holder."""
    x = s.value
    friend = _other_person(rng, s)
    kind = rng.choice(["more", "fewer", "times", "fraction"])
    if kind == "more":
        b = rng.randint(2, _SCALE.more)
        story_pred, rat_pred, op, y = f"{b} more {s.unit} than", f"{b} more than", "+", x + b
    elif kind == "fewer" and x >= 4:
        b = rng.randint(2, min(x - 2, _SCALE.fewer))
        story_pred, rat_pred, op, y = f"{b} fewer {s.unit} than", f"{b} fewer than", "-", x - b
    elif kind == "times" and x <= 60:
        b = rng.randint(2, min(_SCALE.times, 500 // x))
        story_pred, rat_pred, op, y = f"{b} times as many {s.unit} as", f"{b} times as many as", "x", x * b
    elif kind == "fraction" and _divisors(x, min(5, _SCALE.divisor)):
        b = rng.choice(_divisors(x, min(5, _SCALE.divisor)))
        story_pred, rat_pred, op, y = f"{FRACTIONS[b]} as many {s.unit} as", f"{FRACTIONS[b]} as many as", "/", x // b
    else:
        return None
    name = s.holder[0]
    story = f"{friend[0]} has {story_pred} {name}."
    rationale = [f"{name} has {x} {s.unit}."] if first else []
    rationale.append(f"{friend[0]} has {rat_pred} {name}, so {friend[1]} has {x} {op} {b} = {y} {s.unit}.")
    new = replace(s, holder=friend, value=y, names=s.names + (friend[0],))
    return _Step(story, rationale, new, _question(rng, "", s.unit, friend[0]))


def _share(rng: random.Random, s: _State, first: bool) -> _Step | None:
    """Final step only: share equally among b friends, or (objects) pack into containers of b."""
    name, pronoun = s.holder
    x = s.value
    if s.kind == "items" and rng.random() < 0.5:
        if not _divisors(x, _SCALE.divisor):
            return None
        b = rng.choice(_divisors(x, _SCALE.divisor))
        single, plural = s.container
        story = (
            f"{rng.choice(CONNECTORS)}{name} puts all the {s.unit} into {plural}, with {b} {s.unit} in each {single}."
        )
        lead = f"{name} starts with {x} {s.unit} and puts them" if first else f"{name} puts {x} {s.unit}"
        rationale = f"{lead} into {plural} of {b}, so {pronoun} fills {x} / {b} = {x // b} {plural}."
        question = f"How many {plural} does {name} fill?"
        return _Step(story, [rationale], replace(s, value=x // b, unit=plural), question)
    if not _divisors(x, _SCALE.divisor - 2 * (not _SCALE.low)):
        return None
    b = rng.choice(_divisors(x, _SCALE.divisor - 2 * (not _SCALE.low)))
    what = "money" if s.kind == "money" else s.unit
    story = f"{rng.choice(CONNECTORS)}{name} shares the {what} equally among {b} friends."
    lead = f"{name} starts with {x} {s.unit} and shares them" if first else f"{name} shares {x} {s.unit}"
    rationale = f"{lead} equally among {b} friends, so each friend gets {x} / {b} = {x // b} {s.unit}."
    return _Step(story, [rationale], replace(s, value=x // b), f"How many {s.unit} does each friend get?")


def _buy(rng: random.Random, s: _State, first: bool) -> _Step | None:
    """Money only, two steps: k goods at p dollars each cost k x p, paid from the money held."""
    if s.kind != "money":
        return None
    k, p = rng.randint(2, 6), rng.randint(2, 15)
    if k * p > s.value - 2:
        return None
    name, pronoun = s.holder
    goods = rng.choice(GOODS)
    cost, y = k * p, s.value - k * p
    story = f"{rng.choice(CONNECTORS)}{name} buys {k} {goods} that cost {p} dollars each."
    lead = (
        f"{name} starts with {s.value} dollars, so {pronoun}" if first else f"{name} pays {cost} dollars, so {pronoun}"
    )
    rationale = [f"The {goods} cost {k} x {p} = {cost} dollars.", f"{lead} has {s.value} - {cost} = {y} dollars left."]
    return _Step(story, rationale, replace(s, value=y), _question(rng, "left", "dollars", name))


# (operation, number of steps, final step only)
OPERATIONS = [(_add, 1, False), (_sub, 1, False), (_compare, 1, False), (_share, 1, True), (_buy, 2, False)]


def _start(rng: random.Random, product: bool) -> tuple[_State, str, list[str], str]:
    """Opening sentence, rationale (empty or one step) and question if nothing follows.

    The opening is a plain amount (no step) or, when ``product``, a multiplication (one step).
    """
    holder = rng.choice(PEOPLE)
    kind = "money" if rng.random() < 0.3 else "items"
    unit = "dollars" if kind == "money" else rng.choice(ITEMS)
    container = rng.choice(CONTAINERS)
    name, pronoun = holder
    if not product:
        value = (
            rng.randint(3 if _SCALE.low else 5, _SCALE.start_items)
            if kind == "items"
            else rng.randint(5 if _SCALE.low else 20, _SCALE.start_money)
        )
        verb = rng.choice(["has", "has", "owns"] if kind == "items" else ["has", "saves", "has"])
        state = _State(holder, unit, kind, value, container, (name,))
        return state, f"{name} {verb} {value} {unit}.", [], _question(rng, "", unit, name)
    if kind == "money":
        k, p = (
            rng.randint(2, _SCALE.product_k - 1 * (not _SCALE.low)),
            rng.randint(2 if _SCALE.low else 5, _SCALE.product_p + 5),
        )
        story = f"{name} earns {p} dollars an hour and works for {k} hours."
        rationale = f"{name} earns {p} dollars for each of {k} hours, so {pronoun} earns {k} x {p} = {k * p} dollars."
        question = f"How many dollars does {name} earn?"
    else:
        k, p = rng.randint(2, _SCALE.product_k), rng.randint(2 if _SCALE.low else 3, _SCALE.product_p)
        single, plural = container
        story = f"{name} buys {k} {plural} of {unit} with {p} {unit} in each {single}."
        rationale = f"{name} buys {k} {plural} of {p} {unit}, so {pronoun} has {k} x {p} = {k * p} {unit}."
        question = _question(rng, "now", unit, name)
    return _State(holder, unit, kind, k * p, container, (name,)), story, [rationale], question


def _problem(rng: random.Random, steps: int) -> Example:
    """One problem needing exactly ``steps`` computations."""
    product_start = rng.random() < 0.3
    state, opening, rationale, question = _start(rng, product_start)
    story = [opening]
    remaining = steps - len(rationale)
    while remaining > 0:
        candidates = [
            (op, cost)
            for op, cost, final_only in OPERATIONS
            if cost <= remaining and (not final_only or cost == remaining)
        ]
        rng.shuffle(candidates)
        for op, cost in candidates:  # noqa: B007 (the chosen operation's cost is used after the loop)
            step = op(rng, state, first=not rationale)
            if step is not None:
                break
        else:  # unreachable: _add always applies
            raise AssertionError("no operation applies")
        story.append(step.story)
        rationale += step.rationale
        state, question = step.state, step.question
        remaining -= cost
    answer = state.value
    instruction = " ".join(story + [question])
    output = " ".join(rationale + [f"The answer is {answer}."])
    return Example(instruction=instruction, output=output, input="", answer=str(answer))


def is_test_question(question: str) -> bool:
    """True iff the question belongs to the test split: sha256 of its normalised text in a fixed 20% bucket."""
    digest = hashlib.sha256(normalise_question(question).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 100 < TEST_PERCENT


def generate_arith(
    n: int, seed: int, split: str = "train", max_steps: int = 3, min_steps: int = 1, scale: str = "standard"
) -> list[Example]:
    """``n`` distinct problems of the ``split`` ("train" or "test"), each with ``min_steps``..``max_steps`` steps.

    The number of steps is drawn uniformly per problem. Problems of the other split and repeated questions are
    skipped, so a file has no duplicate questions and train and test files never share one. ``scale`` sets the
    number ranges (:data:`SCALES`): ``standard`` (two-digit amounts) or ``small`` (single-digit operands).
    """
    global _SCALE
    if scale not in SCALES:
        raise KdlabError(f"unknown scale {scale!r}: expected one of {', '.join(SCALES)}")
    if split not in SPLITS:
        raise KdlabError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise KdlabError(f"number of problems must be a positive integer, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise KdlabError(f"seed must be an integer, got {seed!r}")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (min_steps, max_steps)) or not (
        1 <= min_steps <= max_steps <= MAX_STEPS
    ):
        raise KdlabError(
            f"bad step range min_steps={min_steps!r} max_steps={max_steps!r}: need 1 <= min <= max <= {MAX_STEPS}"
        )

    key = f"kdlab.synth.arith|{seed}|{split}|{min_steps}|{max_steps}" + ("" if scale == "standard" else f"|{scale}")
    key = key.encode("utf-8")
    previous, _SCALE = _SCALE, SCALES[scale]
    try:
        return _generate(key, n, split, min_steps, max_steps)
    finally:
        _SCALE = previous


def _generate(key: bytes, n: int, split: str, min_steps: int, max_steps: int) -> list[Example]:
    rng = random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "big"))
    want_test = split == "test"
    examples: list[Example] = []
    seen: set[str] = set()
    for _ in range(50 * n + 1000):
        example = _problem(rng, rng.randint(min_steps, max_steps))
        normalised = normalise_question(example.instruction)
        if is_test_question(example.instruction) != want_test or normalised in seen:
            continue
        seen.add(normalised)
        examples.append(example)
        if len(examples) == n:
            return examples
    raise KdlabError(
        f"could only generate {len(examples)} distinct {split} problems of the {n} requested "
        f"(steps {min_steps}..{max_steps}); ask for fewer"
    )


def write_synth(
    path: str | Path,
    n: int,
    seed: int,
    split: str,
    max_steps: int = 3,
    min_steps: int = 1,
    scale: str = "standard",
    overwrite: bool = True,
) -> bool:
    """Generate with :func:`generate_arith` and write the problems as LLM-Adapters JSON (atomically).

    With ``overwrite=False`` an existing file is kept when it already holds exactly these problems (returns False:
    nothing written) and refused otherwise, as is a folder at ``path`` (:class:`KdlabError`). Returns True when
    the file was written.
    """
    from kdlab.outputs import check_output_file

    text = examples_json(generate_arith(n, seed, split, max_steps=max_steps, min_steps=min_steps, scale=scale))
    path = Path(path)
    if not overwrite and path.is_file():
        try:
            if path.read_text(encoding="utf-8") == text:
                return False
        except (OSError, UnicodeDecodeError):
            pass
    check_output_file(path, "--out", overwrite=overwrite)
    atomic_write_text(path, text)
    return True
