"""The reference's driver: its functions on fixed trials, in this process or in a process of its own.

This file imports nothing of the ``fv`` package (only the standard library, numpy, torch, safetensors and the
reference), so it serves two ways:

* imported as ``fv.reference.worker`` by the adapter, it drives the reference in-process on a model object
  (the shared mode: the reference's functions on fv's model);
* run by path, ``python .../worker.py --src-root SRC``, it is the reference side of the own mode, started as the
  reference's users start src: the folder holding ``src/`` (their project root, so their own packages, a ``fv``
  of their own included) and ``src/`` itself first on ``sys.path``, the reference's own loader, imports and
  ``MODEL_CONFIG``. It answers requests, one JSON object a line on stdin, with one JSON object a line on the
  stdout it was started with (the reference's own prints go to stderr, the log); tensors travel in safetensors
  files in the folder the request names, never pickle.

The reference draws its prompts at random; to make it compute on fixed trials, the driver hands its functions a
dataset built from the trials and, for the duration of one call, replaces the ``np`` those modules see with a
stand-in whose ``random.choice`` and ``random.permutation`` return the trials' draws.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import inspect
import json
import os
import sys
import time
import traceback
import types
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

BOS_TEXT = "<|endoftext|>"
PROBE_TEXT = "Q: hot\nA: cold\n\nQ: up\nA:"
QUANT_EXTRA = "pip install 'fv[quant]' (bitsandbytes and accelerate; on the CPU bitsandbytes>=0.50)"


class DriverError(Exception):
    """The reference cannot be driven here (not importable, a needed package missing); one line."""


# ---- baukit and bitsandbytes ------------------------------------------------------------------------------
def baukit_candidates(src_root: Path, baukit_root: str | None) -> list[Path]:
    roots = [baukit_root, os.environ.get("FV_BAUKIT_ROOT"), str(src_root.parent / "baukit"), str(src_root / "baukit"),
             str(src_root.parent)]
    out = []
    for r in roots:
        if not r:
            continue
        p = Path(r).expanduser()
        out += [p / "baukit" / "nethook.py", p / "nethook.py"]
    return out


def install_baukit(src_root: Path, baukit_root: str | None, notes: list[str]) -> None:
    """``import baukit`` as the reference does; where its package does not import (it imports torchvision),
    ``baukit/nethook.py`` alone, which holds ``TraceDict``."""
    try:
        import baukit  # noqa: F401

        if hasattr(baukit, "TraceDict"):
            return
    except Exception:
        sys.modules.pop("baukit", None)
    for cand in baukit_candidates(src_root, baukit_root):
        if cand.is_file():
            spec = importlib.util.spec_from_file_location("baukit.nethook", cand)
            nethook = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(nethook)
            pkg = types.ModuleType("baukit")
            pkg.__path__ = []  # a package, so `baukit.nethook` resolves too
            for name in ("Trace", "TraceDict", "get_module", "get_parameter", "replace_module", "set_requires_grad",
                         "subsequence", "module_names", "parameter_names"):
                if hasattr(nethook, name):
                    setattr(pkg, name, getattr(nethook, name))
            pkg.nethook = nethook
            sys.modules["baukit"] = pkg
            sys.modules["baukit.nethook"] = nethook
            notes.append(f"baukit package not importable; loaded {cand} alone")
            return
    raise DriverError(
        "the reference needs baukit's TraceDict: `import baukit` failed and no baukit/nethook.py was found. "
        "Give its folder with --baukit-root or FV_BAUKIT_ROOT (a checkout of github.com/davidbau/baukit).")


def quant_available() -> tuple[bool, str]:
    """Whether 4-bit NF4 loading can run here (bitsandbytes with accelerate: on CUDA any release fv supports, 0.42
    on; on the CPU 0.50 on, as ``fv.compat.cpu_4bit`` says in fv's process), and what was found."""
    try:
        import bitsandbytes

        version = getattr(bitsandbytes, "__version__", "?")
    except Exception as exc:
        return False, f"bitsandbytes does not import ({type(exc).__name__}: {exc})"
    try:
        import accelerate  # noqa: F401
    except Exception:
        return False, f"bitsandbytes {version} present but accelerate missing"
    try:
        major, minor = (int(x) for x in version.split(".")[:2])
        if (major, minor) < (0, 50):
            if torch.cuda.is_available():
                return True, f"bitsandbytes {version} with accelerate, on CUDA only (NF4 on the CPU needs 0.50)"
            return False, f"bitsandbytes {version} is older than 0.50 (no NF4 on the CPU; it runs 4-bit on CUDA)"
    except ValueError:
        pass
    return True, f"bitsandbytes {version} with accelerate"


def install_bitsandbytes(notes: list[str]) -> None:
    """The reference imports bitsandbytes at the top of its intervention module but uses it only for 4-bit
    models; where it is missing an empty module stands in, and a 4-bit load stops naming the extra."""
    try:
        import bitsandbytes  # noqa: F401
    except Exception:
        stand_in = types.ModuleType("bitsandbytes")
        stand_in.__fv_stand_in__ = True

        def _missing(name: str) -> Any:
            raise DriverError(f"the reference's 4-bit path needs bitsandbytes ({name}); {QUANT_EXTRA}")

        stand_in.__getattr__ = _missing  # type: ignore[attr-defined]
        sys.modules["bitsandbytes"] = stand_in
        notes.append("bitsandbytes missing; an empty module stands in (4-bit models need it: " + QUANT_EXTRA + ")")


# ---- fixed draws ----------------------------------------------------------------------------------------
class FixedRandom:
    """``np.random`` as the reference calls it, answering from queues of fixed draws."""

    def __init__(self, choices: Sequence[np.ndarray], permutations: Sequence[np.ndarray]):
        self._choices = list(choices)
        self._perms = list(permutations)

    def choice(self, a, size=None, replace=True, p=None):  # noqa: ARG002 - numpy's signature
        if not self._choices:
            raise RuntimeError("the reference drew more samples than the fixed trials provide")
        out = self._choices.pop(0)
        if size is not None and len(out) != size:
            raise RuntimeError(f"the reference drew {size} samples where the fixed trial has {len(out)}")
        return out

    def permutation(self, x):
        if not self._perms:
            raise RuntimeError("the reference shuffled more label lists than the fixed trials provide")
        out = self._perms.pop(0)
        if sorted(map(str, x)) != sorted(map(str, out)):
            raise RuntimeError("the fixed corrupted labels are not a permutation of the demo labels")
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(np.random, name)


class NumpyStandIn(types.ModuleType):
    def __init__(self, rnd: FixedRandom):
        super().__init__("numpy")
        self.random = rnd

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)


