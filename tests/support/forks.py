"""A fork of the reference's ``src/``, built at run time from the reference in use by applying the changes a
real fork carries (nothing of the reference is committed here)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

# (file, pattern, replacement, how many times it must match at least)
FORK_CHANGES = [
    # (a) the BOS rule: every place upstream derives it from MODEL_CONFIG
    ("utils/prompt_utils.py", r"prepend_bos\s*=\s*False if model_config\['prepend_bos'\] else True", "prepend_bos = False", 1),
    ("utils/extract_utils.py", r"(prepend_bos|add_bos)\s*=\s*False if model_config\['prepend_bos'\] else True", r"\1 = False", 3),
    ("compute_indirect_effect.py", r"prepend_bos\s*=\s*False if model_config\['prepend_bos'\] else True", "prepend_bos = False", 1),
    ("utils/eval_utils.py", r"prepend_bos\s*=\s*False if model_config\['prepend_bos'\] else True", "prepend_bos = False", 2),
    # (b) the injection edits tensor outputs too
    ("utils/intervention_utils.py",
     r"(output\[0\]\[:, idx\] \+= fv_vector\.to\(device\)\n\s*return output\n\s*else:\n)(\s*)return output",
     r"\1\2output[:, idx] += fv_vector.to(device)\n\2return output", 1),
    # (c) every slot filled
    ("utils/prompt_utils.py", r"(\n(\s*)return index_map, dup_label_ranges)",
     r"\n\2assert len(index_map) == len(gt_labels), 'a dummy slot was left unfilled'\1", 1),
    # (d) the token of interest as a parameter
    ("compute_indirect_effect.py", r"(def activation_replacement_per_class_intervention\([^)]*last_token_only=True)\)",
     r"\1, token_id_of_interest=None)", 1),
    ("compute_indirect_effect.py", r"\n(\s*)token_id_of_interest = get_answer_id\(",
     r"\n\1if token_id_of_interest is None:\n\1    token_id_of_interest = get_answer_id(", 1),
    # (e) an extra helper
    ("utils/prompt_utils.py", r"\Z", "\n\ndef fork_only_helper(prompt_data):\n    return len(prompt_data['examples'])\n", 1),
]


def build_fork(upstream: Path, dest: Path, changes: list | None = None) -> Path:
    """``dest/src``: a copy of ``upstream`` (a ``src/`` folder) with ``changes`` (default ``FORK_CHANGES``) applied;
    each must apply, or the reference changed and this fork no longer means what it says."""
    src = dest / "src"
    shutil.copytree(upstream, src, ignore=shutil.ignore_patterns("__pycache__"))
    for rel, pattern, repl, at_least in (FORK_CHANGES if changes is None else changes):
        f = src / rel
        text, n = re.subn(pattern, repl, f.read_text())
        assert n >= at_least, f"fork change {pattern!r} matched {n} times in {rel}, expected at least {at_least}"
        f.write_text(text)
    return src
