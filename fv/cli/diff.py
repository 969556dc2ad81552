"""``fv parity diff`` (M5; earlier ``fv diff``): a reference folder against an fv folder, stage by stage, with the
first divergence."""

from __future__ import annotations

import argparse
import sys

from fv.cli.common import add_noun


def cmd_diff(a: argparse.Namespace) -> int:
    from fv.parity.diff import TOLERANCES, diff_folders, write_diff_report

    report = diff_folders(a.src, a.fv, TOLERANCES[a.tolerance])
    paths = write_diff_report(report, a.out, plots=not a.no_plots)
    fd = report["first_divergence"]
    for s in report["stages"]:
        print(f"{s['stage']:<17} {s['status']:<8} mismatch_count={s['mismatch_count']:<6} max_abs_diff={s['max_abs_diff']}")
    if fd is None:
        print("first divergence: none")
    else:
        print(f"first divergence: stage {fd['stage']}, file {fd['file']}, key {fd['key']}, trial ({fd['trial_id']}, {fd['trial_idx']}): "
              f"src {str(fd['src'])[:60]} fv {str(fd['fv'])[:60]}")
    for s in report["stages"]:
        if s.get("pattern"):
            print(f"  {s['stage']}: {s['pattern']}")
    print(f"wrote {paths['json']} and {paths['md']}", file=sys.stderr)
    return 0 if report["status"] == "PASS" else 1


def register(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001 - argparse exposes no public type
    verbs = add_noun(sub, "parity", help="diff: a reference folder against an fv folder, stage by stage (M5)",
                     description="The two sides of the parity suite compared. Earlier spelling: fv diff.")
    d = verbs.add_parser("diff", help="compare a reference folder with an fv folder stage by stage (M5; alias: fv diff)",
                         description="Compare `fv reference run --dump` output with `fv runtime run` output in stage order and name the first divergence. Exit 1 when they differ.")
    d.add_argument("--src", required=True, help="folder written by `fv reference run --dump` (or any folder in either layout)")
    d.add_argument("--fv", required=True, help="folder written by `fv runtime run`")
    d.add_argument("--out", required=True, help="where src_vs_fv_diff_report.json and .md go")
    d.add_argument("--tolerance", choices=("exact", "fp32", "fp16", "bf16"), default="exact",
                   help="exact (default: bit-identical), or the named tolerance of the dtype both sides computed in "
                        "(fp32, fp16, bf16: an allowance scaled by each tensor's RMS plus a norm-wise check; "
                        "docs/tolerances.md)")
    d.add_argument("--no-plots", dest="no_plots", action="store_true", help="write no heatmap (it needs matplotlib: pip install 'fv[plots]')")
    d.set_defaults(func=cmd_diff)
