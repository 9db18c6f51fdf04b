"""The command line: init, version, --home resolution, exit codes, stdlib-only imports."""
from __future__ import annotations

import ast
import json
import os
import platform
import subprocess
import sys

import pytest

import vegavisor
from conftest import FAKE_CORE
from conftest import ROOT
from conftest import VEGAVISOR
from conftest import run_vegavisor


@pytest.mark.timeout(10)
def test_version_human_and_json(capsys):
    assert vegavisor.main(["version"]) == 0
    assert capsys.readouterr().out == f"vegavisor {vegavisor.__version__}\n"
    assert vegavisor.main(["version", "--output", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "version": vegavisor.__version__, "python": platform.python_version()}


@pytest.mark.timeout(10)
def test_init_makes_a_home_that_parses(tmp_path, capsys):
    home = tmp_path / "home"
    assert vegavisor.main(["init", "--home", str(home)]) == 0
    # no current: `run` links it to genesis, as under the Go Visor (SPEC 3.1.11)
    assert sorted(p.name for p in home.iterdir()) == ["config.toml", "genesis"]
    config, warnings = vegavisor.load_config(home)
    assert warnings == [] and config.max_restarts == 3
    run_config, warnings = vegavisor.load_run_config(home / "genesis")
    assert warnings == [] and run_config.data_node is None
    assert run_config.rpc == vegavisor.RpcConfig("/tmp/vega.sock", "/rpc")
    assert "next: put the vega binary in" in capsys.readouterr().out


@pytest.mark.timeout(10)
def test_init_with_data_node(tmp_path):
    assert vegavisor.main(["init", "--home", str(tmp_path / "h"), "--with-data-node"]) == 0
    run_config, _ = vegavisor.load_run_config(tmp_path / "h" / "genesis")
    assert run_config.data_node == vegavisor.Binary(
        "vega", ("datanode", "start", "--home", "/home/vega/.vega"))


@pytest.mark.timeout(10)
def test_init_accepts_an_empty_existing_folder(tmp_path):
    assert vegavisor.main(["init", "--home", str(tmp_path)]) == 0
    assert (tmp_path / "genesis" / "run-config.toml").is_file()


@pytest.mark.timeout(10)
def test_init_refuses_a_non_empty_home_and_changes_nothing(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert vegavisor.main(["init", "--home", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"vegavisor: error: {tmp_path} is not an empty folder; init only creates a new home\n")
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.timeout(10)
def test_home_falls_back_to_vegavisor_home(tmp_path, monkeypatch):
    monkeypatch.setenv("VEGAVISOR_HOME", str(tmp_path / "env-home"))
    assert vegavisor.main(["init"]) == 0
    assert (tmp_path / "env-home" / "config.toml").is_file()


@pytest.mark.parametrize("command", ["init", "run"])
@pytest.mark.timeout(10)
def test_no_home_at_all_is_a_usage_error(command, monkeypatch, capsys):
    monkeypatch.delenv("VEGAVISOR_HOME", raising=False)
    assert vegavisor.main([command]) == 2
    assert capsys.readouterr().err == (
        f"vegavisor: error: {command}: --home is required (or set VEGAVISOR_HOME)\n")


@pytest.mark.parametrize("command", [["run"], ["validate"], ["status"], ["config"],
                                     ["prepare-upgrade", "v2"]])
@pytest.mark.timeout(10)
def test_a_home_given_as_its_config_file_names_the_folder_to_give(command, tmp_path, capsys):
    assert vegavisor.main(["init", "--home", str(tmp_path)]) == 0
    capsys.readouterr()
    code = vegavisor.main([command[0], "--home", str(tmp_path / "config.toml")] + command[1:])
    out, err = capsys.readouterr()
    said = (f"{tmp_path}/config.toml is a file, not a home; --home names the folder that "
            f"holds config.toml (here {tmp_path})")
    # validate and status report it as their finding; the others exit 2 with it
    assert (code, out + err) in [(1, f"problem: {said}\n1 problem in {tmp_path}/config.toml (0 "
                                     f"version folders checked)\n"),
                                 (2, f"vegavisor: error: {said}\n")] or (
        command == ["status"] and code == 0 and f"  - config: {said}\n" in out), (code, out, err)


@pytest.mark.parametrize("argv", [[], ["frobnicate"], ["version", "--output", "xml"]])
@pytest.mark.timeout(10)
def test_bad_usage_exits_2(argv, capsys):
    assert vegavisor.main(argv) == 2
    assert "usage: vegavisor" in capsys.readouterr().err


@pytest.mark.timeout(30)
def test_script_and_console_entry_behave_alike(tmp_path):
    done = run_vegavisor(["version"])
    assert (done.returncode, done.stdout) == (0, f"vegavisor {vegavisor.__version__}\n")
    done = run_vegavisor(["run", "--home", str(tmp_path / "missing")])
    assert done.returncode == 2


@pytest.mark.timeout(20)
@pytest.mark.parametrize("command", [["config"], ["status"], ["validate"], ["version"]],
                         ids=lambda command: command[0])
def test_a_reader_that_closed_the_pipe_gets_no_error_line(command, tmp_path):
    """`vegavisor config | head`: the reader went away; no "Broken pipe" error, no traceback."""
    home = tmp_path / "home"
    assert vegavisor.main(["init", "--home", str(home)]) == 0
    read_end, write_end = os.pipe()
    os.close(read_end)  # closed before vegavisor writes: its first write meets EPIPE
    try:
        home_args = [] if command == ["version"] else ["--home", str(home)]
        done = subprocess.run([sys.executable, str(VEGAVISOR), *command, *home_args],
                              stdout=write_end, stderr=subprocess.PIPE, timeout=15)
    finally:
        os.close(write_end)
    assert done.stderr.decode() == ""
    assert done.returncode == 1


def imported_modules(path) -> set:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names - {"__future__"}


@pytest.mark.parametrize("path", [VEGAVISOR, FAKE_CORE, ROOT / "fakes" / "github.py"],
                         ids=lambda p: p.name)
@pytest.mark.timeout(10)
def test_only_the_standard_library_is_imported(path):
    assert imported_modules(path) - stdlib_module_names() == set()


def stdlib_module_names() -> set:
    """sys.stdlib_module_names (3.10+); below 3.10, the imported modules found built in,
    frozen or in the standard library folder (not its site-packages)."""
    if hasattr(sys, "stdlib_module_names"):
        return set(sys.stdlib_module_names)
    import importlib.util
    import sysconfig
    stdlib = os.path.realpath(sysconfig.get_paths()["stdlib"])
    # standard modules newer than this Python (vegavisor imports tomllib only when present)
    names = set(sys.builtin_module_names) | {"graphlib", "zoneinfo", "tomllib"}
    for path in (VEGAVISOR, FAKE_CORE, ROOT / "fakes" / "github.py"):
        for name in imported_modules(path):
            spec = importlib.util.find_spec(name)
            origin = spec.origin if spec else None
            if origin in ("built-in", "frozen"):
                names.add(name)
                continue
            origin = origin and os.path.realpath(origin)
            if origin and origin.startswith(stdlib + os.sep) \
                    and "site-packages" not in origin.split(os.sep):
                names.add(name)
    return names
