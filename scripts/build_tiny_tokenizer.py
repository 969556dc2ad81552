"""Build the tiny byte-level BPE tokenizer committed under ``fixtures/tiny_tokenizer``.

Why this exists
---------------
The test suite runs a tiny, randomly initialised Llama model so that the
function-vector pipeline can be exercised on a CPU, offline, in seconds.
That model needs a tokenizer, and downloading a real one (hundreds of
thousands of merges, network access, licence questions) is neither small nor
offline.  This script trains a small (1024-entry) byte-level BPE tokenizer on
text taken only from the committed fixtures, so that:

* it is small and fully offline: the corpus is ``fixtures/antonym_tiny.json``,
  ``fixtures/relation_tiny.csv`` and a few generic English sentences written
  inline below.  Nothing is read from the network or from a shared data
  folder (``../shared/data/antonym.json`` is deliberately ignored even when
  it exists, so the tokenizer never depends on files outside the repo);
* it is deterministic: the corpus is fed to the trainer in a fixed order, so
  rerunning the script reproduces ``tokenizer.json`` byte for byte;
* it can encode any text: the model is byte-level (the full 256-symbol
  byte alphabet is in the vocabulary), so no input ever maps to ``<unk>``;
* it matches the project's prompt format: every pair is rendered as
  ``"Q: {input}\\nA: {output}\\n\\n"`` and every word also appears alone with
  a leading space, so prompt words tend to be few tokens long;
* encoding adds BOS (``<s>``) through a template post-processor, as Llama
  tokenizers do;
* every supported release reads it: BPE merges are written as ``"a b"``
  strings (tokenizers 0.19, the user's pinned release, cannot read the pairs
  later releases write), and ``tokenizer_config.json`` names
  ``PreTrainedTokenizerFast`` and the model inputs (no ``token_type_ids``).

Usage
-----
The output is committed under ``fixtures/tiny_tokenizer``.  After changing the
fixtures or this script, rebuild it with::

    python scripts/build_tiny_tokenizer.py            # writes fixtures/tiny_tokenizer
    python scripts/build_tiny_tokenizer.py --out DIR  # writes somewhere else

and commit the regenerated ``tokenizer.json`` and ``tokenizer_config.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from fv import compat
from fv.io import write_text

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = REPO_ROOT / "fixtures"
ANTONYM_PATH = FIXTURES / "antonym_tiny.json"
RELATION_PATH = FIXTURES / "relation_tiny.csv"
DEFAULT_OUT = FIXTURES / "tiny_tokenizer"

VOCAB_SIZE = 1024
MIN_FREQUENCY = 2
BOS, EOS, UNK = "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = [BOS, EOS, UNK]

TOKENIZER_CONFIG = {
    "tokenizer_class": "PreTrainedTokenizerFast",
    "bos_token": BOS,
    "eos_token": EOS,
    "unk_token": UNK,
    "model_max_length": 4096,
    "clean_up_tokenization_spaces": False,
    # no token_type_ids: transformers 4.x's fast tokenizer returns them otherwise, and a Llama's forward refuses them
    "model_input_names": ["input_ids", "attention_mask"],
}

# Plain English so that common subwords (the, ing, tion, ...) get merges.
GENERIC_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "A word and its opposite are often learned together by young children.",
    "When the weather is hot, people look for a cold drink and a quiet place in the shade.",
    "The teacher asked the students to write the answer to each question on a separate line.",
    "In the morning the city is loud and busy, but at night the streets are calm and empty.",
    "She opened the window because the room was warm, and then she closed the door.",
    "Language models read text as a sequence of tokens and predict the next token.",
    "Each example in the prompt shows an input followed by the expected output.",
    "This is a small test of the tokenizer, written only to provide common English words.",
    "They were walking along the river when it started raining, so they turned back home.",
    "Good questions often lead to better answers than the ones we expected at the beginning.",
    "The function returns a vector that captures the task described by the examples.",
    "He bought some bread, milk, and fresh fruit from the market on the corner.",
    "Many people think that learning a new language is difficult, but practice makes it easier.",
    "The results of the experiment were different from what the researchers had predicted.",
    "Please remember to save your work before you close the program.",
    "Our team will meet again next week to discuss the information and make a decision.",
    "The children were playing outside while their parents were cooking dinner in the kitchen.",
    "It is important to understand the relationship between the country and its language.",
    "Every animal has a name for its young, such as a cat and a kitten or a dog and a puppy.",
    "Numbers follow one another in order: one, two, three, four, five, six, seven, eight.",
    "There is nothing more interesting than a good story told by someone who was there.",
]


def load_antonyms(path: Path = ANTONYM_PATH) -> list[tuple[str, str]]:
    """Return the (input, output) pairs of the antonym fixture, in file order."""
    with path.open(encoding="utf-8") as f:
        data = json.load(f)
    return [(str(d["input"]), str(d["output"])) for d in data]


def load_relations(path: Path = RELATION_PATH) -> list[tuple[str, str]]:
    """Return the (ex_A, ex_B) pairs of the relation fixture, in file order."""
    with path.open(encoding="utf-8", newline="") as f:
        return [(row["ex_A"], row["ex_B"]) for row in csv.DictReader(f)]


def iter_corpus() -> Iterator[str]:
    """Yield the training corpus in a fixed, reproducible order."""
    pairs = load_antonyms() + load_relations()
    for inp, out in pairs:
        yield f"Q: {inp}\nA: {out}\n\n"
    seen: set[str] = set()
    for inp, out in pairs:
        for word in (inp, out):
            if word not in seen:
                seen.add(word)
                yield f" {word}"
    yield from GENERIC_TEXT


def build_tokenizer() -> Tokenizer:
    """Train and return the tiny byte-level BPE tokenizer."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=MIN_FREQUENCY,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(iter_corpus()), trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS)
    if bos_id is None:  # pragma: no cover - special tokens are always added
        raise RuntimeError(f"{BOS!r} missing from the trained vocabulary")
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A {BOS} $B",
        special_tokens=[(BOS, bos_id)],
    )
    return tokenizer


def write_tokenizer(out_dir: Path) -> Tokenizer:
    """Train the tokenizer and write ``tokenizer.json`` and ``tokenizer_config.json`` to ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    # what Tokenizer.save writes (atomically), with BPE merges as "a b" strings as tokenizers 0.19 writes them: the
    # form every tokenizers release reads (0.19 cannot read the pairs of 0.20 and later), byte for byte the same
    # file whichever release trained it
    data = compat.portable_tokenizer_json(json.loads(tokenizer.to_str(pretty=True)))
    write_text(out_dir / "tokenizer.json", compat.tokenizer_json_text(data))
    write_text(out_dir / "tokenizer_config.json", json.dumps(TOKENIZER_CONFIG, sort_keys=True, indent=2) + "\n")
    return tokenizer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(
            "Train the tiny, deterministic byte-level BPE tokenizer used by the tiny "
            "test Llama model, from fixtures/antonym_tiny.json, fixtures/relation_tiny.csv "
            "and some inline English text, and write tokenizer.json and "
            "tokenizer_config.json (loadable with transformers.AutoTokenizer)."
        )
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        type=Path,
        default=DEFAULT_OUT,
        help=f"output folder (default: {DEFAULT_OUT.relative_to(REPO_ROOT)})",
    )
    args = parser.parse_args(argv)
    tokenizer = write_tokenizer(args.out)
    print(f"wrote {args.out} (vocab size {tokenizer.get_vocab_size()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
