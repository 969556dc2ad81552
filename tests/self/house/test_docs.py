"""The docs cannot drift from the code: every `fv` command shown in README.md and docs/ runs here on the tiny
model, every `pytest` command shown there is collected with its options and selects tests, and every `ruff`
command runs on the checkout (skipped where the dev extra is not installed).

Commands are taken from fenced ``bash`` blocks. Placeholders users replace (``$MODEL``, ``$SRC``, ``$FT``,
``/path/to/...``, ``REF_DIR``, ``GOLDEN_DIR``, ``DATASET.json``) become the tiny model, the reference beside the checkout when there is one,
and files made in a temporary folder. A command that needs the reference is skipped without one.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from fv.cli import canonical_argv
from fv.paths import FIXTURES, REPO_ROOT

pytestmark = [pytest.mark.m4, pytest.mark.slow]
DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]


def _commands() -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), flags=re.S):
            text = block.replace("\\\n", " ")
            for line in text.splitlines():
                line = line.split(" #")[0].strip()
                for part in re.split(r"\s*&&\s*", line):
                    part = re.sub(r"^\.venv/bin/(python -m )?", "", part.strip())
                    if part.startswith(("fv ", "pytest ", "python -m pytest ", "ruff ")):
                        out.append((doc.name, part.removeprefix("python -m ")))
    return out


COMMANDS = _commands()
RUNS = (("runtime", "run"), ("reference", "run"), ("universal", "run"), ("relation", "run"))  # take --quiet


@pytest.fixture(scope="module")
def places(tmp_path_factory, fv_options):
    """What the placeholders stand for on the tiny model."""
    from fv.cli import main
    from fv.reference import ReferenceUnavailable, find_src_root

    tmp = tmp_path_factory.mktemp("docs")
    ft = tmp / "ft.json"
    assert main(["make-trials", "--dataset", str(FIXTURES / "antonym_tiny.json"), "--out", str(ft), "--n-trials", "2"]) == 0
    try:
        src = find_src_root(fv_options.src_root)
    except ReferenceUnavailable:
        src = None
    baukit = fv_options.baukit_root or os.environ.get("FV_BAUKIT_ROOT") or ""
    cluster = tmp / "cluster.toml"  # the documented cluster file, pointed at submitit's local executor
    cluster.write_text('executor = "local"\nqs_per_task = 4\n')
    return {"tmp": tmp, "ft": ft, "src": src, "baukit": baukit, "cluster": cluster}


def _substitute(cmd: str, p: dict) -> str:
    tmp = p["tmp"]
    subs = {
        "$COMMON": f"--fv-model tiny-llama --src-root {p['src']} --baukit-root {p['baukit']} --src-compat" if p["src"] else "--fv-model tiny-llama",
        "$MODEL": "tiny-llama", "$FT": str(p["ft"]), "$SRC_PYTHON": sys.executable, "$SRC": str(p["src"] or "/no/reference"),
        "/path/to/function_vectors/src": str(p["src"] or "/no/reference"), "/path/to/baukit": p["baukit"] or "/no/baukit",
        "REF_DIR": str(tmp / "ref"), "FV_DIR": str(tmp / "fv"), "DIFF_DIR": str(tmp / "diff"), "RESULTS_DIR": str(tmp / "fv"),
        "REL.csv": str(FIXTURES / "relation_tiny.csv"), "DIR": str(tmp / "out"), "CLUSTER.toml": str(p["cluster"]),
        "GOLDEN_DIR": str(tmp / "results" / "antonym_tiny" / "ft"), "DATASET.json": str(FIXTURES / "antonym_tiny.json"),
    }
    for k in sorted(subs, key=len, reverse=True):
        cmd = cmd.replace(f'"{k}"', subs[k]).replace(k, subs[k])
    return cmd


DOCS = sorted({d for d, _ in COMMANDS})


@pytest.mark.slow(seconds=60)
@pytest.mark.parametrize("doc", DOCS)
def test_documented_commands_run(doc, places, fv_options):
    """Every command of one document, in the document's order (later commands read what earlier ones wrote, so
    one test runs them all, on one worker); every failure is listed, not only the first."""
    failures, ran = [], 0
    for d, cmd in COMMANDS:
        if d != doc:
            continue
        try:
            _documented_command_runs(doc, cmd, places, fv_options)
            ran += 1
        except pytest.skip.Exception as exc:
            if places["src"] is not None:  # without the reference, its commands and those reading their output skip
                failures.append(f"`{cmd}` skipped: {exc}")
        except AssertionError as exc:
            failures.append(str(exc))
    assert not failures, f"{doc}: {len(failures)} documented commands failed:\n\n" + "\n\n".join(failures)
    assert ran, f"{doc}: no command ran"


def _documented_command_runs(doc, cmd, places, fv_options):
    if "GOLDEN_DIR" in cmd and "--golden-dir" in cmd or cmd.startswith("fv golden"):
        if not (places["tmp"] / "results" / "antonym_tiny" / "ft").is_dir():
            pytest.skip("needs the golden folder of `fv reference --out GOLDEN_DIR` above")
    raw, cmd = cmd, _substitute(cmd, places)
    argv = shlex.split(cmd)
    # an `fv` command as noun and verb, whichever spelling the doc uses (an earlier one is an alias: fv.cli)
    what = tuple(canonical_argv(argv[1:])[0][:2]) if argv[0] == "fv" else ()
    needs_ref = any(a.startswith("--src-root") for a in argv) or what[:1] == ("reference",)
    if needs_ref and places["src"] is None:
        pytest.skip("reference src/ not found: this documented command needs it (pass --src-root)")
    if argv[0] == "ruff":  # the linter of the dev extra, on the checkout
        ruff = shutil.which("ruff", path=os.path.dirname(sys.executable)) or shutil.which("ruff")
        if ruff is None:
            pytest.skip("ruff is not installed (pip install -e '.[dev]')")
        r = subprocess.run([ruff, *argv[1:]], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"{doc}: `{cmd}` exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-1000:]}"
        return
    if argv[0] == "pytest":
        # collected with the same options, not run: running the suite inside the suite would be circular
        if "--snapshot-update" in argv:
            argv.remove("--snapshot-update")
        if "-n" in argv:  # workers do not change what is collected
            i = argv.index("-n")
            del argv[i : i + 2]
        r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:xdist", *argv[1:]],
                           cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"{doc}: `{cmd}` does not collect:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
        assert re.search(r"\d+(/\d+)? tests? (collected|selected)", r.stdout), r.stdout[-500:]
        return
    if what == ("runtime", "run") and "--max-trials" not in argv:
        argv += ["--max-trials", "1"]
    if what == ("relation", "run"):
        argv += ["--n-trials-per-q", "1", "--edit-layers", "9"] + ([] if "--q-list" in argv else ["--q-list", "Q1"])
    if what == ("universal", "run"):  # the checkout's datasets, from the temporary working folder
        argv = [re.sub(r"(^|,)fixtures/", rf"\g<1>{FIXTURES}/", a) for a in argv] + ([] if "--max-trials" in argv else ["--max-trials", "1"])
    if what == ("golden", "import"):  # into the test's folder, never the checkout's snapshots/
        argv += ["--snapshots", str(places["tmp"] / "snapshots")]
    if what == ("gate", "m7"):
        argv += ["--q-list", "Q1"]
    if what == ("parity", "diff") and "REF_DIR" in raw and not (places["tmp"] / "ref").is_dir():
        pytest.skip("needs the reference dump of `fv reference --dump` above")
    # -P: as the `fv` console script does, keep the working folder off sys.path (a documented output folder named
    # `fv` there would otherwise shadow the package)
    r = subprocess.run([sys.executable, "-P", "-m", "fv", *argv[1:], *(["--quiet"] if what in RUNS else [])],
                       cwd=places["tmp"], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "FV_CACHE_DIR": os.environ.get("FV_CACHE_DIR", "")} if os.environ.get("FV_CACHE_DIR") else None)
    ok = {0, 1} if what in (("parity", "diff"), ("env", "check"), ("trials", "verify")) else {0}  # these report a finding by exit 1
    assert r.returncode in ok, f"{doc}: `{cmd}` exited {r.returncode}:\n{r.stdout[-1500:]}\n{r.stderr[-1500:]}"
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
