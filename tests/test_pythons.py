"""The supervision smoke test under every CPython 3.8 … 3.13 this machine has, and
scripts/test's choice of interpreter and venv."""
from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT
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


# --- scripts/test: one venv per interpreter ---

def checkout_copy(tmp_path) -> str:
    """scripts/test and its setup.cfg in a folder of their own, with nothing to install:
    these tests run the script without touching this checkout or the network."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "test", tmp_path / "scripts" / "test")
    shutil.copy(ROOT / "setup.cfg", tmp_path / "setup.cfg")
    (tmp_path / "requirements-dev.txt").write_text("# nothing: these tests install nothing\n")
    (tmp_path / "tests").mkdir()
    return str(tmp_path / "scripts" / "test")


def run_script_test(script: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("COVERAGE", "PYTHON", "VEGAVISOR_VENV"))}
    return subprocess.run([script], env=dict(clean, **env), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=timeout)


def fake_venv(folder, version: str) -> None:
    """A venv whose python says it is another interpreter."""
    (folder / "bin").mkdir(parents=True)
    python = folder / "bin" / "python"
    python.write_text(f"#!/bin/sh\necho {version} /opt/another-python\n")
    python.chmod(0o755)


# The interpreter behind the venv running these tests: scripts/test is given it, as a
# developer gives python3. (The venv's own python may have no pip: scripts/test makes its
# venvs without one where the interpreter's pip can install into them.)
BASE_PYTHON = os.path.realpath(sys.executable)


def can_install_into_another_environment(python: str) -> bool:
    """pip >= 22.3 (its --python), as scripts/test asks."""
    return subprocess.run([python, "-c", "import pip, sys; sys.exit(tuple(int(n) for n in "
                           "pip.__version__.split('.')[:2]) < (22, 3))"],
                          stderr=subprocess.DEVNULL, timeout=30).returncode == 0


def hand_made_wheel(folder) -> str:
    """A wheel of one module, vvprobe, that pip installs from its path with no index."""
    path = folder / "vvprobe-1.0-py3-none-any.whl"
    files = {"vvprobe.py": "ANSWER = 42\n",
             "vvprobe-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: vvprobe\n"
                                               "Version: 1.0\n",
             "vvprobe-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: hand\n"
                                            "Root-Is-Purelib: true\nTag: py3-none-any\n"}
    files["vvprobe-1.0.dist-info/RECORD"] = "".join(f"{name},,\n" for name in files) + \
        "vvprobe-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
    return str(path)


def identity(python: str) -> str:
    return subprocess.run([python, "-c", "import sys, platform; "
                           "print(platform.python_version(), sys.base_prefix)"],
                          stdout=subprocess.PIPE, text=True, timeout=30).stdout.strip()


@pytest.mark.timeout(60)
def test_a_venv_named_by_the_user_from_another_python_is_refused(tmp_path):
    script = checkout_copy(tmp_path)
    fake_venv(tmp_path / "theirs", "3.6.15")
    done = run_script_test(script, PYTHON=sys.executable, VEGAVISOR_VENV=str(tmp_path / "theirs"))
    assert done.returncode == 2
    assert (f"scripts/test: VEGAVISOR_VENV={tmp_path / 'theirs'} was made by Python "
            f"3.6.15 /opt/another-python, not by PYTHON={sys.executable}") in done.stderr
    assert (tmp_path / "theirs" / "bin" / "python").exists(), "the user's venv is kept"


@pytest.mark.timeout(120)
def test_its_own_venv_from_another_python_is_rebuilt(tmp_path):
    script = checkout_copy(tmp_path)
    minor = "%d.%d" % sys.version_info[:2]
    fake_venv(tmp_path / f".venv-{minor}", "3.6.15")
    (tmp_path / "requirements-dev.txt").write_text(hand_made_wheel(tmp_path) + "\n")
    done = run_script_test(script, timeout=110, PYTHON=BASE_PYTHON)
    assert (f"scripts/test: .venv-{minor} was made by Python 3.6.15 /opt/another-python, "
            f"not by {BASE_PYTHON}") in done.stderr
    assert "rebuilding it" in done.stderr
    python = str(tmp_path / f".venv-{minor}" / "bin" / "python")
    assert identity(python) == identity(BASE_PYTHON)
    installed = subprocess.run([python, "-c", "import vvprobe; print(vvprobe.ANSWER)"],
                               stdout=subprocess.PIPE, text=True, timeout=30)
    assert installed.stdout == "42\n", "requirements-dev.txt is installed into the new venv"
    # Made without a pip of its own (ensurepip took 6 s) where the interpreter's can
    # install into it; with one where not (Debian's python3 has no pip).
    has_pip = subprocess.run([python, "-c", "import pip"], stderr=subprocess.DEVNULL,
                             timeout=30).returncode == 0
    assert has_pip != can_install_into_another_environment(BASE_PYTHON)
    # coverage is not among the requirements, so it cannot run: that fails.
    assert done.returncode != 0


@pytest.mark.timeout(60)
def test_a_python_that_does_not_run_or_is_too_old_is_named(tmp_path):
    script = checkout_copy(tmp_path)
    done = run_script_test(script, PYTHON=str(tmp_path / "no-python"))
    assert done.returncode == 2
    assert done.stderr == (f"scripts/test: PYTHON={tmp_path / 'no-python'} is not a Python "
                           f"interpreter that runs here; set PYTHON to one, e.g. PYTHON=python3.8\n")
    old = sorted(glob.glob(f"{pyenv_root()}/versions/3.7.*/bin/python3"))
    if old:
        done = run_script_test(script, PYTHON=old[-1])
        assert done.returncode == 2
        assert "; vegavisor supports 3.8 to 3.13" in done.stderr
    assert not list(tmp_path.glob(".venv*")), "no venv is made for a refused interpreter"


@pytest.mark.timeout(120)
def test_a_run_that_collects_no_tests_fails(tmp_path):
    if sys.prefix == sys.base_prefix:
        pytest.skip("the tests run outside a venv: there is no venv with pytest to lend")
    import coverage
    if coverage.version_info < (7, 10):
        pytest.skip("with coverage < 7.10 scripts/test writes its coveragerc into the venv "
                    "it is given, which is the one running these tests")
    script = checkout_copy(tmp_path)
    # No workers: what is checked is scripts/test's exit status, and four xdist workers
    # would each start up for nothing to run.
    done = run_script_test(script, timeout=110, PYTHON=BASE_PYTHON, VEGAVISOR_VENV=sys.prefix,
                           VEGAVISOR_TEST_WORKERS="0")
    assert done.returncode == 5, done.stderr
    assert "scripts/test: pytest collected no tests (exit 5)" in done.stderr
