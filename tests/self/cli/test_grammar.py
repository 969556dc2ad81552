"""One grammar for the command line: a noun, then a verb (``fv trials make``, ``fv relation status``), with the earlier
spellings (``fv make-trials``, ``fv run``, a bare ``fv relation --relation-csv ...``) kept as aliases that reach the
same function with the same options and write the same bytes; every noun and verb has a ``--help`` with a
description; a wrong verb is a one-line usage error (exit 2) naming the verbs; and the options that pick and load a
model are declared once (fv/cli/common.py)."""

from __future__ import annotations

import argparse
import re

import pytest

from fv.cli import ALIASES, DEFAULT_VERBS, NOUNS, build_parser, canonical_argv, main
from fv.cli.common import MODEL_HELP
from fv.errors import EXIT_REFUSED, EXIT_USAGE
from fv.paths import FIXTURES, REPO_ROOT
from tests.support.cli import assert_one_line_failure, run_cli

pytestmark = pytest.mark.m4

DATASET = str(FIXTURES / "antonym_tiny.json")
REL = str(FIXTURES / "relation_tiny.csv")

# (earlier spelling, the noun-verb spelling) with the same options; argparse only, nothing runs
PAIRS = [
    (["make-trials", "--dataset", DATASET, "--out", "t.json", "--n-trials", "2"],
     ["trials", "make", "--dataset", DATASET, "--out", "t.json", "--n-trials", "2"]),
    (["verify-trials", "t.json", "--verify-n", "1"], ["trials", "verify", "t.json", "--verify-n", "1"]),
    (["run", "--model", "tiny-llama", "--max-trials", "1", "--dtype", "float32"],
     ["runtime", "run", "--model", "tiny-llama", "--max-trials", "1", "--dtype", "float32"]),
    (["diff", "--src", "a", "--fv", "b", "--out", "c"], ["parity", "diff", "--src", "a", "--fv", "b", "--out", "c"]),
    (["plot", "results_fv"], ["results", "plot", "results_fv"]),
    (["doctor", "--model", "tiny-llama", "--device", "cpu"], ["env", "check", "--model", "tiny-llama", "--device", "cpu"]),
    (["build-model", "--out", "m-llama", "--n-layers", "2"], ["model", "build", "--out", "m-llama", "--n-layers", "2"]),
    (["reference", "--fixed-trials", "t.json", "--out", "ref", "--dump"], ["reference", "run", "--fixed-trials", "t.json", "--out", "ref", "--dump"]),
    (["relation", "--relation-csv", REL, "--q-list", "Q1"], ["relation", "run", "--relation-csv", REL, "--q-list", "Q1"]),
    (["relation"], ["relation", "run"]),
    (["universal", "--datasets", DATASET], ["universal", "run", "--datasets", DATASET]),
]


def _parse(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(canonical_argv(argv)[0])


@pytest.mark.parametrize("old, new", PAIRS, ids=[" ".join(o[:1]) + (" (bare)" if o[0] in DEFAULT_VERBS else "") for o, _n in PAIRS])
def test_an_alias_reaches_the_same_function_with_the_same_options(old, new):
    a, b = _parse(old), _parse(new)
    assert a.func is b.func
    assert vars(a) == vars(b)


def test_every_alias_is_tested_and_stands_for_a_registered_verb():
    assert set(ALIASES) | set(DEFAULT_VERBS) <= {o[0] for o, _n in PAIRS}
    for noun, verb in [*ALIASES.values(), *DEFAULT_VERBS.items()]:
        assert verb in _verbs(build_parser())[noun].choices, (noun, verb)


def test_the_rewrite_names_the_command_as_the_user_spelled_it():
    assert canonical_argv(["make-trials", "--out", "x"]) == (["trials", "make", "--out", "x"], "make-trials")
    assert canonical_argv(["trials", "make", "--out", "x"]) == (["trials", "make", "--out", "x"], "trials make")
    assert canonical_argv(["relation", "--q-list", "Q1"]) == (["relation", "run", "--q-list", "Q1"], "relation")
    assert canonical_argv(["relation"]) == (["relation", "run"], "relation")
    # a verb, a request for the noun's help and a mistyped verb are argparse's to answer
    assert canonical_argv(["relation", "status", "out"]) == (["relation", "status", "out"], "relation status")
    assert canonical_argv(["relation", "--help"]) == (["relation", "--help"], "relation")
    assert canonical_argv(["relation", "stauts"]) == (["relation", "stauts"], "relation stauts")
    assert canonical_argv(["--help"]) == (["--help"], "--help")
    assert canonical_argv([]) == ([], "")


def test_help_lists_the_nouns_with_their_verbs_and_the_aliases(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    commands, aliases = out.split("commands (fv NOUN VERB):")[1].split("aliases:")
    verbs = _verbs(build_parser())
    for noun, _module in NOUNS:
        line = re.search(rf"^\s+{noun}\b.*?(?=^\s{{4}}\S|\Z)", commands, flags=re.M | re.S)
        assert line, f"{noun} not listed:\n{commands}"
        assert all(v in line.group(0) for v in verbs[noun].choices), line.group(0)  # `trials    make | verify: ...`
    for old, (noun, verb) in ALIASES.items():
        assert re.search(rf"fv {old}\s+= fv {noun} {verb}\n", aliases), aliases
    for noun, verb in DEFAULT_VERBS.items():
        assert f"fv {noun} [options]" in aliases and f"= fv {noun} {verb} [options]" in aliases


def _verbs(parser: argparse.ArgumentParser) -> dict[str, argparse._SubParsersAction]:  # noqa: SLF001
    nouns = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices  # noqa: SLF001
    return {n: next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)) for n, p in nouns.items()}  # noqa: SLF001


