"""``fv env check`` (earlier ``fv doctor``): one line per check, OK / WARN / FAIL with what to do, before a long run finds out the hard way."""

from __future__ import annotations

import importlib
import platform
from dataclasses import dataclass
from typing import Callable


@dataclass
class Check:
    status: str  # OK, WARN, FAIL
    name: str
    detail: str

    def line(self) -> str:
        return f"{self.status:<4} {self.name}: {self.detail}"


def _version(mod: str) -> str | None:
    try:
        return getattr(importlib.import_module(mod), "__version__", "installed")
    except Exception:
        return None


class _TokenizerOnly(Exception):
    """--model names a tokenizer-only folder: only the fixed trials' token ids can be checked."""


def _tokenizer_only(model: str | None):  # -> Path | None
    """The folder of ``model`` when it resolves as a tokenizer but not as a whole model, else None."""
    from fv.errors import FVError
    from fv.model.resolve import resolve_model_path, resolve_tokenizer_path

    try:
        resolve_model_path(model)
        return None
    except FVError:
        try:
            return resolve_tokenizer_path(model)
        except FVError:
            return None


DOCTOR_PROMPT = "hot: cold\nbig: small\nfast:"


def finite_logits_check(lm, prompt: str = DOCTOR_PROMPT) -> tuple[str, str, str]:
    """(status, name, detail): the loaded model's logits on one short prompt, in its own dtype, are all finite. A
    model whose activations overflow its dtype (fp16's 65504) gives NaN or inf logits, and every stage after it
    would be non-finite."""
    import torch

    from fv.runtime.finite import first_nonfinite

    dtype = str(lm.dtype).replace("torch.", "")
    try:
        enc = lm.tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            out = lm.model(input_ids=enc["input_ids"].to(lm.model.device),
                           **({"attention_mask": enc["attention_mask"].to(lm.model.device)} if "attention_mask" in enc else {}))
        logits = out.logits if hasattr(out, "logits") else out[0]
    except Exception as exc:  # a forward pass that fails is reported, not raised
        return "FAIL", "finite logits", f"one forward pass in {dtype} failed: {type(exc).__name__}: {exc}"
    hit = first_nonfinite(logits)
    if hit is None:
        return "OK", "finite logits", f"the logits of a {enc['input_ids'].shape[1]}-token prompt are finite in {dtype}"
    idx, x, n = hit
    word = "NaN" if x != x else "+inf" if x > 0 else "-inf"
    pos = f"token position {idx[1]}" if len(idx) >= 2 else f"index {list(idx)}"
    return ("FAIL", "finite logits",
            f"{n} of {logits.numel()} logits of a {enc['input_ids'].shape[1]}-token prompt are not finite in {dtype} "
            f"(first {word} at {pos}): the model overflows its dtype; load it in float32 (--dtype float32)")


