"""Preflights: the inputs that would silently mislead a session, caught at its door in one line each.

One mechanism serves every entry point. A check returns a ``Finding`` (one line: what was found, what was
expected, what to do) or None. The pytest plugin runs them in ``pytest_configure`` and stops the session with
exit code 4 (pytest's usage error) before any test; ``fv env check --fixed-trials`` prints the same words as FAIL
lines; ``fv trials make`` and ``fv trials verify`` exit 4 on a refusal and print a warning otherwise.

The checks (docs/preflight.md):

- ``trials tokenizer``: the trials were made with another tokenizer. Token ids decide: every trial's prompt and
  target are tokenized again with the model's tokenizer, as ``fv trials verify`` does, and compared with the
  file; the file's ``model_name_for_tokenizer`` only names the culprit (names differ where ids agree).
- ``BOS text``: the prompts start with the reference's BOS text, the literal ``<|endoftext|>`` (SPEC section 2),
  while the tokenizer adds its own BOS: the model would read BOS, then that string as plain text.
- ``src BOS rule``: the prompts lack (or carry) the BOS text where the src in use writes it (or does not). The
  upstream reference writes it exactly on a tokenizer that adds no BOS; a fork that never writes it makes the
  "lacks" side silent. The rule is the src's behaviour, found by ``Reference.bos_text_rule``.
- ``reference family``: the reference cannot run this model: its loader has no branch for it, its per-family
  code paths have none, or it splits heads as ``resid_dim // n_heads`` where heads x head_dim != hidden.
  Found by probing the src in use on a weightless copy of the model (``fv.reference.capability``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from fv.errors import EXIT_REFUSED, FVError
from fv.runtime.prompts import BOS_TEXT, has_bos_text

EXIT_CODE = EXIT_REFUSED  # 4: pytest.ExitCode.USAGE_ERROR; every fv command exits with it on a refusal too (fv.errors)

TRIALS_TOKENIZER = "trials tokenizer"
BOS_TEXT_CHECK = "BOS text"
SRC_BOS_RULE = "src BOS rule"
REFERENCE_FAMILY = "reference family"


@dataclass(frozen=True)
class Finding:
    """One preflight's verdict: ``line`` says what was found, what was expected and what to do."""

    check: str
    line: str
    refuse: bool = True  # False: a warning (printed, the command goes on)

    def text(self) -> str:
        return f"preflight {self.check}: {self.line}"


class PreflightFailed(FVError):
    """One or more preflights refused; ``str`` is one line per finding (the pytest plugin prefixes ``fv: ``). An
    ``fv`` command stopped by it exits 4, as a pytest session refused at the door does."""

    exit_code = EXIT_CODE

    def __init__(self, findings: Sequence[Finding]):
        self.findings = list(findings)
        super().__init__("\nfv: ".join(f.text() for f in self.findings))


def raise_findings(findings: Sequence[Finding | None]) -> list[Finding]:
    """Raise ``PreflightFailed`` on the refusals among ``findings``; return the warnings."""
    found = [f for f in findings if f is not None]
    refusals = [f for f in found if f.refuse]
    if refusals:
        raise PreflightFailed(refusals)
    return found


# ---- the trials file against a tokenizer -------------------------------------------------------------------
def remake_command(trials: Any, tokenizer_name: str, bos_text: bool) -> str:
    """The ``fv trials make`` command that makes ``trials`` again for ``tokenizer_name``, from the file's meta."""
    m = trials.meta
    if m.get("relation_csv"):
        src = f"--relation-csv {m['relation_csv']} --n-trials-per-q {m.get('n_trials_per_q', 25)} --n-demos {m.get('n_demos', 9)}"
    else:
        src = (f"--dataset {m.get('dataset_json') or '<dataset.json>'} --n-trials {m.get('n_trials', len(trials.trials))} "
               f"--n-shots {m.get('n_shots', trials.n_shots)}")
    return (f"fv trials make {src} --seed {m.get('seed', 0)} --tokenizer {tokenizer_name} "
            f"--prepend-bos-token-used {str(bos_text).lower()} --out <new file>")


