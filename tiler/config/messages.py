"""Config messages: pydantic's validation errors turned into one line per problem naming key, value and fix.

A line reads ``<source>: <dotted.key>: <problem> (got <value>); fix: <fix>``. Values are shown the way
the user wrote them (lists, not tuples), cut to a readable length, with credentials redacted.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from tiler.config.problems import Problems
from tiler.config.schema import section_at
from tiler.errors import ConfigError

MISSING = object()
"""Stands for "no value given" (a missing key), shown as nothing."""


def show(value: Any) -> str:
    """Format a bad value the way the user wrote it (lists, not tuples), cut to a readable length."""
    if value is MISSING:
        return ""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    from tiler.redact import redact

    text = redact(json.dumps(value, default=str))  # a signed URL or credential never reaches a message
    return text if len(text) <= 80 else text[:77] + "..."


_TYPE_HINTS: dict[str, tuple[str, str]] = {
    "int_type": ("must be a whole number", "write an integer, e.g. 256"),
    "int_parsing": ("must be a whole number", "write an integer, e.g. 256"),
    "int_from_float": ("must be a whole number", "write an integer, e.g. 256"),
    "float_type": ("must be a number", "write a number, e.g. 0.5"),
    "float_parsing": ("must be a number", "write a number, e.g. 0.5"),
    "bool_type": ("must be true or false", "write true or false"),
    "bool_parsing": ("must be true or false", "write true or false"),
    "string_type": ("must be a string", "write a string (quote it if YAML reads it as something else)"),
    "string_too_short": ("must not be empty", "write a non-empty string"),
    "tuple_type": ("must be a list", "write a YAML list, e.g. [256, 256]"),
    "list_type": ("must be a list", "write a YAML list, e.g. [256, 256]"),
    "dict_type": ("must be a mapping", "write a section of `key: value` lines"),
    "model_type": ("must be a section", "write a section of `key: value` lines"),
    "model_attributes_type": ("must be a section", "write a section of `key: value` lines"),
}


def _dotted(loc: Sequence[Any]) -> str:
    """A pydantic location as the key the user wrote: ``tiling.tile``, ``model.tta_flips[0]``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "<top level>"


def _lines(exc: ValidationError, source: str) -> list[str]:
    """One ``source: key: problem (got value); fix: ...`` line per problem of ``exc``."""
    lines: list[str] = []
    for err in exc.errors():
        loc, kind = tuple(err["loc"]), err["type"]
        error = err.get("ctx", {}).get("error")
        if isinstance(error, Problems):
            for key, value, problem, fix in error.problems:
                dotted = _dotted(loc)
                full = key if not loc else (f"{dotted}.{key}" if key else dotted)
                got = f" (got {show(value)})" if value is not None else ""
                lines.append(f"{source}: {full}: {problem}{got}; fix: {fix}")
            continue
        key, value = _dotted(loc), err.get("input", MISSING)
        if kind == "missing":
            parent = _dotted(loc[:-1])
            lines.append(
                f"{source}: {key}: required key is missing; fix: add `{loc[-1]}: <value>` under {parent}"
            )
            continue
        if kind == "extra_forbidden":
            section = section_at(loc[:-1])
            valid = sorted(section.model_fields) if section is not None else []
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            lines.append(
                f"{source}: {key}: unknown key{hint} (got {show(value)}); "
                f"fix: remove it, or use one of: {', '.join(valid)}"
            )
            continue
        ctx = err.get("ctx", {})
        if kind == "literal_error":
            problem, fix = f"must be one of {ctx.get('expected')}", f"use one of {ctx.get('expected')}"
        elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
            op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[
                kind
            ]
            bound = next(iter(ctx.values()))
            problem, fix = f"must be {op} {bound}", f"use a value {op} {bound}"
        else:
            problem, fix = _TYPE_HINTS.get(
                kind, (err["msg"], "see configs/example.yaml for the allowed values")
            )
        lines.append(f"{source}: {key}: {problem} (got {show(value)}); fix: {fix}")
    return lines


def validation_error(exc: ValidationError, source: str) -> ConfigError:
    """The ConfigError for a failed validation: a count, then one line per problem."""
    lines = _lines(exc, source)
    head = f"{len(lines)} problem{'s' if len(lines) != 1 else ''} in the configuration:\n"
    return ConfigError(head + "\n".join(lines))
