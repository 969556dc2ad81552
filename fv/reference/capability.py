"""What the reference in use can run, found by probing its own code on a weightless copy of the model.

Nothing here loads weights or runs a forward pass. The model is built on PyTorch's ``meta`` device from its
``config.json`` (shapes only, no memory), and the reference's own functions are called on it:

- its loader, ``load_gpt_model_and_tokenizer``, with the ``from_pretrained`` it calls answered by that meta
  model: either it raises ``NotImplementedError`` (no branch takes this model's path) or it returns the
  MODEL_CONFIG it would build (hook names, ``prepend_bos``, ``resid_dim`` and ``n_heads``);
- the code paths that pick a branch by words in the model path and split heads as ``resid_dim // n_heads``:
  ``replace_activation_w_avg`` (the indirect effect), ``compute_function_vector`` (the FV) and
  ``add_function_vector`` (the injection), each on one head of the meta model.

A fork answers for itself: a branch it adds is found because its code runs, not because a table says so.
"""

from __future__ import annotations

import contextlib
import io
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from fv.errors import FVError
from fv.parity.preflight import REFERENCE_FAMILY, Finding

LOADER = "utils/model_utils.py: load_gpt_model_and_tokenizer"
HOOK_FUNCTIONS = ("compute_indirect_effect.py via utils/intervention_utils.py: replace_activation_w_avg",
                  "utils/extract_utils.py: compute_function_vector", "utils/intervention_utils.py: add_function_vector")


@dataclass
class PaperModel:
    """A model as its ``config.json`` describes it, on the meta device: its module tree without weights."""

    path: Path
    config: Any
    model: Any  # on the meta device
    tokenizer: Any
    n_layers: int
    n_heads: int
    head_dim: int  # from the config (``head_dim``), else hidden // heads
    d_model: int
    layer_names: list[str]
    attn_out_names: list[str]
    model_type: str
    spec: str = ""  # the string the user typed (a hub id such as ``gpt2-xl``), handed to the reference's loader

    @property
    def typed(self) -> str:
        """What the reference's loader gets and what its ``name_or_path`` holds: the user's string, else the folder."""
        return self.spec or str(self.path)


def paper_model(path: str | Path, tokenizer: Any, spec: str | None = None) -> PaperModel:
    """``path``'s model on the meta device, with its layer and attention-output names found from the module tree.
    ``spec``: the string the user typed for it (``from_pretrained(spec)`` sets ``name_or_path`` to it, and the
    reference's loader and hooks match words of it); the folder's path when None."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from fv.model.tree import inspect_model

    path = Path(path)
    try:
        config = AutoConfig.from_pretrained(str(path))
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception as exc:
        raise FVError(f"cannot build {path}'s model from its config.json: {type(exc).__name__}: {exc}") from None
    config._name_or_path = spec or str(path)  # as from_pretrained(spec) sets it; the reference reads it
    info = inspect_model(model)
    return PaperModel(path, config, model, tokenizer, info.n_layers, info.n_heads, info.head_dim, info.d_model,
                      list(info.layer_names), list(info.attn_out_names), info.model_type, spec or "")


class _Stub:
    """Stands in for ``AutoModelForCausalLM`` / ``AutoTokenizer`` (and the Llama classes) inside the reference's
    loader: ``from_pretrained`` answers with the paper model or the session's tokenizer."""

    def __init__(self, value: Any):
        self.value = value

    def from_pretrained(self, *args: Any, **kwargs: Any) -> Any:
        return self.value


class _MetaHandle:
    """What the loader's ``from_pretrained(...).to(device)`` gets: the meta model's config, ``to`` a no-op."""

    def __init__(self, pm: PaperModel):
        self.config = pm.config
        self._pm = pm

    def to(self, *args: Any, **kwargs: Any) -> "_MetaHandle":
        return self