def _bos_text_wanted(tokenizer: Any) -> bool:
    from fv.model.tokenizers import tokenizer_prepends_bos

    return not tokenizer_prepends_bos(tokenizer)


def check_trials_tokenizer(trials: Any, tokenizer: Any, tokenizer_name: str) -> Finding | None:
    """Every trial's answer ids recomputed with ``tokenizer`` (as ``fv trials verify``); any difference refuses."""
    from fv.runtime.trials import verify_token_ids

    bad = verify_token_ids(trials, tokenizer)
    if not bad:
        return None
    from fv.runtime.trials import BOS_CAUSE, LONE_SPACE_CAUSE

    if bad[0].cause.startswith((BOS_CAUSE, LONE_SPACE_CAUSE)):  # a fork's tokenizer(target) ids, not another tokenizer
        return Finding(TRIALS_TOKENIZER, (
            f"{trials.path}: {len(bad)} of {len(trials.trials)} trials' target ids are not ids(prompt + target) minus "
            f"ids(prompt) ({bad[0]}). Make trials with `{remake_command(trials, tokenizer_name, has_bos_text(trials.trials[0].prompt_data_clean))}`."))
    made_with = trials.meta.get("model_name_for_tokenizer") or "an unnamed tokenizer"
    return Finding(TRIALS_TOKENIZER, (
        f"{trials.path} was made with another tokenizer ({made_with!r}, its model_name_for_tokenizer), not {tokenizer_name!r}: "
        f"{len(bad)} of {len(trials.trials)} trials' answer ids differ ({bad[0]}). Make trials for this model: "
        f"`{remake_command(trials, tokenizer_name, has_bos_text(trials.trials[0].prompt_data_clean))}`."))


def check_bos_text_on_bos_tokenizer(trials: Any, tokenizer: Any, tokenizer_name: str) -> Finding | None:
    """The BOS text in the prompts while the tokenizer adds its own BOS: refused (it is plain text there)."""
    from fv.model.tokenizers import tokenizer_prepends_bos

    if not trials.trials or not has_bos_text(trials.trials[0].prompt_data_clean) or not tokenizer_prepends_bos(tokenizer):
        return None
    pieces = tokenizer.tokenize(BOS_TEXT)
    return Finding(BOS_TEXT_CHECK, (
        f"the prompts of {trials.path} start with the BOS text {BOS_TEXT!r} (prepend_bos_token_used true), but "
        f"{tokenizer_name!r} adds its own BOS {tokenizer.bos_token!r}: the model would read {tokenizer.bos_token!r} and then "
        f"{BOS_TEXT!r} as {len(pieces)} plain-text token(s). On a tokenizer that adds BOS use --prepend-bos-token-used false: "
        f"`{remake_command(trials, tokenizer_name, False)}`."))


def check_src_bos_rule(trials: Any, wants: bool, rule: str, src: str, tokenizer: Any, tokenizer_name: str) -> Finding | None:
    """The prompts against the BOS rule of the src in use (``Reference.bos_text_rule``). The case of the BOS text on
    a tokenizer that adds BOS is ``check_bos_text_on_bos_tokenizer``'s, not repeated here."""
    if not trials.trials:
        return None
    has = has_bos_text(trials.trials[0].prompt_data_clean)
    if has == wants or (has and not _bos_text_wanted(tokenizer)):
        return None
    return Finding(SRC_BOS_RULE, (
        f"{src} {'writes' if wants else 'does not write'} the BOS text {BOS_TEXT!r} into its prompts with {tokenizer_name!r} "
        f"({rule}), but the prompts of {trials.path} {'carry' if has else 'lack'} it (prepend_bos_token_used "
        f"{str(has).lower()}): the two sides would compare different prompts. Make trials for this src: "
        f"`{remake_command(trials, tokenizer_name, wants)}`."))


