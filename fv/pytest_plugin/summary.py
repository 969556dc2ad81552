"""What the gates compared, told in the terminal: a ledger of every (model, trials) pair a gate compared (its
stage table), every pair it could not compare, and why tests were skipped; the ``fv parity`` section of pytest's
summary; and a session that compared nothing failing unless ``--allow-empty``. Works under xdist: each test's
report carries its run's summary as plain data to the process that prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import pytest

from fv.parity.golden_check import NO_GOLDEN
from fv.pytest_plugin.collection import SELF_DESELECTED, user_inputs_named

EMPTY_GATE = "[fv: nothing to compare]"
SAME_FAILURE = "[fv: failed once above]"
_NEEDS = ((NO_GOLDEN, "golden checks found no golden and were compared live with the reference instead"), ("reference src/ not found", "need the reference (pass --src-root PATH)"), ("GPU", "need a GPU"),
          ("skipped by the trials rule", "are qs with too few rows for the trials rule"),
          (SAME_FAILURE, "share a failure reported once above"))


@dataclass
class GateLedger:
    """Collected on the process that prints: every (model, trials) pair a gate compared, with its stage table,
    every pair it could not compare, and why tests were skipped."""

    runs: dict = field(default_factory=dict)
    empty: dict = field(default_factory=dict)
    skips: dict = field(default_factory=dict)


def parity_summary(run: Any) -> dict:
    """The part of a parity run the terminal table shows, as plain data (it crosses process boundaries)."""
    fd = run.result.first_divergence()
    return {
        "model": run.lm.name, "trials": run.trials.id, "status": run.result.status, "other_side": run.other_side,
        "mode": run.result.meta.get("src_model_mode", ""),
        "tolerance": run.tolerance.name, "sides": dict(getattr(run, "sides", {}) or {}),
        # fv's runtime, or the port given with --port (named with its root, interpreter and mode)
        "fv_side": (f"{run.result.meta['our_side']}, python {run.result.meta.get('port_python')}" if run.result.meta.get("port_mode")
                    else f"{str(run.lm.dtype).replace('torch.', '')}, {run.lm.attn_implementation or '?'} attention"),
        "first_divergence": fd and {k: str(v)[:200] for k, v in fd.items() if k in ("stage", "file", "key", "trial_id", "trial_idx", "pattern")},
        "reports": str(next(iter(run.report_paths.values())).parent) if run.report_paths else "",
        "stages": [[s.name, s.status, s.mismatch_count, repr(s.max_abs_diff), round(s.duration_sec, 2), stage_note(s)]
                   for s in run.result.stages],
        "proves_little": getattr(run.result, "proves_little", None),
        "not_compared": getattr(run.result, "not_compared_line", None),
    }


def stage_note(s: Any) -> str:
    """What the table says after a stage's row: where a NONFINITE stage first holds a NaN or an infinity, and
    why a PASS proves little (degenerate); for indirect effects, how large the largest one is."""
    if getattr(s, "nonfinite", None):
        nf = s.nonfinite
        first = nf.get("fv") or nf.get("reference") or {}
        return f"{first.get('value', 'non-finite')} on {nf['side']} side{'s' if nf['side'] == 'both' else ''}, first at {nf['where']}"
    parts = []
    if getattr(s, "degenerate", None) and s.status == "PASS":
        parts.append(f"(degenerate: {s.degenerate})")
    mag = getattr(s, "magnitude", None) or {}
    if s.name == "indirect_effect" and "max_abs" in mag and not parts:
        ratio = mag.get("max_abs_over_rounding_step")
        parts.append(f"largest |effect| {mag['max_abs']:.3g}" + (f" ({ratio:.3g} x eps x p)" if ratio is not None else ""))
    return "; ".join(parts)


class GateReporter:
    """The plugin object that keeps the ledger of one session (registered at ``pytest_configure``): pytest calls
    its hooks, each of which delegates to the functions above."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.ledger = GateLedger()

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo) -> Any:
        outcome = yield
        report = outcome.get_result()
        if report.when != "call" and not (report.when == "setup" and report.skipped):
            return
        from fv.parity.run import ParityRun

        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, ParityRun):
                report.user_properties.append(("fv_parity", parity_summary(value)))
                break

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        ledger = self.ledger
        for name, value in report.user_properties:
            if name == "fv_parity":
                ledger.runs[(value["model"], value["trials"], value.get("mode", ""))] = value
        if report.skipped and isinstance(report.longrepr, tuple):
            reason = str(report.longrepr[2]).removeprefix("Skipped: ")
            if reason.startswith(EMPTY_GATE):
                ledger.empty[reason] = ledger.empty.get(reason, 0) + 1
            else:
                label = next((why for needle, why in _NEEDS if needle in reason), reason)
                ledger.skips[label] = ledger.skips.get(label, 0) + 1

    @pytest.hookimpl(hookwrapper=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> Any:
        ledger = self.ledger
        if ledger.empty and not hasattr(session.config, "workerinput") \
                and not session.config.getoption("--allow-empty") and session.exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        yield

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """xdist: each worker collects the same items; keep the count of fv's own tests it deselected."""
        n = getattr(node, "workeroutput", {}).get("fv_self_deselected")
        if n is not None:
            node.config.stash[SELF_DESELECTED] = n

    def pytest_terminal_summary(self, terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
        if hasattr(config, "workerinput"):
            return
        write_summary(terminalreporter, self.ledger, config.getoption("verbose"), config.getoption("--allow-empty"),
                      config.stash.get(SELF_DESELECTED, 0), user_inputs_named(config))


def write_summary(tr: Any, ledger: GateLedger, verbose: int = 0, allow_empty: bool = False, n_self: int = 0,
                  user_inputs: Sequence[str] = ()) -> None:
    """The ``fv parity`` section of the terminal summary: per (model, trials) pair its verdict, sides, first
    divergence and stage table (no tables beyond 8 pairs unless -v), then the pairs that compared nothing and why
    tests were skipped. ``tr`` is pytest's terminal reporter (``section``, ``write_line``)."""
    if n_self:
        tr.write_line(f"fv: {n_self} self-tests deselected (fv checking itself on its own tiny models, tests/self/): "
                      f"this session names your inputs ({', '.join(user_inputs)}), so only the gates on "
                      f"them ran; run fv's own tests with --fv-self-tests or -m self")
    if ledger.runs:
        tr.section("fv parity", sep="-")
    for _key, run in sorted(ledger.runs.items()):
        head = (f"{run['model']} x {run['trials']}: {run['status']} against {run['other_side']} (tolerance {run['tolerance']}); "
                f"fv: {run.get('fv_side', '?')}")
        tr.write_line(head)
        for side, origin in run.get("sides", {}).items():
            tr.write_line(f"  {side} side: {origin}")
        if run.get("not_compared"):
            tr.write_line(f"  {run['not_compared']}")
        if verbose < 0:
            continue
        fd = run.get("first_divergence")
        if fd:
            tr.write_line(f"  first divergence: stage {fd.get('stage')}, file {fd.get('file')}, key {fd.get('key')}"
                          + (f", trial ({fd.get('trial_id')}, {fd.get('trial_idx')})" if fd.get("trial_id") not in (None, "None") else "")
                          + (f"; {fd['pattern']}" if fd.get("pattern") else ""))
        if verbose > 0 or run["status"] != "PASS" or len(ledger.runs) <= 8:
            tr.write_line(f"  {'stage':<17}{'status':<10}{'mismatch_count':>15}{'max_abs_diff':>15}{'seconds':>10}")
            for name, status, count, max_abs, secs, *rest in run["stages"]:
                note = rest[0] if rest else ""
                colour = {"red": True} if status == "NONFINITE" else {"yellow": True} if note.startswith("(degenerate") else {}
                tr.write_line(f"  {name:<17}{status:<10}{count:>15}{max_abs:>15}{secs:>10.2f}" + (f"  {note}" if note else ""),
                              **colour)
        else:  # no table: the PASSes that prove little are still named
            weak = [f"{name} {note[1:-1]}" for name, status, _c, _m, _s, *rest in run["stages"]
                    for note in rest[:1] if status == "PASS" and note.startswith("(degenerate")]
            if weak and not run.get("proves_little"):
                tr.write_line("  PASS (degenerate): " + "; ".join(weak), yellow=True)
        if run.get("proves_little"):
            tr.write_line(f"  note: {run['proves_little']}", yellow=True)
        if run.get("reports"):
            tr.write_line(f"  reports: {run['reports']}")
    for reason, n in sorted(ledger.empty.items()):
        tr.write_line(f"FAIL {reason} ({n} tests compared nothing)" + (" [--allow-empty given]" if allow_empty else ""),
                      red=True)
    if ledger.skips:
        tr.write_line("fv skips: " + "; ".join(f"{n} {why}" for why, n in sorted(ledger.skips.items())))
