"""The command runner and the shape of the code: user errors vs bugs, and house rules.

A UserError is the user's to fix: one `error:` line, exit 2 (and its traceback first with
--verbose). Anything else is a bug in msjax: it must surface with its traceback, never be
turned into a tidy message. The rest checks rules of the repository that a reader relies
on: no function in msjax/ is too long to read, and nothing cites a path outside the repo.
"""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from msjax import cli
from msjax.errors import ConfigError, UserError
from tests.helpers import REPO

MAX_FUNCTION_LINES = 80


def test_a_user_error_is_one_line_and_exit_2(capsys):
    def command():
        raise ConfigError("config.train.steps=-1: must be an integer >= 1.")

    assert cli.run(command) == 2
    err = capsys.readouterr().err
    assert err == "error: config.train.steps=-1: must be an integer >= 1.\n"


def test_verbose_prints_the_traceback_of_a_user_error_too(capsys):
    def command():
        raise ConfigError("bad field")

    assert cli.run(command, verbose=True) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "ConfigError: bad field" in err
    assert err.rstrip().splitlines()[-1] == "error: bad field"


@pytest.mark.parametrize("internal", [ValueError, KeyError, TypeError, ZeroDivisionError])
def test_an_internal_error_keeps_its_traceback(internal):
    """A ValueError from a shape mismatch is a bug, not a user error: it propagates."""

    def command():
        raise internal("shapes (3, 4) and (5,) do not match")

    with pytest.raises(internal):
        cli.run(command)


def test_user_errors_derive_from_nothing_internal_code_raises():
    from msjax import errors

    classes = [c for c in vars(errors).values() if isinstance(c, type)]
    for cls in classes:
        if issubclass(cls, UserError):
            assert not issubclass(cls, ValueError | KeyError | TypeError | RuntimeError | OSError)


@pytest.mark.slow
def test_internal_error_in_a_real_process_shows_the_traceback_and_exits_1():
    """The runner in a real interpreter: a bug (here int('x'), a ValueError) ends the
    process as any Python error does, with its traceback and status 1."""
    code = "import sys; from msjax import cli; sys.exit(cli.run(lambda: int('x')))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "ValueError: invalid literal for int()" in result.stderr
    assert "error: " not in result.stderr


def test_the_fast_tier_starts_no_process():
    """conftest.py refuses, in a test not marked slow, every way of starting a process."""
    import multiprocessing

    starts = {
        "subprocess": lambda: subprocess.run([sys.executable, "-c", "pass"], check=True),
        "multiprocessing": lambda: multiprocessing.get_context("spawn").Process(target=int).start(),
        "os.system": lambda: os.system("true"),
        "os.posix_spawn": lambda: os.posix_spawn("/bin/true", ["true"], os.environ),
    }
    for name, start in starts.items():
        with pytest.raises(pytest.fail.Exception, match="starts a process: mark it"):
            start()
            pytest.fail(f"{name} was not refused")  # never reached: `start` raises first


def _functions(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node.name, node.lineno, node.end_lineno - node.lineno + 1


def test_no_function_in_msjax_is_longer_than_80_lines():
    long = [
        f"{path.relative_to(REPO)}:{line} {name} ({length} lines)"
        for path in sorted(Path(REPO, "msjax").rglob("*.py"))
        for name, line, length in _functions(path)
        if length > MAX_FUNCTION_LINES
    ]
    assert not long, long


def _imported_modules(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def test_no_test_module_imports_another():
    """What tests share lives in tests/helpers.py or conftest.py fixtures, so each test
    module can be read, run and moved on its own."""
    imports = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in sorted(Path(REPO, "tests").rglob("*.py"))
        for name in _imported_modules(path)
        if re.fullmatch(r"tests\.(reference\.)?test_\w+", name)
    ]
    assert not imports, imports


def test_nothing_cites_a_path_outside_the_repository():
    outside = "shared"  # the name of a notes folder beside the repository, absent in a clone
    pattern = re.compile(rf"\.\./{outside}|/work/{outside}")
    skip = {".git", ".venv", ".jax_cache", "__pycache__", ".pytest_cache", ".ruff_cache"}
    hits = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in skip and not d.endswith(".egg-info")]
        for name in files:
            if name.endswith((".py", ".md", ".toml", ".txt", ".cfg")) or name == "run":
                path = Path(root, name)
                if pattern.search(path.read_text(errors="ignore")):
                    hits.append(str(path.relative_to(REPO)))
    assert not hits, hits
