"""The one exception type for mistakes a user can make (bad path, unknown name, bad shape, bad file)."""

from __future__ import annotations

import difflib
from typing import Iterable


class SpikeformerError(Exception):
    """A user-facing error: the message says what was wrong and what to do.

    The CLI prints it as one line without a traceback and exits with status 2.
    """


class ModelOptionError(SpikeformerError, TypeError):
    """An option a model does not take: a user error of ours, and the ``TypeError`` timm's contract expects of a
    model factory given an unknown keyword."""


def suggest(name: str, choices: Iterable[str], n: int = 3) -> str:
    """A ' Did you mean ...?' hint listing the closest names, or '' when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
