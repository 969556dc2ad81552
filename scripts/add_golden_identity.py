"""Add the model's and trials' identity (fv/parity/identity.py) to the meta of committed goldens written before
identities existed, without touching any golden value.

The model part comes from each tiny model's deterministic build (fv.model.tiny.ensure_tiny_model: the same
tensors on every machine); the trials part from the golden's own prompt.json (the trials as the reference saw
them: keys, prompts, targets, answer ids) and dummy_labels.json (the shot count). The template is the makers'
default (every committed golden's trials were made by fv's makers with it: the prompts start with "Q:").

    python scripts/add_golden_identity.py [--check]

``--check`` changes nothing and exits 1 when a meta lacks its identity or records another one. The universal
gate's goldens (``<model>/universal/t<n>/identity.json``, the tasks' trials digests) get the model part as ``model``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from fv.io import write_json
from fv.model.tiny import TINY_MODELS, ensure_tiny_model
from fv.parity.identity import model_identity, template_digest, trials_digest
from fv.paths import SNAPSHOT_ROOT

RECORDED_BY = ("added to goldens written before identities (scripts/add_golden_identity.py): the model's from its "
               "deterministic build, the trials' from the golden's prompt.json")


def identity_for(meta_path: Path) -> dict | None:
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    name = meta.get("model_name")
    folder = meta_path.parent / meta_path.name[: -len(".meta.json")]
    prompt, labels = folder / "prompt.json", folder / "dummy_labels.json"
    if name not in TINY_MODELS or not prompt.is_file() or not labels.is_file():
        return None
    entries = json.loads(prompt.read_text(encoding="utf-8"))
    shots = {m.group(1) for _p, label in json.loads(labels.read_text(encoding="utf-8"))
             if (m := re.fullmatch(r"demonstration_(\d+)_token", label))}
    return {**model_identity(folder=ensure_tiny_model(name), name=name), "n_trials": len(entries), "n_shots": len(shots),
            "template_sha256": template_digest(None, None), "trials_sha256": trials_digest(entries),
            "trials_id": meta_path.parent.name, "recorded_by": RECORDED_BY}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 where a meta lacks or disagrees")
    ap.add_argument("--root", default=str(SNAPSHOT_ROOT))
    a = ap.parse_args(argv)
    bad = 0
    for mp in sorted(Path(a.root).glob("*/*/t*.meta.json")):
        ident = identity_for(mp)
        if ident is None:
            print(f"skipped {mp}: not a tiny model's golden with prompt.json")
            continue
        meta = json.loads(mp.read_text(encoding="utf-8"))
        same = {k: v for k, v in (meta.get("identity") or {}).items() if k != "recorded_by"} == \
            {k: v for k, v in ident.items() if k != "recorded_by"}
        if a.check:
            bad += not same
            print(f"{'OK  ' if same else 'DIFF'} {mp}")
            continue
        if same:
            continue
        out: dict = {}
        for k, v in meta.items():  # the identity after the trials' fields, everything else as it was
            if k == "identity":
                continue
            out[k] = v
            if k == "fixed_trials_sha256":
                out["identity"] = ident
        out.setdefault("identity", ident)
        write_json(mp, out)
        print(f"wrote identity into {mp}")
    for ip in sorted(Path(a.root).glob("*/universal/t*/identity.json")):
        name = ip.parents[2].name
        if name not in TINY_MODELS:
            print(f"skipped {ip}: not a tiny model's goldens")
            continue
        data = json.loads(ip.read_text(encoding="utf-8"))
        ident = model_identity(folder=ensure_tiny_model(name), name=name)
        same = data.get("model") == ident
        if a.check:
            bad += not same
            print(f"{'OK  ' if same else 'DIFF'} {ip}")
        elif not same:
            write_json(ip, {**data, "model": ident})
            print(f"wrote the model's identity into {ip}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
