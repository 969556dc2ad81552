"""Build the two tiny SentencePiece tokenizers committed under ``fixtures/spm_llama2`` and ``fixtures/spm_gemma``.

Why this exists
---------------
Every other tiny model uses a byte-level BPE (``fixtures/tiny_tokenizer``, Llama 3's). Llama 2 and Gemma use
SentencePiece models instead, where a space is the piece ``▁`` glued to the next word (Metaspace), bytes that the
vocabulary lacks fall back to ``<0xNN>`` pieces, and digits are split one by one, so that `` 3`` is the two tokens
``▁`` and ``3``: a lone ``▁`` that is a token of its own. These two tokenizers bring that into the family matrix:

* ``spm_llama2``: Llama 2's trainer settings (BPE, byte fallback, digits split, a dummy prefix ``▁`` before
  the text, identity normalization, ``<unk>``/``<s>``/``</s>`` as ids 0/1/2), BOS ``<s>`` added, 512 pieces;
* ``spm_gemma``: Gemma's (BPE, byte fallback, digits split, no dummy prefix, ``<pad>``/``<eos>``/``<bos>``/``<unk>``
  as ids 0/1/2/3 and ``<mask>`` a user symbol), BOS ``<bos>`` added, 512 pieces.

Each folder holds the trained ``tokenizer.model`` (what the slow, sentencepiece-backed tokenizers read), the
``tokenizer.json`` that transformers converts it to (what ``AutoTokenizer`` reads), written in the format
tokenizers 0.19 reads too (BPE merges as ``"a b"`` strings, no ``ignore_merges`` field), and
``tokenizer_config.json``.

Deterministic: the corpus is the committed fixtures only (``antonym_tiny.json``, ``sentiment_tiny.json``,
``spm_tricky.json``), fed in a fixed order to a one-thread trainer with no sampling or shuffling, so rerunning
this script reproduces the files byte for byte (checked by ``tests/self/runtime/test_spm_tokenizers.py``).

Usage::

    python scripts/build_spm_tokenizers.py            # writes fixtures/spm_llama2 and fixtures/spm_gemma
    python scripts/build_spm_tokenizers.py --out DIR  # writes DIR/spm_llama2 and DIR/spm_gemma
    python scripts/build_spm_tokenizers.py --check    # rebuilds in a temp folder and compares with fixtures/

and commit the regenerated files.
"""

from __future__ import annotations

import argparse
import filecmp
import io
import json
import sys
import tempfile
from pathlib import Path
from typing import Iterator

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = REPO_ROOT / "fixtures"
CORPUS = ("antonym_tiny.json", "sentiment_tiny.json", "spm_tricky.json")
VOCAB_SIZE = 512
FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json")

COMMON = dict(model_type="bpe", vocab_size=VOCAB_SIZE, character_coverage=1.0, byte_fallback=True, split_digits=True,
              normalization_rule_name="identity", remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
              split_by_unicode_script=True, split_by_whitespace=True, max_sentencepiece_length=16,
              num_threads=1, input_sentence_size=0, shuffle_input_sentence=False, minloglevel=2,
              hard_vocab_limit=True)
SPECS = {
    # Llama 2's tokenizer.model trainer_spec, scaled down
    "spm_llama2": dict(add_dummy_prefix=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                       unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>"),
    # Gemma's, scaled down
    "spm_gemma": dict(add_dummy_prefix=False, pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>",
                      bos_piece="<bos>", unk_piece="<unk>", user_defined_symbols=["<mask>"]),
}
CONFIGS = {
    "spm_llama2": {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                   "pad_token": None, "add_bos_token": True, "add_eos_token": False, "legacy": True,
                   "add_prefix_space": True, "model_max_length": 4096, "clean_up_tokenization_spaces": False},
    "spm_gemma": {"tokenizer_class": "GemmaTokenizer", "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>",
                  "pad_token": "<pad>", "mask_token": "<mask>", "add_bos_token": True, "add_eos_token": False,
                  "model_max_length": 8192, "clean_up_tokenization_spaces": False},
}


def corpus() -> Iterator[str]:
    """Sentences in a fixed order: each prompt line as the prompts write it (``Q: x`` and ``A: y``; the newlines
    between them are never seen, so they fall back to bytes as in Llama 2), then each cell alone."""
    rows = [r for f in CORPUS for r in json.loads((FIXTURES / f).read_text())]
    for r in rows:
        yield f"Q: {r['input']}"
        yield f"A: {r['output']}"
    for r in rows:
        yield r["input"]
        yield r["output"]


def train(name: str, dest: Path) -> None:
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=corpus(), model_writer=buf, **COMMON, **SPECS[name])
    (dest / "tokenizer.model").write_bytes(buf.getvalue())


