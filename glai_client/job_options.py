"""`glai submit`'s options turned into an API request body, with one clear error per bad value.

Only the settings given on the command line (or in ``--config``) are sent: everything else is left to
the API, which fills in glai_core's defaults. A value that cannot be parsed raises ``BadInput`` naming
the option, which the CLI prints as one line before exiting with status 2 (no traceback).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class BadInput(ValueError):
    """A command-line value that cannot be used; the message names the option and the value."""


@dataclass(frozen=True)
class JobOptions:
    """What ``glai submit`` was given; None means "not given: keep the default"."""

    config: Path | None = None
    hidden: str | None = None
    reduction_factor: str | None = None
    structural_epochs: int | None = None
    quantitative_epochs: int | None = None
    baseline: bool | None = None
    pruning: bool | None = None
    sparsities: str | None = None
    seed: int | None = None
    time_limit: int | None = None
    name: str | None = None
    tags: tuple[str, ...] = ()


def _items(option: str, text: str, example: str) -> list[str]:
    items = [item.strip() for item in text.split(",")]
    if not items or any(not item for item in items):
        raise BadInput(f"{option}: {text!r} has an empty entry; give comma-separated values, e.g. {example}")
    return items


def int_list(option: str, text: str, example: str = "256 or 512,256") -> list[int]:
    """Comma-separated positive integers."""
    values = []
    for item in _items(option, text, example):
        try:
            value = int(item)
        except ValueError:
            raise BadInput(f"{option}: {item!r} is not a whole number (expected e.g. {example})") from None
        if value < 1:
            raise BadInput(f"{option}: {value} must be at least 1 (expected e.g. {example})")
        values.append(value)
    return values


def number(option: str, text: str, example: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BadInput(f"{option}: {text!r} is not a number (expected e.g. {example})") from None
    if not math.isfinite(value):
        raise BadInput(f"{option}: {text!r} is not a finite number (expected e.g. {example})")
    return value


def number_list(option: str, text: str, example: str) -> list[float]:
    return [number(option, item, example) for item in _items(option, text, example)]


def auto_or_number(option: str, text: str) -> str | float:
    """``auto`` (parameter-matched), ``adaptive`` (sized by the data) or a number."""
    word = text.strip().lower()
    return word if word in ("auto", "adaptive") else number(option, text, "auto, adaptive or 4")


def read_config(path: Path) -> dict[str, Any]:
    """The ``--config`` file: one JSON object (an API request body without ``dataset_id``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInput(f"--config: {path}: no such file") from None
    except IsADirectoryError:
        raise BadInput(f"--config: {path} is a directory, not a JSON file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"--config: cannot read {path}: {exc}") from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInput(f"--config: {path} is not valid JSON: {exc.msg} at line {exc.lineno}, "
                       f"column {exc.colno}") from None
    if not isinstance(body, dict):
        raise BadInput(f"--config: {path} must hold a JSON object (a job request body), "
                       f"not {type(body).__name__}")
    return body


def job_body(options: JobOptions) -> dict[str, Any]:
    """The ``--config`` body (if any) overlaid with the options that were given, and nothing else."""
    body: dict[str, Any] = read_config(options.config) if options.config else {}

    def section(name: str) -> dict[str, Any]:
        value = body.setdefault(name, {})
        if not isinstance(value, dict):
            raise BadInput(f"--config: '{name}' must be a JSON object, not {type(value).__name__}")
        return value

    if options.hidden is not None:
        section("architecture")["hidden"] = int_list("--hidden", options.hidden)
    if options.reduction_factor is not None:
        section("architecture")["reduction_factor"] = auto_or_number("--reduction-factor",
                                                                     options.reduction_factor)
    if options.structural_epochs is not None:
        # max_epochs only: a default min_epochs above it simply yields (the API and glai_core agree).
        section("structural")["max_epochs"] = options.structural_epochs
    if options.quantitative_epochs is not None:
        section("quantitative")["epochs"] = options.quantitative_epochs
    if options.baseline is not None:
        section("baseline")["enabled"] = options.baseline
    if options.pruning is not None:
        section("pruning")["enabled"] = options.pruning
    if options.sparsities is not None:
        section("pruning")["sparsities"] = number_list("--sparsities", options.sparsities, "0.5,0.9")
    if options.seed is not None:
        body["seed"] = options.seed
    if options.time_limit is not None:
        body["time_limit_s"] = options.time_limit
    if options.name is not None:
        body["name"] = options.name
    if options.tags:
        body["tags"] = [*(body.get("tags") or []), *options.tags]
    return body
