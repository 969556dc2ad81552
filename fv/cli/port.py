"""``fv port check``: a port of the reference gated against the live reference, by its functions (``--port``) or by
the files it wrote (``--port-artifacts``), with the usual report files per run (docs/ports.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fv.cli.common import add_model_args, add_noun, add_quiet, add_reference_args, add_src_python_arg, add_stage_args, edit_layer_of
from fv.errors import FVError, UsageError


def _sides(a: argparse.Namespace, lm, out: Path) -> list[tuple[str, object, object]]:
    """(name, side, trials) per run: the one ``--port`` on ``--fixed-trials``, or each run folder of
    ``--port-artifacts`` on the trials it holds (written to ``<out>/<name>/port_trials.json``)."""
    from fv.io import write_json
    from fv.runtime.trials import load_trials

    if a.port:
        from fv.ports.functions import port_side
        from fv.reference.adapter import user_string

        side = port_side(a.port, a.port_root or ".", user_string(lm), a.port_python, str(lm.device),
                         str(lm.dtype).replace("torch.", ""), isolated=not a.port_chain, exact=a.port_exact)
        return [("port", side, load_trials(a.fixed_trials))]
    from fv.ports.layouts import find_runs

    root = Path(a.port_artifacts)
    runs = []
    for folder, reader in find_runs(root, a.port_layout):
        name = str(folder.relative_to(root)) if folder != root else folder.name
        raw = reader.fixed_trials(folder, lm.tokenizer, a.relation_csv)
        path = write_json(out / name / "port_trials.json", raw)
        runs.append((name, reader.side(folder), load_trials(path)))
    return runs


def _why_not(stage: str, notes: list[str]) -> str:
    """The port's own note on why ``stage`` is not compared (``"not compared: top_heads, fv: ..."``)."""
    for n in notes:
        head, _, why = n.partition(": ")[2].partition(": ")
        if n.startswith("not compared: ") and stage in [x.strip() for x in head.split(",")]:
            return why
    return "the port does not compute it"


def _verdict(s, notes: list[str]) -> str:
    """One stage's line: not compared (the port lacks it, and why), bit-exact, within tolerance, FAIL or NONFINITE,
    with its max abs and rel difference."""
    if s.status == "SKIP":
        return f"not compared: {_why_not(s.name, notes)}" if s.lacked_by == "ours" else f"SKIP ({'; '.join(s.detail[:1])})"
    diffs = f"max_abs_diff={s.max_abs_diff:.3g} max_rel_diff={s.max_rel_diff:.3g}"
    if s.status == "PASS":
        word = "PASS, bit-exact" if s.max_abs_diff == 0.0 else "PASS, within tolerance"
        return f"{word}{f' (degenerate: {s.degenerate})' if s.degenerate else ''}  {diffs}"
    return f"{s.status}: {s.mismatch_count} mismatches  {diffs}"


