"""Each head's mean output per slot over fixed trials' clean prompts, slots laid out as the reference lays them.

A prompt's tokens are labelled by the part of the prompt that adds them (the reference's token meta labels, quirks
included); the slots are the labelled positions of the same prompt with every word the single token ``a``. A word of
several tokens takes one slot: the mean of its tokens' activations (the reference's ``idx_map`` and ``idx_avg``).
"""

import torch


def token_labels(prompt_data, tokenizer, prepend_bos):
    """``(one label per token, prompt string)``: each part's label over the tokens it adds to the growing prompt."""
    pre, sep, query = prompt_data["prefixes"], prompt_data["separators"], prompt_data["query_target"]["input"]
    query = query[0] if isinstance(query, list) else query
    groups = [[(pre["instructions"], "bos_token")], [(prompt_data["instructions"], "instructions_token")],
              [(sep["instructions"], "separator_token")]]
    for i, ex in enumerate(prompt_data["examples"], start=1):
        groups.append(list(zip([pre["input"], ex["input"], sep["input"], pre["output"], ex["output"], sep["output"]],
                               ["structural_token", f"demonstration_{i}_token", "separator_token", "structural_token",
                                f"demonstration_{i}_label_token", "separator_token"])))
    groups.append(list(zip([pre["input"], query, sep["input"], pre["output"]],
                           ["query_structural_token", "query_demonstration_token", "query_separator_token",
                            "query_structural_token"])))
    labels, text = (["bos_token"] if prepend_bos else []), ""
    for group in groups:
        for j, (word, label) in enumerate(group):
            if not word:
                continue
            before = len(tokenizer.tokenize(text))
            text += word
            added = len(tokenizer.tokenize(text)) - before
            if added == 0:
                labels[-1] = label  # the word merged into the previous token, which takes its label
            labels += [label] * added
            if j == 3:  # the output prefix's last token predicts
                labels[-1] = labels[-1].replace("structural", "predictive").replace("separator", "predictive")
            if j == 5:
                labels[-added] = labels[-added].replace("separator", "end_of_example")
    return labels[:len(tokenizer(text).input_ids)], text


def slot_map(labels, n_slots):
    """``(position -> slot, [(first, last) position of each multi-token word])``: the repeated positions of a word dropped,
    the others paired in order with the ``n_slots`` slots (as the reference zips them: extra positions are left out)."""
    spans, repeated = {}, set()
    for pos, label in enumerate(labels):
        if "demo" in label:
            if label in spans:
                repeated.add(pos)
            spans.setdefault(label, [pos, pos])[1] = pos
    kept = [pos for pos in range(len(labels)) if pos not in repeated]
    return dict(zip(kept, range(n_slots))), [(i, j) for i, j in spans.values() if j > i]


def compute_mean_activations_fixed_trials_ns(*, model, tokenizer, layer_modules, fixed_trials, n_use, model_cfg,
                                             tok_add_special, device, logger=None):
    """``(mean (layers, heads, slots, head_dim) float32 on the CPU, slot labels, {"QUERY_PRED": slot, ...})``;
    ``tok_add_special``: the tokenizer adds BOS itself (the reference's ``prepend_bos``)."""
    trials = fixed_trials.get("trials", fixed_trials)[:n_use]
    n_heads, layers = int(model_cfg["n_heads"]), sorted(layer_modules)
    first = trials[0]["prompt_data_clean"]
    dummy = {**first, "examples": [{"input": " a", "output": " a"}] * len(first["examples"]),
             "query_target": {"input": " a", "output": " a"}}
    slot_labels, _ = token_labels(dummy, tokenizer, tok_add_special)
    captured = {}
    hooks = [layer_modules[layer].register_forward_pre_hook(lambda _m, args, layer=layer: captured.__setitem__(layer, args[0]))
             for layer in layers]
    per_trial = []
    try:
        for trial in trials:
            labels, text = token_labels(trial["prompt_data_clean"], tokenizer, tok_add_special)
            if trial.get("clean_prompt_str") not in (None, text):
                raise ValueError("fixed_trials clean prompt differs from the prompt built from prompt_data_clean")
            with torch.no_grad():
                model(**tokenizer(text, return_tensors="pt").to(device))
            acts = torch.cat([captured[layer].reshape(1, -1, n_heads, captured[layer].shape[-1] // n_heads)
                              for layer in layers]).permute(0, 2, 1, 3)  # (layers, heads, tokens, head_dim)
            idx_map, multi = slot_map(labels, len(slot_labels))
            slots = acts[:, :, list(idx_map)]
            for i, j in multi:
                slots[:, :, idx_map[i]] = acts[:, :, i:j + 1].mean(dim=2)
            per_trial.append(slots.to("cpu", torch.float32))
    finally:
        for hook in hooks:
            hook.remove()
    if any(t.shape[2] != len(slot_labels) for t in per_trial):
        raise ValueError(f"a prompt fills fewer than the {len(slot_labels)} slots of its layout")
    q = slot_labels.index("query_predictive_token")
    return torch.stack(per_trial).mean(dim=0), slot_labels, {"QUERY_PRED": q, "query_predictive_token": q}