def raw_words(words: Sequence[str]) -> list[str]:
    """The dataset words back from prompt words, which carry the one leading space prepend_space adds."""
    out = []
    for w in words:
        if not isinstance(w, str) or not w.startswith(" "):
            raise DriverError(f"trial word {w!r} lacks the leading space of prepend_space=True; the reference cannot rebuild this prompt.")
        out.append(w[1:])
    return out


def without_bos_text(prefixes: dict) -> dict:
    """Prefixes without the BOS text the reference itself prepends when asked to (it would add it twice)."""
    out = dict(prefixes)
    if out.get("instructions", "").startswith(BOS_TEXT):
        out["instructions"] = out["instructions"][len(BOS_TEXT):]
    return out


def tkey(tr: dict) -> str:
    return f"{tr['trial_id']}:{tr['trial_idx']}"


def where_in(exc: BaseException, root: Path) -> str:
    """``file: function`` of the innermost frame of ``exc`` inside ``root`` (the reference), else the innermost."""
    frames = traceback.extract_tb(exc.__traceback__)
    inside = [f for f in frames if str(Path(f.filename).resolve()).startswith(str(root))]
    f = (inside or frames or [None])[-1]
    if f is None:
        return "?"
    try:
        rel = Path(f.filename).resolve().relative_to(root)
    except ValueError:
        rel = Path(f.filename)
    return f"{rel}: {f.name} (line {f.lineno})"


def name_words(func: Any) -> list[str]:
    """The string constants ``func`` tests against ``model_config['name_or_path']`` with ``in``, read from the
    src in use (forks change them): ``[(word, lowercased?)]`` in source order."""
    import textwrap

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    except (OSError, TypeError, SyntaxError):
        return []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.In) \
                and isinstance(node.left, ast.Constant) and isinstance(node.left.value, str):
            right = ast.unparse(node.comparators[0])
            if "name_or_path" in right:
                item = (node.left.value, right.endswith(".lower()"))
                if item not in out:
                    out.append(item)
    return out