def loader_model_config(ref: Any, pm: PaperModel) -> dict | None:
    """The MODEL_CONFIG the reference's loader builds for the string the user typed (``pm.typed``: a hub id as
    typed, never the snapshot folder it resolves to), or None when no branch of it takes that string (it raises
    NotImplementedError). Nothing is loaded: ``from_pretrained`` is answered from the config."""
    import importlib

    mu = importlib.import_module("utils.model_utils")
    names = ("AutoModelForCausalLM", "AutoTokenizer", "LlamaTokenizer", "LlamaForCausalLM")
    saved = {n: getattr(mu, n) for n in names if hasattr(mu, n)}
    handle = _MetaHandle(pm)
    try:
        for n in saved:
            setattr(mu, n, _Stub(pm.tokenizer if "Tokenizer" in n else handle))
        with contextlib.redirect_stdout(io.StringIO()):
            _model, _tok, mc = mu.load_gpt_model_and_tokenizer(pm.typed, device="cpu")
    except NotImplementedError:
        return None
    finally:
        for n, v in saved.items():
            setattr(mu, n, v)
    return dict(mc)


@dataclass
class HookGap:
    kind: str  # "hook branch", "layer names", "head split", "other"
    function: str
    error: str


def _classify(exc: BaseException, pm: PaperModel, mc: dict) -> str:
    if isinstance(exc, (UnboundLocalError, NameError)):
        return "hook branch"
    if isinstance(exc, ValueError) and "int()" in str(exc):
        return "layer names"
    if isinstance(exc, RuntimeError) and pm.n_heads * pm.head_dim != int(mc["resid_dim"]):
        return "head split"
    return "other"


DEFAULT_PROBE_SHOTS = 10  # the shots of the trials a session makes itself (fv.pytest_plugin.trials_for)
_PROBE_TOKENS = 12  # tokens of the probe's prompt: many, like every real prompt (one token is no prompt)


def probe_slots(ref: Any, pm: PaperModel, mc: dict, n_shots: int = DEFAULT_PROBE_SHOTS) -> int:
    """The slot count of the mean head activations the stages will hand the reference: the length of its own dummy
    labels for ``n_shots`` shots (``get_dummy_token_labels``, as ``get_mean_head_activations`` sizes them), so a
    function that indexes slots its own way is probed on the shape it will get. Falls back to ``2 * (n_shots + 1)``
    (two slots per shot at least: the input and the output) where the reference cannot tell on the stand-in."""
    from fv.runtime.prompts import DEFAULT_PREFIXES, DEFAULT_SEPARATORS

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return len(ref.dummy_labels(pm.tokenizer, mc, int(n_shots), dict(DEFAULT_PREFIXES), dict(DEFAULT_SEPARATORS)))
    except Exception:  # the stand-in is no real model: no verdict from here
        return 2 * (int(n_shots) + 1)


def hook_gaps(ref: Any, pm: PaperModel, mc: dict, n_slots: int | None = None) -> list[HookGap]:
    """Run the reference's per-family code paths on one head of the meta model with MODEL_CONFIG ``mc``, on inputs of
    the shapes the stages will give them (a prompt of many tokens; mean activations with ``n_slots`` slots, by
    default ``probe_slots``); each one that fails is a gap: no branch for the model path (its if/elif chain leaves
    a name unbound), layer hook names whose third dotted part is not the layer number, or a head split as
    ``resid_dim // n_heads`` that does not fit heads x head_dim; any other failure is kind "other", which the door
    reports without refusing (a meta-device stand-in can fail where real tensors would not)."""
    iu, eu = ref.intervention_utils, ref.extract_utils
    mc = {**mc, "n_heads": pm.n_heads, "resid_dim": int(mc.get("resid_dim", pm.d_model))}
    n_h, width = pm.n_heads, pm.n_heads * pm.head_dim
    ref_hd = mc["resid_dim"] // n_h
    slots = max(int(n_slots if n_slots is not None else probe_slots(ref, pm, mc)), 1)
    toks = _PROBE_TOKENS
    gaps: list[HookGap] = []
    meta = torch.device("meta")

    def attempt(function: str, fn: Any) -> None:
        try:
            with torch.no_grad():
                fn()
        except Exception as exc:  # the reference's own error, classified
            gaps.append(HookGap(_classify(exc, pm, mc), function, f"{type(exc).__name__}: {exc}"))

    def replace() -> None:
        avg = torch.zeros(pm.n_layers, n_h, slots, ref_hd, device=meta)
        rep = iu.replace_activation_w_avg([(0, 0, toks - 1)], avg, pm.model, mc, {toks - 1: slots - 1}, last_token_only=True)
        rep(torch.zeros(1, toks, pm.d_model, device=meta), pm.attn_out_names[0], torch.zeros(1, toks, width, device=meta))

    def function_vector() -> None:
        mean = torch.zeros(pm.n_layers, n_h, slots, pm.head_dim)
        ie = torch.zeros(1, pm.n_layers, n_h)
        ie[0, 0, 0] = 1.0
        eu.compute_function_vector(mean, ie, pm.model, mc, n_top_heads=1)

    def add() -> None:
        fn = iu.add_function_vector(0, torch.zeros(1, pm.d_model, device=meta), meta)
        fn((torch.zeros(1, toks, pm.d_model, device=meta),), pm.layer_names[0])

    attempt(HOOK_FUNCTIONS[0], replace)
    attempt(HOOK_FUNCTIONS[1], function_vector)
    attempt(HOOK_FUNCTIONS[2], add)
    return gaps


