"""The fv options of a pytest session: declared once (``add_options``), read once into ``FVOptions`` and kept in
``config.stash``, and checked once at the session's start (``check_options``), so a wrong one stops the session in
one line instead of failing each test that uses it."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fv.errors import FVError

MARKERS = {
    "m0": "M0: fixed trials, prompt and slot parity", "m1": "M1: golden artifacts from the reference",
    "m2": "M2: the stage-by-stage parity gate", "m3": "M3: the reference dump", "m4": "M4: the fv runtime artifacts",
    "m5": "M5: the stage diff", "m6": "M6: no divergence between fresh runs", "m7": "M7: relation q-wise transfer",
    "universal": "the universal FV (fv universal): per-task indirect effects, AIE, filter, FV vs the reference",
    "tiny": "runs on an embedded tiny model", "gpu": "needs a CUDA device", "src": "needs the reference src/",
    "slow": "takes more than a few seconds",
    "port_files": "gates a port by its files (--port-artifacts DIR; collected only with it): tests/parity/test_port_files.py",
    "first_pair": "runs once, on the first model and the first trials set (the others are deselected, not skipped)",
    "first_tiny": "without --fv-model, runs on the first default tiny model only (the others are deselected, not "
                  "skipped); on the models --fv-model names, on each",
    "self": "fv checking itself on its own tiny models (every test under tests/self/); deselected when the session "
            "names a user's inputs, unless --fv-self-tests or -m self",
}
# options that name a user's inputs: with any of them the session runs the gates on those inputs only
USER_INPUT_OPTIONS = ("--fv-model", "--fixed-trials", "--relation-csv", "--golden-dir", "--dataset", "--port-artifacts")
# the trained tiny model where function vectors work (on its rule tasks, fv.model.default_inputs) and the tiny Llama
# with the real Llama 3 tokenizer (on the antonym data); the random tiny-llama is gated with the families
TINY_DEFAULT = ("tiny-llama-fv", "tiny-llama3tok")
# fv's own tests (tests/self/) check its machinery (resume, locks, pictures, fast mode, a user's goldens...) on the random
# 12-layer tiny Llamas and their antonym data, as before the trained default: without --fv-model they run on these
SELF_DEFAULT = ("tiny-llama", "tiny-llama3tok")


def add_options(parser: pytest.Parser) -> None:
    """Every fv option, in the ``fv`` group of ``pytest --help``."""
    g = parser.getgroup("fv", "function-vector parity suite")
    g.addoption("--fv-model", default=None, help="local model folder or tiny model name; comma-separated for several (default: " + ", ".join(TINY_DEFAULT) + ")")
    g.addoption("--fv-device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available)")
    g.addoption("--fv-dtype", default="auto",
                help="float32, bfloat16, float16 or auto (default auto: the dtype the reference's loader gives the model; docs/loading.md)")
    g.addoption("--fv-attn-implementation", default="auto",
                help="eager, sdpa, ... or auto (default auto: the transformers default, as the reference's loader)")
    g.addoption("--src-model", default="own", choices=("own", "shared"),
                help="own (default): the reference loads its own copy of the model with its own loader, from the same "
                     "folder, and the gate compares the two pipelines as users run them; shared: the reference's functions "
                     "are handed fv's model object (one copy in memory, for models too large for two)")
    g.addoption("--fv-mode", default="exact", choices=("exact", "fast"), help="fv runtime mode compared with the reference")
    g.addoption("--src-root", default=None, help="the reference's src/ (else $FV_SRC_ROOT, else ./src)")
    g.addoption("--baukit-root", default=None, help="folder holding baukit/nethook.py when baukit does not import (else $FV_BAUKIT_ROOT)")
    g.addoption("--src-compat", action="store_true", help="apply the reference's FV addition to tensor layer outputs (a silent no-op on transformers 5.x otherwise); recorded in reports")
    g.addoption("--require-src", action="store_true", help="fail, instead of skip, when the reference is missing")
    g.addoption("--fixed-trials", default=None, help="a fixed-trials JSON to test (default: trials made from the model's default "
                                                    "datasets: fixtures/antonym_tiny.json and fixtures/data/antonym.json; on "
                                                    "tiny-llama-fv two of its rule tasks, fv/model/default_inputs.py)")
    g.addoption("--dataset", default=None, help="an ICL dataset JSON to make fixed trials from (10 trials, 10 shots, seed 0)")
    g.addoption("--n-top-heads", type=int, default=10, help="heads in the FV (default 10)")
    g.addoption("--edit-layer", type=int, default=None,
                help="layer the FV is added after (default: the model's, fv/model/default_inputs.py: 9, or a third of the depth where 9 does not fit; 2 on tiny-llama-fv)")
    g.addoption("--max-trials", type=int, default=5, help="trials compared per file (default 5)")
    g.addoption("--q-list", default=None, help="M7: comma-separated q ids, or 'all'")
    g.addoption("--relation-csv", default=None, help="M7: relation CSV (default fixtures/relation_tiny.csv, on tiny-llama-fv fixtures/rule_tasks/relation.csv; the "
                     "real fixtures/data/relationA_ex.csv is a good next step)")
    g.addoption("--n-trials-per-q", type=int, default=3, help="M7: trials per q (default 3)")
    g.addoption("--fv-out", default=None, help="where reports go (default results_fv/ under the directory pytest runs in)")
    g.addoption("--golden-dir", default=None,
                help="M1/M2: a user's golden folder as src wrote it (results/<dataset>/<fixed_trials_id>/ with "
                     "<dataset>_mean_head_activations_FIXED.pt, _dummy_labels.json, _indirect_effect.pt); fv is compared "
                     "with it within its dtype's tolerance, on the --fixed-trials it was made from")
    g.addoption("--port", default=None,
                help="a port of the reference as fv's side (MODULE:OBJECT, docs/ports.md): its stage methods, in a process of "
                     "its own started from --port-root, each fed the other side's inputs (isolated) unless --port-chain")
    g.addoption("--port-root", default=None, help="the port's project root (default: the directory pytest runs in)")
    g.addoption("--port-python", default=None, help="the interpreter the port runs with (default: this one)")
    g.addoption("--port-chain", action="store_true", help="feed the port its own outputs, as it runs end to end (default: isolated)")
    g.addoption("--port-exact", action="store_true",
                help="hold the port to the exact gate (bit for bit); default: the compute dtype's tolerance, a reimplementation "
                     "reordering floating-point work (each stage's max abs difference shows whether it is bit-exact anyway)")
    g.addoption("--port-artifacts", default=None,
                help="a port by its files (docs/ports.md): a run folder a port wrote, or a root holding several (each q "
                     "folder of a relation run); the trials are taken from each folder, the reference runs on them, and "
                     "the gates tests/parity/test_port_files.py compare stage by stage (-m 'm4 or m5 or m6', -m m7); "
                     "fv's own runtime is then not gated")
    g.addoption("--port-layout", default=None,
                help="the layout of --port-artifacts (my_fv_project, my_fv_project-stepd, fv; default: found from the folder)")
    g.addoption("--src-python", default=None,
                help="the Python the reference's own process runs with (the own mode): your environment as it is, its "
                     "transformers and bitsandbytes, while fv runs in its own (default $FV_SRC_PYTHON, else this one); "
                     "the report's meta records both sides' interpreters and library versions")
    g.addoption("--src-cache", default=None, help="folder for the live reference's cached stage values (default $FV_CACHE_DIR/src_values) and, in "
                                                  "its probes/, its family probes: a rerun then computes only fv's side")
    g.addoption("--no-src-cache", action="store_true", help="compute the live reference's side and probe its families every run; neither read nor write its cache")
    g.addoption("--fv-self-tests", action="store_true",
                help="also run fv's own tests (tests/self/: families, forks, fast-vs-exact, fuzzing, locks, docs...) when "
                     "the session names a user's inputs (--fv-model, --fixed-trials, --relation-csv, --golden-dir, "
                     "--dataset); without it only the gates on those inputs are collected (same as -m self for them alone)")
    g.addoption("--allow-empty", action="store_true",
                help="let a gate pass that compared nothing for a (model, trials) pair (no reference and no goldens); "
                     "without it such a session fails")


def default_relation_csv(model: str | None = None) -> Path:
    """M7's relation CSV when the session names none: ``model``'s (``fv.model.default_inputs``)."""
    from fv.model.default_inputs import default_inputs

    return default_inputs(model).relation_csv


@dataclass
class FVOptions:
    """The session's fv options, read once from the command line (``FVOptions.of``) and kept in ``config.stash``."""

    models: list[str]
    device: str
    dtype: str
    mode: str
    src_root: str | None
    baukit_root: str | None
    src_compat: bool
    require_src: bool
    fixed_trials: str | None
    dataset: str | None
    n_top_heads: int
    edit_layer: int | None  # None: each model's default (edit_layer_for)
    max_trials: int
    q_list: str | None
    relation_csv: str | None
    n_trials_per_q: int
    out_root: Path
    rootdir: Path
    allow_empty: bool = False
    attn: str = "auto"
    src_model: str = "own"
    golden_dir: str | None = None
    src_cache: str | None = None
    no_src_cache: bool = False
    port: str | None = None
    port_root: str | None = None
    port_python: str | None = None
    port_chain: bool = False
    port_exact: bool = False
    port_artifacts: str | None = None
    port_layout: str | None = None
    src_python: str | None = None  # --src-python / $FV_SRC_PYTHON: the interpreter of the reference's own process
    # default tiny models this machine cannot build (the Llama 3 tokenizer not fetched): {name: why, and the command}
    unavailable: dict = field(default_factory=dict)
    models_given: bool = False  # --fv-model named the models

    @property
    def self_models(self) -> list[str]:
        """The models fv's own tests run on: ``--fv-model``'s, else ``SELF_DEFAULT`` (less those this machine lacks)."""
        if self.models_given:
            return list(self.models)
        return [m for m in SELF_DEFAULT if m not in self.unavailable]

    def edit_layer_for(self, model: "str | Path", n_layers: int) -> int:
        """``--edit-layer``, else the default edit layer of ``model`` (a name or folder) with ``n_layers`` layers
        (``fv.model.default_inputs.default_edit_layer``)."""
        from fv.model.default_inputs import default_edit_layer

        return self.edit_layer if self.edit_layer is not None else default_edit_layer(model, n_layers)

    @classmethod
    def of(cls, config: pytest.Config) -> "FVOptions":
        """The options of ``config``'s session, built on first use and kept in its stash."""
        if OPTIONS_KEY not in config.stash:
            config.stash[OPTIONS_KEY] = cls.read(config)
        return config.stash[OPTIONS_KEY]

    @classmethod
    def read(cls, config: pytest.Config) -> "FVOptions":
        """The options as ``config`` holds them (``of`` keeps the result)."""
        o = config.getoption
        models = [m.strip() for m in (o("--fv-model") or ",".join(TINY_DEFAULT)).split(",") if m.strip()]
        unavailable = {} if o("--fv-model") else unavailable_defaults()
        models = [m for m in models if m not in unavailable]
        # Paths given as option values (``--src-root /x/src``) take part in pytest's rootdir guess, so the
        # rootdir can land outside the project: fixtures are found beside the fv package instead, and
        # reports go under the directory pytest was invoked from.
        from fv.paths import REPO_ROOT

        root = REPO_ROOT if (REPO_ROOT / "fixtures").is_dir() else Path(config.rootpath)
        invoked = Path(config.invocation_params.dir)
        return cls(models=models, device=o("--fv-device"), dtype=o("--fv-dtype"), mode=o("--fv-mode"),
                   src_root=o("--src-root"), baukit_root=o("--baukit-root"), src_compat=o("--src-compat"),
                   require_src=o("--require-src"), fixed_trials=o("--fixed-trials"), dataset=o("--dataset"),
                   n_top_heads=o("--n-top-heads"), edit_layer=o("--edit-layer"), max_trials=o("--max-trials"),
                   q_list=o("--q-list"), relation_csv=o("--relation-csv"), n_trials_per_q=o("--n-trials-per-q"),
                   out_root=Path(o("--fv-out")) if o("--fv-out") else invoked / "results_fv", rootdir=root,
                   allow_empty=o("--allow-empty"), attn=o("--fv-attn-implementation"), src_model=o("--src-model"),
                   golden_dir=o("--golden-dir"), src_cache=o("--src-cache"), no_src_cache=o("--no-src-cache"),
                   port=o("--port"), port_root=o("--port-root") or (str(invoked) if o("--port") else None),
                   port_python=o("--port-python"), port_chain=o("--port-chain"), port_exact=o("--port-exact"),
                   port_artifacts=o("--port-artifacts"), port_layout=o("--port-layout"),
                   unavailable=unavailable, models_given=bool(o("--fv-model")), src_python=o("--src-python") or os.environ.get("FV_SRC_PYTHON") or None)



