"""The function vector added to a decoder layer's output."""


def make_residual_injection_hook(state):
    """A forward hook for a decoder layer: ``state["alpha"] * state["fv"]`` added to its output hidden states at
    ``(state["batch_indices"], state["last_indices"])`` (a copy; tuple outputs keep their other items)."""

    def hook(_module, _inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        if state["batch_indices"] is None or state["last_indices"] is None:
            raise RuntimeError("Injection indices not set")
        edited = hidden.clone()
        edited[state["batch_indices"], state["last_indices"]] += state["alpha"] * state["fv"].to(hidden.dtype)
        return (edited, *output[1:]) if isinstance(output, tuple) else edited

    return hook