def run_doctor(src_root: str | None = None, model: str | None = None, fixed_trials: str | None = None,
               edit_layer: int = 9, baukit_root: str | None = None, device: str = "auto", dtype: str = "float32",
               emit: Callable[[Check], None] = lambda c: print(c.line())) -> list[Check]:
    checks: list[Check] = []

    def add(status: str, name: str, detail: str) -> None:
        c = Check(status, name, detail)
        checks.append(c)
        emit(c)

    py = platform.python_version_tuple()
    add("OK" if (int(py[0]), int(py[1])) >= (3, 11) else "WARN", "python", f"{platform.python_version()}" +
        ("" if (int(py[0]), int(py[1])) >= (3, 11) else " (fv is tested on 3.11 and newer)"))
    for mod in ("torch", "transformers", "tokenizers", "numpy"):
        v = _version(mod)
        add("OK" if v else "FAIL", mod, v or f"not importable: pip install {mod}")
    import torch

    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            add("OK", f"cuda:{i}", f"{torch.cuda.get_device_name(i)}, {free / 2**30:.1f} of {total / 2**30:.1f} GiB free")
    else:
        add("WARN", "cuda", "no CUDA device: everything runs on the CPU (fine for the tiny models)")

    # before the adapter runs: it puts stand-ins for both into sys.modules
    for mod, miss in (("baukit", "the package does not import; fv loads baukit/nethook.py alone (--baukit-root)"),):
        try:
            importlib.import_module(mod)
            add("OK", mod, "importable")
        except Exception:
            add("WARN", mod, miss)
    from fv.reference.worker import quant_available

    ok4, found4 = quant_available()
    add("OK" if ok4 else "WARN", "4-bit (NF4)",
        f"{found4}: models the reference loads in 4-bit (its 70b Llama rule, a fork's own rule) run"
        + (" on this machine, CPU included; fv loads them as the reference's loader produced them" if ok4 else
           " nowhere here; the reference's import of bitsandbytes gets an empty stand-in and a 4-bit load stops in one "
           "line: pip install 'fv[quant]'"))
    ref = None
    from fv.reference import Reference, ReferenceUnavailable, find_src_root

    try:
        root = find_src_root(src_root)
        if root is None:
            add("WARN", "reference", "no reference src/ (pass --src-root, set FV_SRC_ROOT, or keep it as ./src); parity runs use goldens")
        else:
            ref = Reference(root, baukit_root)
            add("OK", "reference", f"{root} imports")
            for note in ref.notes:
                add("WARN", "reference", note)
    except ReferenceUnavailable as exc:
        add("FAIL", "reference", str(exc))
    for mod, why in (("pandas", "the reference's slot maps"), ("sklearn", "the reference's dataset split"), ("tqdm", "the reference's loops")):
        v = _version(mod)
        add("OK" if v else ("FAIL" if ref or src_root else "WARN"), mod, v or f"missing ({why}): pip install 'fv[src]'")

    lm = None
    from fv.errors import FVError

    tokenizer_only = _tokenizer_only(model) if fixed_trials else None
    try:
        from fv.model.loading import load_model

        if tokenizer_only is not None:
            raise _TokenizerOnly()
        lm = load_model(model, device, dtype)
        info = lm.info
        add("OK", "model", f"{lm.path}: {info.n_layers} layers, {info.n_heads} heads of {info.head_dim}, width {info.d_model}, "
            f"{str(lm.dtype).replace('torch.', '')} on {lm.device}, tokenizer adds BOS: {lm.prepend_bos}; loaded by {lm.loading_rule}")
        if 0 <= edit_layer < info.n_layers:
            add("OK", "edit layer", f"--edit-layer {edit_layer} fits ({info.n_layers} layers)")
        else:
            add("FAIL", "edit layer", f"--edit-layer {edit_layer} is outside 0..{info.n_layers - 1}: pick a layer in range")
        add(*finite_logits_check(lm))
    except _TokenizerOnly:
        add("WARN", "model", f"{tokenizer_only} holds a tokenizer only: the model checks are skipped, the trials' token ids are checked with it")
    except FVError as exc:
        add("FAIL", "model", str(exc))

    if ref is not None and lm is not None and 0 <= edit_layer < lm.info.n_layers:
        try:
            if ref.probe_injection(lm, edit_layer):
                add("OK", "reference injection", "its FV addition changes the logits on this transformers release")
            else:
                add("WARN", "reference injection", "a silent no-op on this transformers release (decoder layers return tensors): "
                    "run parity with --src-compat")
        except Exception as exc:  # the probe runs the reference's code; report, do not crash
            add("FAIL", "reference injection", f"probe failed: {type(exc).__name__}: {exc}")
        from fv.reference.adapter import own_loader_refusal

        refusal = own_loader_refusal(lm)
        if refusal:
            add("WARN", "reference loader", f"{refusal} Run the gates with --src-model shared.")
        else:
            add("OK", "reference loader", f"its {lm.info.model_type} branch takes {lm.path}: the gates' default mode lets it load "
                f"its own copy. BOS text: {ref.bos_text_rule(lm)[1]}")

    if fixed_trials:
        try:
            from fv.runtime.trials import load_trials, verify_token_ids

            ft = load_trials(fixed_trials)
            add("OK", "fixed trials", f"{ft.path}: {len(ft.trials)} trials, {ft.n_shots} shots, valid schema")
            tok = lm.tokenizer if lm is not None else None
            if tokenizer_only is not None:
                from fv.model.tokenizers import load_tokenizer

                tok = load_tokenizer(tokenizer_only)
            if tok is not None:
                bad = verify_token_ids(ft, tok)
                if bad:
                    add("FAIL", "trial token ids", f"{len(bad)} of {len(ft.trials)} disagree with this tokenizer; first: {bad[0]}. "
                        "Remake the file with `fv trials make --tokenizer <model>`")
                else:
                    add("OK", "trial token ids", f"all {len(ft.trials)} match this tokenizer")
                _preflights(add, ft, tok, model, ref, lm)
        except FVError as exc:
            add("FAIL", "fixed trials", str(exc))
    return checks


