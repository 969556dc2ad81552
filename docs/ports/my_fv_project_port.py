"""A worked adapter: sunsikham/my_fv_project's runtime (their package ``fv``, checked at commit 9290bc5) as a port
of fv's protocol (``fv/ports/functions.py``), written against their public functions only.

Put this file in their project root (beside their ``fv/`` package) and gate it from there with fv's installed
``pytest`` (``python -m pytest`` would import their ``fv`` in place of fv's), naming fv's stage gates by their path in
fv's checkout FV_CHECKOUT (run without a path, pytest collects their project's tests, not fv's gates):

    pytest FV_CHECKOUT/tests/parity/test_m2_stage_parity.py -m m2 --fv-model MODEL_PATH --src-root SRC \
        --src-model shared --port my_fv_project_port:MyFvProjectPort --port-root THEIR_PROJECT [--port-chain]

It runs in a process of its own started from their root, so ``fv`` below is *their* package. Stages:

- ``mean_activations``: their ``fv.mean_activations.compute_mean_activations_fixed_trials_ns`` on fv's fixed
  trials (the same schema: ``prompt_data_clean``, ``clean_prompt_str``), their ``o_proj`` pre-hook targets;
- ``indirect_effect``: their ``fv.patch.make_out_proj_head_output_overrider`` as a forward hook on each layer's
  ``o_proj``, driven as their StepD drives it (``scripts/run_stepD_aie_head_sweep.py``, whose per-trial loop and
  ``compute_trial_metrics`` are script-local, so the few lines of that loop are redone here): per trial the
  corrupted prompt (the file's ``corrupted_prompt_str``, tokenized as they do), the target the file's
  ``target_first_token_id``; per layer a baseline run with the hook in ``"self"`` mode (their recomputed
  projection, unpatched); per head a run in ``"replace"`` mode, the head's input at the last token replaced by its
  mean at the last slot; ``p = softmax(last-token logits)[target]``, the effect ``p_patch - p_base``;
- ``top_heads`` and ``fv``: their ``fv.fv.compute_function_vector`` (top-k of the trial-mean indirect effect, the
  sum of ``o_proj`` of each top head's last-slot mean);
- ``injection``: their ``fv.intervene.make_residual_injection_hook`` (the hook their Step6 uses) on decoder layer
  ``edit_layer``, the FV added at the last token (``alpha`` 1), on each trial's zero-shot prompt (their
  ``fv.prompting.create_prompt`` of the clean prompt data without examples) and shuffled prompt (of the corrupted
  prompt data); the target by their ``fv.slots.get_target_first_token_id_from_boundary``; the logits without and
  with the FV scored here in the protocol's form (their Step6 keeps logit, log-prob, p and argmax only). Their
  ``fv.intervene.function_vector_intervention`` is not used: it needs baukit's ``TraceDict`` importable and a
  ``layer_hook_names`` entry their ``get_model_config`` does not provide;
- not ported here, so not compared: ``prompt``, ``slot`` (their prompt builder is checked inside their mean
  activations).
"""

from __future__ import annotations

import hashlib

import torch

DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def score(logits: torch.Tensor, target_id: int, k: int = 10) -> dict:
    """One logits row in the protocol's form (docs/reference.md): the target's logit, log-prob and probability
    (float64), the argmax, the top ``k`` and the row's sha256."""
    row = logits.reshape(-1).detach().to("cpu")
    f = row.to(torch.float64)
    logp = torch.log_softmax(f, dim=-1)
    top = torch.topk(f, k=min(k, f.numel()))
    return {"target_id": int(target_id), "logit": float(f[target_id]), "logprob": float(logp[target_id]),
            "prob": float(logp[target_id].exp()), "pred_id": int(torch.argmax(f)),
            "top_ids": [int(i) for i in top.indices], "top_logits": [float(v) for v in top.values],
            "logits_sha256": hashlib.sha256(row.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()}


class MyFvProjectPort:
    name = "my_fv_project"

    def load(self, model: str, device: str, dtype: str) -> dict:
        from fv.adapters import infer_head_dims, resolve_blocks
        from fv.hf_loader import load_hf_model_and_tokenizer
        from fv.hooks import get_out_proj_pre_hook_target
        from fv.model_spec import get_model_spec

        spec = get_model_spec(model)
        self.model, self.tokenizer, diag = load_hf_model_and_tokenizer(model, spec.name, device, DTYPES.get(dtype, dtype),
                                                                       "none", None)
        self.model.eval()
        dims = infer_head_dims(self.model, spec_name=spec.name)
        self.blocks = resolve_blocks(self.model, spec)
        # name_or_path: their compute_function_vector finds o_proj by the model's name, as src does
        self.cfg = {"n_heads": int(dims["n_heads"]), "head_dim": int(dims["head_dim"]), "resid_dim": int(dims["hidden_size"]),
                    "n_layers": len(self.blocks), "name_or_path": model}
        self.layer_modules = {layer: get_out_proj_pre_hook_target(self.model, layer, spec_name=spec.name)[0]
                              for layer in range(len(self.blocks))}
        self.add_special, self.device = bool(spec.prepend_bos), device
        self.quant = (diag or {}).get("resolved_quant", "none")
        return {"dtype": str(self.model.dtype).replace("torch.", ""), "model_spec": spec.name}

    def _inputs(self, text: str):
        ids = self.tokenizer(text, return_tensors="pt", add_special_tokens=self.add_special)
        return {k: v.to(self.device) for k, v in ids.items()}

    def _last_logits(self, inputs) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(**inputs).logits[0, -1]

    def mean_activations(self, trials: dict, keys: list, params: dict) -> torch.Tensor:
        from fv.mean_activations import compute_mean_activations_fixed_trials_ns

        mean, _labels, _slots = compute_mean_activations_fixed_trials_ns(
            model=self.model, tokenizer=self.tokenizer, layer_modules=self.layer_modules, fixed_trials=trials,
            n_use=len(trials["trials"]), model_cfg=self.cfg, tok_add_special=self.add_special, device=self.device)
        return mean.float()

    def indirect_effect(self, trials: dict, keys: list, params: dict, mean_activations: torch.Tensor) -> torch.Tensor:
        from fv.patch import make_out_proj_head_output_overrider

        prepared = []
        for trial in trials["trials"]:  # as their StepD reads a fixed trial
            target = trial.get("target_first_token_id", trial.get("target_id"))
            if target is None:
                raise ValueError(f"trial {trial.get('trial_id')}: no target_first_token_id (their StepD needs it)")
            inputs = self._inputs(trial["corrupted_prompt_str"])
            prepared.append((inputs, int(target), int(inputs["input_ids"].shape[1]) - 1))
        n_layers, n_heads = self.cfg["n_layers"], self.cfg["n_heads"]
        out = torch.zeros(len(prepared), n_layers, n_heads, dtype=torch.float32)
        for layer in range(n_layers):
            # their StepD's persistent layer hook: one per layer, its state set per run
            state = {"mode": "self", "replace_vec": None, "seq_token_idx": None, "head_idx": 0}
            hook = make_out_proj_head_output_overrider(layer_idx=layer, head_idx=0, seq_token_idx=0, mode="self",
                                                       replace_vec=None, model_config=self.cfg, resolved_quant=self.quant,
                                                       force_recompute_outproj=True, state=state)
            handle = self.layer_modules[layer].register_forward_hook(hook)
            try:
                for t, (inputs, target, last) in enumerate(prepared):
                    state.update(mode="self", replace_vec=None, seq_token_idx=last, head_idx=0)
                    p_base = torch.softmax(self._last_logits(inputs), dim=-1)[target].item()
                    for head in range(n_heads):
                        state.update(mode="replace", replace_vec=mean_activations[layer, head, -1], seq_token_idx=last,
                                     head_idx=head)
                        p_patch = torch.softmax(self._last_logits(inputs), dim=-1)[target].item()
                        out[t, layer, head] = p_patch - p_base
            finally:
                handle.remove()
        return out

    def _fv(self, params: dict, mean_activations: torch.Tensor, indirect_effect: torch.Tensor):
        from fv.fv import compute_function_vector

        return compute_function_vector(mean_activations, indirect_effect, self.model, self.cfg,
                                       n_top_heads=int(params["n_top_heads"]))

    def top_heads(self, params: dict, indirect_effect: torch.Tensor) -> list:
        # their compute_function_vector ranks the heads; the mean activations do not enter the ranking
        n_layers, n_heads = indirect_effect.shape[1], indirect_effect.shape[2]
        zeros = torch.zeros(n_layers, n_heads, 1, self.cfg["head_dim"])
        _vec, heads = self._fv(params, zeros, indirect_effect)
        return [[int(l), int(h), float(s)] for l, h, s in heads]

    def fv(self, params: dict, mean_activations: torch.Tensor, top_heads: list) -> torch.Tensor:
        # their function takes indirect effects, not a head list: hand it one whose top-k is exactly these heads
        ie = torch.zeros(1, mean_activations.shape[0], mean_activations.shape[1])
        for rank, (layer, head, _score) in enumerate(top_heads):
            ie[0, int(layer), int(head)] = float(len(top_heads) - rank)
        vec, _heads = self._fv(params, mean_activations, ie)
        return vec.reshape(-1).to("cpu", torch.float32)

    def injection(self, trials: dict, keys: list, params: dict, fv: torch.Tensor) -> dict:
        from fv.intervene import make_residual_injection_hook
        from fv.prompting import create_prompt
        from fv.slots import get_target_first_token_id_from_boundary

        state = {"fv": fv.reshape(-1).to(self.device, self.model.dtype), "alpha": 1.0, "batch_indices": None,
                 "last_indices": None}
        hook, block = make_residual_injection_hook(state), self.blocks[int(params["edit_layer"])]
        out = {}
        for key, trial in zip(keys, trials["trials"]):
            entry = {}
            for name, data in (("zero_shot", {**trial["prompt_data_clean"], "examples": []}),
                               ("shuffled", trial["prompt_data_corrupted"])):
                prompt = create_prompt(data)
                target = get_target_first_token_id_from_boundary(prompt, trial["target_str"], self.tokenizer,
                                                                 {"add_special_tokens": self.add_special})
                inputs = self._inputs(prompt)
                base = self._last_logits(inputs)
                state["batch_indices"] = torch.arange(1, device=self.device)
                state["last_indices"] = inputs["attention_mask"].sum(dim=1) - 1  # as their Step6 sets them
                handle = block.register_forward_hook(hook)
                try:
                    edited = self._last_logits(inputs)
                finally:
                    handle.remove()
                entry[name] = {"target_id": int(target), "base": score(base, target), "with": score(edited, target)}
            out[key] = entry
        return out
