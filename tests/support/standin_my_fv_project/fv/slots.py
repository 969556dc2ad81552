"""The target's first token in context."""


def get_target_first_token_id_from_boundary(prefix_str, answer_str, tokenizer, tokenize_kwargs=None):
    """The first id the answer adds after the prompt, both tokenized with ``tokenize_kwargs``."""
    kwargs = tokenize_kwargs or {}
    prefix = tokenizer(prefix_str, **kwargs)["input_ids"]
    full = tokenizer(prefix_str + answer_str, **kwargs)["input_ids"]
    if len(full) <= len(prefix) or full[:len(prefix)] != prefix:
        raise ValueError("the answer does not extend the prompt's tokens")
    return full[len(prefix)]