def cmd_check(a: argparse.Namespace) -> int:
    from fv.io import write_json
    from fv.model.loading import load_model, pick_device
    from fv.parity.run import run_parity
    from fv.parity.sides import other_side
    from fv.parity.stages import Params
    from fv.reference import Reference, ReferenceUnavailable, find_src_root
    from fv.reference.stages import STAGE_FUNCTIONS, live_source

    if bool(a.port) == bool(a.port_artifacts):
        raise UsageError("give one port: --port MODULE:OBJECT (with --fixed-trials FILE) or --port-artifacts DIR")
    if a.port and not a.fixed_trials:
        raise UsageError("--port needs --fixed-trials FILE: the trials both sides run on")
    if a.port_artifacts and (a.port_chain or a.port_exact or a.port_root or a.port_python):
        raise UsageError("--port-root, --port-python, --port-chain and --port-exact go with --port, not --port-artifacts")
    if not a.model:
        raise UsageError("--model is required: the model the port ran (a folder, a Hub id, or a tiny model's name)")
    if a.src_python and a.src_model != "own":
        raise UsageError("--src-python runs the reference in its own process: drop --src-model shared")
    root = find_src_root(a.src_root)
    if root is None:
        raise ReferenceUnavailable("no reference found: pass --src-root PATH (the reference's src/), or set FV_SRC_ROOT.")
    say = (lambda _s: None) if a.quiet else (lambda s: print(s, file=sys.stderr))
    ref = Reference(root, a.baukit_root, compat=a.src_compat, python=a.src_python)
    out = Path(a.out)
    lm = load_model(a.model, a.device, a.dtype)
    own = None
    if a.src_model == "own":
        from fv.reference.probes import reference_spec

        spec, path = reference_spec(a.model)  # the reference's loader is handed the string the user typed
        own = ref.load_own(spec, device=pick_device(a.device), fv_path=path)
        problem = ref.probe_hook(own)
        if problem:
            raise FVError(problem)
    a.edit_layer = edit_layer_of(a, lm)
    lm.info.check_edit_layer(a.edit_layer)
    summary, worst = [], 0
    for name, side, trials in _sides(a, lm, out):
        # a port's files average every trial it ran: all of them are compared
        params = Params(n_top_heads=a.n_top_heads, edit_layer=a.edit_layer,
                        max_trials=None if a.port_artifacts else a.max_trials)
        say(f"{name}: {len(trials.subset(params.max_trials))} trials against the reference {root}")
        run = run_parity(lm, trials, params, None, out / name, stage_functions=STAGE_FUNCTIONS,
                         other=other_side(lm, live_source(ref, own)), ours=side)
        res = run.result
        print(f"{name}: {res.status} ({res.meta.get('our_side')} against {run.other_side}; tolerance {run.tolerance.name})")
        for s in res.stages:
            print(f"  {s.name:<17} {_verdict(s, res.meta.get('our_notes') or [])}")
        if res.not_compared_line:
            print(f"  {res.not_compared_line}")
        for s in res.stages:
            if s.status == "FAIL":
                print("  " + s.summary(5).replace("\n", "\n  "))
                break
        worst = max(worst, 1 if res.status in ("FAIL", "NONFINITE") else 0)
        summary.append({"run": name, "status": res.status, "earliest_failed_stage": res.earliest_failed_stage,
                        "not_compared": res.lacked_by_ours, "our_side": res.meta.get("our_side"),
                        "report": str(run.report_paths.get("parity_suite_report.json", ""))})
    write_json(out / "port_check.json", {"runs": summary})
    print(f"wrote {out / 'port_check.json'} and each run's parity_suite_report.json", file=sys.stderr)
    return worst


def register(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001 - argparse exposes no public type
    verbs = add_noun(sub, "port", help="check: a port of the reference (a user's runtime) against the live reference",
                     description="A port of the reference, by its functions or by its files, gated stage by stage "
                                 "(docs/ports.md).")
    c = verbs.add_parser(
        "check", help="gate a port (--port MODULE:OBJECT or --port-artifacts DIR) against the live reference",
        description="Compare a port with the live reference stage by stage and write parity_suite_report.json (and its "
                    "CSVs) per run under --out, with port_check.json over all runs. By its functions: --port "
                    "MODULE:OBJECT from --port-root, on --fixed-trials. By its files: --port-artifacts DIR, one run folder "
                    "or a root holding several (a relation run's q folders), each on the trials it holds. A stage the "
                    "port lacks is 'not compared', never PASS. Exit 0 when no compared stage fails, 1 when one does.")
    c.add_argument("--port", default=None, help="the port by its functions: MODULE:OBJECT (docs/ports.md)")
    c.add_argument("--port-root", dest="port_root", default=None, help="the port's project root (default: here)")
    c.add_argument("--port-python", dest="port_python", default=None, help="the interpreter the port runs with (default: this one)")
    c.add_argument("--port-chain", dest="port_chain", action="store_true",
                   help="feed the port its own outputs (default: isolated, each stage fed the reference's inputs)")
    c.add_argument("--port-exact", dest="port_exact", action="store_true",
                   help="hold the port to the bit (default: the compute dtype's tolerance)")
    c.add_argument("--port-artifacts", dest="port_artifacts", default=None,
                   help="the port by its files: a run folder it wrote, or a root holding several")
    c.add_argument("--port-layout", dest="port_layout", default=None,
                   help="the folder's layout (my_fv_project, my_fv_project-stepd, fv; default: found from the folder)")
    c.add_argument("--fixed-trials", dest="fixed_trials", default=None, help="with --port: the fixed-trials file both sides run on")
    c.add_argument("--relation-csv", dest="relation_csv", default=None,
                   help="with --port-artifacts of a relation run: the relation CSV it ran (default: the path its trials record)")
    c.add_argument("--out", default="results_fv/port_check", help="reports (default results_fv/port_check)")
    c.add_argument("--src-model", dest="src_model", choices=("own", "shared"), default="own",
                   help="own (default): the reference loads the model with its own loader from the string given to --model; "
                        "shared: it computes on fv's copy")
    add_model_args(c, attn=False)
    add_reference_args(c)
    add_src_python_arg(c)
    add_stage_args(c)
    add_quiet(c)
    c.set_defaults(func=cmd_check)