def test_every_noun_and_verb_has_a_help_with_a_description():
    verbs = _verbs(build_parser())
    assert [n for n, _m in NOUNS] == list(verbs)
    for noun, action in verbs.items():
        listed = {c.dest: c.help for c in action._choices_actions}  # noqa: SLF001 - the verbs' one-line helps
        for verb, p in action.choices.items():
            assert p.description and len(p.description) > 20, f"fv {noun} {verb}: no description"
            assert listed.get(verb), f"fv {noun} {verb}: not listed in `fv {noun} --help`"
            assert p.format_help().startswith(f"usage: fv {noun} {verb} ")


@pytest.mark.parametrize("argv, needles", [
    (["trials", "mak"], ["fv trials: error:", "invalid choice: 'mak'", "'make', 'verify'", "see `fv trials --help`"]),
    (["trials"], ["fv trials: error:", "required: {make,verify}", "see `fv trials --help`"]),
    (["relation", "stauts", "out"], ["fv relation: error:", "invalid choice: 'stauts'", "'run', 'status'"]),
    (["gate", "m8"], ["fv gate: error:", "invalid choice: 'm8'", "'m7'"]),
    (["trails", "make"], ["fv: error:", "invalid choice: 'trails'", "'trials'", "see `fv --help`"]),
    (["make-trials", "--n-trials", "many"], ["fv trials make: error:", "--n-trials", "'many'"]),
])
def test_a_wrong_verb_is_a_one_line_usage_error(argv, needles):
    rc, out, err = run_cli(argv)
    assert rc == EXIT_USAGE and not out
    assert_one_line_failure(rc, err, *needles)


def test_make_and_verify_write_and_say_the_same_in_both_spellings(tmp_path):
    """``fv trials make`` and ``fv make-trials``: the same file, byte for byte, and the same words;
    ``fv trials verify`` and ``fv verify-trials``: the same report."""
    outs = {}
    for argv in (["make-trials"], ["trials", "make"]):
        path = tmp_path / f"{'-'.join(argv)}.json"
        rc, out, err = run_cli([*argv, "--dataset", DATASET, "--out", str(path), "--n-trials", "3", "--n-shots", "4"])
        assert rc == 0, err
        outs[tuple(argv)] = (path.read_bytes(), out.replace(str(path), "PATH"), err)
    assert outs[("make-trials",)] == outs[("trials", "make")]
    reports = set()
    for argv in (["verify-trials"], ["trials", "verify"]):
        rc, out, err = run_cli([*argv, str(tmp_path / "make-trials.json")])
        assert rc == 0, err
        reports.add((out, err))
    assert len(reports) == 1


def test_build_model_writes_the_same_folder_in_both_spellings(tmp_path):
    shape = ["--tokenizer", "fixture", "--init", "numpy", "--n-layers", "2", "--d-model", "32", "--n-heads", "4",
             "--n-kv-heads", "2", "--d-mlp", "64"]
    folders = []
    for argv in (["build-model"], ["model", "build"]):
        out = tmp_path / f"{'-'.join(argv)}-llama"
        rc, _out, err = run_cli([*argv, "--out", str(out), *shape])
        assert rc == 0, err
        folders.append({p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()})
    assert folders[0] == folders[1] and folders[0]