def _case_missed(ref: Any, name: str) -> list[str]:
    """The words the reference's hook functions test case-sensitively against ``name_or_path`` (read from the src
    in use) that ``name`` holds only in another case."""
    from fv.reference.worker import name_words

    iu, eu = ref.intervention_utils, ref.extract_utils
    fns = [getattr(m, f, None) for m, f in ((iu, "replace_activation_w_avg"), (eu, "compute_function_vector"),
                                            (iu, "add_function_vector"))]
    words = {w for fn in fns if fn is not None for w, low in name_words(fn) if not low}
    return sorted(w for w in words if w not in name and w.lower() in name.lower())


def probe_loader(ref: Any, pm: PaperModel) -> tuple[dict | None, str | None]:
    """(MODEL_CONFIG, None) where the loader takes the path, (None, why) where it does not or fails."""
    try:
        return loader_model_config(ref, pm), None
    except Exception as exc:  # its own code on a stand-in: report, never crash the session
        return None, f"{type(exc).__name__}: {exc}"


# ---- the reference family preflight (fv.parity.preflight) ------------------------------------------------
def _config_from_tree(pm: Any) -> dict:
    """The MODEL_CONFIG a loader branch for ``pm`` would build, read from its module tree (for probing the
    per-family code paths where the loader has no branch)."""
    from fv.model.tokenizers import tokenizer_prepends_bos

    return {"n_heads": pm.n_heads, "n_layers": pm.n_layers, "resid_dim": pm.d_model, "name_or_path": pm.typed,
            "attn_hook_names": pm.attn_out_names, "layer_hook_names": pm.layer_names,
            "prepend_bos": tokenizer_prepends_bos(pm.tokenizer)}


def _shared_config(pm: Any) -> tuple[dict | None, str | None]:
    """The MODEL_CONFIG the adapter hands the reference in the shared mode, or its one-line refusal."""
    from fv.reference.adapter import reference_model_config

    lm = types.SimpleNamespace(path=pm.path, info=types.SimpleNamespace(
        model_type=pm.model_type, n_layers=pm.n_layers, n_heads=pm.n_heads, d_model=pm.d_model,
        layer_names=pm.layer_names, attn_out_names=pm.attn_out_names))
    try:
        return reference_model_config(lm), None
    except FVError as exc:
        return None, str(exc)


@dataclass
class Capability:
    """What the src in use can do with one model, and the MODEL_CONFIG it would run it with."""

    finding: Finding | None
    model_config: dict | None
    pm: Any


