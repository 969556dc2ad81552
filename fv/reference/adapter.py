"""The reference adapter: the only module that knows the names inside the reference's ``src/``.

It imports the reference in-process from ``--src-root`` and drives its own top-level functions on the
session's model and a fixed-trials file. The reference draws its prompts at random; to make it compute on
the fixed trials, the adapter hands its functions a dataset built from the trials and, for the duration of
one call, replaces the ``np`` those modules see with a stand-in whose ``random.choice`` and
``random.permutation`` return the trials' draws (everything else is numpy). The reference's own loops,
averaging and storage then run unchanged.

Where ``baukit`` does not import (its package imports torchvision), ``baukit/nethook.py`` is loaded alone;
where ``bitsandbytes`` is missing, an empty module stands in (only 70B models use it). Both are recorded in
``notes``. The reference's FV injection, a silent no-op where decoder layers return tensors, is found by
a liveness probe; ``compat=True`` applies the same addition to tensor outputs and is recorded too.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from fv.errors import FVError
from fv.model.loading import LoadedModel
from fv.runtime.prompts import BOS_TEXT
from fv.runtime.trials import Trial

REFERENCE_MARKER = Path("utils") / "prompt_utils.py"


class ReferenceUnavailable(FVError):
    """The reference cannot be found or imported; tests skip (or fail with --require-src) with this text."""


class InjectionNoOp(FVError):
    """The reference's FV injection does not change the logits on this transformers release."""


def find_src_root(explicit: str | None = None, cwd: Path | None = None) -> Path | None:
    """``--src-root``, else ``$FV_SRC_ROOT``, else ``./src`` when it holds ``utils/prompt_utils.py``."""
    for cand in (explicit, os.environ.get("FV_SRC_ROOT")):
        if cand:
            p = Path(cand).expanduser()
            if p.name != "src" and (p / "src" / REFERENCE_MARKER).is_file():
                p = p / "src"
            if not (p / REFERENCE_MARKER).is_file():
                raise ReferenceUnavailable(f"--src-root {cand}: expected the reference's src/ folder holding {REFERENCE_MARKER}; not found there.")
            return p.resolve()
    local = (cwd or Path.cwd()) / "src"
    return local.resolve() if (local / REFERENCE_MARKER).is_file() else None


def _baukit_candidates(src_root: Path, baukit_root: str | None) -> list[Path]:
    roots = [baukit_root, os.environ.get("FV_BAUKIT_ROOT"), str(src_root.parent / "baukit"), str(src_root / "baukit"),
             str(src_root.parent)]
    out = []
    for r in roots:
        if not r:
            continue
        p = Path(r).expanduser()
        out += [p / "baukit" / "nethook.py", p / "nethook.py"]
    return out


def _install_baukit(src_root: Path, baukit_root: str | None, notes: list[str]) -> None:
    try:
        import baukit  # noqa: F401

        if hasattr(baukit, "TraceDict"):
            return
    except Exception:
        sys.modules.pop("baukit", None)
    for cand in _baukit_candidates(src_root, baukit_root):
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
    raise ReferenceUnavailable(
        "the reference needs baukit's TraceDict: `import baukit` failed and no baukit/nethook.py was found. "
        "Give its folder with --baukit-root or FV_BAUKIT_ROOT (a checkout of github.com/davidbau/baukit)."
    )


def _install_bitsandbytes(notes: list[str]) -> None:
    try:
        import bitsandbytes  # noqa: F401
    except Exception:
        sys.modules["bitsandbytes"] = types.ModuleType("bitsandbytes")
        notes.append("bitsandbytes missing; an empty module stands in (the reference uses it only for 70B models)")


class _FixedRandom:
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


class _NumpyStandIn(types.ModuleType):
    def __init__(self, rnd: _FixedRandom):
        super().__init__("numpy")
        self.random = rnd

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)


def _raw(words: Sequence[str]) -> list[str]:
    """The dataset words back from prompt words, which carry the one leading space prepend_space adds."""
    out = []
    for w in words:
        if not isinstance(w, str) or not w.startswith(" "):
            raise FVError(f"trial word {w!r} lacks the leading space of prepend_space=True; the reference cannot rebuild this prompt.")
        out.append(w[1:])
    return out


def _without_bos_text(prefixes: dict) -> dict:
    """Prefixes without the BOS text the reference itself prepends when asked to (it would add it twice)."""
    out = dict(prefixes)
    if out.get("instructions", "").startswith(BOS_TEXT):
        out["instructions"] = out["instructions"][len(BOS_TEXT):]
    return out