@pytest.mark.parametrize("argv, name", [(["make-trials"], "make-trials"), (["trials", "make"], "trials make")])
def test_a_message_names_the_command_as_the_user_spelled_it(argv, name, tmp_path):
    """A refusal at the door (exit 4) in the words of the spelling used; nothing written."""
    out = tmp_path / "ft.json"
    rc, _out, err = run_cli([*argv, "--dataset", DATASET, "--out", str(out), "--n-trials", "1", "--prepend-bos-token-used", "true"])
    assert rc == EXIT_REFUSED and not out.exists()
    assert err.startswith(f"fv {name}: error: preflight "), err


@pytest.mark.parametrize("argv, name", [(["relation"], "relation"), (["relation", "run"], "relation run")])
def test_a_bare_noun_runs_its_default_verb(argv, name, tmp_path, monkeypatch):
    """``fv relation`` with no verb is ``fv relation run``, as before: the same usage error, exit 2."""
    monkeypatch.chdir(tmp_path)
    rc, _out, err = run_cli([*argv, "--relation-csv", REL, "--fixed-trials", "x.json", "--no-plots"])
    assert rc == EXIT_USAGE
    assert_one_line_failure(rc, err, f"fv {name}: error: expected exactly one of --relation-csv")


def test_the_model_options_are_declared_once():
    """``--model``, ``--device``, ``--dtype`` and ``--attn-implementation`` come from fv/cli/common.py alone, with one
    help text each, whatever the command (a default of its own is said in the same words)."""
    by_hand = [f"{p.name}:{i + 1}" for p in sorted((REPO_ROOT / "fv" / "cli").glob("*.py")) if p.name != "common.py"
               for i, line in enumerate(p.read_text().splitlines())
               if re.search(r"add_argument\(\s*\"--(model\"|model_name|device|dtype|attn|quant|load.in)", line)]
    assert not by_hand, f"declared by hand, not by fv.cli.common.add_model_args: {by_hand}"
    helps: dict[str, set[str]] = {}
    for noun, action in _verbs(build_parser()).items():
        for verb, p in action.choices.items():
            for a in p._actions:  # noqa: SLF001
                if a.dest in ("model", "device", "dtype", "attn_implementation") and (noun, verb) != ("model", "build"):
                    helps.setdefault(a.dest, set()).add(re.sub(r"\(default [^)]*\)$", "(default D)", a.help.split("; with")[0]))
    assert set(helps) == {"model", "device", "dtype", "attn_implementation"}
    assert all(len(h) == 1 for h in helps.values()), helps
    assert helps["model"] == {MODEL_HELP}


def test_the_docs_show_the_noun_verb_spellings_and_the_guide_lists_the_earlier_ones():
    """Every command in a ``bash`` block of README.md and docs/ is spelled noun-verb; docs/guide.md keeps the table of
    the earlier spellings for the scripts that use them."""
    old_words = "|".join(re.escape(o) for o in ALIASES) + "|" + "|".join(DEFAULT_VERBS)
    for doc in [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]:
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                m = re.search(rf"(?:^|&&\s*|\.venv/bin/)fv ({old_words})(?![\w-])(\s+(\S+))?", line)
                bare = m and m.group(1) in DEFAULT_VERBS and (m.group(3) is None or m.group(3).startswith("-"))
                assert not (m and (m.group(1) in ALIASES or bare)), f"{doc.name}: earlier spelling in `{line.strip()}`"
    guide = (REPO_ROOT / "docs" / "guide.md").read_text()
    for old, (noun, verb) in ALIASES.items():
        assert any(f"`fv {old}`" in line and f"`fv {noun} {verb}`" in line for line in guide.splitlines()), \
            f"docs/guide.md: no row with `fv {noun} {verb}` and its earlier spelling `fv {old}`"
    for noun in DEFAULT_VERBS:
        assert f"`fv {noun}` with its options" in guide, noun


def test_an_error_names_the_command_once(tmp_path):
    rc, _out, err = run_cli(["relation", "status", str(tmp_path / "nowhere")])
    line = assert_one_line_failure(rc, err, "expected an output folder")
    assert line.startswith("fv relation status: error: ") and line.count("fv relation status") == 1, line
