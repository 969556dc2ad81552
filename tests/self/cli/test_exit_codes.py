"""One set of exit codes in every ``fv`` command (fv/errors.py): 0 done, 1 a failed check or a command stopped on an
error, 2 a usage error, 4 a refusal at the door, 130 interrupted; each said in ``fv --help``."""

from __future__ import annotations

import pytest

from fv.cli import EXIT_CODES, build_parser, main
from fv.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_REFUSED, EXIT_USAGE, FVError, UsageError
from fv.parity.preflight import PreflightFailed
from fv.paths import FIXTURES

pytestmark = pytest.mark.m4


def _one_line(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"fv {command}: error: "), err
    return lines[0]


def test_help_says_the_codes(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert " ".join(capsys.readouterr().out.split()).endswith(" ".join(EXIT_CODES.split()))
    assert (EXIT_FAILED, EXIT_USAGE, EXIT_REFUSED, PreflightFailed.exit_code) == (1, 2, 4, 4)


def test_no_command_is_a_usage_error(capsys):
    assert main([]) == EXIT_USAGE


def test_an_argparse_error_is_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "--mode", "sideways"])
    assert e.value.code == EXIT_USAGE


@pytest.mark.parametrize("argv, command, needle", [
    (["make-trials", "--out", "x.json"], "make-trials", "exactly one of --dataset"),
    (["relation", "--relation-csv", "x.csv", "--fixed-trials", "y.json", "--no-plots"], "relation", "exactly one of"),
    (["run", "--model", "tiny-llama", "--edit-layers", "nine", "--max-trials", "1", "--quiet", "--no-plots"], "run",
     "cannot read edit layers"),
])
def test_options_that_cannot_go_together_are_2(argv, command, needle, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == EXIT_USAGE
    assert needle in _one_line(capsys.readouterr().err, command)


def test_a_command_stopped_on_an_error_is_1(tmp_path, capsys):
    missing = tmp_path / "nowhere.json"
    assert main(["verify-trials", str(missing)]) == EXIT_FAILED
    assert str(missing) in _one_line(capsys.readouterr().err, "verify-trials")


def test_a_failed_check_is_1(capsys):
    """``fv doctor`` on trials another tokenizer made (the reference's own file, for Llama 3): a failed check."""
    rc = main(["doctor", "--model", "tiny-llama", "--fixed-trials", str(FIXTURES / "data" / "fixed_trials_antonym_t10_s10_seed0.json")])
    assert rc == EXIT_FAILED and "FAIL trial token ids: 10 of 10 disagree" in capsys.readouterr().out


def test_a_refusal_at_the_door_is_4(tmp_path, capsys):
    """``fv make-trials --prepend-bos-token-used true`` on a tokenizer that adds BOS itself: refused, nothing written."""
    out = tmp_path / "ft.json"
    rc = main(["make-trials", "--dataset", str(FIXTURES / "antonym_tiny.json"), "--out", str(out), "--n-trials", "1",
               "--prepend-bos-token-used", "true"])
    assert rc == EXIT_REFUSED and not out.exists()
    assert "preflight" in capsys.readouterr().err


@pytest.mark.parametrize("exc, code", [(FVError("x"), 1), (UsageError("x"), 2),
                                       (PreflightFailed([]), 4), (KeyboardInterrupt(), EXIT_INTERRUPTED)])
def test_every_command_maps_its_exceptions_alike(exc, code, monkeypatch, capsys):
    """Whatever the command, the exception decides the code (``fv.cli.main``)."""
    parser = build_parser()
    names = sorted(parser._subparsers._group_actions[0].choices)  # every registered command
    assert len(names) > 10
    for name in names:
        def boom(_a, exc=exc):
            raise exc

        monkeypatch.setattr(parser, "parse_args", lambda argv, name=name: type("A", (), {"func": staticmethod(boom), "command": name})())
        monkeypatch.setattr("fv.cli.build_parser", lambda parser=parser: parser)
        assert main([name]) == code, name
