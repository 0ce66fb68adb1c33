"""Which class a segment's name asks for: the one matching rule every model family uses."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

__all__ = ["class_for_segment_name", "resolve_target_class"]


def class_for_segment_name(classes: Sequence[str], segment_name: str, *,
                           synonyms: Mapping[str, Sequence[str]] | None = None,
                           preferred: Sequence[str] = ()) -> int:
    """The class index a segment's name asks for.

    An exact class name (case-insensitive) wins; otherwise class names and their synonyms are
    matched as words, so qualifiers such as left/right or numbers are ignored; when several
    classes match, the ``preferred`` ones win ("renal mass" is a tumor, not a kidney, when
    tumor is preferred).

    Args:
        classes: Class names in output-channel order.
        segment_name: e.g. "Left kidney", "Kidney tumor".
        synonyms: Per class name, further words that name it.
        preferred: Classes that win a tie between several matches.

    Returns:
        The class index.

    Raises:
        ValueError: If no class matches or several equally do (the message lists the classes).
    """
    synonyms = synonyms or {}
    lowered = [name.lower() for name in classes]
    if segment_name.strip().lower() in lowered:
        return lowered.index(segment_name.strip().lower())
    words = set(re.findall(r"[a-z]+", segment_name.lower()))
    hits = {index for index, name in enumerate(classes)
            if set(re.findall(r"[a-z]+", name.lower())) <= words and re.findall(r"[a-z]+", name.lower())
            or words & {w.lower() for w in synonyms.get(name, ())}}
    hits = {index for index in hits if classes[index] in preferred} or hits
    if len(hits) != 1:
        reason = "matches no class" if not hits else "matches several classes"
        raise ValueError(f"segment name {segment_name!r} {reason}; choose the target class from "
                         f"{', '.join(classes)}")
    return hits.pop()


def resolve_target_class(classes: Sequence[str], target_class: int | str | None, segment_name: str | None = None, *,
                         match: Callable[[str], int] | None = None) -> int:
    """The class c to explain: the one rule for the command line, cohorts and the Slicer Logic.

    Args:
        classes: The model's class names, in output-channel order.
        target_class: A class index (int or digits, e.g. "1"), a class name or a name that
            ``match`` understands ("Tumor"); None: read from ``segment_name``.
        segment_name: The segment's name, used when ``target_class`` is None.
        match: The model's segment-name rule (default: ``class_for_segment_name`` on ``classes``).

    Returns:
        The class index, 0..len(classes) - 1.

    Raises:
        ValueError: If the index is out of range, the name matches no class, or neither is
            given (each message lists the classes to choose from).
    """
    match = match or (lambda name: class_for_segment_name(classes, name))
    if target_class is None:
        if not segment_name:
            raise ValueError(f"choose a target class ({', '.join(classes)}) or a segment whose name names one")
        return match(segment_name)
    if isinstance(target_class, str) and not re.fullmatch(r"[+-]?\d+", target_class.strip()):
        return match(target_class)
    index = int(target_class)
    if not 0 <= index < len(classes):
        raise ValueError(f"target class {index} is out of range 0..{len(classes) - 1} ({', '.join(classes)})")
    return index