@dataclass(frozen=True)
class LoaderFamily:
    """One branch of the reference's loader: the hook names and BOS rule it sets, and the words in the model
    path its functions test (case-sensitively unless ``any_case``) to take this family's code paths."""

    layer_hook: str  # format string over the layer number
    attn_hook: str
    prepend_bos: bool
    path_words: tuple[str, ...]
    any_case: bool = False


# by ``config.model_type``; the reference's loader picks the branch by substrings of the model name instead
LOADER_FAMILIES = {
    "gpt2": LoaderFamily("transformer.h.{}", "transformer.h.{}.attn.c_proj", False, ("gpt2-xl",)),
    "gptj": LoaderFamily("transformer.h.{}", "transformer.h.{}.attn.out_proj", False, ("gpt-j",)),
    "gpt_neox": LoaderFamily("gpt_neox.layers.{}", "gpt_neox.layers.{}.attention.dense", False, ("gpt-neox", "pythia")),
    "gemma": LoaderFamily("model.layers.{}", "model.layers.{}.self_attn.o_proj", True, ("gemma",)),
    "llama": LoaderFamily("model.layers.{}", "model.layers.{}.self_attn.o_proj", True, ("llama",)),
    "olmo": LoaderFamily("model.layers.{}", "model.layers.{}.self_attn.o_proj", False, ("olmo",), any_case=True),
}


def loader_family(lm: LoadedModel) -> LoaderFamily:
    """The reference loader's branch for this model, decided from its config's ``model_type``."""
    mt = lm.info.model_type
    if mt not in LOADER_FAMILIES:
        raise FVError(f"the reference supports model types {sorted(LOADER_FAMILIES)}; {lm.path} is {mt!r}. "
                      "Use a model of a supported family.")
    return LOADER_FAMILIES[mt]


def reference_model_config(lm: LoadedModel) -> dict:
    """The reference's MODEL_CONFIG for ``lm``: its family's hook names and BOS rule, the path as ``name_or_path``.

    Its functions choose per-family code by words in ``name_or_path``; a path without the family's word makes
    them fail obscurely, so that is refused here with the fix.
    """
    fam = loader_family(lm)
    name = str(lm.path)
    hay = name.lower() if fam.any_case else name
    if not any(w in hay for w in fam.path_words):
        words = " or ".join(repr(w) for w in fam.path_words)
        raise FVError(f"the reference picks its {lm.info.model_type} code paths by {words} in the model path; {name} lacks it. "
                      "Rename or symlink the folder so its path contains it.")
    n = lm.info.n_layers
    layers, attn = [fam.layer_hook.format(i) for i in range(n)], [fam.attn_hook.format(i) for i in range(n)]
    if layers != lm.info.layer_names or attn != lm.info.attn_out_names:
        raise FVError(f"the reference hooks {attn[0]} and {layers[0]}, but this {lm.info.model_type} model has "
                      f"{lm.info.attn_out_names[0]} and {lm.info.layer_names[0]}; its module tree is not the one the reference expects.")
    return {"n_heads": lm.info.n_heads, "n_layers": n, "resid_dim": lm.info.d_model, "name_or_path": name,
            "attn_hook_names": attn, "layer_hook_names": layers, "prepend_bos": fam.prepend_bos}


def own_loader_refusal(lm: LoadedModel) -> str | None:
    """Why the reference's own loader would not load ``lm``'s folder (None when it would): it picks a branch by
    substrings of the name, and its GPT-2 branch takes only the exact name ``gpt2-xl``."""
    try:
        reference_model_config(lm)
    except FVError as exc:
        return str(exc)
    if lm.info.model_type == "gpt2" and str(lm.path) != "gpt2-xl":
        return f"the reference's loader loads GPT-2 only under the exact name 'gpt2-xl', not {lm.path}."
    return None


