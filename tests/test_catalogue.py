"""The shipped catalogue (bench/assets/catalogue.json): `bench list`, `bench matrix` and name errors without torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.cli import main
from bench.tools import catalogue

REGENERATE = "the shipped catalogue is stale: regenerate it with `python -m bench.tools.catalogue`"


def test_the_shipped_catalogue_is_what_the_registries_give():
    shipped = json.loads(catalogue.FILE.read_text(encoding="utf-8"))
    assert shipped == catalogue.build(), REGENERATE
    assert catalogue.current() is not None, REGENERATE


@pytest.mark.parametrize("argv", [["list"], ["list", "datasets", "solvers"], ["matrix"]])
def test_commands_print_the_same_from_the_catalogue_as_from_the_registries(argv, capsys, monkeypatch):
    assert catalogue.current() is not None, REGENERATE
    assert main(argv) == 0
    from_catalogue = capsys.readouterr().out
    monkeypatch.setattr(catalogue, "current", lambda: None)
    assert main(argv) == 0
    assert capsys.readouterr().out == from_catalogue


def test_a_changed_source_file_makes_the_catalogue_stale(monkeypatch):
    monkeypatch.setattr(catalogue, "fingerprint", lambda: "an edited solver")
    assert catalogue.current() is None


CHECK = """
import sys
from bench.cli import main
code = main({argv!r})
assert "torch" not in sys.modules, "torch was imported"
sys.exit(code)
"""


@pytest.mark.parametrize(
    "argv,code,message",
    [
        (["list"], 0, ""),
        (["matrix"], 0, ""),
        (["run", "--solvers", "dsp"], 2, "unknown solver 'dsp'; did you mean 'dps'?"),
        (["run", "--tasks", "sr4,sr5"], 2, "unknown task 'sr5'; did you mean 'sr4'?"),
        (["run", "--sigma", "abc"], 2, "--sigma expects numbers"),
    ],
)
def test_listing_and_argument_errors_do_not_import_torch(argv, code, message):
    done = subprocess.run([sys.executable, "-c", CHECK.format(argv=argv)], capture_output=True, text=True)
    assert done.returncode == code, done.stderr
    assert message in done.stderr