def probe_reference(ref: Any, model_path: str | Path, model_name: str, src_model: str = "own", tokenizer: Any = None,
                    n_shots: int = DEFAULT_PROBE_SHOTS) -> Capability:
    """Whether ``ref`` (the src in use) can run ``model_path`` in ``src_model`` mode ("own": its loader loads the
    model; "shared": its functions get fv's model object), by probing its code on the meta device with inputs of
    the session's shapes (``n_shots``: the trials' shots). In own mode its loader is handed ``model_name`` as the
    user typed it (``fv.reference.probes.reference_spec``: a hub id stays a hub id), as the stages will hand it.

    Refuses (a ``Finding``) only what cannot run: no loader branch, no hook branch, a case-sensitive name, a head
    split it cannot do. A probe that fails otherwise on the weightless stand-in is a warning, never a refusal."""
    from fv.model.tokenizers import load_tokenizer
    from fv.reference.probes import reference_spec

    tok = tokenizer if tokenizer is not None else load_tokenizer(model_path)
    spec = None
    if src_model == "own":
        try:
            spec, _path = reference_spec(model_name)
        except FVError:
            spec = None
    pm = paper_model(model_path, tok, spec)
    what = f"the reference {ref.src_root} cannot run {model_name} ({pm.model_type})"
    loader_gap = None
    mc = None
    if src_model == "own":
        mc, err = probe_loader(ref, pm)
        if mc is None and err is not None:
            # its loader raised on the stand-in in fv's process (a fork importing its own project's packages, such as
            # its own `fv.quant_config`; a 4-bit branch the meta stand-in cannot model): only the reference's own
            # process, started as its users start it, can tell (fv.reference.probes.session_problem)
            return Capability(None, None, pm)
        if mc is None:
            loader_gap = (f"its loader ({LOADER}) has no branch for {pm.typed!r}" if err is None
                          else f"its loader ({LOADER}) fails on {pm.typed!r}: {err}")
    adapter_refusal = None
    if mc is None and src_model == "shared":
        mc, adapter_refusal = _shared_config(pm)
    probe_mc = mc if mc is not None else _config_from_tree(pm)
    gaps = hook_gaps(ref, pm, probe_mc, probe_slots(ref, pm, probe_mc, n_shots))
    kinds = {g.kind for g in gaps}
    lacks, remedy = [], ""
    if loader_gap:
        lacks.append(loader_gap)
    if "head split" in kinds:
        ref_hd = int((mc or {}).get("resid_dim", pm.d_model)) // pm.n_heads
        lacks.append(f"it splits each head's activation as resid_dim // n_heads = {pm.d_model} // {pm.n_heads} = {ref_hd}, but this "
                     f"model's heads are {pm.n_heads} x {pm.head_dim} = {pm.n_heads * pm.head_dim} wide (hidden {pm.d_model}); "
                     "that split only works when heads x head_dim = hidden")
        remedy = ("A fork that splits heads by the config's head_dim would make it comparable; fv's runtime takes head_dim "
                  "from the config and runs it without the gate (`fv runtime run`).")
    if "hook branch" in kinds:
        fns = sorted({g.function.rsplit(": ", 1)[-1] for g in gaps if g.kind == "hook branch"})
        name = str((mc or {}).get("name_or_path") or pm.path)
        missed = _case_missed(ref, name)
        if missed:  # a word the hooks test case-sensitively is in the name, in another case (Meta's folder names)
            first = next(g for g in gaps if g.kind == "hook branch")
            files = sorted({g.function.split(" via ")[-1] for g in gaps if g.kind == "hook branch"})
            lacks.append(f"its hook code paths ({'; '.join(files)}) pick their branch by case-sensitive words of "
                         f"MODEL_CONFIG['name_or_path']: they look for {' or '.join(repr(w) for w in missed)} "
                         f"case-sensitively, and {name!r} has it only in another case, so they raise {first.error}")
            remedy = remedy or ("Fix: a lowercase folder name, or a lowercase symlink to the folder, given as the model "
                                "(the reference's loader lowercases the name itself, its hooks do not).")
        else:
            lacks.append(f"its hook code paths ({', '.join(fns)}) have no branch for it: they pick one by words in the model "
                         f"path and none matched {pm.path.name!r}")
            remedy = remedy or (f"A fork with a {pm.model_type} branch in those functions would make it comparable "
                                f"(--src-root <fork>/src); `fv runtime run` runs it without the gate.")
    if "layer names" in kinds:
        lacks.append(f"its hooks read the layer number as the third dotted part of the hook names, which {pm.attn_out_names[0]!r} "
                     "does not have")
        remedy = remedy or "A fork that finds the layer number in such names would make it comparable."
    others = [g for g in gaps if g.kind == "other"]
    if lacks:  # it cannot run for a reason above; other failures go with it as context
        lacks += [f"{g.function} fails on it: {g.error}" for g in others]
    if loader_gap and not gaps:
        remedy = (f"Only the loader lacks it: pass --src-model shared (the reference's functions then run on fv's model "
                  f"object), or use a fork whose loader has a {pm.model_type} branch.")
    elif loader_gap:
        remedy += " The loader needs that branch too, or pass --src-model shared."
    if lacks:
        remedy = remedy or "A fork that handles it would make it comparable."
        return Capability(Finding(REFERENCE_FAMILY, f"{what}: {'; '.join(lacks)}. {remedy}"), mc, pm)
    if adapter_refusal:
        return Capability(Finding(REFERENCE_FAMILY, f"{what} in the shared mode: {adapter_refusal}"), mc, pm)
    if others:  # a failure on the weightless stand-in is no proof: the stage runs and reports its own error, if any
        warn = "; ".join(f"{g.function} failed on a weightless copy of {model_name}: {g.error}" for g in others)
        return Capability(Finding(REFERENCE_FAMILY, (
            f"{warn}. Not a refusal: the reference has a branch for this model, and this failure on the stand-in is not "
            "proof that real trials fail; the gate goes on, and the stage, if it fails, says so in its own words."),
            refuse=False), mc, pm)
    return Capability(None, mc, pm)


