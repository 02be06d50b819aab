"""The command line imports only the module of the command it runs; `--help` lists every command without
importing any of them."""

import argparse
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from cli.main import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parents[1]


def registered(module: str) -> list[tuple[str, str]]:
    """(command, help line) as the module's register() adds them, in order."""
    sub = argparse.ArgumentParser().add_subparsers()
    importlib.import_module(module).register(sub)
    return [(a.dest, a.help) for a in sub._choices_actions]


@pytest.mark.parametrize("module", sorted({m for m, _ in COMMANDS.values()}))
def test_the_command_table_says_what_each_module_registers(module):
    assert registered(module) == [(name, text) for name, (m, text) in COMMANDS.items() if m == module]


def _run(code: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()


def test_help_lists_every_command_and_imports_none_of_them():
    code = ("import sys, contextlib, io, cli.main\n"
            "out = io.StringIO()\n"
            "with contextlib.redirect_stdout(out):\n"
            "    try:\n"
            "        cli.main.main(['--help'])\n"
            "    except SystemExit:\n"
            "        pass\n"
            "heavy = [m for m in ('pandas', 'simpy', 'pyarrow', 'cli.simulate', 'cli.plan') if m in sys.modules]\n"
            "print(' '.join(heavy) or 'none', *[c for c in out.getvalue().split() if c.replace('-', '_').isidentifier()])\n")
    words = _run(code)
    assert words[0] == "none", f"--help imported {words}"
    assert set(COMMANDS) <= set(words[1:])


def test_a_command_imports_its_own_module_only():
    code = ("import sys, contextlib, io, cli.main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    code = cli.main.main(['presets'])\n"
            "mods = ('cli.simulate', 'cli.plan', 'cli.validate', 'cli.measure')\n"
            "print(code, *[m for m in mods if m in sys.modules])\n")
    assert _run(code) == ["0", "cli.simulate"]


@pytest.mark.parametrize("command", [None, "bogus", "plan"])
def test_the_parser_names_every_command_in_order(command):
    sub = next(a for a in build_parser(command)._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == list(COMMANDS)
