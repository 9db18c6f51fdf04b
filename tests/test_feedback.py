"""SPEC 3.2 through the command line: an operator's mistakes are named within seconds,
in one line that says what to do, and never as a traceback. What `run` decides is driven
in-process (conftest.FakeWorld: fake clock, processes and admin socket, real files); a
real `run` only for what needs the real world (other users, a node answering on a real
socket, closed standard streams, the command lines pgrep sees)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import vegavisor
from conftest import FakeChain
from conftest import FakeWorld
from conftest import VEGAVISOR
from conftest import lines
from conftest import make_fake_home
from conftest import run_in_process
from conftest import run_main
from conftest import wait_for
from conftest import write_run_config

BLOCKS = ["--block-interval", "0.05"]
AS_NOBODY = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")
# `python -S`: no site-packages, so no coverage hook that would try to write its data
# into this root-owned checkout as nobody (vegavisor needs nothing but the stdlib).
def nobody_can_run_this_python() -> bool:
    """As root with setpriv, and this interpreter runs as nobody (a pyenv build under
    /root loads its libpython from a folder nobody may read)."""
    if os.geteuid() != 0 or not Path("/usr/bin/setpriv").exists():
        return False
    probe = subprocess.run([*AS_NOBODY, sys.executable, "-S", "-c", "pass"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
    return probe.returncode == 0


needs_root = pytest.mark.skipif(not nobody_can_run_this_python(),
                                reason="runs vegavisor as nobody with setpriv, as root, with "
                                       "an interpreter nobody can run")


def status(home: Path) -> dict:
    done = run_main(["status", "--home", str(home), "--output", "json"])
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    return json.loads(done.stdout)


def write_core_config(root: Path, socket: str) -> Path:
    core_home = root / "core-home"
    path = core_home / "config" / "node" / "config.toml"
    path.parent.mkdir(parents=True)
    path.write_text(f'[Admin]\n  [Admin.Server]\n    SocketPath = "{socket}"\n'
                    f'    HTTPPath = "/rpc"\n')
    return core_home


class Killed(BaseException):
    """kill -9 in the in-process world: run ends where it is, nothing after runs."""


def kill_9(world: FakeWorld) -> None:
    raise Killed()


# --- what `run` says, in-process ---

def test_a_socket_path_that_differs_from_cores_own_is_named_at_start(tmp_path):
    home = make_fake_home(tmp_path)
    theirs = str(tmp_path / ("other-" + "x" * 60 + ".sock"))  # shown whole, not cut at 80
    core_home = write_core_config(tmp_path, theirs)
    ours = str(tmp_path / "admin.sock")
    write_run_config(home / "genesis", "v1", socket=ours, args=["node", "--home", str(core_home)])
    world = FakeWorld(home)
    world.stop_at(5)
    code, log = run_in_process(home, world)
    assert code == 0
    [line] = lines(log, "ERROR start-up check ")
    # a logfmt value: the finding's own quotes are escaped
    assert f'finding="{home}/genesis/run-config.toml: vega.rpc.socketPath = \\"{ours}\\"' \
        in line
    assert f'[Admin.Server] SocketPath = \\"{theirs}\\": vegavisor would never ' \
           f'reach core; make them the same"' in line
    assert "Traceback" not in log


def test_a_core_that_never_answers_is_warned_about_within_ten_seconds(tmp_path):
    home = make_fake_home(tmp_path, "maxNumberOfFirstConnectionRetries = 1000\n")
    # the run-config's [vega.rpc] names a socket core never opens (core keeps its own)
    wrong = str(tmp_path / "wrong.sock")
    write_run_config(home / "genesis", "v1", socket=wrong)
    world = FakeWorld(home, FakeChain(listen_after=10**9).answer)
    reports = []
    world.at(11, lambda w: reports.append(status(home)))
    world.stop_at(12)
    lock = vegavisor.lock_home(home)  # as `run` holds it: status reads the state as fresh
    try:
        code, log = run_in_process(home, world)
    finally:
        os.close(lock)
    assert code == 0
    [line] = lines(log, "WARN  core has not answered yet ")
    assert f"socket={wrong} waited=10 " in line
    [report] = reports
    assert "has not answered for 10s" in report["run"]["waiting"]
    assert any("has not answered for 10s" in p for p in report["problems"])


@pytest.mark.parametrize("how", ["sigterm", "gave-up", "kill-9"])
def test_status_says_how_run_ended_and_since_when(tmp_path, how):
    home = make_fake_home(tmp_path, "maxNumberOfRestarts = 0\n")
    world = FakeWorld(home)
    if how == "sigterm":
        world.stop_at(10)
    elif how == "gave-up":
        world.at(10, lambda w: w.live("core").exit(-signal.SIGSEGV))
    else:
        world.at(10, kill_9)
    lock = vegavisor.lock_home(home)  # as `run` holds it; its file stays when run ends
    try:
        run_in_process(home, world)
    except Killed:
        assert how == "kill-9"
    finally:
        os.close(lock)
    run = status(home)["run"]
    assert run["running"] is False and run["endedAt"]
    expected = {"sigterm": "stopped by SIGTERM", "gave-up": "gave up: core ",
                "kill-9": "died without a word"}[how]
    assert run["ended"].startswith(expected), run
    state = json.loads((home / ".run-state.json").read_text())
    assert state["phase"] == {"sigterm": "stopped", "gave-up": "failed",
                              "kill-9": "running"}[how]
    text = run_main(["status", "--home", str(home)]).stdout
    assert f"vegavisor  not running since {run['endedAt']}: {expected}" in text


def test_json_logs_use_vegas_keys(tmp_path):
    home = make_fake_home(tmp_path, '[logging]\nformat = "json"\n')
    world = FakeWorld(home)
    world.stop_at(5)
    code, log = run_in_process(home, world)
    assert code == 0
    records = [json.loads(line) for line in log.splitlines()]
    assert records and all({"T", "L", "N", "M"} <= set(r) for r in records)
    assert {r["N"] for r in records} == {"vegavisor"}
    assert "admin socket answering" in [r["M"] for r in records]


def test_version_flag_and_a_tilde_home(tmp_path):
    done = run_main(["--version"])
    assert (done.returncode, done.stdout.startswith("vegavisor ")) == (0, True)
    done = run_main(["init", "--home=~/vv"], env={"HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "vv" / "config.toml").is_file() and not Path("~").exists()


# --- the real world: other users, real sockets, closed streams, real command lines ---

@needs_root
@pytest.mark.timeout(60)
def test_run_as_another_user_on_a_root_owned_home_says_whose_it_is(home):
    home.install_version("genesis", "v1", BLOCKS)
    os.chmod(home.root, 0o755)
    done = subprocess.run(list(AS_NOBODY) + [sys.executable, "-S", str(VEGAVISOR), "run", "--home",
                                             str(home.path)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr == (f"vegavisor: error: {home.path} is not writable by user nobody "
                           f"(uid {65534}); vegavisor keeps its lock, state and staging folders "
                           f"there: `chown -R nobody {home.path}` or run as its owner\n")


@needs_root
@pytest.mark.timeout(60)
def test_a_root_owned_binary_without_exec_bits_is_one_line(home):
    home.install_version("genesis", "v1", BLOCKS)
    binary = home.path / "genesis" / "vega"
    os.chmod(binary, 0o644)
    for path in [home.root, home.path] + list(home.path.rglob("*")):
        if path != binary:
            os.chown(path, 65534, 65534)
    done = subprocess.run(list(AS_NOBODY) + [sys.executable, "-S", str(VEGAVISOR), "run", "--home",
                                             str(home.path)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
    assert done.returncode == 1, done.stdout + done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert f"binary {home.path}/current/vega is not executable and cannot be made so " \
           f"(Operation not permitted); run `chmod +x {home.path}/current/vega` as its owner" \
        in last
    assert "Traceback" not in done.stdout + done.stderr


@pytest.mark.timeout(60)
def test_status_answers_with_a_broken_config_and_a_healthy_node(home, start_visor):
    home.install_version("genesis", "v1", BLOCKS)
    visor = start_visor()
    visor.wait_log("admin socket answering")
    (home.path / "config.toml").write_text("pollIntervalSeconds = [\n")
    report = status(home.path)
    assert report["node"]["reachable"] is True
    assert report["run"]["running"] is True
    assert report["problems"][0].startswith(f"config: {home.path}/config.toml: line 2")
    visor.signal(signal.SIGTERM)
    assert visor.wait_exit() == 0


@pytest.mark.timeout(60)
def test_children_run_as_home_current_so_pgrep_finds_them(home, start_visor):
    home.install_version("genesis", "v1", BLOCKS)
    visor = start_visor()
    visor.wait_log("admin socket answering")
    found = subprocess.run(["pgrep", "-f", f"{home.path}/current/vega node"],
                           stdout=subprocess.PIPE, text=True)
    assert len(found.stdout.split()) == 1
    visor.signal(signal.SIGTERM)
    assert visor.wait_exit() == 0


@pytest.mark.timeout(60)
def test_a_closed_stdout_and_stderr_do_not_stop_run(home):
    home.install_version("genesis", "v1", BLOCKS)
    read, write = os.pipe()
    proc = subprocess.Popen([sys.executable, str(VEGAVISOR), "run", "--home", str(home.path)],
                            stdout=write, stderr=write)
    os.close(write)
    os.read(read, 100)  # it started logging
    os.close(read)  # nobody reads its output any more
    wait_for(lambda: home.records("rpc"), 10, "admin polls")
    polls = len(home.records("rpc"))
    wait_for(lambda: len(home.records("rpc")) > polls + 3, 10, "polls after the pipe closed")
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0


@pytest.mark.timeout(60)
def test_run_with_its_standard_streams_closed_supervises_and_stops_cleanly(home):
    """`vegavisor run >&- 2>&- <&-` (some init systems start it so): the node runs, no log
    line lands in a file vegavisor opened in their place, and SIGTERM still stops it."""
    home.install_version("genesis", "v1", BLOCKS)
    visor = subprocess.Popen(
        ["bash", "-c", 'exec "$0" "$1" run --home "$2" <&- >&- 2>&-',
         sys.executable, str(VEGAVISOR), str(home.path)])
    try:
        wait_for(lambda: status(home.path)["node"]["reachable"], 20, "the node to answer")
        assert status(home.path)["run"]["running"]
    finally:
        visor.send_signal(signal.SIGTERM)
        code = visor.wait(timeout=30)
    assert code == 0
    assert (home.path / ".vegavisor.lock").read_text().strip().isdigit(), "a pid, no log line"
    assert json.loads((home.path / ".run-state.json").read_text())["children"] == []
