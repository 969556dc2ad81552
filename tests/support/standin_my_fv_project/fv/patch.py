"""The indirect-effect hook the worked adapter asks for by name (written for the test from the specification: an
attention output projection recomputed, one head's input at one token replaced first; never the user's code). It is
called by keyword, as the adapter calls it."""

import torch


def make_out_proj_head_output_overrider(**kw):
    """A ``register_forward_hook`` hook on an output projection. ``kw["state"]`` (a dict read at every call; built from
    ``mode``, ``head_idx``, ``seq_token_idx`` and ``replace_vec`` when absent): ``"self"`` recomputes ``x @ W.T (+ b)``
    from the unchanged input ``x``; ``"replace"`` first sets head ``head_idx``'s slice of ``x`` at token
    ``seq_token_idx`` to ``replace_vec``. ``kw["model_config"]["head_dim"]`` gives the slice; only unquantized weights."""
    if kw.get("resolved_quant") not in (None, "none"):
        raise ValueError("this stand-in recomputes unquantized projections only")
    st = kw.get("state")
    if st is None:
        st = {k: kw[k] for k in ("mode", "head_idx", "seq_token_idx", "replace_vec")}
    width = int(kw["model_config"]["head_dim"])

    def recompute(proj, args, _out):
        x = args[0]
        if st["mode"] == "replace":
            lo = int(st["head_idx"]) * width
            x = x.clone()
            x[:, int(st["seq_token_idx"]), lo:lo + width] = st["replace_vec"].to(device=x.device, dtype=x.dtype)
        elif st["mode"] != "self":
            raise ValueError(f"unknown mode {st['mode']!r}: 'self' or 'replace'")
        y = torch.matmul(x, proj.weight.T)
        return y if proj.bias is None else y + proj.bias

    return recompute