OPTIONS_KEY = pytest.StashKey[FVOptions]()


def unavailable_defaults() -> dict[str, str]:
    """The default tiny models whose parts fv does not ship and this machine lacks: ``tiny-llama3tok`` without the
    Llama 3 tokenizer's wheel. Their gates are collected and skipped, each naming the command that fetches it."""
    from fv.errors import TokenizerUnavailable
    from fv.model.tiny import llama3_tokenizer_file

    try:
        llama3_tokenizer_file()
    except TokenizerUnavailable as exc:
        return {"tiny-llama3tok": str(exc)}
    return {}


def trial_sets(opts: FVOptions, model: str | None = None) -> list[str]:
    """Names of the fixed-trials sets the gates run on: ``custom`` (``--fixed-trials``), ``dataset`` (``--dataset``),
    else ``model``'s default datasets (``fv.model.default_inputs``), or without ``model`` those of every model of the
    session, in order (the pairs a model does not own are deselected: ``belongs``)."""
    from fv.model.default_inputs import default_inputs

    if opts.fixed_trials:
        return ["custom"]
    if opts.dataset:
        return ["dataset"]
    names = [model] if model else [*opts.models, *opts.unavailable, *opts.self_models]
    return list(dict.fromkeys(s for m in names for s in default_inputs(m).trial_sets))