# ---- the driver ---------------------------------------------------------------------------------------------
class Driver:
    """The reference ``src/``, imported once per process, its functions called on a model and tokenizer."""

    def __init__(self, src_root: str | Path, baukit_root: str | None = None, compat: bool = False):
        self.src_root = Path(src_root).resolve()
        self.compat = compat
        self.notes: list[str] = []
        install_baukit(self.src_root, baukit_root, self.notes)
        install_bitsandbytes(self.notes)
        for mod in ("utils", "compute_indirect_effect"):
            loaded = sys.modules.get(mod)
            if loaded is not None and not str(getattr(loaded, "__file__", "") or "").startswith(str(self.src_root)):
                raise DriverError(f"a module named {mod!r} from elsewhere ({getattr(loaded, '__file__', None)}) is already imported; run the reference in a fresh process.")
        if str(self.src_root) not in sys.path:
            sys.path.insert(0, str(self.src_root))
        try:
            self.prompt_utils = importlib.import_module("utils.prompt_utils")
            self.extract_utils = importlib.import_module("utils.extract_utils")
            self.intervention_utils = importlib.import_module("utils.intervention_utils")
            self.eval_utils = importlib.import_module("utils.eval_utils")
            self.cie = importlib.import_module("compute_indirect_effect")
        except ImportError as exc:
            raise DriverError(f"the reference in {self.src_root} does not import: {exc}. Install its needs: pip install 'fv[src]'.") from exc
        self._original_add_fv = self.intervention_utils.add_function_vector

    # -- loading ---------------------------------------------------------------------------------------------
    def load_own(self, name: str, device: str) -> tuple[Any, Any, dict]:
        """``load_gpt_model_and_tokenizer(name, device)``, the reference's own loader, on the user's string."""
        mu = importlib.import_module("utils.model_utils")
        with contextlib.redirect_stdout(sys.stderr):
            model, tok, config = mu.load_gpt_model_and_tokenizer(name, device=device)
        model.eval()
        torch.set_grad_enabled(False)
        return model, tok, config

    # -- prompts and slots -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def fixed_numpy(self, modules: Sequence[types.ModuleType], choices: list, perms: list) -> Iterator[FixedRandom]:
        rnd = FixedRandom(choices, perms)
        stand_in = NumpyStandIn(rnd)
        saved = [(m, m.np) for m in modules]
        try:
            for m in modules:
                m.np = stand_in
            yield rnd
        finally:
            for m, orig in saved:
                m.np = orig

    def prompt_data(self, trial_pd: dict, bos_text: bool, shuffle_to: Sequence[str] | None = None) -> dict:
        pu = self.prompt_utils
        pairs = {"input": raw_words([e["input"] for e in trial_pd["examples"]]),
                 "output": raw_words([e["output"] for e in trial_pd["examples"]])}
        q = trial_pd["query_target"]
        query = {"input": raw_words([q["input"]]), "output": raw_words([q["output"]])}
        kwargs = dict(query_target_pair=query, prepend_bos_token=bos_text, prefixes=without_bos_text(trial_pd["prefixes"]),
                      separators=trial_pd["separators"])
        if shuffle_to is None:
            return pu.word_pairs_to_prompt_data(pairs, **kwargs)
        with self.fixed_numpy([pu], [], [np.array(raw_words(shuffle_to))]):
            return pu.word_pairs_to_prompt_data(pairs, shuffle_labels=True, **kwargs)

    def dummy_labels(self, tokenizer: Any, model_config: dict, n_shots: int, prefixes: dict, separators: dict) -> list:
        return self.prompt_utils.get_dummy_token_labels(n_shots, tokenizer=tokenizer, model_config=model_config,
                                                        prefixes=prefixes, separators=separators)

    def bos_answers(self, tokenizer: Any, model_config: dict) -> dict:
        """What ``get_dummy_token_labels`` asks the prompt builder for (``prepend_bos_token``) under both values
        of MODEL_CONFIG's ``prepend_bos``: ``{True: bool, False: bool}``."""
        pu = self.prompt_utils
        build = pu.word_pairs_to_prompt_data
        asked: list[bool] = []

        def spy(*args: Any, **kwargs: Any) -> dict:
            asked.append(bool(kwargs.get("prepend_bos_token", False)))
            return build(*args, **kwargs)

        answers = {}
        for flag in (True, False):
            asked.clear()
            pu.word_pairs_to_prompt_data = spy
            try:
                pu.get_dummy_token_labels(1, tokenizer=tokenizer, model_config={**model_config, "prepend_bos": flag})
            finally:
                pu.word_pairs_to_prompt_data = build
            answers[flag] = asked[0] if asked else False
        return answers

    def slots(self, prompt_data: dict, tokenizer: Any, model_config: dict, dummy: list) -> dict:
        pu = self.prompt_utils
        token_labels, prompt_string = pu.get_token_meta_labels(prompt_data, tokenizer, prompt_data["query_target"]["input"],
                                                               prepend_bos=model_config["prepend_bos"])
        idx_map, idx_avg = pu.compute_duplicated_labels(token_labels, dummy)
        return {"prompt_string": prompt_string, "token_labels": token_labels, "idx_map": idx_map, "idx_avg": idx_avg,
                "idx_map_full": pu.update_idx_map(idx_map, idx_avg)}

    def zero_shot_prompt_data(self, prompt_data: dict, bos_text: bool) -> dict:
        q = prompt_data["query_target"]
        return self.prompt_utils.word_pairs_to_prompt_data(
            {"input": [], "output": []}, query_target_pair={k: v[1:] for k, v in q.items()},
            prepend_bos_token=bos_text, prefixes=without_bos_text(prompt_data["prefixes"]),
            separators=prompt_data["separators"])

    def answer_ids(self, tokenizer: Any, prompt: str, target: str) -> list[int]:
        return [int(i) for i in self.eval_utils.get_answer_id(prompt, target, tokenizer)]

    # -- the reference's loops on fixed trials ---------------------------------------------------------------
    def fixed_dataset(self, trials: Sequence[dict], corrupted: bool) -> tuple[dict, list, list]:
        train_in, train_out, valid_in, valid_out, choices, perms = [], [], [], [], [], []
        for k, tr in enumerate(trials):
            clean = tr["prompt_data_clean"]
            n = len(clean["examples"])
            train_in += raw_words([e["input"] for e in clean["examples"]])
            train_out += raw_words([e["output"] for e in clean["examples"]])
            valid_in += raw_words([clean["query_target"]["input"]])
            valid_out += raw_words([clean["query_target"]["output"]])
            choices += [np.arange(k * n, (k + 1) * n), np.array([k])]
            if corrupted:
                perms.append(np.array(raw_words([e["output"] for e in tr["prompt_data_corrupted"]["examples"]])))
        icl = self.prompt_utils.ICLDataset
        dataset = {"train": icl({"input": train_in, "output": train_out}), "valid": icl({"input": valid_in, "output": valid_out})}
        return dataset, choices, perms

    def mean_head_activations(self, model, tok, mc, trials: Sequence[dict], prefixes: dict, separators: dict) -> torch.Tensor:
        dataset, choices, _ = self.fixed_dataset(trials, corrupted=False)
        with self.fixed_numpy([self.extract_utils], choices, []) as rnd, torch.no_grad():
            out = self.extract_utils.get_mean_head_activations(
                dataset, model, mc, tok, n_icl_examples=len(trials[0]["prompt_data_clean"]["examples"]),
                N_TRIALS=len(trials), prefixes=prefixes, separators=separators)
        assert not rnd._choices, "the reference left fixed draws unused"
        return out

    def indirect_effect(self, model, tok, mc, trials: Sequence[dict], mean_acts: torch.Tensor, prefixes: dict,
                        separators: dict) -> torch.Tensor:
        dataset, choices, perms = self.fixed_dataset(trials, corrupted=True)
        with self.fixed_numpy([self.cie], choices, []), self.fixed_numpy([self.prompt_utils], [], perms), torch.no_grad():
            return self.cie.compute_indirect_effect(
                dataset, mean_acts, model, mc, tok, n_shots=len(trials[0]["prompt_data_clean"]["examples"]),
                n_trials=len(trials), last_token_only=True, prefixes=prefixes, separators=separators)

    def function_vector(self, model, mc, mean_acts, indirect_effect, n_top_heads: int, token_class_idx: int = -1):
        with torch.no_grad():
            fv, heads = self.extract_utils.compute_function_vector(mean_acts, indirect_effect, model, mc,
                                                                   n_top_heads=n_top_heads, token_class_idx=token_class_idx)
        return fv, [(int(l), int(h), float(s)) for l, h, s in heads]

    def _compat_add_function_vector(self, edit_layer, fv_vector, device, idx=-1):
        original = self._original_add_fv(edit_layer, fv_vector, device, idx=idx)

        def add_act(output, layer_name):
            if isinstance(output, tuple):
                return original(output, layer_name)
            if int(layer_name.split(".")[2]) == edit_layer:
                output[:, idx] += fv_vector.to(device)
            return output

        return add_act

    def intervene(self, model, tok, mc, sentence: str, target: str, edit_layer: int, fv: torch.Tensor):
        iu = self.intervention_utils
        if self.compat:
            iu.add_function_vector = self._compat_add_function_vector
        try:
            with torch.no_grad():
                clean, edited = iu.function_vector_intervention(sentence, [target], edit_layer, fv, model, mc, tok)
        finally:
            iu.add_function_vector = self._original_add_fv
        return clean, edited

    def injection_is_live(self, model, tok, mc, edit_layer: int = 0) -> bool:
        """True when the reference's injection changes the logits (a large vector must)."""
        vec = torch.full((1, int(mc["resid_dim"])), 10.0, dtype=model.dtype, device=model.device)
        clean, edited = self.intervene(model, tok, mc, "Q: hot\nA:", " cold", edit_layer, vec)
        return not torch.equal(clean, edited)

    def probe_hook(self, model, tok, mc, text: str | None = None) -> str | None:
        """The reference's indirect-effect hook at layer 0, head 0, on ``text`` (the session's first prompt; by
        default ``PROBE_TEXT``, a prompt of the trials' form): None when it runs, else why not in one line, naming
        the case-sensitive word of ``name_or_path`` it looks for when that is the cause.

        The input has the shape of a real prompt (one batch row, many tokens): the reference's GPT-2 and GPT-NeoX
        branches call ``inputs.squeeze()``, which a one-token input turns into a vector that ``addmm`` refuses,
        while every real prompt runs; a probe must fail only where the real stage would."""
        from baukit import TraceDict

        iu = self.intervention_utils
        fn = iu.replace_activation_w_avg
        n_heads, head_dim = int(mc["n_heads"]), int(mc["resid_dim"]) // int(mc["n_heads"])
        dev = next(model.parameters()).device
        avg = torch.zeros((int(mc["n_layers"]), n_heads, 1, head_dim), dtype=model.dtype, device=dev)
        hook = fn(layer_head_token_pairs=[(0, 0, -1)], avg_activations=avg, model=model, model_config=mc, idx_map={-1: 0},
                  batched_input=False, last_token_only=True)
        ids = torch.tensor([[int(i) for i in tok(text or PROBE_TEXT).input_ids]], device=dev)
        try:
            with torch.no_grad(), TraceDict(model, layers=[mc["attn_hook_names"][0]], edit_output=hook):
                model(input_ids=ids)
        except Exception as exc:
            name = str(mc.get("name_or_path"))
            words = name_words(fn)
            missed = [w for w, low in words if not low and w not in name and w.lower() in name.lower()]
            where = where_in(exc, self.src_root)
            if missed or isinstance(exc, (UnboundLocalError, NameError)):
                looks = ", ".join(repr(w) for w, low in words if not low)
                what = (f"it looks for {' or '.join(repr(w) for w in missed)} case-sensitively, and {name!r} has it only in "
                        "another case" if missed else f"none of its case-sensitive words ({looks}) is in {name!r}")
                return (f"the reference's indirect-effect hook ({where}) picks its projection branch by words of "
                        f"MODEL_CONFIG['name_or_path']; {what}, so it raises {type(exc).__name__}: {exc}. Fix: a lowercase "
                        "folder name, or a lowercase symlink to the folder, given as the model.")
            return (f"the reference's indirect-effect hook fails on the session's first prompt ({ids.shape[1]} tokens; {where}): "
                    f"{type(exc).__name__}: {exc}")
        return None

    def stage_values(self, model, tok, mc: dict, trials: Sequence[dict], n_top_heads: int, edit_layer: int,
                     token_class_idx: int, prefixes: dict, separators: dict) -> tuple[dict, dict, dict]:
        """Every stage by the reference's own functions, raw: ``(json_values, tensors, durations)``; fv's side
        turns them into stage values (``fv.reference.stages``)."""
        d: dict = {}
        out: dict = {}
        tensors: dict = {}
        t = time.perf_counter()
        bos = self.bos_answers(tok, mc)[bool(mc["prepend_bos"])]
        rebuilt, prompts = {}, {}
        create = self.prompt_utils.create_prompt
        for tr in trials:
            clean = self.prompt_data(tr["prompt_data_clean"], bos)
            corr = self.prompt_data(tr["prompt_data_clean"], bos,
                                    shuffle_to=[e["output"] for e in tr["prompt_data_corrupted"]["examples"]])
            rebuilt[tkey(tr)] = (clean, corr)
            cs, ks = create(clean), create(corr)
            target = clean["query_target"]["output"]
            prompts[tkey(tr)] = [cs, ks, [int(i) for i in tok(cs).input_ids], [int(i) for i in tok(ks).input_ids], target,
                                 self.answer_ids(tok, cs, target)]
        out["prompt"] = prompts
        d["prompt"], t = time.perf_counter() - t, time.perf_counter()
        dummy = self.dummy_labels(tok, mc, len(trials[0]["prompt_data_clean"]["examples"]), prefixes, separators)
        slots = {}
        for tr in trials:
            entry = {}
            for side, pd_ in zip(("clean", "corrupted"), rebuilt[tkey(tr)]):
                s = self.slots(pd_, tok, mc, dummy)
                entry[side] = [[[int(p), str(tk), str(l)] for p, tk, l in s["token_labels"]],
                               {str(int(k)): int(v) for k, v in s["idx_map"].items()},
                               {str(k): [int(v[0]), int(v[1])] for k, v in s["idx_avg"].items()},
                               {str(int(k)): int(v) for k, v in s["idx_map_full"].items()}]
            slots[tkey(tr)] = entry
        out["slot"] = {"dummy_labels": [[int(p), str(l)] for p, l in dummy], "trials": slots}
        d["slot"], t = time.perf_counter() - t, time.perf_counter()
        mean = self.mean_head_activations(model, tok, mc, trials, prefixes, separators)
        tensors["mean_activations"] = mean
        d["mean_activations"], t = time.perf_counter() - t, time.perf_counter()
        ie = self.indirect_effect(model, tok, mc, trials, mean, prefixes, separators)
        tensors["indirect_effect"] = ie
        d["indirect_effect"], t = time.perf_counter() - t, time.perf_counter()
        fv, heads = self.function_vector(model, mc, mean, ie, n_top_heads, token_class_idx)
        out["top_heads"] = [[l, h, s] for l, h, s in heads]
        tensors["fv"] = fv.reshape(-1).to("cpu", torch.float32)
        d["top_heads"], d["fv"], t = time.perf_counter() - t, 0.0, time.perf_counter()
        out["injection"] = self._injection(model, tok, mc, trials, rebuilt, bos, edit_layer, fv, tensors)
        d["injection"] = time.perf_counter() - t
        return out, tensors, d

    def _injection(self, model, tok, mc, trials: Sequence[dict], rebuilt: dict, bos: str, edit_layer: int, fv,
                   tensors: dict) -> dict:
        """``function_vector_intervention`` on each trial's zero-shot and shuffled prompt; logits into ``tensors``,
        the answer's first id per prompt returned."""
        create = self.prompt_utils.create_prompt
        inj = {}
        for tr in trials:
            clean_pd, corr_pd = rebuilt[tkey(tr)]
            q = clean_pd["query_target"]
            entry = {}
            for name, pd_ in (("zero_shot", self.zero_shot_prompt_data(clean_pd, bos)), ("shuffled", corr_pd)):
                sentence = create(pd_)
                tid = self.answer_ids(tok, sentence, q["output"])[0]
                clean_l, edited_l = self.intervene(model, tok, mc, sentence, q["output"], edit_layer, fv)
                k = f"inj/{tkey(tr)}/{name}"
                tensors[k + "/clean"], tensors[k + "/edited"] = clean_l, edited_l
                entry[name] = tid
            inj[tkey(tr)] = entry
        return inj

    def refit_values(self, model, tok, mc: dict, trials: Sequence[dict], mean, heads: Sequence[Sequence[int]],
                     edit_layer: int, token_class_idx: int) -> tuple[dict, dict]:
        """The FV and injection stages by the reference's own functions for a given head list (its
        ``compute_function_vector`` handed a (1, layers, heads) score tensor whose top-k is exactly ``heads``, in
        their order), on the reference's own mean activations ``mean``: ``(json_values, tensors)``."""
        n_layers, n_heads = int(mc["n_layers"]), int(mc["n_heads"])
        scores = torch.zeros((1, n_layers, n_heads), dtype=torch.float32)
        for rank, (layer, head) in enumerate(heads):
            scores[0, int(layer), int(head)] = float(len(heads) - rank)
        fv, _ = self.function_vector(model, mc, mean, scores, len(heads), token_class_idx)
        tensors = {"fv": fv.reshape(-1).to("cpu", torch.float32)}
        bos = self.bos_answers(tok, mc)[bool(mc["prepend_bos"])]
        rebuilt = {tkey(tr): (self.prompt_data(tr["prompt_data_clean"], bos),
                              self.prompt_data(tr["prompt_data_clean"], bos,
                                               shuffle_to=[e["output"] for e in tr["prompt_data_corrupted"]["examples"]]))
                   for tr in trials}
        out = {"injection": self._injection(model, tok, mc, trials, rebuilt, bos, edit_layer, fv, tensors)}
        return out, tensors


