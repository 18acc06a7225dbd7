"""Tag schemes: everything is normalised to IOB2, which is what seqeval's strict mode scores."""

from __future__ import annotations

from collections.abc import Sequence


def _split(tag: str) -> tuple[str, str]:
    if tag == "O":
        return "O", ""
    if len(tag) > 2 and tag[1] in "-_" and tag[0] in "BIESL U":
        return tag[0], tag[2:]
    return "", tag


def check_tag(tag: str, scheme: str) -> str | None:
    """Return an error description if ``tag`` is not valid in ``scheme``, else None."""
    if scheme == "none":
        return None
    prefix, _ = _split(tag)
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
        prefix, kind = _split(tag)
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
