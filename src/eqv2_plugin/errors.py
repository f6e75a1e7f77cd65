"""Exceptions shared across the package."""
from __future__ import annotations


class UserInputError(ValueError):
    """An error in what the user asked for (config, CLI arguments, input data).

    The message names the offending field and how to fix it; the CLI prints it
    without a traceback.
    """
