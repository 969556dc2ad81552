"""Top heads: the ``n`` heads with the largest trial-mean indirect effect (``torch.topk``, so ties break as the
reference's do), scored to 4 decimals as the reference reports them."""

from __future__ import annotations

import torch

Head = tuple[int, int, float]  # (layer, head, score)


def top_heads(indirect_effect: torch.Tensor, n_top: int) -> list[Head]:
    """The ``n_top`` heads with the largest trial-mean indirect effect, as ``(layer, head, score)``, best first.

    ``indirect_effect`` is ``(trials, layers, heads)``; scores are rounded to 4 decimals, ties broken by ``torch.topk``.
    """
    mean = indirect_effect.mean(dim=0)
    n_heads = mean.shape[1]
    vals, inds = torch.topk(mean.view(-1), k=n_top, largest=True)
    return [(int(i) // n_heads, int(i) % n_heads, round(v.item(), 4)) for v, i in zip(vals, inds)]