# ---- what a loaded model is, read from the object the loader produced ---------------------------------------
def describe_model(model: Any, tok: Any) -> dict:
    """What the reference's loader produced: dtype of the non-quantized parameters, attention implementation,
    quantization config, the classes of the attention output projections (``Linear4bit`` with a ``quant_state``
    when 4-bit), the tokenizer's class and whether it adds a BOS."""
    params = list(model.named_parameters())
    float_dtypes = sorted({str(p.dtype).replace("torch.", "") for _, p in params if p.is_floating_point()})
    qc = getattr(model.config, "quantization_config", None)
    if qc is not None and not isinstance(qc, dict):
        qc = qc.to_dict() if hasattr(qc, "to_dict") else {"repr": repr(qc)}
    quantized = {}
    for name, mod in model.named_modules():
        w = getattr(mod, "weight", None)
        if w is not None and hasattr(w, "quant_state"):
            qs = w.quant_state
            quantized[name] = {"class": type(mod).__name__, "weight_class": type(w).__name__,
                               "quant_type": str(getattr(qs, "quant_type", "")),
                               "compute_dtype": str(getattr(mod, "compute_dtype", "") or "").replace("torch.", ""),
                               "dequant_dtype": str(getattr(qs, "dtype", "")).replace("torch.", ""),
                               "nested": bool(getattr(qs, "nested", False))}
    ids = tok("a").input_ids
    bos = tok.bos_token_id
    probe_ids = [int(i) for i in tok(PROBE_TEXT).input_ids]
    return {"dtype": str(model.dtype).replace("torch.", ""), "param_dtypes": float_dtypes,
            "attn_implementation": str(getattr(model.config, "_attn_implementation", "") or ""),
            "model_type": str(getattr(model.config, "model_type", "")), "quantization_config": qc,
            "quantized_modules": quantized, "device": str(next(model.parameters()).device),
            "tokenizer_class": type(tok).__name__, "probe_ids": probe_ids, "prepend_bos": bool(bos is not None and len(ids) > 0 and ids[0] == bos),
            "config": json.loads(json.dumps(model.config.to_dict(), default=str)),
            "n_params": sum(p.numel() for _, p in params),
            "param_bytes": sum(p.numel() * p.element_size() for _, p in params)}


