"""A validation split disjoint from training and test data, for selecting settings without reading the test set.

:func:`validation_split` takes either a seeded slice of the training examples (removed from training) or a separate
validation file (training examples asking one of its questions are removed from training), and drops validation
examples that ask a question of the test sets. Questions are compared after :func:`kdlab.data.overlap.normalise_question`
(case, spaces and punctuation folded), the rule ``kdlab data overlap`` uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kdlab.data.formats import Example
from kdlab.data.overlap import normalise_question, question_text
from kdlab.errors import KdlabError


@dataclass
class Split:
    train: list[Example]
    validation: list[Example]
    removed_from_train: int  # training examples that ask a validation question (file mode)
    dropped_test_overlap: int  # validation examples that ask a test question


def _questions(examples: list[Example]) -> set[str]:
    return {normalise_question(question_text(example)) for example in examples}


def validation_split(
    train: list[Example],
    n: int,
    seed: int,
    validation: list[Example] | None = None,
    test: list[Example] = (),
    where: str = "training data",
) -> Split:
    """(train, validation) with no question in common with each other or with ``test``.

    Without ``validation``: ``n`` training examples chosen by a permutation seeded with ``seed`` (the rest, in file
    order, stay for training). With it: all of ``validation``, and the training examples whose question is not in it.
    """
    tested = _questions(list(test))
    if validation is None:
        if n >= len(train):
            raise KdlabError(f"{where}: {n} validation examples would leave no training data ({len(train)} examples)")
        chosen = set(np.random.default_rng(seed).permutation(len(train))[:n].tolist())
        held = [example for i, example in enumerate(train) if i in chosen]
        rest = [example for i, example in enumerate(train) if i not in chosen]
        asked = _questions(held)
        removed = sum(normalise_question(question_text(example)) in asked for example in rest)
        rest = [example for example in rest if normalise_question(question_text(example)) not in asked]
    else:
        held = list(validation)
        asked = _questions(held)
        rest = [example for example in train if normalise_question(question_text(example)) not in asked]
        removed = len(train) - len(rest)
    kept = [example for example in held if normalise_question(question_text(example)) not in tested]
    if not kept:
        raise KdlabError(f"{where}: every validation example asks a question of the test set")
    if not rest:
        raise KdlabError(f"{where}: no training example is left outside the validation split")
    return Split(rest, kept, removed, len(held) - len(kept))