class Reference:
    """The reference ``src/``, imported once per process, driven stage by stage."""

    def __init__(self, src_root: str | Path, baukit_root: str | None = None, compat: bool = False):
        self.src_root = Path(src_root).resolve()
        self.compat = compat
        self.notes: list[str] = []
        _install_baukit(self.src_root, baukit_root, self.notes)
        _install_bitsandbytes(self.notes)
        for mod in ("utils", "compute_indirect_effect"):
            loaded = sys.modules.get(mod)
            if loaded is not None and not str(getattr(loaded, "__file__", "") or "").startswith(str(self.src_root)):
                raise ReferenceUnavailable(f"a module named {mod!r} from elsewhere ({getattr(loaded, '__file__', None)}) is already imported; run the reference in a fresh process.")
        if str(self.src_root) not in sys.path:
            sys.path.insert(0, str(self.src_root))
        try:
            self.prompt_utils = importlib.import_module("utils.prompt_utils")
            self.extract_utils = importlib.import_module("utils.extract_utils")
            self.intervention_utils = importlib.import_module("utils.intervention_utils")
            self.eval_utils = importlib.import_module("utils.eval_utils")
            self.cie = importlib.import_module("compute_indirect_effect")
        except ImportError as exc:
            raise ReferenceUnavailable(f"the reference in {self.src_root} does not import: {exc}. Install its needs: pip install 'fv[src]'.") from exc
        self._original_add_fv = self.intervention_utils.add_function_vector

    # -- configuration -------------------------------------------------------------------------------------
    def model_config(self, lm: LoadedModel) -> dict:
        """The MODEL_CONFIG the reference's own loader built (a model it loaded itself) or would build."""
        return lm.reference_config if lm.reference_config is not None else reference_model_config(lm)

    def load_own(self, name_or_path: str | Path, device: str = "cpu") -> LoadedModel:
        """The model as the reference's own loader loads it (dtype, attention, placement, MODEL_CONFIG), for the
        end-to-end mode in which each side loads its own copy. Names its loader cannot load fail in one line."""
        from fv.model.tokenizers import tokenizer_prepends_bos
        from fv.model.tree import inspect_model

        name = str(name_or_path)
        try:
            mu = importlib.import_module("utils.model_utils")
        except ImportError as exc:
            raise ReferenceUnavailable(f"the reference's loader does not import: {exc}") from exc
        try:
            with contextlib.redirect_stdout(sys.stderr):
                model, tok, config = mu.load_gpt_model_and_tokenizer(name, device=device)
        except NotImplementedError as exc:
            hint = (" Its GPT-2 branch matches only the exact name 'gpt2-xl': share fv's model instead (the shared mode)."
                    if "gpt2" in name.lower() else " Keep the family's word (llama, gemma, olmo, gpt-j, gpt-neox, pythia) in the path.")
            raise FVError(f"the reference's loader cannot load {name}: it picks a branch by substrings of the name and none matched.{hint}") from exc
        except Exception as exc:
            raise FVError(f"the reference's loader failed on {name}: {type(exc).__name__}: {exc}") from exc
        model.eval()
        torch.set_grad_enabled(False)
        return LoadedModel(path=Path(name), model=model, tokenizer=tok, info=inspect_model(model), device=str(model.device),
                           dtype=model.dtype, prepend_bos=tokenizer_prepends_bos(tok),
                           loading_rule="the reference's own loader", attn_implementation=str(getattr(model.config, "_attn_implementation", "")),
                           reference_config=config)

    # -- prompt and slot stage -----------------------------------------------------------------------------
    def prompt_data(self, trial_pd: dict, bos_text: bool, shuffle_to: Sequence[str] | None = None) -> dict:
        """The reference's prompt data for a trial, rebuilt from the dataset words as its loops build it, with the
        BOS text where this src puts it (``bos_text_rule``)."""
        pu = self.prompt_utils
        meta_prefixes = _without_bos_text(trial_pd["prefixes"])
        pairs = {"input": _raw([e["input"] for e in trial_pd["examples"]]), "output": _raw([e["output"] for e in trial_pd["examples"]])}
        q = trial_pd["query_target"]
        query = {"input": _raw([q["input"]]), "output": _raw([q["output"]])}
        kwargs = dict(query_target_pair=query, prepend_bos_token=bos_text, prefixes=meta_prefixes,
                      separators=trial_pd["separators"])
        if shuffle_to is None:
            return pu.word_pairs_to_prompt_data(pairs, **kwargs)
        with self._fixed_numpy([pu], [], [np.array(_raw(shuffle_to))]):
            return pu.word_pairs_to_prompt_data(pairs, shuffle_labels=True, **kwargs)

    def dummy_labels(self, tokenizer: Any, model_config: dict, n_shots: int, prefixes: dict, separators: dict) -> list:
        return self.prompt_utils.get_dummy_token_labels(n_shots, tokenizer=tokenizer, model_config=model_config,
                                                        prefixes=prefixes, separators=separators)

    def bos_text_rule(self, lm: LoadedModel) -> tuple[bool, str]:
        """Whether this src writes the BOS text into its prompts on ``lm``, and its rule in words.

        Found by watching what ``get_dummy_token_labels`` asks the prompt builder for under both values of
        MODEL_CONFIG's ``prepend_bos``: upstream asks for the BOS text exactly when it is false; a fork may never
        ask. Behaviour, not source text, so any fork answers for itself."""
        pu = self.prompt_utils
        build = pu.word_pairs_to_prompt_data
        asked: list[bool] = []

        def spy(*args: Any, **kwargs: Any) -> dict:
            asked.append(bool(kwargs.get("prepend_bos_token", False)))
            return build(*args, **kwargs)

        mc = self.model_config(lm)
        answers = {}
        for flag in (True, False):
            asked.clear()
            pu.word_pairs_to_prompt_data = spy
            try:
                pu.get_dummy_token_labels(1, tokenizer=lm.tokenizer, model_config={**mc, "prepend_bos": flag})
            finally:
                pu.word_pairs_to_prompt_data = build
            answers[flag] = asked[0] if asked else False
        if answers == {True: False, False: True}:
            rule = "upstream rule: the BOS text exactly when MODEL_CONFIG['prepend_bos'] is false"
        elif not any(answers.values()):
            rule = "this src never writes the BOS text (a fork's prepend_bos = False)"
        else:
            rule = f"this src writes the BOS text for MODEL_CONFIG['prepend_bos'] true/false: {answers[True]}/{answers[False]}"
        return answers[bool(mc["prepend_bos"])], rule

    def require_trials_fit(self, lm: LoadedModel, trials: Any) -> tuple[bool, str]:
        """Refuse, before any stage, trials whose prompts disagree with this src's BOS rule (upstream then fails
        with a tensor shape error, a fork with a KeyError); returns the rule."""
        from fv.runtime.prompts import has_bos_text

        wants, rule = self.bos_text_rule(lm)
        first = trials.trials[0].prompt_data_clean if trials.trials else {}
        has = has_bos_text(first)
        if has != wants:
            raise FVError(
                f"{self.src_root} {'writes' if wants else 'does not write'} the BOS text {BOS_TEXT!r} into its prompts on "
                f"{lm.name} ({rule}), but the prompts of {trials.path} {'carry' if has else 'lack'} it "
                f"(prepend_bos_token_used {str(has).lower()}). Each src needs its own trials: make them with `fv make-trials "
                f"... --prepend-bos-token-used {str(wants).lower()}`.")
        return wants, rule

    def slots(self, prompt_data: dict, tokenizer: Any, model_config: dict, dummy: list) -> dict:
        pu = self.prompt_utils
        token_labels, prompt_string = pu.get_token_meta_labels(prompt_data, tokenizer, prompt_data["query_target"]["input"],
                                                               prepend_bos=model_config["prepend_bos"])
        idx_map, idx_avg = pu.compute_duplicated_labels(token_labels, dummy)
        return {"prompt_string": prompt_string, "token_labels": token_labels, "idx_map": idx_map, "idx_avg": idx_avg,
                "idx_map_full": pu.update_idx_map(idx_map, idx_avg)}

    def zero_shot_prompt_data(self, prompt_data: dict, bos_text: bool) -> dict:
        """The reference's zero-shot prompt data for the query of ``prompt_data`` (no examples)."""
        q = prompt_data["query_target"]
        return self.prompt_utils.word_pairs_to_prompt_data(
            {"input": [], "output": []}, query_target_pair={k: v[1:] for k, v in q.items()},
            prepend_bos_token=bos_text, prefixes=_without_bos_text(prompt_data["prefixes"]),
            separators=prompt_data["separators"])

    def answer_ids(self, tokenizer: Any, prompt: str, target: str) -> list[int]:
        return list(self.eval_utils.get_answer_id(prompt, target, tokenizer))

    # -- driving the reference's loops on fixed trials ------------------------------------------------------
    @contextlib.contextmanager
    def _fixed_numpy(self, modules: Sequence[types.ModuleType], choices: list, perms: list) -> Iterator[_FixedRandom]:
        rnd = _FixedRandom(choices, perms)
        stand_in = _NumpyStandIn(rnd)
        saved = [(m, m.np) for m in modules]
        try:
            for m in modules:
                m.np = stand_in
            yield rnd
        finally:
            for m, orig in saved:
                m.np = orig

    def _fixed_dataset(self, trials: Sequence[Trial], corrupted: bool) -> tuple[dict, list, list]:
        train_in, train_out, valid_in, valid_out, choices, perms = [], [], [], [], [], []
        for k, tr in enumerate(trials):
            clean = tr.prompt_data_clean
            n = len(clean["examples"])
            train_in += _raw([e["input"] for e in clean["examples"]])
            train_out += _raw([e["output"] for e in clean["examples"]])
            valid_in += _raw([clean["query_target"]["input"]])
            valid_out += _raw([clean["query_target"]["output"]])
            choices += [np.arange(k * n, (k + 1) * n), np.array([k])]
            if corrupted:
                perms.append(np.array(_raw([e["output"] for e in tr.prompt_data_corrupted["examples"]])))
        icl = self.prompt_utils.ICLDataset
        dataset = {"train": icl({"input": train_in, "output": train_out}), "valid": icl({"input": valid_in, "output": valid_out})}
        return dataset, choices, perms

    def mean_head_activations(self, lm: LoadedModel, trials: Sequence[Trial], prefixes: dict, separators: dict) -> torch.Tensor:
        """``get_mean_head_activations`` over the trials' clean prompts."""
        dataset, choices, _ = self._fixed_dataset(trials, corrupted=False)
        with self._fixed_numpy([self.extract_utils], choices, []) as rnd, torch.no_grad():
            out = self.extract_utils.get_mean_head_activations(
                dataset, lm.model, self.model_config(lm), lm.tokenizer, n_icl_examples=len(trials[0].prompt_data_clean["examples"]),
                N_TRIALS=len(trials), prefixes=prefixes, separators=separators)
        assert not rnd._choices, "the reference left fixed draws unused"
        return out

    def indirect_effect(self, lm: LoadedModel, trials: Sequence[Trial], mean_acts: torch.Tensor, prefixes: dict,
                        separators: dict) -> torch.Tensor:
        """``compute_indirect_effect(..., last_token_only=True)`` over the trials' corrupted prompts."""
        dataset, choices, perms = self._fixed_dataset(trials, corrupted=True)
        with self._fixed_numpy([self.cie], choices, []), self._fixed_numpy([self.prompt_utils], [], perms), torch.no_grad():
            return self.cie.compute_indirect_effect(
                dataset, mean_acts, lm.model, self.model_config(lm), lm.tokenizer,
                n_shots=len(trials[0].prompt_data_clean["examples"]), n_trials=len(trials), last_token_only=True,
                prefixes=prefixes, separators=separators)

    def function_vector(self, lm: LoadedModel, mean_acts: torch.Tensor, indirect_effect: torch.Tensor, n_top_heads: int,
                        token_class_idx: int = -1) -> tuple[torch.Tensor, list]:
        with torch.no_grad():
            fv, heads = self.extract_utils.compute_function_vector(mean_acts, indirect_effect, lm.model, self.model_config(lm),
                                                                   n_top_heads=n_top_heads, token_class_idx=token_class_idx)
        return fv, [(int(l), int(h), float(s)) for l, h, s in heads]

    # -- injection ------------------------------------------------------------------------------------------
    def _compat_add_function_vector(self, edit_layer, fv_vector, device, idx=-1):
        original = self._original_add_fv(edit_layer, fv_vector, device, idx=idx)

        def add_act(output, layer_name):
            if isinstance(output, tuple):
                return original(output, layer_name)
            if int(layer_name.split(".")[2]) == edit_layer:
                output[:, idx] += fv_vector.to(device)
            return output

        return add_act

    def intervene(self, lm: LoadedModel, sentence: str, target: str, edit_layer: int, fv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``function_vector_intervention``: last-token logits without and with the FV."""
        iu = self.intervention_utils
        if self.compat:
            iu.add_function_vector = self._compat_add_function_vector
        try:
            with torch.no_grad():
                clean, edited = iu.function_vector_intervention(sentence, [target], edit_layer, fv, lm.model,
                                                                self.model_config(lm), lm.tokenizer)
        finally:
            iu.add_function_vector = self._original_add_fv
        return clean, edited

    def probe_injection(self, lm: LoadedModel, edit_layer: int = 0) -> bool:
        """True when the reference's injection changes the logits (a large vector must)."""
        vec = torch.full((1, lm.info.d_model), 10.0, dtype=lm.dtype, device=lm.device)
        clean, edited = self.intervene(lm, "Q: hot\nA:", " cold", edit_layer, vec)
        return not torch.equal(clean, edited)

    def require_live_injection(self, lm: LoadedModel, edit_layer: int) -> None:
        if self.probe_injection(lm, edit_layer):
            return
        raise InjectionNoOp(
            "the reference's FV injection is a silent no-op here: its add_function_vector edits only tuple outputs, and "
            "decoder layers of this transformers release return a tensor, so clean and injected logits are identical. "
            "Pass --src-compat to apply the same addition to tensor outputs; reports record it."
        )
