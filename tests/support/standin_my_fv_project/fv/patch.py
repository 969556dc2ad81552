"""One head's input of the attention output projection replaced at one token, the projection recomputed."""

import torch


def make_out_proj_head_output_overrider(layer_idx, head_idx, seq_token_idx, mode, replace_vec, model_config,
                                        resolved_quant, force_recompute_outproj=True, state=None, logger=None):
    """A forward hook for layer ``layer_idx``'s output projection: its input, split into ``model_config["n_heads"]``
    heads, has head ``head_idx`` at token ``seq_token_idx`` replaced by ``replace_vec`` (``mode="replace"``) or kept
    (``"self"``), and the output is recomputed from it (the reference's ``input @ W.T``, plus the bias if any).
    ``state``, when given, overrides ``mode``, ``replace_vec``, ``seq_token_idx`` and ``head_idx`` at each call."""
    n_heads, head_dim = int(model_config["n_heads"]), int(model_config["head_dim"])
    if n_heads * head_dim != int(model_config["resid_dim"]):
        raise ValueError("model_config resid_dim must equal n_heads * head_dim")
    if resolved_quant not in (None, "none"):
        raise ValueError(f"this stand-in patches unquantized models only, not quant={resolved_quant!r}")
    state = {"mode": mode, "replace_vec": replace_vec} if state is None else state

    def hook(module, inputs, output):
        if not force_recompute_outproj:
            return output
        x = inputs[0].clone()
        token = state.get("seq_token_idx", seq_token_idx)
        if token is None:
            raise ValueError("seq_token_idx must be set for patching")
        head = state.get("head_idx")
        head = head_idx if head is None else int(head)
        if state["mode"] == "replace":
            heads = x.view(*x.shape[:-1], n_heads, head_dim)
            heads[:, token, head] = torch.as_tensor(state["replace_vec"]).to(x.device, x.dtype)
        elif state["mode"] != "self":
            raise ValueError("mode must be 'replace' or 'self'")
        y = torch.matmul(x, module.weight.T)
        return y if module.bias is None else y + module.bias

    return hook
