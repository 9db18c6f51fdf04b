"""The supervision smoke test under every CPython 3.8 … 3.13 this machine has."""
from __future__ import annotations

import glob
import os
import signal
import subprocess

import pytest

from conftest import Visor
from conftest import run_vegavisor
from conftest import wait_for


def pyenv_root() -> str:
    try:
        return subprocess.run(["pyenv", "root"], stdout=subprocess.PIPE, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return os.path.expanduser("~/.pyenv")


def interpreter(minor: int) -> str:
    found = sorted(glob.glob(f"{pyenv_root()}/versions/3.{minor}.*/bin/python3"))
    if not found:
        pytest.skip(f"CPython 3.{minor} is not installed under {pyenv_root()}/versions")
    return found[-1]


MINORS = [8, 9, 10, 11, 12, 13]


@pytest.mark.parametrize("minor", MINORS, ids=[f"3.{m}" for m in MINORS])
@pytest.mark.timeout(90)
def test_supervises_and_stops_under_python(minor, home):
    python = interpreter(minor)
    done = run_vegavisor(["version", "--output", "json"], python=python)
    assert done.returncode == 0 and f'"python": "3.{minor}.' in done.stdout
    home.install_version("genesis", "v1", ["--block-interval", "0.05",
                                           "--crash-at-height", "3"])
    home.set_config(maxNumberOfRestarts=1)
    # The fake core runs under the same interpreter: its shebang finds it first on PATH.
    env = dict(os.environ, PATH=os.path.dirname(python) + os.pathsep + os.environ["PATH"])
    crashing = Visor(home, python=python, env=env)
    try:
        assert crashing.wait_exit(40) == 1
        assert "it was restarted 1 times already" in crashing.log()
    finally:
        crashing.close()
    home.install_version("genesis", "v1", ["--block-interval", "0.05"])
    visor = Visor(home, python=python, env=env)
    try:
        visor.wait_log("admin socket answering", timeout=30)
        wait_for(lambda: home.records("rpc"), 10, "an admin poll")
        visor.signal(signal.SIGTERM)
        assert visor.wait_exit() == 0
        assert "vegavisor stopped signal=SIGTERM" in visor.log()
    finally:
        visor.close()
