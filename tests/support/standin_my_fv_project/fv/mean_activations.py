"""Each head's mean ``o_proj`` input per slot of the clean ICL prompts (written for the test from the specification).

A slot is one token of the prompt's template (BOS, prefixes, separators), or one whole word (an example's input or
output, or the query), whose tokens are averaged. Tokens are assigned to the prompt's pieces by their character
offsets in the prompt string.
"""

import torch

from .prompting import prompt_pieces


def _slots_of(tokenizer, pieces, text, add_special):
    """``[[token positions], ...]``, one list per slot, in order, and a label per slot."""
    enc = tokenizer(text, add_special_tokens=add_special, return_offsets_mapping=True,
                    return_special_tokens_mask=True)
    bounds, at = [], 0
    for piece, role in pieces:
        bounds.append((at, at + len(piece), role))
        at += len(piece)
    if at != len(text):
        raise ValueError("the prompt pieces do not make up the prompt string")
    slots, labels, last_word = [], [], None
    for pos, ((start, end), special) in enumerate(zip(enc["offset_mapping"], enc["special_tokens_mask"])):
        if special and start == end:  # a special token the tokenizer adds (BOS): a slot of its own
            slots.append([pos])
            labels.append("special")
            last_word = None
            continue
        owner = next(k for k, (lo, hi, _role) in enumerate(bounds) if lo <= start < hi or (start == end == hi))
        role = bounds[owner][2]
        if role == "word" and last_word == owner:
            slots[-1].append(pos)
        else:
            slots.append([pos])
            labels.append(role)
        last_word = owner if role == "word" else None
    return enc["input_ids"], slots, labels


def compute_mean_activations_fixed_trials_ns(**kw):
    """``(mean (layers, heads, slots, head_dim) float32, slot labels, slot count)`` over the clean prompts of the first
    ``kw["n_use"]`` trials of ``kw["fixed_trials"]``; called by keyword, as the worked adapter calls it (``model``,
    ``tokenizer``, ``layer_modules``: layer -> the module whose input holds the heads, ``model_cfg``,
    ``tok_add_special``, ``device``)."""
    cfg, blocks = kw["model_cfg"], kw["layer_modules"]
    n_layers, n_heads, head_dim = int(cfg["n_layers"]), int(cfg["n_heads"]), int(cfg["head_dim"])
    seen = {}

    def remember(layer):
        return lambda _module, args: seen.__setitem__(layer, args[0].detach())

    handles = [blocks[layer].register_forward_pre_hook(remember(layer)) for layer in range(n_layers)]
    per_trial, layout = [], None
    try:
        for trial in kw["fixed_trials"]["trials"][:kw["n_use"]]:
            text = trial["clean_prompt_str"]
            ids, slots, labels = _slots_of(kw["tokenizer"], prompt_pieces(trial["prompt_data_clean"]), text,
                                           kw["tok_add_special"])
            if layout is not None and labels != layout:
                raise ValueError(f"trial {trial.get('trial_id')}: its slots differ from the first trial's")
            layout = labels
            with torch.no_grad():
                kw["model"](input_ids=torch.tensor([ids], device=kw["device"]))
            # (layers, heads, tokens, head_dim)
            acts = torch.stack([seen[layer][0].view(-1, n_heads, head_dim) for layer in range(n_layers)])
            acts = acts.permute(0, 2, 1, 3)
            slotted = torch.stack([acts[:, :, span].mean(dim=2) for span in slots], dim=2)
            per_trial.append(slotted.to("cpu", torch.float32))
    finally:
        while handles:
            handles.pop().remove()
    mean = torch.stack(per_trial).mean(dim=0)
    return mean, layout, mean.shape[2]
