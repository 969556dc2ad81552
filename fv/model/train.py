"""Train the tiny model where function vectors work: a Llama-shaped transformer, from scratch, on ICL prompts of the
rule tasks (``fv.model.rule_tasks``), in the reference's prompt format, from a fixed seed.

Each training sequence is BOS, then ``N_DEMOS`` demonstrations ``Q: x\\nA: y\\n\\n`` and a query ``Q: x\\nA: y`` of one
task, on distinct words of the split's ``train`` part; the loss is the cross-entropy of every answer's tokens (so the
model learns to answer after 0, 1, ..., 10 demonstrations: with none it cannot know the task). The committed model
(``fixtures/tiny-llama-fv-8b``) is the source of truth for tests, which never train: ``fv model train`` rebuilds it (a
CPU's kernels may change the last bits; its ``training.json`` records the recipe, the curve and the digest).
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from fv import compat
from fv.io import write_json
from fv.model.char_tokenizer import write_char_tokenizer
from fv.model.rule_tasks import RULES, TASKS, load_split

N_DEMOS = 10
PREFIX_IN, PREFIX_OUT, SEP_IN, SEP_OUT = "Q:", "A:", "\n", "\n\n"


@dataclass(frozen=True)
class Recipe:
    """The training recipe (recorded in ``training.json``)."""

    seed: int = 1234
    steps: int = 1600
    batch: int = 32
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.01
    n_layers: int = 4
    d_model: int = 64
    n_heads: int = 4
    d_mlp: int = 256
    threads: int = 2


class Encoder:
    """Token ids of the prompt pieces, by the tokenizer itself (each word once, cached)."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.cache: dict[str, list[int]] = {}
        self.train_words = load_split()["train"]

    def piece(self, text: str) -> list[int]:
        if text not in self.cache:
            self.cache[text] = self.tok(text, add_special_tokens=False).input_ids
        return self.cache[text]

    def sequence(self, task: str, words: list[str], answer_last: bool = True) -> tuple[list[int], list[bool]]:
        """``(ids, is_answer)``: BOS, the demonstrations of ``words[:-1]``, the query ``words[-1]`` (with its answer
        when ``answer_last``)."""
        rule = RULES[task]
        ids, answer = [self.tok.bos_token_id], [False]
        for k, w in enumerate(words):
            last = k == len(words) - 1
            for text, is_ans in ((PREFIX_IN, False), (" " + w, False), (SEP_IN, False), (PREFIX_OUT, False)):
                p = self.piece(text)
                ids += p
                answer += [is_ans] * len(p)
            if last and not answer_last:
                break
            p = self.piece(" " + rule(w))
            ids += p
            answer += [True] * len(p)
            if not last:
                p = self.piece(SEP_OUT)
                ids += p
                answer += [False] * len(p)
        return ids, answer


def training_sequences(enc: Encoder, rng: random.Random, n: int) -> list[tuple[list[int], list[bool]]]:
    """``n`` training sequences ``(ids, is_answer)``, each of one task drawn from ``rng``, on distinct words of the
    split's ``train`` part only."""
    words = enc.train_words
    return [enc.sequence(rng.choice(TASKS), rng.sample(words, N_DEMOS + 1)) for _ in range(n)]


