"""FV injection: add the function vector to a decoder layer's output at the last token and read the logits.

``TargetScore`` turns a logits row into what the reports compare: the target token's logit, log-probability
and probability, and the top-1 prediction. Both sides' logits go through this same function, so a difference
in a score is a difference in the logits.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch

from fv.model.tree import ModelInfo
from fv.runtime.hooks import add_to_output


def intervene(model: Any, info: ModelInfo, inputs: Any, edit_layer: int, vector: torch.Tensor,
              position: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """Last-token logits (1, vocab) of a clean run and of a run with ``vector`` added after ``edit_layer``."""
    info.check_edit_layer(edit_layer)
    clean = model(**inputs).logits[:, -1, :]
    with add_to_output(info.layers[edit_layer], vector.reshape(1, info.d_model), position):
        edited = model(**inputs).logits[:, -1, :]
    return clean, edited


@dataclass
class TargetScore:
    target_id: int
    logit: float
    logprob: float
    prob: float
    pred_id: int
    top_ids: list[int]
    top_logits: list[float]
    logits_sha256: str

    @classmethod
    def of(cls, logits: torch.Tensor, target_id: int, k: int = 10) -> "TargetScore":
        row = logits.reshape(-1).detach().to("cpu")
        f = row.to(torch.float64)
        logp = torch.log_softmax(f, dim=-1)
        top = torch.topk(f, k=min(k, f.numel()))
        return cls(
            target_id=int(target_id), logit=float(f[target_id]), logprob=float(logp[target_id]),
            prob=float(logp[target_id].exp()), pred_id=int(torch.argmax(f)),
            top_ids=[int(i) for i in top.indices], top_logits=[float(v) for v in top.values],
            logits_sha256=hashlib.sha256(row.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest(),  # any dtype
        )

    def as_dict(self) -> dict:
        return dict(self.__dict__)
