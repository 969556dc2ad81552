"""The reference adapter: the only module that knows the names inside the reference's ``src/``.

The reference's functions are driven by ``fv.reference.worker.Driver`` on fixed trials: in this process on fv's
model object (the shared mode), or, for the copy the reference's own loader loads (the own mode), in a process of
its own started as its users start src (``fv.reference.process``), to which ``Reference`` forwards its calls for
a ``RemoteModel``. The reference draws its prompts at random; to make it compute on the fixed trials, the driver
hands its functions a dataset built from the trials and, for the duration of one call, replaces the ``np`` those
modules see with a stand-in returning the trials' draws. The reference's own loops, averaging and storage then
run unchanged.

Where ``baukit`` does not import (its package imports torchvision), ``baukit/nethook.py`` is loaded alone;
where ``bitsandbytes`` is missing, an empty module stands in, and a 4-bit load stops naming ``fv[quant]``. Both
are recorded in ``notes``. The reference's FV injection, a silent no-op where decoder layers return tensors, is
found by a liveness probe; ``compat=True`` applies the same addition to tensor outputs and is recorded too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from fv.errors import FVError
from fv.model.loading import LoadedModel
from fv.reference.worker import BOS_TEXT, Driver, DriverError
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


def trial_dicts(trials: Sequence[Trial]) -> list[dict]:
    """The part of each trial the reference's driver reads, as plain JSON (it crosses to the reference process)."""
    return [{"trial_id": tr.trial_id, "trial_idx": tr.trial_idx, "prompt_data_clean": tr.prompt_data_clean,
             "prompt_data_corrupted": tr.prompt_data_corrupted} for tr in trials]


def user_string(lm: Any) -> str:
    """The string the reference's loader is handed: the model as the user named it (a hub id, a folder or a
    snapshot path, as given); fv resolves it for itself. fv's tiny models have no such name: their folder."""
    from fv.model.tiny import TINY_MODELS

    spec = getattr(lm, "spec", "") or ""
    return spec if spec and spec not in TINY_MODELS else str(lm.path)


def loader_hint(msg: str) -> str:
    """The fix for the reference loader's failures that have a known cause, appended to its one line."""
    low = msg.lower()
    if "bitsandbytes" in low or "accelerate" in low:
        return (" 4-bit loading needs bitsandbytes (0.50 or later on the CPU) and accelerate: pip install 'fv[quant]'.")
    if "sentencepiece" in low or "llamatokenizer" in low or "tokenizer.model" in low:
        return (" Its 4-bit Llama branch loads the tokenizer with LlamaTokenizer, which needs the model's tokenizer "
                "files (tokenizer.json, or the sentencepiece model tokenizer.model with `pip install sentencepiece`).")
    return ""


def is_remote(lm: Any) -> bool:
    from fv.reference.process import RemoteModel

    return isinstance(lm, RemoteModel)


