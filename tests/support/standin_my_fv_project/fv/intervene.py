"""The FV injection hook the worked adapter asks for by name (written for the test from the specification: a
decoder layer's output gets a vector added at chosen tokens; never the user's code)."""


def make_residual_injection_hook(state):
    """A ``register_forward_hook`` hook: ``state["alpha"] * state["fv"]`` added to the layer's hidden states at rows
    ``state["batch_indices"]``, tokens ``state["last_indices"]`` (read at every call); a tuple output keeps its tail."""

    def add_fv(_module, _args, out):
        packed = isinstance(out, tuple)
        h = (out[0] if packed else out).clone()
        h[state["batch_indices"], state["last_indices"]] += state["alpha"] * state["fv"].to(h.dtype)
        return (h, *out[1:]) if packed else h

    return add_fv
