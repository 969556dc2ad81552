"""``fv reference run`` (M1 goldens, M3 dump; earlier a bare ``fv reference``): the reference's own functions on a
fixed-trials file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fv.cli.common import add_model_args, add_noun, add_quiet, add_reference_args, add_src_python_arg, add_stage_args, edit_layer_of
from fv.errors import FVError, UsageError
from fv.lock import HELP as LOCK_HELP


def cmd_reference(a: argparse.Namespace) -> int:
    from fv.lock import output_lock
    from fv.reference import Reference, ReferenceUnavailable, find_src_root
    from fv.runtime.trials import load_trials

    say = (lambda _s: None) if a.quiet else (lambda s: print(s, file=sys.stderr))
    # every check that needs no model pass comes before the first stage
    if a.src_python and a.src_model != "own":
        raise UsageError("--src-python runs the reference in its own process: drop --src-model shared")
    root = find_src_root(a.src_root)
    if root is None:
        raise ReferenceUnavailable("no reference found: pass --src-root PATH (the reference's src/), or set FV_SRC_ROOT.")
    ref = Reference(root, a.baukit_root, compat=a.src_compat, python=a.src_python)
    ft = load_trials(a.fixed_trials)
    with output_lock(a.out, note=say):  # before the model loads: a second writer on this folder is refused at once
        return _reference_locked(a, ref, root, ft, Path(a.out), say)


def _reference_locked(a: argparse.Namespace, ref, root: Path, ft, out: Path, say) -> int:
    from fv.io import save_tensors, write_json
    from fv.meta import run_meta
    from fv.model.loading import load_model, pick_device
    from fv.parity.dump import build_dump
    from fv.parity.run import src_from_source
    from fv.parity.stages import Params
    from fv.reference import InjectionNoOp
    from fv.reference.stages import live_source
    from fv.runtime.trials import require_tokenizer_agrees

    if a.src_model == "own":
        overrides = [f"--{k.replace('_', '-')} {v}" for k, v in (("dtype", a.dtype), ("attn_implementation", a.attn_implementation))
                     if v not in (None, "", "auto")]
        if overrides:
            raise UsageError(f"{' and '.join(overrides)} given, but the reference's own loader picks the dtype and attention "
                          "itself. Drop them, or pass --src-model shared to run the reference on a model fv loads so.")
        from fv.reference.probes import reference_spec

        # the reference's loader is handed the string the user gave; fv resolves it for itself
        spec, path = reference_spec(a.model)
        lm = ref.load_own(spec, device=pick_device(a.device), fv_path=path)
        problem = ref.probe_hook(lm)
        if problem:
            raise FVError(problem)
    else:
        lm = load_model(a.model, a.device, a.dtype, attn_implementation=getattr(a, "attn_implementation", None))
    say(f"model {lm.name}: {lm.loading_rule} ({str(lm.dtype).replace('torch.', '')}, attention {lm.attn_implementation})")
    a.edit_layer = edit_layer_of(a, lm)
    lm.info.check_edit_layer(a.edit_layer)
    require_tokenizer_agrees(ft, lm.tokenizer)
    _bos, bos_rule = ref.require_trials_fit(lm, ft)
    if a.dump:
        try:
            ref.require_live_injection(lm, a.edit_layer)
        except InjectionNoOp as exc:
            raise FVError(f"{exc} Nothing was computed.") from exc
    params = Params(n_top_heads=a.n_top_heads, edit_layer=a.edit_layer, max_trials=a.max_trials)
    say(f"reference {root}: {len(ft.subset(a.max_trials))} trials on {lm.name} ({lm.device}, {lm.dtype})")
    for n in ref.notes:
        say(f"note: {n}")
    sv, inj_error = src_from_source(live_source(ref, lm if a.src_model == "own" else None), lm, ft, params)
    ds = ft.dataset_name
    meta = run_meta(lm, ft, params.as_dict(), source="reference", src_root=str(root), src_notes=ref.notes, src_compat=ref.compat,
                    src_model_mode=a.src_model, src_bos_rule=bos_rule)
    from fv.parity.identity import golden_identity  # --golden-dir and `fv golden import` refuse these for another model

    meta["identity"] = golden_identity(lm, ft, ft.subset(a.max_trials))
    save_tensors(out / f"{ds}_mean_head_activations_FIXED.pt", sv.values["mean_activations"])
    write_json(out / f"{ds}_dummy_labels.json", {"labels": sv.values["slot"]["dummy_labels"]})  # src's form
    save_tensors(out / f"{ds}_indirect_effect.pt", sv.values["indirect_effect"])
    write_json(out / "reference_meta.json", meta)
    if a.dump:
        write_json(out / "src_reference_dump.json", build_dump(sv, meta, a.edit_layer))
        save_tensors(out / "src_fv.pt", sv.values["fv"])
        write_json(out / "top_heads_src.json", sv.values["top_heads"])
    print(f"wrote reference artifacts to {out}")
    if inj_error:
        print(f"warning: {inj_error}", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001 - argparse exposes no public type
    verbs = add_noun(sub, "reference", help="run: the reference src/ on fixed trials (M1 goldens, M3 dump)",
                     description="The reference's own functions on a fixed-trials file. `fv reference` followed by its "
                                 "options (the earlier spelling) runs `fv reference run`.")
    r = verbs.add_parser("run", help="run the reference src/ on fixed trials (M1 goldens, M3 dump; alias: fv reference [options])",
                         description="Drive the reference's own functions on a fixed-trials file and write its golden artifacts; "
                                   "--dump adds the M3 reference dump. Checks that need no model pass (trials against the "
                                   "tokenizer, edit layer, the reference's injection) run before any stage. " + LOCK_HELP)
    add_reference_args(r)
    add_src_python_arg(r)
    add_model_args(r)
    r.add_argument("--fixed-trials", "--fixed_trials_path", dest="fixed_trials", required=True, help="fixed-trials JSON")
    r.add_argument("--out", "--save_path_root", dest="out", required=True, help="output folder")
    add_stage_args(r)
    r.add_argument("--src-model", dest="src_model", default="own", choices=("own", "shared"),
                   help="own (default): the reference's own loader loads the model, as its users run it (--dtype and "
                        "--attn-implementation do not apply); shared: fv loads it (docs/loading.md) and the reference's "
                        "functions run on that object")
    r.add_argument("--dump", action="store_true", help="also write src_reference_dump.json, src_fv.pt, top_heads_src.json (M3)")
    add_quiet(r)
    r.set_defaults(func=cmd_reference)
