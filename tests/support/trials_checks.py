"""M0's checks of a trials file, shared by the gate (tests/parity/test_m0_fixed_trials.py) and fv's own tests of it:
the mismatch listing every trials check fails with, and the target-ids check."""

from __future__ import annotations


def mismatch_report(mismatches: list[str]) -> str:
    """The failure message of a trials check: how many mismatches, then the first 40."""
    return f"mismatch_count={len(mismatches)}\n" + "\n".join(mismatches[:40])


def assert_target_ids(fv_options, tokenizer, trials) -> None:
    """The target ids ``trials`` states (``answer_ids``, ``first_token_id``, ``target_first_token_id``) and the one
    the reference scores (its ``get_answer_id`` on the trial's prompt, first id; when ``fv_options`` finds a
    reference) are ``ids(prompt + target)`` minus ``ids(prompt)``; each mismatch is named, the first line saying
    what caused them."""
    from fv.pytest_plugin import get_reference
    from fv.runtime.trials import check_target_ids
    from fv.runtime.trials import target_summary as summary

    ref = get_reference(fv_options)
    ref_ids = None
    if not isinstance(ref, str):  # without the reference the file's ids are still checked
        ref_ids = {t.key: ref.answer_ids(tokenizer, t.clean_prompt_str, t.target_str)[:1] for t in trials.trials}
    problems = check_target_ids(trials.trials, tokenizer, trials.raw.get("trials"), ref_ids)
    assert not problems, summary(problems) + "\n" + mismatch_report([str(p) for p in problems])
