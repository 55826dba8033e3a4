"""User-facing errors: one sentence, turned into exit code 2 by every CLI."""
from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable[..., object])


class UserError(Exception):
    """A mistake the user can fix (bad name, missing file, bad range); the message is one sentence."""


def cli_entry(main: F) -> F:
    """Wrap a CLI ``main``: a :class:`UserError` prints ``error: <sentence>`` and exits with code 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper  # type: ignore[return-value]