# ---- the worker process -------------------------------------------------------------------------------------
class Worker:
    """One reference process: the driver and the models its loader loaded, by the name it was handed."""

    def __init__(self, driver: Driver):
        self.driver = driver
        self.models: dict = {}

    def _get(self, req: dict):
        key = (req["name"], req["device"])
        if key not in self.models:
            raise DriverError(f"model {req['name']!r} not loaded in this reference process")
        return self.models[key]

    def handle(self, req: dict) -> dict:
        from safetensors.torch import load_file, save_file

        op = req["op"]
        folder = Path(req.get("folder") or ".")
        if op == "hello":
            return {"notes": self.driver.notes, "python": sys.executable, "sys_path": sys.path[:4],
                    "fv_modules": {m: str(getattr(sys.modules[m], "__file__", "")) for m in sorted(sys.modules)
                                   if m == "fv" or m.startswith("fv.")}}
        if op == "load":
            t0 = time.perf_counter()
            model, tok, mc = self.driver.load_own(req["name"], req["device"])
            self.models[(req["name"], req["device"])] = (model, tok, mc)
            desc = describe_model(model, tok)
            return {"model_config": mc, "describe": desc, "load_seconds": time.perf_counter() - t0,
                    "fv_modules": {m: str(getattr(sys.modules[m], "__file__", "")) for m in sorted(sys.modules)
                                   if m == "fv" or m.startswith("fv.")}}
        model, tok, mc = self._get(req)
        if op == "bos_answers":
            a = self.driver.bos_answers(tok, mc)
            return {"answers": {"true": a[True], "false": a[False]}}
        if op == "probe":
            live = self.driver.injection_is_live(model, tok, mc, int(req.get("edit_layer", 0)))
            return {"injection_live": live, "hook_problem": self.driver.probe_hook(model, tok, mc, req.get("text"))}
        if op == "intervene":
            fv = load_file(str(folder / req["fv_file"]))["fv"].to(next(model.parameters()).device)
            clean, edited = self.driver.intervene(model, tok, mc, req["sentence"], req["target"], int(req["edit_layer"]), fv)
            out = folder / f"intervene-{os.getpid()}-{time.monotonic_ns()}.safetensors"
            save_file({"clean": clean.detach().cpu().contiguous(), "edited": edited.detach().cpu().contiguous()}, str(out))
            return {"file": out.name}
        if op == "function_vector":  # compute_function_vector on given mean activations and indirect effects
            given = load_file(str(folder / req["in_file"]))
            fv, heads = self.driver.function_vector(model, mc, given["mean_acts"], given["indirect_effect"],
                                                    int(req["n_top_heads"]), int(req.get("token_class_idx", -1)))
            out = folder / f"fv-{os.getpid()}-{time.monotonic_ns()}.safetensors"
            save_file({"fv": fv.detach().cpu().contiguous()}, str(out))
            return {"file": out.name, "heads": heads}
        if op == "refit":  # the FV and injection stages for a given head list, on given mean activations
            p = req["params"]
            mean = load_file(str(folder / req["in_file"]))["mean_acts"]
            values, tensors = self.driver.refit_values(model, tok, mc, req["trials"], mean, req["heads"],
                                                       int(p["edit_layer"]), int(p.get("token_class_idx", -1)))
            out = folder / f"refit-{os.getpid()}-{time.monotonic_ns()}.safetensors"
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(out))
            return {"values": values, "file": out.name}
        if op == "stages":
            p = req["params"]
            values, tensors, durations = self.driver.stage_values(model, tok, mc, req["trials"], int(p["n_top_heads"]),
                                                                  int(p["edit_layer"]), int(p.get("token_class_idx", -1)),
                                                                  req["prefixes"], req["separators"])
            out = folder / f"stages-{os.getpid()}-{time.monotonic_ns()}.safetensors"
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(out))
            return {"values": values, "file": out.name, "durations": durations}
        raise DriverError(f"unknown request {op!r}")


