"""The exceptions of every user-facing failure, so the CLI can print each as one line without a traceback, and the
exit code every ``fv`` command gives for it.

Exit codes, the same in every command (``fv --help`` says them): 0 done and every check passed; 1 a check failed or
the command stopped on an ``FVError`` (a missing file, a model that cannot load, a non-finite value, ...); 2 a usage
error (``UsageError``: options that cannot go together or a value out of range, as argparse's own); 4 a refusal at
the door (``fv.parity.preflight.PreflightFailed``: inputs the reference cannot run, as a pytest session's); 130
interrupted. pytest sessions keep pytest's own codes.
"""

EXIT_FAILED, EXIT_USAGE, EXIT_REFUSED, EXIT_INTERRUPTED = 1, 2, 4, 130


class FVError(Exception):
    """A problem with the user's input or environment, worded as: what was expected, what was found, what to do."""

    exit_code = EXIT_FAILED


class UsageError(FVError):
    """Options that cannot go together, or an option's value out of its range: the command ran nothing."""

    exit_code = EXIT_USAGE


class TokenizerUnavailable(FVError):
    """A tokenizer fv does not ship (the real Llama 3 one of ``tiny-llama3tok``) is not on this machine. The message
    names the one command that fetches it; a pytest session counts the tests that need it as skipped with it."""
