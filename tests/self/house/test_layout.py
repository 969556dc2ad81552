"""The package's layout is its architecture: layers import only downwards, no module imports itself back through
another, and every prompt is tokenized and labelled once per trial and side."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import fv

PKG = Path(fv.__file__).parent
# a package may import the ones after it in this list, never the ones before
LAYERS = ["cli", "pytest_plugin", "ports", "reference", "parity", "pipelines", "plots", "runtime", "progress", "model", "compat", "schema", "lock", "launch", "io", "meta", "paths", "errors"]


def _module(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports() -> dict[str, set[str]]:
    """Every fv module and the fv modules it imports, at any depth of its code (lazy imports count too)."""
    graph: dict[str, set[str]] = {}
    names = {_module(p) for p in PKG.rglob("*.py")}
    for path in PKG.rglob("*.py"):
        mod = _module(path)
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fv"):
                cands = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                deps |= {c for c in cands if c in names}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in names}
        graph[mod] = deps - {mod}
    return graph


def _group(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "fv"


def test_no_import_cycle():
    graph = _imports()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_layers_import_only_downwards():
    bad = []
    for mod, deps in _imports().items():
        g = _group(mod)
        if g not in LAYERS:
            continue
        for d in deps:
            h = _group(d)
            if h in LAYERS and h != g and LAYERS.index(h) < LAYERS.index(g):
                bad.append(f"{mod} imports {d}")
    assert bad == [], "imports against the layering " + " > ".join(LAYERS) + ":\n" + "\n".join(sorted(bad))


def test_the_tree_shows_the_stages():
    for sub, modules in {
        # the stages, in data-flow order, and what they share
        "runtime": ["datasets", "trials", "prompts", "slots", "prepared", "hooks", "activations", "effects", "effects_fast", "top_heads", "vectors", "injection",
                    "evaluation", "universal", "finite", "memory"],
        # the drivers: the M4 run, the relation run and its array, the universal FV, the M7 gate, job arrays, resume, the
        # trained tiny model's figures
        "pipelines": ["run", "relation", "relation_array", "universal", "gate_m7", "array", "cluster", "resume", "threads",
                      "phenomenon"],
        "parity": ["stages", "compare", "dump", "golden", "user_goldens", "snapshot", "src_cache", "report", "diff", "pattern", "run",
                   "preflight", "boundaries", "identity", "registry", "tolerance", "tensor_diff", "json_diff", "sides", "golden_check",
                   "comparers", "score_diff", "mismatch"],
        # the sides a port of the reference brings (fv.parity.sides), one module per port and form
        "ports": ["my_fv_project_files", "my_fv_project_stepd", "fv_layout", "layouts", "my_fv_project_layout", "functions",
                  "fv_runtime", "worker"],
        # the pytest plugin: hooks in __init__ delegating to one module per job
        "pytest_plugin": ["options", "collection", "session", "summary"],
        "reference": ["adapter", "stages", "capability", "universal", "memory", "probes", "probe_cache", "process", "worker"],
        "cli": ["trials", "reference", "run", "diff", "port", "relation", "gate", "golden", "plot", "doctor", "models", "universal"],
    }.items():
        assert sorted(p.stem for p in (PKG / sub).glob("*.py") if p.stem != "__init__" and p.stem != "common") == sorted(modules)


def test_no_module_imports_another_modules_private_names():
    """A name that starts with ``_`` is its module's own: no module of fv imports one from another module."""
    import ast

    bad = []
    for path in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fv"):
                bad += [f"{path.relative_to(PKG.parent)}: from {node.module} import {a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
    assert bad == [], "\n".join(bad)


def test_only_the_adapter_knows_reference_names():
    names = ("prompt_utils", "extract_utils", "intervention_utils", "eval_utils", "compute_indirect_effect",
             "get_mean_head_activations", "word_pairs_to_prompt_data")
    hits = [f"{p.relative_to(PKG)}: {n}" for p in PKG.rglob("*.py") if "reference" not in p.relative_to(PKG).parts
            for n in names if n in p.read_text()]
    assert hits == []


@pytest.mark.first_pair
def test_each_prompt_is_prepared_once(parity_run, monkeypatch):
    """fv's side labels each trial's clean and corrupted prompt exactly once (plus the dummy prompt)."""
    import fv.parity.stages as stages
    import fv.runtime.prepared as prepared
    import fv.runtime.prompts as prompts
    import fv.runtime.slots as slots

    calls = {"labels": 0, "tokenize": 0}
    orig_labels, orig_answer = prepared.token_meta_labels, prepared.answer_ids

    def counting_labels(*a, **k):
        calls["labels"] += 1
        return orig_labels(*a, **k)

    def counting_answer(*a, **k):
        calls["tokenize"] += 1
        return orig_answer(*a, **k)

    monkeypatch.setattr(prepared, "token_meta_labels", counting_labels)
    monkeypatch.setattr(prepared, "answer_ids", counting_answer)
    monkeypatch.setattr(prompts, "token_meta_labels", counting_labels)
    monkeypatch.setattr(slots, "token_meta_labels", counting_labels)
    trials = parity_run.trials.subset(2)
    params = parity_run.params
    stages.fv_stage_values(parity_run.lm, trials, type(params)(**{**params.as_dict(), "max_trials": 2}),
                           parity_run.trials.meta.get("prefixes"), parity_run.trials.meta.get("separators"))
    # two labelled prompts per trial, one dummy prompt; three answer-id computations (clean, corrupted, zero-shot)
    assert calls == {"labels": 2 * len(trials) + 1, "tokenize": 3 * len(trials)}


# ---- gates apart from fv's own tests ---------------------------------------------------------------------------

GATE_FOLDERS = ("parity", "golden", "relation")


def _collect(*args: str) -> list[str]:
    """Node ids a pytest session with ``args`` collects (in its own process, as a user would run it)."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:xdist", "-p", "no:randomly", *args],
                       cwd=PKG.parent, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return r.stdout.splitlines()


def test_tests_are_gates_or_fvs_own():
    tests = PKG.parent / "tests"
    folders = sorted(p.name for p in tests.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert folders == sorted(GATE_FOLDERS + ("self", "support"))
    assert (tests / "self" / "__init__.py").is_file()
    # fv's own tests live in folders by what they check, each saying what in its __init__.py's docstring
    assert not list((tests / "self").glob("test_*.py")), "fv's own tests live in the folder of what they check"
    own = [p for p in (tests / "self").iterdir() if p.is_dir() and p.name != "__pycache__"]
    unsaid = [p.name for p in own if not (p / "__init__.py").is_file() or not ast.get_docstring(ast.parse((p / "__init__.py").read_text()))]
    assert own and not unsaid, f"tests/self folders without an __init__.py saying what they check: {unsaid}"
    names = [p.name for p in tests.rglob("test_*.py")]
    assert len(names) == len(set(names)), "test module basenames repeat: " + str(sorted(n for n in names if names.count(n) > 1))
    # what tests share lives in tests/support: no test module imports another test module
    imports = [f"{p.relative_to(tests)}: {line.strip()}" for p in tests.rglob("test_*.py")
               for line in p.read_text().splitlines() if line.strip().startswith(("from tests.", "import tests."))
               and not line.strip().startswith(("from tests.support", "import tests.support"))]
    assert imports == [], "test modules importing other test modules (move what they share to tests/support):\n" + "\n".join(imports)


def test_a_users_inputs_collect_only_the_gates_on_them():
    """--fv-model names the user's model: every collected test is a gate parametrized on it, fv's own tests are
    deselected (one line says how many and how to run them), and --fv-self-tests brings them back."""
    files = ["tests/parity/test_m2_stage_parity.py", "tests/relation/test_m7_relation_qwise.py", "tests/self/runtime/test_fast_mode.py",
             "tests/self/runtime/test_families.py"]
    user = ["--fv-model", "tiny-llama-mha", "--edit-layer", "4", *files]
    out = _collect(*user)
    ids = [line for line in out if line.startswith("tests/")]
    assert ids and all(i.split("/")[1] in GATE_FOLDERS and "tiny-llama-mha" in i for i in ids), ids
    own = [line for line in _collect(*user, "-m", "self") if line.startswith("tests/")]
    assert own and all(i.startswith("tests/self/") for i in own)
    line = next(x for x in out if x.startswith("fv: "))
    assert line.startswith(f"fv: {len(own)} self-tests deselected") and "--fv-self-tests or -m self" in line, line
    both = [x for x in _collect(*user, "--fv-self-tests") if x.startswith("tests/")]
    assert sorted(both) == sorted(ids + own)


def test_the_thread_count_is_restored_after_a_stage():
    """``fv.pipelines.threads.cpu_threads``: the count the relation and universal drivers set for a q or a task is the
    one before it once the block ends, an exception included; 0 or a GPU leaves it alone."""
    import torch

    from fv.pipelines.threads import cpu_threads

    before = torch.get_num_threads()
    with pytest.raises(RuntimeError):
        with cpu_threads(1, "cpu"):
            assert torch.get_num_threads() == 1
            raise RuntimeError("a q fails")
    assert torch.get_num_threads() == before
    with cpu_threads(0, "cpu"), cpu_threads(1, "cuda:0"):
        assert torch.get_num_threads() == before


def test_the_workers_import_nothing_of_fv():
    """The reference's worker and a port's worker run in processes where ``fv`` may be the user's package: neither
    imports this fv (pytest-xdist's worker, in its manner)."""
    import ast

    for path in (PKG / "reference" / "worker.py", PKG / "ports" / "worker.py"):
        tree = ast.parse(path.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [m for m in names if m == "fv" or m.startswith("fv.")], (path, names)
