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
- ``top_heads`` and ``fv``: their ``fv.fv.compute_function_vector`` (top-k of the trial-mean indirect effect, the
  sum of ``o_proj`` of each top head's last-slot mean);
- not ported here, so not compared: ``prompt``, ``slot`` (their prompt builder is checked inside their mean
  activations), ``indirect_effect`` (their StepD computes it inside a script, ``compute_trial_metrics``, with no
  function of its own), ``injection`` (their ``function_vector_intervention`` scores differ in form).
"""

from __future__ import annotations

import torch

DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


class MyFvProjectPort:
    name = "my_fv_project"

    def load(self, model: str, device: str, dtype: str) -> dict:
        from fv.adapters import infer_head_dims, resolve_blocks
        from fv.hf_loader import load_hf_model_and_tokenizer
        from fv.hooks import get_out_proj_pre_hook_target
        from fv.model_spec import get_model_spec

        spec = get_model_spec(model)
        self.model, self.tokenizer, _diag = load_hf_model_and_tokenizer(model, spec.name, device, DTYPES.get(dtype, dtype),
                                                                        "none", None)
        self.model.eval()
        dims = infer_head_dims(self.model, spec_name=spec.name)
        n_layers = len(resolve_blocks(self.model, spec))
        # name_or_path: their compute_function_vector finds o_proj by the model's name, as src does
        self.cfg = {"n_heads": int(dims["n_heads"]), "head_dim": int(dims["head_dim"]), "resid_dim": int(dims["hidden_size"]),
                    "n_layers": n_layers, "name_or_path": model}
        self.layer_modules = {layer: get_out_proj_pre_hook_target(self.model, layer, spec_name=spec.name)[0]
                              for layer in range(n_layers)}
        self.add_special, self.device = bool(spec.prepend_bos), device
        return {"dtype": str(self.model.dtype).replace("torch.", ""), "model_spec": spec.name}

    def mean_activations(self, trials: dict, keys: list, params: dict) -> torch.Tensor:
        from fv.mean_activations import compute_mean_activations_fixed_trials_ns

        mean, _labels, _slots = compute_mean_activations_fixed_trials_ns(
            model=self.model, tokenizer=self.tokenizer, layer_modules=self.layer_modules, fixed_trials=trials,
            n_use=len(trials["trials"]), model_cfg=self.cfg, tok_add_special=self.add_special, device=self.device)
        return mean.float()

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
