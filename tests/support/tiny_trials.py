"""Small valid fixed-trials dicts (ICL and relation) made with the tiny model's tokenizer: what the input checks
mutate."""

from __future__ import annotations

import functools

from fv.paths import FIXTURES
from fv.runtime.trials import make_icl_trials, make_relation_trials


@functools.lru_cache(maxsize=None)
def tiny_tokenizer():
    from fv.cli.common import tokenizer_for

    return tokenizer_for("tiny-llama")


@functools.lru_cache(maxsize=None)
def base_trials(kind: str) -> dict:
    """A small valid fixed-trials dict made with the tiny model's tokenizer: ``icl`` or ``relation``."""
    tok = tiny_tokenizer()
    if kind == "icl":
        return make_icl_trials(FIXTURES / "antonym_tiny.json", tok, n_trials=3, n_shots=2, seed=0,
                               model_name_for_tokenizer="tiny-llama", dataset_json_label="antonym_tiny.json")
    return make_relation_trials(FIXTURES / "relation_tiny.csv", tok, n_trials_per_q=1, n_demos=2, seed=0,
                                model_name_for_tokenizer="tiny-llama")
