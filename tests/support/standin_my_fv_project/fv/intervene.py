"""A decoder-layer forward hook that adds a vector to the residual stream at chosen tokens (written for the test
from the specification)."""


def make_residual_injection_hook(state):
    """A ``register_forward_hook`` hook adding ``state["alpha"] * state["fv"]`` to the layer's hidden states at rows
    ``state["batch_indices"]``, tokens ``state["last_indices"]`` (read at every call); tuple outputs keep their tail."""

    def hook(_module, _args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        rows, tokens = state["batch_indices"], state["last_indices"]
        hidden = hidden.clone()
        hidden[rows, tokens] = hidden[rows, tokens] + state["alpha"] * state["fv"].to(hidden.dtype)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    return hook
