"""`vegavisor init` and --home: a new home as the Go Visor makes it, or one line saying why not."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import VEGAVISOR
from conftest import run_vegavisor

# root without capabilities: file permissions apply to it as to any user.
NO_CAPABILITIES = ("setpriv", "--bounding-set=-all", "--inh-caps=-all")


@pytest.mark.timeout(30)
def test_init_writes_no_current_and_run_would_use_genesis(short_tmp):
    home = short_tmp / "home"
    done = run_vegavisor(["init", "--home", str(home)])
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in home.iterdir()) == ["config.toml", "genesis"]
    assert done.stdout.splitlines()[0] == f"created {home}: config.toml, genesis/run-config.toml"
    assert "(it links current to genesis)" in done.stdout
    os.symlink(home / "genesis", home / "current")  # the operator docs' ln -s keeps working
    assert not (home / "genesis" / "genesis").exists()


@pytest.mark.timeout(30)
def test_home_with_a_tilde_after_an_equals_sign_is_the_users_home(short_tmp):
    env = dict(os.environ, HOME=str(short_tmp))
    done = subprocess.run([sys.executable, str(VEGAVISOR), "init", "--home=~/vega-home"],
                          env=env, cwd=str(short_tmp), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert (short_tmp / "vega-home" / "config.toml").is_file()
    assert not (short_tmp / "~").exists()


def init_fails(home: Path, prefix=()) -> str:
    done = subprocess.run(list(prefix) + [sys.executable, str(VEGAVISOR), "init", "--home",
                                          str(home)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
    assert (done.returncode, done.stdout) == (2, ""), done.stderr
    [line] = done.stderr.splitlines()
    return line


@pytest.mark.timeout(30)
def test_init_under_a_file_is_one_line_exit_2(short_tmp):
    (short_tmp / "file").write_text("")
    line = init_fails(short_tmp / "file" / "home")
    assert line == (f"vegavisor: error: {short_tmp}/file/home/genesis: cannot create the home: Not a "
                    f"directory; choose a folder this user (uid {os.geteuid()}) can write")


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/setpriv").exists(),
                    reason="drops root's capabilities with setpriv")
@pytest.mark.parametrize("mode", [0o555, 0o000], ids=["read-only", "unreadable"])
@pytest.mark.timeout(30)
def test_init_into_a_folder_it_cannot_write_is_one_line_exit_2(short_tmp, mode):
    home = short_tmp / "home"
    home.mkdir(mode=mode)
    home.chmod(mode)
    try:
        line = init_fails(home, NO_CAPABILITIES)
    finally:
        home.chmod(0o755)
    assert line.startswith(f"vegavisor: error: {home}")
    assert line.endswith(": cannot create the home: Permission denied; choose a folder this "
                         "user (uid 0) can write")
    assert list(home.iterdir()) == []


@pytest.mark.timeout(30)
def test_init_refuses_a_folder_that_is_not_empty(short_tmp):
    (short_tmp / "keep.txt").write_text("operator data")
    line = init_fails(short_tmp)
    assert line == (f"vegavisor: error: {short_tmp} is not an empty folder; init only creates a "
                    f"new home")
    assert (short_tmp / "keep.txt").read_text() == "operator data"