def _batch(enc: Encoder, rng: random.Random, n: int, pad: int):
    import torch

    seqs = training_sequences(enc, rng, n)
    width = max(len(ids) for ids, _ in seqs)
    input_ids = torch.full((n, width), pad, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    labels = torch.full((n, width), -100, dtype=torch.long)
    for i, (ids, answer) in enumerate(seqs):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        mask[i, :len(ids)] = 1
        labels[i, :len(ids)] = torch.tensor([t if a else -100 for t, a in zip(ids, answer)])
    return input_ids, mask, labels


def first_token_accuracy(model, enc: Encoder, task: str, words: list[str], n_demos: int, n: int, seed: int) -> float:
    """The reference's first-token measure: how often the argmax after ``A:`` is the answer's first token, over ``n``
    queries from ``words`` with ``n_demos`` demonstrations from ``words`` (the query excluded)."""
    import torch

    rng = random.Random(seed)
    hits = 0
    for _ in range(n):
        chosen = rng.sample(words, n_demos + 1)
        ids, _ = enc.sequence(task, chosen, answer_last=False)
        target = enc.piece(" " + RULES[task](chosen[-1]))[0]
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        hits += int(int(logits.argmax()) == target)
    return hits / n


def _llama(recipe: Recipe, tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=recipe.d_model, intermediate_size=recipe.d_mlp,
                      num_hidden_layers=recipe.n_layers, num_attention_heads=recipe.n_heads,
                      num_key_value_heads=recipe.n_heads, head_dim=recipe.d_model // recipe.n_heads,
                      max_position_embeddings=1024, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **{compat.dtype_keyword(): "float32"})
    return LlamaForCausalLM(cfg)


def train(dest: str | Path, recipe: Recipe = Recipe(), log: Callable[[str], None] = print) -> dict:
    """Train and write the model folder ``dest`` (config, weights, tokenizer, ``training.json``); returns the record.

    Time: about 0.22 s a step on 2 CPU cores at the default shape (1600 steps in 354 s)."""
    final = Path(dest)
    final.parent.mkdir(parents=True, exist_ok=True)
    # written in a folder beside it and moved into place at the end: an interrupted run leaves no half-written model
    dest = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        record = _train_into(dest, recipe, log)
        if final.exists():
            shutil.rmtree(final)
        os.replace(dest, final)
    finally:
        shutil.rmtree(dest, ignore_errors=True)
    return record


def _train_into(dest: Path, recipe: Recipe, log: Callable[[str], None]) -> dict:
    import torch
    from transformers import AutoTokenizer

    from fv.model.tiny import align_safetensors

    write_char_tokenizer(dest)
    tok = AutoTokenizer.from_pretrained(str(dest))
    enc = Encoder(tok)
    split = load_split()
    torch.manual_seed(recipe.seed)
    torch.set_num_threads(recipe.threads)
    rng = random.Random(recipe.seed)
    model = _llama(recipe, tok)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr, betas=(0.9, 0.95))

    def lr_at(step: int) -> float:
        if step < recipe.warmup:
            return recipe.lr * (step + 1) / recipe.warmup
        progress = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
        return recipe.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    curve, start = [], time.monotonic()
    model.train()
    for step in range(recipe.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        input_ids, mask, labels = _batch(enc, rng, recipe.batch, tok.eos_token_id)
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == recipe.steps - 1:
            model.eval()
            icl = sum(first_token_accuracy(model, enc, t, split["valid"], N_DEMOS, 20, step) for t in TASKS) / len(TASKS)
            model.train()
            curve.append({"step": step, "loss": round(float(loss.detach()), 4), "valid_icl_accuracy": round(icl, 3),
                          "seconds": round(time.monotonic() - start, 1)})
            log(f"step {step:5d}  loss {float(loss.detach()):.4f}  valid ICL accuracy {icl:.2f}  {time.monotonic() - start:.0f} s")
    model.eval()
    model.save_pretrained(str(dest), safe_serialization=True)
    compat.write_portable_config(dest)
    align_safetensors(dest / "model.safetensors")
    record = {"recipe": asdict(recipe), "tasks": list(TASKS), "n_demos": N_DEMOS, "train_words": len(split["train"]),
              "seconds": round(time.monotonic() - start, 1), "curve": curve,
              "versions": {"torch": torch.__version__, **{k: v for k, v in compat.versions().items() if k in ("transformers", "tokenizers")}},
              "weights_sha256": hashlib.sha256((dest / "model.safetensors").read_bytes()).hexdigest()}
    write_json(dest / "training.json", record)
    return record

