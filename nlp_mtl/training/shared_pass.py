"""Tasks that label the same examples, trained from one encoder pass.

CoNLL-2003 carries POS, chunk and NER columns on the same sentences; intent and slot data carry
a label and a tag sequence per utterance. As separate tasks the encoder runs once per layer.
Declared in ``training.shared_pass``, such tasks form one *training unit*: the sampler draws the
unit, a batch holds each member's labels for the same examples, one encoder pass feeds every
member's head and the loss is the members' ``loss_weight``-weighted sum. Everything after
training (validation, reports, export, ``predict``) still sees separate tasks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.pipeline import PreparedTask
from ..errors import ConfigError


@dataclass(frozen=True)
class TrainUnit:
    """What the sampler draws: one task, or a shared-pass group (named by its members)."""

    members: tuple[str, ...]

    @property
    def name(self) -> str:
        return "+".join(self.members)

    @property
    def shared(self) -> bool:
        return len(self.members) > 1


def train_units(tasks: list[PreparedTask], groups: list[list[str]], adapter_of: dict[str, str | None],
                where: str) -> list[TrainUnit]:
    """The units in task order (a group where its first member is); every group checked: known
    members, each in one group only, the same train examples and the same adapter."""
    by_name = {t.name: t for t in tasks}
    grouped: dict[str, int] = {}
    for g, members in enumerate(groups):
        at = f"{where}: training.shared_pass[{g}]"
        if len(members) < 2:
            raise ConfigError(f"{at}: expected at least two tasks that label the same examples, got {members}.")
        for name in members:
            if name not in by_name:
                raise ConfigError(f"{at}: '{name}' is not a task of this experiment (tasks: {', '.join(by_name)}).")
            if name in grouped:
                raise ConfigError(f"{at}: '{name}' is already in training.shared_pass[{grouped[name]}].")
            grouped[name] = g
        first = by_name[members[0]]
        for name in members[1:]:
            _check_same_examples(first, by_name[name], at)
            if adapter_of[name] != adapter_of[first.name]:
                raise ConfigError(f"{at}: '{first.name}' and '{name}' train different adapters "
                                  f"('{adapter_of[first.name]}', '{adapter_of[name]}'); one encoder pass needs one "
                                  "(put them in one adapters.groups entry).")
    units, placed = [], set()
    for t in tasks:
        if t.name not in grouped:
            units.append(TrainUnit((t.name,)))
        elif grouped[t.name] not in placed:
            placed.add(grouped[t.name])
            units.append(TrainUnit(tuple(groups[grouped[t.name]])))
    return units


def _check_same_examples(a: PreparedTask, b: PreparedTask, where: str) -> None:
    x, y = a.encoded["train"], b.encoded["train"]
    if len(x) != len(y):
        raise ConfigError(f"{where}: '{a.name}' and '{b.name}' do not label the same train examples "
                          f"({len(x)} against {len(y)}).")
    same_lengths = np.array_equal(x.lengths, y.lengths)
    if not same_lengths or not np.array_equal(x.input_ids.flat, y.input_ids.flat):
        lengths_differ = np.flatnonzero(x.lengths != y.lengths) if not same_lengths else []
        first = int(lengths_differ[0]) if len(lengths_differ) else next(
            i for i in range(len(x)) if not np.array_equal(x.input_ids[i], y.input_ids[i]))
        raise ConfigError(f"{where}: '{a.name}' and '{b.name}' do not label the same train examples: example "
                          f"{first + 1} tokenises differently (same file and word column, and the same "
                          "data.limit, are needed).")
