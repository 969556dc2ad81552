"""``fv model build`` (earlier ``fv build-model``): a random Llama-shaped model folder, for tests and GPU checks;
``fv model train``: the trained tiny model where function vectors work; ``fv model phenomenon``: its figures."""

from __future__ import annotations

import argparse

from fv.cli.common import add_device_arg, add_dtype_arg, add_model_args, add_noun
from fv.errors import UsageError


def cmd_build_model(a: argparse.Namespace) -> int:
    from fv.model.loading import pick_device
    from fv.model.tiny import TINY_MODELS, build_tiny_model

    spec = TINY_MODELS["tiny-llama3tok" if a.tokenizer == "llama3" else "tiny-llama"]
    shape = {"n_layers": a.n_layers, "d_model": a.d_model, "n_heads": a.n_heads, "n_kv_heads": a.n_kv_heads, "d_mlp": a.d_mlp}
    path = build_tiny_model(spec, a.out, shape, init=a.init, device=pick_device(a.device), dtype=a.dtype)
    print(f"wrote {path}")
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    from fv.io import write_json
    from fv.model.train import Recipe, train

    if a.steps < 1:
        raise UsageError(f"--steps must be at least 1; found {a.steps}.")
    record = train(a.out, Recipe(seed=a.seed, steps=a.steps), log=lambda line: print(line, flush=True))
    print(f"wrote {a.out} in {record['seconds']:.0f} s (weights sha256 {record['weights_sha256'][:16]}...)")
    if a.measure:
        from fv.pipelines.phenomenon import measure

        write_json(f"{a.out}/phenomenon.json", measure(a.out, log=lambda line: print(line, flush=True)))
    return 0


def cmd_phenomenon(a: argparse.Namespace) -> int:
    import json

    from fv.io import write_json
    from fv.model.rule_tasks import TASKS
    from fv.pipelines.phenomenon import measure

    tasks = a.tasks.split(",") if a.tasks else list(TASKS)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise UsageError(f"unknown task(s) {unknown}; choose from {', '.join(TASKS)}.")
    result = measure(a.model or "tiny-llama-fv", tasks, n_test=a.n_test, n_valid=a.n_valid, n_top_heads=a.n_top_heads,
                     device=a.device, dtype=a.dtype, log=lambda line: print(line, flush=True))
    print("mean: " + json.dumps({k: round(v, 4) for k, v in result["mean"].items()}))
    if a.out:
        write_json(a.out, result)
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001 - argparse exposes no public type
    verbs = add_noun(sub, "model", help="build: a random Llama-shaped model folder (tests, GPU checks); train: the tiny model where FVs work; phenomenon: its figures",
                     description="Model folders fv makes itself. Earlier spelling: fv build-model.")
    b = verbs.add_parser("build", help="build a random Llama-shaped model folder (tests, GPU checks; alias: fv build-model)",
                         description="Write a randomly initialised Llama model with the given shape and a tokenizer (the tiny BPE or the real Llama 3 one).")
    b.add_argument("--out", required=True, help="model folder to write; keep 'llama' in its name")
    b.add_argument("--tokenizer", choices=("fixture", "llama3"), default="llama3", help="the tiny byte-level BPE (fixture) or the real Llama 3 tokenizer (default)")
    b.add_argument("--n-layers", dest="n_layers", type=int, default=32, help="decoder layers (default 32, as Llama-3.1-8B)")
    b.add_argument("--d-model", dest="d_model", type=int, default=4096, help="model width (default 4096)")
    b.add_argument("--n-heads", dest="n_heads", type=int, default=32, help="attention heads (default 32)")
    b.add_argument("--n-kv-heads", dest="n_kv_heads", type=int, default=8, help="key/value heads (default 8)")
    b.add_argument("--d-mlp", dest="d_mlp", type=int, default=14336, help="MLP width (default 14336)")
    b.add_argument("--init", choices=("numpy", "torch"), default="torch", help="numpy: the byte-stable recipe of the tiny models; torch: fast random init (large models)")
    add_device_arg(b, default="cpu", what="where --init torch draws the weights (cuda is much faster for large models)")
    add_dtype_arg(b, default="bfloat16", what="the saved weights' dtype with --init torch", auto="float32")
    b.set_defaults(func=cmd_build_model)
    t = verbs.add_parser("train", help="train the tiny model where function vectors work (fixtures/tiny-llama-fv-8b)",
                         description="Train a 4-layer Llama-shaped model from a fixed seed on ICL prompts of five rule tasks "
                                     "(fixtures/rule_tasks, training words only), in about 6 minutes on 2 CPU cores; write "
                                     "its folder (config, weights, character-level tokenizer, training.json). The committed "
                                     "model was made by: fv model train --out fixtures/tiny-llama-fv-8b --measure")
    t.add_argument("--out", required=True, help="model folder to write; keep 'llama' and '8b' in its name (the reference's loader then loads it in float32)")
    t.add_argument("--steps", type=int, default=1600, help="optimizer steps (default 1600)")
    t.add_argument("--seed", type=int, default=1234, help="seed of the weights and the training sequences (default 1234)")
    t.add_argument("--measure", action="store_true", help="then measure its figures (fv model phenomenon) into OUT/phenomenon.json")
    t.set_defaults(func=cmd_train)
    m = verbs.add_parser("phenomenon", help="measure whether function vectors work on a model (the rule tasks)",
                         description="Per rule task: ICL accuracy, zero-shot and shuffled-label accuracy without and with "
                                     "the task's FV (fv's pipeline; edit layer chosen on the valid words, figures on the test "
                                     "words), the top head's indirect effect and the median |effect|.")
    add_model_args(m, attn=False, model_note="with this command the default is tiny-llama-fv, the trained tiny model")
    m.add_argument("--tasks", default=None, help="comma list of tasks (default all five)")
    m.add_argument("--n-test", dest="n_test", type=int, default=50, help="test trials per task (default 50)")
    m.add_argument("--n-valid", dest="n_valid", type=int, default=30, help="valid trials per task, for the edit layer (default 30)")
    m.add_argument("--n-top-heads", dest="n_top_heads", type=int, default=10, help="heads in each task's FV (default 10)")
    m.add_argument("--out", default=None, help="write the figures as JSON here")
    m.set_defaults(func=cmd_phenomenon)
