"""The character-level tokenizer of the trained tiny model (``fv.model.train``), built with the ``tokenizers`` library.

Byte-level, so any text encodes: the 256-symbol byte alphabet, plus one merge per ASCII letter of a space and that
letter (so a word after a space starts with one token, " h", and the answer's first token carries its first
letter, never a lone space), plus BOS and EOS. No pre-tokenizer splits the text; a template adds BOS, as Llama
tokenizers do. Written in the form every supported ``tokenizers`` and transformers release reads
(``fv.compat``: merges as ``"a b"`` strings, ``PreTrainedTokenizerFast``, no ``token_type_ids``).
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from fv import compat
from fv.io import write_text

BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"
TOKENIZER_CONFIG = {
    "tokenizer_class": compat.PORTABLE_TOKENIZER_CLASS,
    "bos_token": BOS,
    "eos_token": EOS,
    "pad_token": EOS,
    "model_max_length": 4096,
    "clean_up_tokenization_spaces": False,
    "model_input_names": list(compat.MODEL_INPUT_NAMES),
}


def build_char_tokenizer():
    """A ``tokenizers.Tokenizer``: ids 0 and 1 are BOS and EOS, then the byte alphabet, then " a" ... " Z"."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    space = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False).pre_tokenize_str(" ")[0][0]
    vocab = {BOS: 0, EOS: 1}
    for ch in alphabet:
        vocab[ch] = len(vocab)
    merges = [(space, letter) for letter in string.ascii_letters]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(BOS, special=True, normalized=False), AddedToken(EOS, special=True, normalized=False)])
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                                       special_tokens=[(BOS, 0)])
    return tok


def write_char_tokenizer(dest: str | Path) -> Path:
    """``tokenizer.json`` and ``tokenizer_config.json`` in ``dest``, in the portable form."""
    dest = Path(dest)
    data = compat.portable_tokenizer_json(json.loads(build_char_tokenizer().to_str()))
    write_text(dest / "tokenizer.json", compat.tokenizer_json_text(data))
    write_text(dest / "tokenizer_config.json", json.dumps(TOKENIZER_CONFIG, indent=2, sort_keys=True) + "\n")
    return dest