def check_upstream_bos_rule(trials: Any, tokenizer: Any, tokenizer_name: str) -> Finding | None:
    """Without a src at hand: a warning where the prompts lack the BOS text the upstream reference writes (on a
    tokenizer that adds no BOS). A fork that never writes it is fine, so this never refuses."""
    if not trials.trials or has_bos_text(trials.trials[0].prompt_data_clean) or not _bos_text_wanted(tokenizer):
        return None
    return Finding(SRC_BOS_RULE, (
        f"the prompts of {trials.path} lack the BOS text {BOS_TEXT!r} and {tokenizer_name!r} adds no BOS: the upstream "
        f"reference writes it there, so its prompts would differ (a fork that never writes it is fine). For upstream use "
        f"--prepend-bos-token-used true: `{remake_command(trials, tokenizer_name, True)}`."), refuse=False)


def trials_findings(trials: Any, tokenizer: Any, tokenizer_name: str, src_rule: tuple[bool, str, str] | None = None
                    ) -> list[Finding]:
    """The trials checks: token ids, BOS text on a BOS-adding tokenizer, and the src's BOS rule (``src_rule`` is
    ``(writes, rule in words, src)``; without it, the upstream rule as a warning)."""
    out = [check_trials_tokenizer(trials, tokenizer, tokenizer_name), check_bos_text_on_bos_tokenizer(trials, tokenizer, tokenizer_name)]
    if src_rule is not None:
        out.append(check_src_bos_rule(trials, src_rule[0], src_rule[1], src_rule[2], tokenizer, tokenizer_name))
    else:
        out.append(check_upstream_bos_rule(trials, tokenizer, tokenizer_name))
    return [f for f in out if f is not None]


# ---- a pytest session ------------------------------------------------------------------------------------
def session_findings(opts: Any, probe: Callable[[Path, str, Any], tuple[Finding | None, Any]] | None) -> list[Finding]:
    """Every preflight for a session's options (``fv.pytest_plugin.FVOptions``): the reference family check for
    each model where a live reference is the other side, and the trials checks for ``--fixed-trials``.
    ``probe(model path, model name, tokenizer)`` gives the reference family finding and, when there is none, the
    src's BOS rule ``(writes, rule, src)`` (``fv.reference.capability.session_probe``); None without a reference."""
    import os

    from fv.model.resolve import resolve_model_path
    from fv.model.tokenizers import load_tokenizer
    from fv.runtime.trials import load_trials

    live = probe is not None and not opts.golden_dir and (opts.src_root or os.environ.get("FV_SRC_ROOT"))
    trials = load_trials(opts.fixed_trials) if opts.fixed_trials else None
    out: list[Finding] = []
    for name in opts.models:
        path = resolve_model_path(name)
        tok = load_tokenizer(path)
        rule = None
        if live:
            finding, rule = probe(path, name, tok)
            if finding is not None:
                out.append(finding)
                if finding.refuse:
                    continue
        if trials is not None:
            out += [f for f in trials_findings(trials, tok, name, rule) if f.refuse]
    return out


def session_shots(opts: Any) -> int:
    """The shots of the session's trials (``--fixed-trials``), else of the trials it makes itself (10): the door's
    probes size their inputs by it."""
    from fv.runtime.trials import load_trials

    if getattr(opts, "fixed_trials", None):
        try:
            return int(load_trials(opts.fixed_trials).n_shots)
        except FVError:
            return 10
    return 10


def session_preflight(opts: Any, probe: Callable[[Path, str, Any], tuple[Finding | None, Any]] | None) -> list[Finding]:
    """Raise ``PreflightFailed`` (one line per finding) when any preflight refuses this session; return the warnings
    (findings that do not refuse). The reference's own deprecation warnings on import and on the probes are not the
    session's business here."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        findings = session_findings(opts, probe)
    return raise_findings(findings)
