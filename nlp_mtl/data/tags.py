"""Tag schemes: everything is normalised to IOB2, which is what seqeval's strict mode scores."""

from __future__ import annotations

from collections.abc import Sequence


def split_tag(tag: str) -> tuple[str, str]:
    """(prefix, entity type): ('B', 'PER') for B-PER, ('O', '') for O, ('', tag) for a plain tag."""
    if tag == "O":
        return "O", ""
    if len(tag) > 2 and tag[1] in "-_" and tag[0] in "BIESL U":
        return tag[0], tag[2:]
    return "", tag


def check_tag(tag: str, scheme: str) -> str | None:
    """Return an error description if ``tag`` is not valid in ``scheme``, else None."""
    if scheme == "none":
        return None
    prefix, _ = split_tag(tag)
    allowed = {"iob1": "BI", "iob2": "BI", "bioes": "BIES"}[scheme]
    if prefix == "O":
        return None
    if not prefix or prefix not in allowed:
        prefixes = "/".join(allowed)
        return f"tag '{tag}' is not 'O' or {prefixes}-TYPE as the {scheme.upper()} scheme expects"
    return None


def to_iob2(tags: Sequence[str], scheme: str) -> list[str]:
    if scheme in ("iob2", "none"):
        return list(tags)
    out: list[str] = []
    previous_type = None
    for tag in tags:
        prefix, kind = split_tag(tag)
        if prefix == "O":
            out.append("O")
            previous_type = None
            continue
        if scheme == "iob1":
            # IOB1 uses B- only between two adjacent chunks of one type; an I- that starts a
            # chunk becomes B- in IOB2.
            starts = prefix == "B" or previous_type != kind
            out.append(("B-" if starts else "I-") + kind)
        else:  # bioes
            out.append(("B-" if prefix in "BS" else "I-") + kind)
        previous_type = kind
    return out


def sequence_problem(tags: Sequence[str], scheme: str) -> tuple[int, str] | None:
    """The first tag that breaks ``scheme``'s sequence rules, as (index, description), else None.

    IOB2 and BIOES: an I- (BIOES: also E-) continues an entity, so it must follow a B- or I- of
    the same type; after 'O', at the start, or after another type it is an error. IOB1 allows an
    I- to start an entity, and 'none' has no rules.
    """
    if scheme not in ("iob2", "bioes"):
        return None
    previous_prefix, previous_type = "O", ""
    for i, tag in enumerate(tags):
        prefix, kind = split_tag(tag)
        continues = "I" if scheme == "iob2" else "IE"
        if prefix in continues and (previous_prefix not in ("B", "I") or previous_type != kind):
            after = "the start of the sentence" if i == 0 else f"'{tags[i - 1]}'"
            return i, (f"tag '{tag}' after {after}: an {prefix}- tag continues an entity of its type, which "
                       f"{scheme.upper()} starts with B-")
        previous_prefix, previous_type = prefix, kind
    return None


def repair(tags: Sequence[str], scheme: str) -> tuple[list[str], int]:
    """``tags`` with every tag that continues no entity made to start one (I- -> B-, BIOES E- -> S-),
    and how many were changed (``repair: true`` in the spec's data section)."""
    out, changed = list(tags), 0
    while (problem := sequence_problem(out, scheme)) is not None:
        i = problem[0]
        prefix, kind = split_tag(out[i])
        out[i] = ("S-" if prefix == "E" else "B-") + kind
        changed += 1
    return out, changed
