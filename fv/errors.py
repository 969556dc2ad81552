"""One exception type for every user-facing failure, so the CLI can print it without a traceback."""


class FVError(Exception):
    """A problem with the user's input or environment, worded as: what was expected, what was found, what to do."""
