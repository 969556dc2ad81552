"""Forward hooks as context managers that always remove what they added, whatever happens inside.

Three hooks serve every stage: capture the input of modules (the attention output projections, whose input
split by head is what each head writes), replace a module's output (to patch one head's slice), and add a
vector to a decoder layer's output at one position (FV injection), whether the layer returns a tensor, as
current transformers releases do, or a tuple, as older ones did. ``forward_until`` ends a pass early where fast
mode needs nothing after a module (the last layer's MLP and the unembedding).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from fv import compat


@contextlib.contextmanager
def hooked(registrations: Sequence[tuple[nn.Module, Callable]]) -> Iterator[None]:
    """Register forward hooks ``(module, hook)`` for the duration of the block; removed in ``finally``."""
    handles = []
    try:
        for module, hook in registrations:
            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def capture_inputs(modules: Sequence[nn.Module]) -> Iterator[dict[int, torch.Tensor]]:
    """Yield a dict filled, during a forward pass, with the first input of each module by its position."""
    store: dict[int, torch.Tensor] = {}

    def make(i: int) -> Callable:
        def hook(_m, inputs, _out):
            store[i] = inputs[0]
        return hook

    with hooked([(m, make(i)) for i, m in enumerate(modules)]):
        yield store


@contextlib.contextmanager
def replace_output(module: nn.Module, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Replace ``module``'s output with ``fn(input, output)``."""

    def hook(_m, inputs, output):
        return fn(inputs[0], output)

    with hooked([(module, hook)]):
        yield


@contextlib.contextmanager
def add_to_output(module: nn.Module, vector: torch.Tensor, position: int = -1) -> Iterator[None]:
    """Add ``vector`` (1, d_model) to ``module``'s hidden-state output at ``position``, in place."""

    def hook(_m, _inputs, output):
        hidden = compat.layer_hidden(output)  # fv.compat: a tuple on transformers 4.x, the tensor on 5.x
        hidden[:, position] += vector.to(hidden.device)
        return output

    with hooked([(module, hook)]):
        yield


class _Stopped(Exception):
    """Raised by ``forward_until``'s hook to end a forward pass; never leaves ``forward_until``."""


def forward_until(model: nn.Module, module: nn.Module, **kwargs) -> None:
    """``model(**kwargs)`` ended right after ``module``'s forward: what the modules after it compute is not
    computed. Hooks registered on ``module`` before this call still run (they run in registration order). Returns
    nothing: read what hooks captured, or the cache object handed in (filled up to ``module``)."""

    def stop(*_args):
        raise _Stopped

    handle = module.register_forward_hook(stop)
    try:
        model(**kwargs)
    except _Stopped:
        pass
    finally:
        handle.remove()
