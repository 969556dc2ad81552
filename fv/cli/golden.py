"""``fv golden import``: a user's goldens (the files src wrote under ``results/<dataset>/<fixed_trials_id>/``) as
snapshots under ``snapshots/``, with their provenance, so M1/M2 compare with them from then on."""

from __future__ import annotations

import argparse
from pathlib import Path

from fv.cli.common import add_model_args, add_noun


def cmd_import(a: argparse.Namespace) -> int:
    from fv.model.loading import load_model
    from fv.parity.user_goldens import import_goldens
    from fv.paths import SNAPSHOT_ROOT
    from fv.runtime.trials import load_trials

    trials = load_trials(a.fixed_trials)
    lm = load_model(a.model, a.device, a.dtype, attn_implementation=a.attn_implementation)
    dest = import_goldens(a.folder, lm, trials, Path(a.snapshots) if a.snapshots else SNAPSHOT_ROOT, force=a.force)
    import json

    meta = json.loads((dest.parent / f"{dest.name}.meta.json").read_text(encoding="utf-8"))
    print(f"imported {a.folder} into {dest} (provenance: {dest.parent / (dest.name + '.meta.json')}; identity: weights digest "
          f"{meta['identity']['weights_sha256'][:12]}, {meta['identity']['recorded_by']})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001 - argparse exposes no public type
    gs = add_noun(sub, "golden", help="import: a user's goldens as snapshots (M1)",
                  description="Goldens made by src on the user's machine, turned into the suite's snapshots.")
    i = gs.add_parser("import", help="import a golden folder src wrote",
                      description="Check DIR's <dataset>_mean_head_activations_FIXED.pt, <dataset>_dummy_labels.json and "
                                  "<dataset>_indirect_effect.pt against the model and the fixed trials, then write them as "
                                  "snapshots/<model>/<trials id>/t<n>/ with a provenance file. Goldens recording another model's "
                                  "identity (reference_meta.json, written by `fv reference run`) or other shots or template "
                                  "(src's *_args.txt) are refused in one line; the provenance records the model's identity "
                                  "(fv/parity/identity.py). Regenerating goldens from the live reference stays "
                                  "`pytest --snapshot-update`.")
    i.add_argument("folder", help="the golden folder, results/<dataset>/<fixed_trials_id>/ as src wrote it")
    i.add_argument("--fixed-trials", "--fixed_trials", dest="fixed_trials", required=True, help="the fixed-trials JSON src made the goldens from")
    i.add_argument("--snapshots", default=None, help="snapshot root to write into (default: the checkout's snapshots/)")
    i.add_argument("--force", action="store_true", help="replace goldens already in the target folder")
    add_model_args(i)
    i.set_defaults(func=cmd_import)