class Reference:
    """The reference ``src/``, driven stage by stage: in this process on a model object fv hands it (the shared
    mode), or, for a copy its own loader loaded (``load_own``, the own mode), in a process of its own
    (``fv.reference.process``) to which the calls below are forwarded."""

    def __init__(self, src_root: str | Path, baukit_root: str | None = None, compat: bool = False, in_process: bool = True,
                 python: str | None = None):
        """``in_process=False``: nothing of the src is imported here until a shared-mode call needs it (a second src,
        such as a fork, driven only through its own process next to another src in this one). ``python``: the
        interpreter its own process runs under (``--src-python``: the user's own environment; default this one)."""
        self.src_root = Path(src_root).resolve()
        self.python = python
        self.baukit_root = baukit_root
        self.compat = compat
        self.notes: list[str] = []
        self._driver: Driver | None = None
        if in_process:
            self.driver  # noqa: B018 - import now: an unusable src is reported at once

    @property
    def driver(self) -> Driver:
        if self._driver is None:
            try:
                self._driver = Driver(self.src_root, self.baukit_root, self.compat)
            except DriverError as exc:
                raise ReferenceUnavailable(str(exc)) from None
            self.notes[:0] = [n for n in self._driver.notes if n not in self.notes]
        return self._driver

    def __getattr__(self, name: str) -> Any:  # the reference's modules: prompt_utils, extract_utils, ...
        if name in ("prompt_utils", "extract_utils", "intervention_utils", "eval_utils", "cie"):
            return getattr(self.driver, name)
        raise AttributeError(name)

    # -- configuration -------------------------------------------------------------------------------------
    def model_config(self, lm: Any) -> dict:
        """The MODEL_CONFIG the reference's own loader built (a model it loaded itself) or would build."""
        return lm.reference_config if lm.reference_config is not None else reference_model_config(lm)

    def load_own(self, name_or_path: str | Path, device: str = "cpu", fv_path: Path | None = None) -> Any:
        """The model as the reference's own loader loads it, from the string the user gave (a hub id, a folder, a
        snapshot path), in the reference's own process: its dtype, attention, quantization, placement and
        MODEL_CONFIG, read there. One process per (src, model) and session. Names its loader cannot load fail in
        one line."""
        from fv.reference.process import LoaderRefused, reference_process

        name = str(name_or_path)
        proc = reference_process(self.src_root, self.baukit_root, self.compat, model_key=f"{name}|{device}",
                                 python=self.python)
        try:
            rm = proc.load(name, fv_path or Path(name), device)
        except LoaderRefused as exc:
            hint = (" Its GPT-2 branch matches only the exact name 'gpt2-xl': share fv's model instead (the shared mode)."
                    if "gpt2" in name.lower() else " Keep the family's word (llama, gemma, olmo, gpt-j, gpt-neox, pythia) in the path.")
            raise FVError(f"the reference's loader cannot load {name}: it picks a branch by substrings of the name and none "
                          f"matched ({exc.ans.get('where')}).{hint}") from None
        except FVError as exc:
            raise FVError(f"{exc}{loader_hint(str(exc))}") from None
        for n in proc.notes:
            if n not in self.notes:
                self.notes.append(n)
        return rm

    # -- prompt and slot stage -----------------------------------------------------------------------------
    def prompt_data(self, trial_pd: dict, bos_text: bool, shuffle_to: Sequence[str] | None = None) -> dict:
        """The reference's prompt data for a trial, rebuilt from the dataset words as its loops build it, with the
        BOS text where this src puts it (``bos_text_rule``)."""
        try:
            return self.driver.prompt_data(trial_pd, bos_text, shuffle_to)
        except DriverError as exc:
            raise FVError(str(exc)) from None

    def dummy_labels(self, tokenizer: Any, model_config: dict, n_shots: int, prefixes: dict, separators: dict) -> list:
        return self.driver.dummy_labels(tokenizer, model_config, n_shots, prefixes, separators)

    def bos_text_rule(self, lm: Any) -> tuple[bool, str]:
        """Whether this src writes the BOS text into its prompts on ``lm``, and its rule in words.

        Found by watching what ``get_dummy_token_labels`` asks the prompt builder for under both values of
        MODEL_CONFIG's ``prepend_bos``: upstream asks for the BOS text exactly when it is false; a fork may never
        ask. Behaviour, not source text, so any fork answers for itself."""
        mc = self.model_config(lm)
        if is_remote(lm):
            a = lm.request("bos_answers")["answers"]
            answers = {True: a["true"], False: a["false"]}
        else:
            answers = self.driver.bos_answers(lm.tokenizer, mc)
        if answers == {True: False, False: True}:
            rule = "upstream rule: the BOS text exactly when MODEL_CONFIG['prepend_bos'] is false"
        elif not any(answers.values()):
            rule = "this src never writes the BOS text (a fork's prepend_bos = False)"
        else:
            rule = f"this src writes the BOS text for MODEL_CONFIG['prepend_bos'] true/false: {answers[True]}/{answers[False]}"
        return answers[bool(mc["prepend_bos"])], rule

    def require_trials_fit(self, lm: Any, trials: Any) -> tuple[bool, str]:
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
                f"(prepend_bos_token_used {str(has).lower()}). Each src needs its own trials: make them with `fv trials make "
                f"... --prepend-bos-token-used {str(wants).lower()}`.")
        return wants, rule

    def slots(self, prompt_data: dict, tokenizer: Any, model_config: dict, dummy: list) -> dict:
        return self.driver.slots(prompt_data, tokenizer, model_config, dummy)

    def zero_shot_prompt_data(self, prompt_data: dict, bos_text: bool) -> dict:
        """The reference's zero-shot prompt data for the query of ``prompt_data`` (no examples)."""
        return self.driver.zero_shot_prompt_data(prompt_data, bos_text)

    def answer_ids(self, tokenizer: Any, prompt: str, target: str) -> list[int]:
        return self.driver.answer_ids(tokenizer, prompt, target)

    # -- driving the reference's loops on fixed trials (in this process) -------------------------------------
    def mean_head_activations(self, lm: LoadedModel, trials: Sequence[Trial], prefixes: dict, separators: dict) -> torch.Tensor:
        """``get_mean_head_activations`` over the trials' clean prompts."""
        return self.driver.mean_head_activations(lm.model, lm.tokenizer, self.model_config(lm), trial_dicts(trials),
                                                 prefixes, separators)

    def indirect_effect(self, lm: LoadedModel, trials: Sequence[Trial], mean_acts: torch.Tensor, prefixes: dict,
                        separators: dict) -> torch.Tensor:
        """``compute_indirect_effect(..., last_token_only=True)`` over the trials' corrupted prompts."""
        return self.driver.indirect_effect(lm.model, lm.tokenizer, self.model_config(lm), trial_dicts(trials), mean_acts,
                                           prefixes, separators)

    def function_vector(self, lm: LoadedModel, mean_acts: torch.Tensor, indirect_effect: torch.Tensor, n_top_heads: int,
                        token_class_idx: int = -1) -> tuple[torch.Tensor, list]:
        """``compute_function_vector`` on given mean activations and indirect effects: the FV and its head list."""
        if is_remote(lm):
            from safetensors.torch import save_file

            f = lm.process.folder / f"fv-in-{id(mean_acts)}.safetensors"
            save_file({"mean_acts": mean_acts.detach().to("cpu").contiguous(),
                       "indirect_effect": indirect_effect.detach().to("cpu").contiguous()}, str(f))
            try:
                ans = lm.request("function_vector", in_file=f.name, n_top_heads=int(n_top_heads),
                                 token_class_idx=int(token_class_idx))
            finally:
                f.unlink(missing_ok=True)
            return lm.process.tensors(ans["file"])["fv"], [tuple(h) for h in ans["heads"]]
        return self.driver.function_vector(lm.model, self.model_config(lm), mean_acts, indirect_effect, n_top_heads, token_class_idx)

    # -- injection ------------------------------------------------------------------------------------------
    def intervene(self, lm: Any, sentence: str, target: str, edit_layer: int, fv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``function_vector_intervention``: last-token logits without and with the FV."""
        if is_remote(lm):
            from safetensors.torch import save_file

            f = lm.process.folder / f"fv-{id(fv)}.safetensors"
            save_file({"fv": fv.detach().to("cpu").contiguous()}, str(f))
            try:
                ans = lm.request("intervene", sentence=sentence, target=target, edit_layer=int(edit_layer), fv_file=f.name)
            finally:
                f.unlink(missing_ok=True)
            t = lm.process.tensors(ans["file"])
            return t["clean"], t["edited"]
        return self.driver.intervene(lm.model, lm.tokenizer, self.model_config(lm), sentence, target, edit_layer, fv)

    def probe_injection(self, lm: Any, edit_layer: int = 0) -> bool:
        """True when the reference's injection changes the logits (a large vector must)."""
        if is_remote(lm):
            return bool(lm.request("probe", edit_layer=int(edit_layer))["injection_live"])
        return self.driver.injection_is_live(lm.model, lm.tokenizer, self.model_config(lm), edit_layer)

    def probe_hook(self, lm: Any, text: str | None = None) -> str | None:
        """The reference's indirect-effect hook run once on ``text`` (the session's first prompt; a prompt of the
        trials' form by default): None when it runs, else why not in one line (for a name its case-sensitive
        family words miss: the word and the fix)."""
        if is_remote(lm):
            return lm.request("probe", edit_layer=0, text=text)["hook_problem"]
        return self.driver.probe_hook(lm.model, lm.tokenizer, self.model_config(lm), text)

    def require_live_injection(self, lm: Any, edit_layer: int) -> None:
        if self.probe_injection(lm, edit_layer):
            return
        raise InjectionNoOp(
            "the reference's FV injection is a silent no-op here: its add_function_vector edits only tuple outputs, and "
            "decoder layers of this transformers release return a tensor, so clean and injected logits are identical. "
            "Pass --src-compat to apply the same addition to tensor outputs; reports record it."
        )
