"""A forward hook on an attention output projection that recomputes its output, optionally with one head's input
at one token replaced by a given vector (written for the test from the specification)."""

import torch


def make_out_proj_head_output_overrider(layer_idx, head_idx, seq_token_idx, mode, replace_vec, model_config,
                                        resolved_quant, force_recompute_outproj=True, state=None, logger=None):
    """A ``register_forward_hook`` hook. ``state`` (a dict, read at every call; built from the arguments when None)
    holds ``mode`` (``"self"``: the projection of the unchanged input; ``"replace"``: head ``head_idx``'s slice of the
    input at token ``seq_token_idx`` set to ``replace_vec`` first), ``head_idx``, ``seq_token_idx``, ``replace_vec``."""
    if resolved_quant not in (None, "none"):
        raise ValueError("this stand-in recomputes unquantized projections only")
    state = state if state is not None else {"mode": mode, "head_idx": head_idx, "seq_token_idx": seq_token_idx,
                                              "replace_vec": replace_vec}
    head_dim = int(model_config["head_dim"])

    def hook(module, args, output):
        x = args[0]
        if state["mode"] == "replace":
            x = x.clone()
            h, t = int(state["head_idx"]), int(state["seq_token_idx"])
            x[:, t, h * head_dim:(h + 1) * head_dim] = state["replace_vec"].to(x.dtype).to(x.device)
        elif state["mode"] != "self":
            raise ValueError(f"mode must be 'self' or 'replace', got {state['mode']!r}")
        out = torch.matmul(x, module.weight.T)
        return out if getattr(module, "bias", None) is None else out + module.bias

    return hook
