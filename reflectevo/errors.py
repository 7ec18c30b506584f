"""One exception type for bad user input: its message is the single line a user sees."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ReflectEvoError(Exception):
    """Bad input (params key, file line, unknown name). The CLI prints it as one line and exits 2."""


def one_line(message: str) -> str:
    """A message as one line (a YAML parser's or a library's message may span several)."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ' Did you mean X?' when a close match exists, else ''."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def unknown(kind: str, name: str, choices: Iterable[str], where: str = "") -> ReflectEvoError:
    """Build the standard 'unknown X' error naming the valid choices."""
    choices = sorted(str(c) for c in choices)
    loc = f"{where}: " if where else ""
    shown = ", ".join(choices) if len(choices) <= 40 else ", ".join(choices[:40]) + f", ... ({len(choices)} in all)"
    return ReflectEvoError(f"{loc}unknown {kind} {name!r}.{did_you_mean(name, choices)} Valid: {shown}")