def _start_path(src_root: Path) -> None:
    """``sys.path`` as ``PYTHONPATH=. python src/script.py`` from the project root gives it: ``src/`` and the
    project root first; never this file's folder (fv's own package)."""
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if p and Path(p).resolve() != here]
    for p in (str(src_root.parent), str(src_root)):
        if p in sys.path:
            sys.path.remove(p)
    sys.path[:0] = [str(src_root), str(src_root.parent)]


def _launch() -> Any:
    """fv/launch.py loaded by its path (it imports nothing of fv, and neither does this process)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "launch.py"
    spec = importlib.util.spec_from_file_location("_fv_launch", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="the reference side of fv's own mode (driven by fv; not for direct use)")
    ap.add_argument("--src-root", required=True)
    ap.add_argument("--baukit-root", default=None)
    ap.add_argument("--compat", action="store_true")
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args(argv)
    reply = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # the reference's prints go to the log, never into the replies
    sys.stdout = sys.stderr
    if a.threads:
        torch.set_num_threads(a.threads)
    src = Path(a.src_root).resolve()
    _start_path(src)
    try:
        worker = Worker(Driver(src, a.baukit_root, a.compat))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent in one line
        reply.write(json.dumps({"ok": False, "error": type(exc).__name__, "message": str(exc), "where": where_in(exc, src)}) + "\n")
        reply.flush()
        return 1
    reply.write(_launch().ready_line() + "\n")  # the handshake: protocol and this interpreter's libraries
    reply.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        if req.get("op") == "exit":
            break
        try:
            ans = {"ok": True, **worker.handle(req)}
        except BaseException as exc:  # noqa: BLE001
            traceback.print_exc(file=sys.stderr)
            sys.stderr.flush()
            ans = {"ok": False, "error": type(exc).__name__, "message": str(exc).splitlines()[0] if str(exc) else "",
                   "where": where_in(exc, src)}
        reply.write(json.dumps(ans) + "\n")
        reply.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
