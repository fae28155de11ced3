"""What every `longmix` command shares: options generated from a pydantic model's fields, so that
a config is declared once (each field becomes an --option with the field's type, default and
description, as torchtitan derives its command line from its config dataclasses), and how a
command refuses."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NoReturn

import typer
from pydantic import BaseModel
from rich.console import Console

_console = Console()


def refuse(error: Exception | str, code: int = 1, what: str = "refused") -> NoReturn:
    """Print why the command stops, in one piece (a path or a command in it is never broken
    across lines, so it can be copied), and exit with `code`."""
    _console.print(f"[red]{what}:[/] {error}", highlight=False, soft_wrap=True)
    raise typer.Exit(code) from (error if isinstance(error, Exception) else None)


def options_from(model: type[BaseModel], *, skip: tuple[str, ...] = ()) -> Callable:
    """Decorate `command(values: dict)` into a Typer command whose options are `model`'s fields
    (less `skip`, which the command line cannot spell, such as a dict); `values` holds them
    keyed by field name, for `model.model_validate` to check."""

    def decorate(command: Callable[[dict[str, Any]], None]) -> Callable:
        params = []
        own = model.__annotations__  # the model's own fields first, then those it inherits
        for name, field in sorted(model.model_fields.items(), key=lambda f: f[0] not in own):
            if name in skip:
                continue
            default = ... if field.is_required() else field.get_default(call_default_factory=True)
            params.append(inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, annotation=field.annotation,
                default=typer.Option(default, help=field.description)))

        def generated(**values: Any) -> None:
            command(values)

        generated.__name__, generated.__doc__ = command.__name__, command.__doc__
        generated.__signature__ = inspect.Signature(params)
        return generated

    return decorate