def belongs(opts: FVOptions, params: dict) -> bool:
    """Whether a test's parameters pair a model with inputs of its own: a default trials set (``trials_set``), a
    universal gate's task (``task``) or a q of its default relation CSV (``q_id``) belongs to the model whose defaults
    (``fv.model.default_inputs``) name it."""
    from fv.model.default_inputs import default_inputs

    model = params.get("fv_model_name")
    if model is None:
        return True
    if "trials_set" in params and params["trials_set"] not in trial_sets(opts, model):
        return False
    if "task" in params and params["task"] not in default_inputs(model).universal_tasks:
        return False
    if "q_id" in params and not (opts.relation_csv or opts.fixed_trials):
        return params["q_id"] in _relation_qs(default_relation_csv(model))
    return True


@functools.lru_cache(maxsize=None)
def _relation_qs(csv: Path) -> frozenset[str]:
    from fv.runtime.datasets import load_relation_csv

    return frozenset(load_relation_csv(csv))


def check_options(opts: FVOptions) -> None:
    """Every option that can be checked without a model pass, once, at the session's start: a wrong one stops
    the session with one line instead of failing each test that uses it."""
    import json as _json

    from fv.model.resolve import resolve_model_path
    from fv.model.tiny import TINY_MODELS
    from fv.reference import ReferenceUnavailable, find_src_root
    from fv.runtime.trials import load_trials

    for name in opts.models:
        if name in TINY_MODELS:
            n_layers = TINY_MODELS[name].n_layers
        else:
            cfg = _json.loads((resolve_model_path(name) / "config.json").read_text())
            cfg = cfg.get("text_config", cfg)
            n_layers = cfg.get("num_hidden_layers", cfg.get("n_layer"))
        if isinstance(n_layers, int) and opts.edit_layer is not None and not 0 <= opts.edit_layer < n_layers:
            raise FVError(f"--edit-layer {opts.edit_layer} is outside {name}: it has {n_layers} layers (0..{n_layers - 1}); "
                          f"pass --edit-layer N with N below {n_layers}.")
    relation_file = False
    if opts.fixed_trials:
        relation_file = any(t.q_id is not None for t in load_trials(opts.fixed_trials).trials)
    if opts.golden_dir:
        from fv.parity.user_goldens import load_user_goldens

        if not opts.fixed_trials:
            raise FVError(f"--golden-dir {opts.golden_dir} needs --fixed-trials FILE: the trials src made those goldens from.")
        load_user_goldens(opts.golden_dir)
        from fv.parity.user_goldens import check_identity_at_start

        for name in opts.models:  # goldens of another model (or other trials) stop the session here, in one line
            check_identity_at_start(opts.golden_dir, name, load_trials(opts.fixed_trials))
    if opts.dataset and not Path(opts.dataset).is_file():
        raise FVError(f"--dataset {opts.dataset} not found. Give an ICL dataset JSON.")
    if opts.src_root or os.environ.get("FV_SRC_ROOT"):
        try:
            find_src_root(opts.src_root)
        except ReferenceUnavailable as exc:
            raise FVError(str(exc)) from None
    if opts.relation_csv or (opts.q_list and not relation_file):
        from fv.runtime.datasets import load_relation_csv

        csvs = [Path(opts.relation_csv)] if opts.relation_csv else list(dict.fromkeys(default_relation_csv(m) for m in opts.models))
        groups = {q for csv in csvs for q in load_relation_csv(csv)}
        if opts.q_list not in (None, "", "all"):
            wanted = [q.strip() for q in opts.q_list.split(",") if q.strip()]
            missing = [q for q in wanted if q not in groups]
            if missing:
                raise FVError(f"--q-list names {missing}, which {' and '.join(map(str, csvs))} "
                              f"{'does' if len(csvs) == 1 else 'do'} not have; {'it has' if len(csvs) == 1 else 'they have'} "
                              f"{sorted(groups)}.")
    if opts.max_trials < 1:
        raise FVError(f"--max-trials must be at least 1; found {opts.max_trials}.")
    if opts.src_python:
        if opts.src_model != "own":
            raise FVError("--src-python runs the reference in its own process: drop --src-model shared.")
        if not Path(opts.src_python).is_file():
            raise FVError(f"--src-python {opts.src_python}: no such interpreter; give the path of its python executable.")
    if opts.port_artifacts:
        from fv.ports.layouts import find_runs

        if opts.port:
            raise FVError("--port and --port-artifacts name two ports; gate one at a time.")
        find_runs(opts.port_artifacts, opts.port_layout)  # no folder in a known layout stops the session here
    elif opts.port_layout:
        raise FVError("--port-layout names the layout of --port-artifacts DIR; give the folder too.")