def src_bos_rule(ref: Any, cap: Capability) -> tuple[bool, str, str] | None:
    """``(writes, rule, src)``: whether the src writes the BOS text on this model, found by its behaviour."""
    if cap.model_config is None:
        return None
    stand_in = types.SimpleNamespace(reference_config=cap.model_config, tokenizer=cap.pm.tokenizer)
    wants, rule = ref.bos_text_rule(stand_in)
    return wants, rule, str(ref.src_root)


def session_probe(get_reference: Callable[[], Any], src_model: str, cache: Any = None,
                  where: tuple[Path, str | None, bool] | None = None,
                  n_shots: int = DEFAULT_PROBE_SHOTS) -> Callable[[Path, str, Any], tuple[Finding | None, Any]]:
    """The probe ``fv.parity.preflight.session_findings`` calls per model: the reference family finding (a refusal,
    or a warning that does not stop the session), and the src's BOS rule where nothing refuses. ``get_reference``
    gives the session's adapter (None: nothing to probe); ``n_shots``: the shots of the session's trials, which size
    the probe's inputs. With ``cache`` (``fv.reference.probe_cache.ProbeCache``) and ``where`` (the src root, baukit
    root and compat flag the adapter will use), an answer stored under the same key is returned without importing
    the src."""

    session = None
    if cache is not None and where is not None:
        from fv.reference.probe_cache import probe_key, session_key

        session = session_key(where[0], where[1], where[2], src_model)

    def probe(path: Path, name: str, tokenizer: Any) -> tuple[Finding | None, Any]:
        key = None
        if session is not None:
            key = probe_key(session, path, name, {"n_shots": int(n_shots)})
            hit = cache.get(key)
            if hit is not None:
                f, rule = hit.get("finding"), hit.get("rule")
                return (Finding(f[0], f[1], bool(f[2])) if f else None), (tuple(rule) if rule else None)
        ref = get_reference()
        if ref is None:
            return None, None
        try:
            cap = probe_reference(ref, path, name, src_model, tokenizer, n_shots)
            runs = cap.finding is None or not cap.finding.refuse
            answer = (cap.finding, (src_bos_rule(ref, cap) if runs else None))
        except FVError:  # no weightless copy of this model (its config or module tree is not one fv reads): no verdict
            answer = (None, None)
        if key is not None:
            f, rule = answer
            cache.put(key, {"finding": [f.check, f.line, f.refuse] if f else None, "rule": list(rule) if rule else None})
        return answer

    return probe