def _preflights(add: Callable[[str, str, str], None], ft, tok, model: str | None, ref, lm) -> None:
    """The session preflights (fv.parity.preflight), in the words a pytest session stops with: FAIL where they
    refuse, WARN where only the reference's loader lacks the model (the shared mode runs it) or for a warning."""
    from fv.errors import FVError
    from fv.parity.preflight import trials_findings
    from fv.reference.capability import probe_reference, src_bos_rule

    name = model or "tiny-llama"
    rule = None
    if ref is not None and lm is not None:
        try:
            shots = ft.n_shots if ft is not None and ft.trials else 10
            cap = probe_reference(ref, lm.path, name, "own", tok, shots)
            if cap.finding is not None and not cap.finding.refuse:  # a stand-in-only failure: a warning, the gate runs
                add("WARN", f"preflight {cap.finding.check}", cap.finding.line)
            elif cap.finding is not None:
                shared = probe_reference(ref, lm.path, name, "shared", tok, shots)
                add("WARN" if shared.finding is None else "FAIL", f"preflight {cap.finding.check}", cap.finding.line)
                cap = shared
            rule = src_bos_rule(ref, cap) if cap.finding is None or not cap.finding.refuse else None
        except FVError as exc:
            add("WARN", "preflight reference family", f"not probed: {exc}")
    for f in trials_findings(ft, tok, name, rule):
        add("FAIL" if f.refuse else "WARN", f"preflight {f.check}", f.line)


def cmd_doctor(a) -> int:
    checks = run_doctor(a.src_root, a.model, a.fixed_trials, a.edit_layer, a.baukit_root, a.device, a.dtype)
    n = {s: sum(c.status == s for c in checks) for s in ("OK", "WARN", "FAIL")}
    print(f"{n['OK']} OK, {n['WARN']} WARN, {n['FAIL']} FAIL")
    return 1 if n["FAIL"] else 0


def register(sub) -> None:
    from fv.cli.common import add_model_args, add_noun, add_reference_args

    verbs = add_noun(sub, "env", help="check: the environment, the reference, a model and a trials file",
                     description="The machine fv runs on, checked before a long run finds out the hard way. Earlier "
                                 "spelling: fv doctor.")
    dr = verbs.add_parser("check", help="check the environment, the reference, a model and a trials file (alias: fv doctor)",
                          description="One line per check, OK/WARN/FAIL with what to do; exit 1 on any FAIL.")
    add_reference_args(dr, compat=False)
    add_model_args(dr, attn=False, model_note="with --fixed-trials a tokenizer-only folder checks the token ids alone")
    dr.add_argument("--fixed-trials", dest="fixed_trials", default=None, help="a fixed-trials JSON to validate against the model's tokenizer")
    dr.add_argument("--edit-layer", dest="edit_layer", type=int, default=9, help="the layer parity and runs will inject at (default 9)")
    dr.set_defaults(func=cmd_doctor)
