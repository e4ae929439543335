"""Problems found by a config validator, each carrying its key, bad value and fix, to be printed one per line."""

from __future__ import annotations

from typing import Any

Problem = tuple[str, Any, str, str]
"""``(key, value, problem, fix)``, the key relative to the section that found it ("" for the field itself)."""


class Problems(ValueError):
    """One or more problems found by a validator: ``(key, value, problem, fix)`` with key relative to it."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(f"{k}: {p}" for k, _, p, _ in problems))
        self.problems = problems


def raise_if(problems: list[Problem]) -> None:
    """Raise :class:`Problems` when ``problems`` is not empty."""
    if problems:
        raise Problems(problems)
