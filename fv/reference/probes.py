"""Checks of the reference side run once, at the session's start, before any stage; each returns one line or None.

The plugin calls ``session_problem`` from its option check, so a problem stops the session with pytest's usage
error (exit code 4) in one line, instead of a traceback in every test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from fv.errors import FVError


def reference_spec(name: str) -> tuple[str, Path]:
    """The string the reference's loader is handed for a ``--fv-model`` entry (the user's own string; a tiny
    model's folder), and the folder fv resolves for itself."""
    from fv.model.resolve import resolve_model_path
    from fv.model.tiny import TINY_MODELS

    path = resolve_model_path(name)
    return (str(path) if name is None or name in TINY_MODELS else name), path


def session_prompt(fixed_trials: str | Path | None, dataset: str | Path | None, tokenizer: Any) -> str:
    """The session's first clean prompt, as the reference will see it: the first trial of ``--fixed-trials``, else the
    first of the trials the session makes from ``dataset`` (default: the embedded antonym data, 10 shots, seed 0,
    the BOS text where the tokenizer adds no BOS, as ``fv.pytest_plugin.trials_for`` makes them). The door's probes
    run on it, so they see the shapes the stages will see."""
    from fv.model.tokenizers import tokenizer_prepends_bos
    from fv.paths import FIXTURES
    from fv.runtime.trials import load_trials, make_icl_trials

    if fixed_trials:
        return load_trials(fixed_trials).trials[0].clean_prompt_str
    bos = tokenizer_prepends_bos(tokenizer)
    raw = make_icl_trials(Path(dataset) if dataset else FIXTURES / "antonym_tiny.json", tokenizer, 1, 10, 0,
                          model_prepend_bos=bos, prepend_bos_token_used=not bos)
    return raw["trials"][0]["clean_prompt_str"]


def hook_problem(ref: Any, rm: Any, text: str | None = None) -> str | None:
    """The reference's indirect-effect hook probed once on ``text`` (the session's first prompt) with its own copy
    ``rm``: None when it runs, else one line (for a name its case-sensitive family words miss: the word it looks for
    and the fix)."""
    return ref.probe_hook(rm, text)


def tokenizer_problem(rm: Any) -> str | None:
    """The tokenizer the reference's loader produced against the model folder's own (``AutoTokenizer``) on one
    probe text: None when they agree, else one line (upstream's 70b branch uses ``LlamaTokenizer``, which needs the
    sentencepiece model of Llama-2 checkpoints)."""
    from fv.model.tokenizers import load_tokenizer
    from fv.reference.worker import PROBE_TEXT

    theirs = rm.describe.get("probe_ids")
    if theirs is None:
        return None
    tok = load_tokenizer(rm.fv_path)
    mine = [int(i) for i in tok(PROBE_TEXT).input_ids]
    if mine == theirs:
        return None
    cls = rm.describe.get("tokenizer_class")
    has_spm = (Path(rm.fv_path) / "tokenizer.model").is_file()
    need = ("" if has_spm else f" {cls} needs the sentencepiece model file tokenizer.model (as Llama-2 checkpoints ship it; "
            "`pip install sentencepiece`), which this folder lacks, so it rebuilds the tokenizer differently.")
    return (f"the reference's loader loads the tokenizer of {rm.spec} with {cls}, which tokenizes {PROBE_TEXT!r} into "
            f"{len(theirs)} ids where the folder's own tokenizer ({type(tok).__name__}) gives {len(mine)} "
            f"(first difference at {next((i for i, (a, b) in enumerate(zip(theirs, mine)) if a != b), min(len(theirs), len(mine)))}); "
            f"its prompts and slots would not be the model's.{need}")


def session_problem(ref: Any, models: Sequence[str], device: str, load: Any,
                    prompt_of: Callable[[Any], str | None] | None = None) -> str | None:
    """Load each model by the reference's own loader (``load(ref, spec, path, device)``, the session's cached
    loader) and probe its hook on the session's first prompt (``prompt_of(tokenizer)``; a prompt of the trials'
    form without it); the first problem as one line naming the reference's file and function."""
    for name in models:
        try:
            spec, path = reference_spec(name)
            rm = load(ref, spec, path, device)
            msg = tokenizer_problem(rm) or hook_problem(ref, rm, prompt_of(rm.tokenizer) if prompt_of else None)
        except FVError as exc:
            return f"the reference side cannot run {name}: {exc}"
        if msg:
            return f"the reference side cannot run {name}: {msg}"
    return None
