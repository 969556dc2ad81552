"""The reference's side of the universal-FV gate, through the adapter's public methods only.

- **The universal FV of a task**: the reference's ``compute_function_vector`` on the task's mean activations,
  handed the AIE as a ``(1, layers, heads)`` tensor. Its mean over the first dimension is then the AIE itself,
  so it runs its own top-k and sums its own projections for exactly the universal heads: the reference's
  arithmetic for a given head list, without patching the lists it hard-codes in
  ``compute_universal_function_vector``.
- **The ICL top-1 of a trial**: the clean logits of the reference's ``function_vector_intervention`` on the
  trial's clean ICL prompt (its injection path runs the clean forward first, untouched by the vector; a zero
  vector is handed in), prompt rebuilt by the reference's own prompt code.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch


def reference_universal_fv(ref: Any, lm: Any, mean_acts: torch.Tensor, aie: torch.Tensor, n_top_heads: int
                           ) -> tuple[torch.Tensor, list[tuple[int, int, float]]]:
    """(d_model,) float32 FV and the reference's head list ``[(layer, head, score 4 decimals)]`` for the AIE."""
    if aie.dim() != 2:
        raise ValueError(f"the AIE is (layers, heads); found shape {tuple(aie.shape)}")
    fv, heads = ref.function_vector(lm, mean_acts, aie.unsqueeze(0), n_top_heads)
    return fv.reshape(-1).to("cpu", torch.float32), heads


def reference_icl_top1(ref: Any, lm: Any, trials: Sequence[Any], d_model: int, dtype: torch.dtype) -> list[int]:
    """Per trial, the top-1 token id of the reference's clean forward on its clean ICL prompt. ``lm`` is the
    reference's model (its own copy in its own process, or fv's shared one); ``d_model`` and ``dtype`` size the
    zero vector handed to its injection."""
    bos, _rule = ref.bos_text_rule(lm)
    zero = torch.zeros((1, d_model), dtype=dtype, device=lm.device)
    out = []
    for tr in trials:
        clean = ref.prompt_data(tr.prompt_data_clean, bos)
        sentence = ref.prompt_utils.create_prompt(clean)
        logits, _ = ref.intervene(lm, sentence, clean["query_target"]["output"], 0, zero)
        out.append(int(logits.reshape(-1, logits.shape[-1])[-1].argmax()))
    return out


def reference_universal_values(ref: Any, lm: Any, tasks: dict[str, Sequence[Any]], mean_acts: dict[str, torch.Tensor],
                               aie: torch.Tensor, n_top_heads: int, d_model: int, dtype: torch.dtype) -> dict:
    """The reference's universal values for the tasks: ``{"heads": [[layer, head, score]], "fv": {task: (d_model,)
    float32}, "icl_top1": {task: [token id per trial]}}``, on ``lm`` (its own model or fv's shared one), each
    task's FV from its ``mean_acts`` (layers, heads, slots, head_dim) and the ``aie`` (layers, heads)."""
    fvs, heads = {}, []
    for t in tasks:
        fvs[t], heads = reference_universal_fv(ref, lm, mean_acts[t], aie, n_top_heads)
    icl = {t: reference_icl_top1(ref, lm, tasks[t], d_model, dtype) for t in tasks}
    return {"heads": [[int(l), int(h), float(s)] for l, h, s in heads], "fv": fvs, "icl_top1": icl}