def older_format(tok: dict) -> dict:
    """``tokenizer.json`` as tokenizers 0.19 writes it: BPE merges as ``"a b"`` strings, no ``ignore_merges``."""
    model = tok["model"]
    if model.get("type") == "BPE":
        merges = model.get("merges", [])
        if any(" " in p for m in merges if isinstance(m, list) for p in m):
            raise SystemExit("a merge holds a space; it cannot be written as an 'a b' string")
        model["merges"] = [" ".join(m) if isinstance(m, list) else m for m in merges]
        model.pop("ignore_merges", None)
    return tok


def fast_tokenizer(name: str, model_file: Path):
    """The ``tokenizers`` pipeline of the SentencePiece model, as the hub's Llama 2 and Gemma ``tokenizer.json`` files
    spell it (built here from the pieces and scores, which needs no protobuf): a BPE over the pieces with byte
    fallback, merges ordered by the merged piece's score (``transformers.convert_slow_tokenizer.generate_merges``,
    as its SentencePiece converters order them), spaces written ``▁`` by the normalizer (Llama 2 also prepends one:
    SentencePiece's dummy prefix), and BOS added by a template."""
    import sentencepiece as spm
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors
    from transformers.convert_slow_tokenizer import generate_merges

    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    n = sp.get_piece_size()
    vocab = {sp.id_to_piece(i): i for i in range(n)}
    scores = {sp.id_to_piece(i): sp.get_score(i) for i in range(n)}
    specials = {sp.id_to_piece(i) for i in range(n) if sp.is_control(i) or sp.is_unknown(i)}
    users = [sp.id_to_piece(i) for i in range(n) if sp.id_to_piece(i) in SPECS[name].get("user_defined_symbols", ())]
    merges = generate_merges(vocab, scores, skip_tokens=specials | set(users))
    unk = sp.id_to_piece(sp.unk_id())
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    dummy_prefix = SPECS[name]["add_dummy_prefix"]
    tok.normalizer = (normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
                      if dummy_prefix else normalizers.Replace(" ", "\u2581"))
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
                                    + ([decoders.Strip(" ", 1, 0)] if dummy_prefix else []))
    bos = sp.id_to_piece(sp.bos_id())
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                       special_tokens=[(bos, sp.bos_id())])
    added = sorted((i, p) for p, i in vocab.items() if p in specials or p in users)
    tok.add_tokens([AddedToken(p, special=p in specials, normalized=False) for _, p in added])
    return tok


def convert(name: str, dest: Path) -> None:
    """``tokenizer.json`` (in the older format) and ``tokenizer_config.json`` next to ``tokenizer.model``."""
    tok = fast_tokenizer(name, dest / "tokenizer.model")
    data = older_format(json.loads(tok.to_str()))
    for t in data["added_tokens"]:  # special tokens are added as special, the user symbol as a plain added token
        t["special"] = t["content"] != "<mask>"
    (dest / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n")
    (dest / "tokenizer_config.json").write_text(json.dumps(CONFIGS[name], indent=2, sort_keys=True) + "\n")


def build(out: Path) -> list[Path]:
    written = []
    for name in SPECS:
        dest = out / name
        dest.mkdir(parents=True, exist_ok=True)
        train(name, dest)
        convert(name, dest)
        written.append(dest)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=FIXTURES, help="folder to write spm_llama2/ and spm_gemma/ into (default fixtures/)")
    ap.add_argument("--check", action="store_true", help="rebuild in a temp folder and compare with --out, byte for byte")
    a = ap.parse_args(argv)
    if a.check:
        with tempfile.TemporaryDirectory() as tmp:
            build(Path(tmp))
            bad = [f"{n}/{f}" for n in SPECS for f in FILES
                   if not filecmp.cmp(Path(tmp) / n / f, a.out / n / f, shallow=False)]
        print("differ: " + ", ".join(bad) if bad else "same as committed")
        return 1 if bad else 0
    for d in build(a.out):
        print(f"wrote {d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
