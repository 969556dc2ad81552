"""Each prompt tokenized and labelled once: the value that flows to activations, effects, evaluation and the
prompt and slot stages.

Every later stage needs the same few facts about a prompt: its text, its token ids, each token's role label,
the slot map that pairs its tokens with the dummy slots, and the target's token ids in context. Computing
them once per trial and side keeps the stages consistent with each other and saves re-tokenizing the same
text several times per trial. ``equal_passes`` splits prepared prompts into the batched passes of fast mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from fv.runtime.prompts import TokenLabel, answer_ids, prompt_string, token_meta_labels, zero_shot_prompt_data
from fv.runtime.slots import full_idx_map, slot_maps
from fv.runtime.trials import Trial

# The label of the prompt's last token, where the indirect effect patches and the FV is read.
LAST_TOKEN_LABEL = "query_predictive_token"
PROMPT_SETS = ("zero_shot", "shuffled")


@dataclass(frozen=True)
class PreparedPrompt:
    """One prompt as the model sees it. Slot fields are empty for prompts that no stage labels (zero-shot)."""

    text: str
    inputs: Any  # the tokenizer's BatchEncoding (input_ids, attention_mask), on the model's device
    answer_ids: tuple[int, ...]
    token_labels: tuple[TokenLabel, ...] = ()
    idx_map: dict[int, int] | None = None
    idx_avg: dict[str, tuple[int, int]] | None = None

    @property
    def target_id(self) -> int:
        return self.answer_ids[0]

    @property
    def input_ids(self) -> list[int]:
        return [int(i) for i in self.inputs["input_ids"][0].tolist()]

    @property
    def idx_map_full(self) -> dict[int, int]:
        """``idx_map`` extended so every token of a multi-token word maps to that word's slot."""
        return full_idx_map(self.idx_map or {}, self.idx_avg or {})

    @property
    def predictive_positions(self) -> list[int]:
        return [pos for pos, _, lab in self.token_labels if lab == LAST_TOKEN_LABEL]


@dataclass(frozen=True)
class PreparedTrial:
    """A trial's clean, corrupted (shuffled-label) and zero-shot prompts."""

    trial: Trial
    clean: PreparedPrompt
    corrupted: PreparedPrompt
    zero_shot: PreparedPrompt

    @property
    def key(self) -> str:
        """``"<trial_id>:<trial_idx>"``, the key of per-trial values in reports and goldens."""
        return f"{self.trial.trial_id}:{self.trial.trial_idx}"

    def prompt_set(self, name: str) -> PreparedPrompt:
        """The evaluation prompt sets: the zero-shot query and the shuffled-label prompt."""
        return {"zero_shot": self.zero_shot, "shuffled": self.corrupted}[name]


def prepare_prompt(tokenizer: Any, prompt_data: dict, target: str, device: Any,
                   dummy: Sequence[tuple[int, str]] | None = None, prepend_bos: bool = False) -> PreparedPrompt:
    """Tokenize ``prompt_data`` once; with ``dummy`` labels, also label its tokens and map them to slots."""
    if dummy is None:
        text = prompt_string(prompt_data)
        return PreparedPrompt(text, tokenizer([text], return_tensors="pt").to(device), tuple(answer_ids(tokenizer, text, target)))
    labels, text = token_meta_labels(prompt_data, tokenizer, prepend_bos=prepend_bos)
    idx_map, idx_avg = slot_maps(labels, dummy)
    return PreparedPrompt(text, tokenizer([text], return_tensors="pt").to(device), tuple(answer_ids(tokenizer, text, target)),
                          tuple(labels), idx_map, idx_avg)


def prepare_trials(tokenizer: Any, trials: Sequence[Trial], dummy: Sequence[tuple[int, str]], prepend_bos: bool,
                   device: Any) -> list[PreparedTrial]:
    """Every trial's three prompts, each tokenized and labelled once."""
    out = []
    for tr in trials:
        out.append(PreparedTrial(
            trial=tr,
            clean=prepare_prompt(tokenizer, tr.prompt_data_clean, tr.target_str, device, dummy, prepend_bos),
            corrupted=prepare_prompt(tokenizer, tr.prompt_data_corrupted, tr.target_str, device, dummy, prepend_bos),
            zero_shot=prepare_prompt(tokenizer, zero_shot_prompt_data(tr.prompt_data_clean), tr.target_str, device),
        ))
    return out


def equal_passes(n: int, most: int) -> list[range]:
    """Indices ``0..n-1`` split into the fewest passes of at most ``most`` items, their sizes differing by at most
    one (10 at 8 a pass: 5 and 5, not 8 and 2; 7 at 3 a pass: 2, 2 and 3), so that no pass is left nearly empty."""
    passes = -(-n // max(1, most)) if n > 0 else 0
    return [range(n * i // passes, n * (i + 1) // passes) for i in range(passes)]
