"""`vegavisor.py run` supervising core: restarts, backoff, limits, data node, `current`
(in-process: conftest.FakeWorld's fake clock, processes and admin socket, real files in a
temporary home), then what only the real world shows (a real `run` of the fake core:
signals, the run lock, exec bits and formats of a real binary, the child's environment)."""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

import vegavisor
from conftest import FakeChain
from conftest import FakeWorld
from conftest import lines
from conftest import make_fake_home
from conftest import run_in_process
from conftest import run_vegavisor
from conftest import wait_for

BLOCKS = ["--block-interval", "0.05"]


def crash_after(seconds: float, code: int = -signal.SIGSEGV):
    """An on_step that ends every core `seconds` after it started, with `code`."""
    def crash(world: FakeWorld) -> None:
        for proc in world.procs:
            if proc.role == "core" and proc.code is None and world.clock - proc.started >= seconds:
                proc.exit(code)
    return crash


def times(world: FakeWorld, event: str, role: str = "core") -> list:
    return [e[0] for e in world.events if e[1] == event and e[2] == role]


# --- restarts, backoff and limits (in-process) ---

def test_restarts_back_off_doubling_up_to_the_cap(tmp_path):
    home = make_fake_home(tmp_path, "maxNumberOfRestarts = 3\nrestartsDelaySeconds = 2\n"
                                    "restartsBackoffMaxSeconds = 5\n")
    world = FakeWorld(home)
    world.on_step = crash_after(1)
    code, log = run_in_process(home, world)
    assert code == 1
    delays = [float(d) for d in re.findall(r"restarting delay=([\d.]+)", log)]
    assert delays == [2, 4, 5]
    gaps = [start - exit for exit, start in zip(times(world, "exit"), times(world, "spawn")[1:])]
    assert gaps == pytest.approx([2, 4, 5]), "each restart waits its delay, on the clock"


def test_a_child_exiting_0_counts_as_a_crash(tmp_path):
    home = make_fake_home(tmp_path, "maxNumberOfRestarts = 0\n")
    world = FakeWorld(home)
    world.on_step = crash_after(5, code=0)
    code, log = run_in_process(home, world)
    assert code == 1
    assert len(world.started()) == 1
    assert log.splitlines()[-1].endswith(
        f'ERROR giving up reason="core {home}/current/vega exited with status 0; it was '
        f'restarted 0 times already (maxNumberOfRestarts = 0), giving up"')


@pytest.mark.parametrize("uptime, gives_up", [(40, False), (20, True)],
                         ids=["longer-than-reset", "shorter-than-reset"])
def test_restart_count_resets_after_a_long_enough_uptime(tmp_path, uptime, gives_up):
    home = make_fake_home(tmp_path, "maxNumberOfRestarts = 1\nrestartsResetAfterSeconds = 30\n")
    world = FakeWorld(home)
    world.on_step = crash_after(uptime)
    world.stop_at(200)
    code, log = run_in_process(home, world)
    if gives_up:  # the second crash is the second restart: over the limit of 1
        assert code == 1 and len(world.started()) == 2
        assert "(maxNumberOfRestarts = 1), giving up" in log.splitlines()[-1]
    else:  # every crash after 40 s up is the first restart again
        assert code == 0 and len(world.started()) >= 4
        assert len(lines(log, "restart=1 limit=1")) >= 3 and not lines(log, "restart=2")


def test_a_node_ignoring_sigterm_is_killed_after_the_grace(tmp_path):
    home = make_fake_home(tmp_path, "stopSignalTimeoutSeconds = 15\n")
    world = FakeWorld(home)

    def ignore_sigterm(w: FakeWorld) -> None:
        for proc in w.procs:
            proc.ignores_sigterm = True
    world.on_step = ignore_sigterm
    world.stop_at(10)
    code, log = run_in_process(home, world)
    assert code == 0
    [core] = world.started()
    assert core.signals == [signal.SIGTERM, signal.SIGKILL]
    assert times(world, "exit") == [pytest.approx(25)], "SIGKILL 15 s after SIGTERM"
    assert lines(log, f"killing role=core pid={core.pid} version=v1 signal=SIGKILL "
                      f"reason=\"still running 15s after SIGTERM\"")
    assert lines(log, f'stopped role=core pid={core.pid} version=v1 '
                      f'status="terminated by SIGKILL"')


def test_an_admin_socket_that_never_answers_gives_up(tmp_path):
    """First start: maxNumberOfFirstConnectionRetries retries, pollIntervalSeconds apart."""
    home = make_fake_home(tmp_path, "maxNumberOfFirstConnectionRetries = 3\n")
    world = FakeWorld(home, FakeChain(listen_after=10**9).answer)
    code, log = run_in_process(home, world)
    assert code == 1
    assert world.polls == [2, 4, 6, 8]
    assert log.splitlines()[-1].endswith(
        'ERROR giving up reason="core\'s admin socket /tmp/fake.sock failed 4 polls in a row, '
        '2s apart (maxNumberOfFirstConnectionRetries = 3); last error: the socket file does '
        'not exist (core still starting?)"')
    assert world.live("core") is None and world.started()[0].signals == [signal.SIGTERM]


def test_an_admin_socket_that_stops_answering_is_warned_once_then_given_up_on(tmp_path):
    home = make_fake_home(tmp_path, "maxNumberOfFirstConnectionRetries = 3\n")

    def answer(world: FakeWorld) -> object:  # core answers, then hangs from 20 s on
        if world.clock >= 20:
            raise vegavisor.AdminError("no answer within 5s")
        return FakeChain().answer(world)
    world = FakeWorld(home, answer)
    code, log = run_in_process(home, world)
    assert code == 1
    assert [t for t in world.polls if t >= 20] == [20, 22, 24, 26]
    [warned] = lines(log, "WARN  admin socket stopped answering ")
    assert 'attempt=1 limit=3 error="no answer within 5s"' in warned
    assert log.splitlines()[-1].endswith(
        'failed 4 polls in a row, 2s apart (maxNumberOfFirstConnectionRetries = 3); last '
        'error: no answer within 5s"')


@pytest.mark.parametrize("folder, problem", [(False, "does not exist"),
                                             (True, "is not a regular file")],
                         ids=["missing", "a-folder"])
def test_a_missing_binary_exits_1_naming_it(tmp_path, folder, problem):
    home = make_fake_home(tmp_path)
    (home / "genesis" / "vega").unlink()
    if folder:
        (home / "genesis" / "vega").mkdir()
    world = FakeWorld(home)
    code, log = run_in_process(home, world)
    assert code == 1
    assert world.procs == []
    assert log.splitlines()[-1].endswith(
        f'ERROR giving up reason="binary {home}/current/vega {problem}"')


def test_a_sigterm_in_the_restart_backoff_ends_the_run_at_once(tmp_path):
    home = make_fake_home(tmp_path, "restartsDelaySeconds = 60\n", data_node=True)
    world = FakeWorld(home)
    queries = []
    world.query = lambda argv: queries.append(argv) or '{"LatestSegment": {"to_height": 500}}'
    world.on_step = crash_after(1)
    world.stop_at(30)
    code, log = run_in_process(home, world)
    assert code == 0
    assert len(world.started()) == 1, "no restart after the signal"
    assert queries == [], "nor the data node's history asked for one"
    assert lines(log, "INFO  restarting delay=60.0 restart=1 limit=3")
    assert log.splitlines()[-1].endswith("INFO  vegavisor stopped signal=SIGTERM")
    assert world.clock == 30, "the backoff was cut short by the signal"


# --- the data node (in-process) ---

def test_a_core_crash_stops_the_data_node_and_restarts_core_from_its_history(tmp_path):
    home = make_fake_home(tmp_path, data_node=True)
    world = FakeWorld(home)
    queries = []
    world.query = lambda argv: queries.append(argv) or '{"LatestSegment": {"to_height": 500}}'
    world.at(10, lambda w: w.live("core").exit(1))
    world.stop_at(30)
    code, log = run_in_process(home, world)
    assert code == 0
    first, restarted = world.started()
    assert restarted.argv == (f"{home}/current/vega", "node",
                              "--snapshot.load-from-block-height", "500")
    assert lines(log, "core resumes from the data node's history height=500")
    assert queries == [[f"{home}/current/vega", "datanode", "network-history",
                        "latest-history-segment", "--output", "json"]]
    old_dn, new_dn = world.started("data node")
    assert old_dn.signals == [signal.SIGTERM], "a crash brings the data node down"
    assert times(world, "exit", "data node")[0] <= restarted.started == new_dn.started


def test_a_data_node_without_history_restarts_core_as_configured(tmp_path):
    home = make_fake_home(tmp_path, data_node=True)
    world = FakeWorld(home)  # its query answers "no history segments found"
    world.at(10, lambda w: w.live("core").exit(1))
    world.stop_at(30)
    code, log = run_in_process(home, world)
    assert code == 0
    assert lines(log, "data node has no history segments; core restarts as configured")
    assert [p.argv[1:] for p in world.started()] == [("node",), ("node",)]


def test_a_data_node_crashing_alone_brings_core_down(tmp_path):
    home = make_fake_home(tmp_path, "maxNumberOfRestarts = 0\n", data_node=True)
    world = FakeWorld(home)
    world.at(10, lambda w: w.live("data node").exit(1))
    code, log = run_in_process(home, world)
    assert code == 1
    assert log.splitlines()[-1].endswith(
        f'ERROR giving up reason="data node {home}/current/vega exited with status 1; it was '
        f'restarted 0 times already (maxNumberOfRestarts = 0), giving up"')
    [core] = world.started()
    assert core.signals == [signal.SIGTERM] and world.live("core") is None


# --- HOME/current and config.toml at start (in-process) ---

def test_current_that_is_a_real_folder_is_moved_aside_not_deleted(tmp_path):
    # SPEC 3.1.6: a real folder without a run-config is moved aside and genesis linked
    home = make_fake_home(tmp_path)
    (home / "current").mkdir()
    (home / "current" / "keep.txt").write_text("operator data")
    world = FakeWorld(home)
    world.stop_at(5)
    code, log = run_in_process(home, world)
    assert code == 0
    assert lines(log, f"WARN  current points at genesis now link={home}/current "
                      f"was=\"{home}/current is a folder without run-config.toml; "
                      f"`vegavisor run` points it at genesis\"")
    [moved] = home.glob(".current-replaced-*")
    assert lines(log, f"WARN  current was a real folder; moved aside folder={moved}")
    assert (moved / "keep.txt").read_text() == "operator data"
    assert os.readlink(home / "current") == "genesis"
    assert [p.version for p in world.started()] == ["v1"]


def test_unknown_config_key_is_warned_and_run_goes_on(tmp_path):
    home = make_fake_home(tmp_path, "restartDelaySeconds = 1\n")
    out = io.StringIO()
    # as cmd_run opens the home: config warnings are its first lines
    _, config, log = vegavisor.open_home(argparse.Namespace(home=str(home)), out)
    world = FakeWorld(home)
    world.stop_at(5)
    code = vegavisor.Supervisor(home, config, log, world, {}).run()
    assert code == 0
    assert re.search(r"WARN  config warning problem=.*unknown key restartDelaySeconds is "
                     r"ignored \(did you mean restartsDelaySeconds\?\)", out.getvalue())
    assert [p.version for p in world.started()] == ["v1"]


# --- the real world: a real `vegavisor.py run` of the fake core ---

@pytest.mark.timeout(30)
def test_an_earlier_visors_child_is_found_by_its_marker_and_watched_until_it_is_gone():
    """What a restarted visor finds of the children an earlier one left (the crash rows
    started-not-recorded and leftover-child-alive): by the marker in their environment,
    alive only while that very process runs."""
    marker = f"test-{os.getpid()}-{time.monotonic_ns()}"
    ours = subprocess.Popen(["sleep", "60"], env=dict(os.environ, VEGAVISOR_CHILD=marker))
    another = subprocess.Popen(["sleep", "60"],
                               env=dict(os.environ, VEGAVISOR_CHILD=marker + "-2"))
    try:
        world = vegavisor.World(None, None, vegavisor.Log(io.StringIO()), None)  # needs none
        assert [p.pid for p in world.spawned_with(marker)] == [ours.pid]
        started = vegavisor.process_start_time(ours.pid)
        assert world.leftover(ours.pid, started + 1) is None, "a pid taken by another process"
        leftover = world.leftover(ours.pid, started)
        assert leftover is not None and leftover.returncode() is None
        ours.kill()
        ours.wait()
        assert leftover.returncode() == -1, "gone: not ours to know its exit status"
        assert world.leftover(ours.pid, started) is None
        assert world.spawned_with(marker) == []
    finally:
        for proc in (ours, another):
            proc.kill()
            proc.wait()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    return status != "Z"


def started_pids(home, role="core"):
    return [r["pid"] for r in home.records("start", role=role)]


@pytest.mark.timeout(60)
def test_runs_the_node_and_sigterm_stops_it_with_exit_0(home, start_visor):
    home.install_version("genesis", "v1", BLOCKS)
    visor = start_visor(env=dict(os.environ, GITHUB_TOKEN="ghp_not_for_core"))
    visor.wait_log(r"INFO  started role=core pid=\d+ version=v1 attempt=1")
    visor.wait_log(r"INFO  admin socket answering socket=")
    [pid] = started_pids(home)
    # the environment the child really got: no token, the marker a later run finds it by
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    assert b"GITHUB_TOKEN" not in environ and b"VEGAVISOR_CHILD=" in environ
    wait_for(lambda: len(home.records("rpc")) >= 3, 10, "three admin polls")
    visor.signal(signal.SIGTERM)
    assert visor.wait_exit() == 0
    assert not alive(pid)
    log = visor.log()
    assert f"stopping role=core pid={pid} version=v1 signal=SIGTERM" in log
    assert f"stopped role=core pid={pid} version=v1 status=\"exited with status 0\"" in log
    assert "vegavisor stopped signal=SIGTERM" in log
    assert [r["event"] for r in home.records(role="core")].count("sigterm") == 1
    assert json.loads((home.path / ".run-state.json").read_text())["children"] == []


@pytest.mark.timeout(60)
def test_sigint_stops_like_sigterm(home, start_visor):
    home.install_version("genesis", "v1", BLOCKS)
    visor = start_visor()
    visor.wait_log("admin socket answering")
    visor.signal(signal.SIGINT)
    assert visor.wait_exit() == 0
    assert "vegavisor stopped signal=SIGINT" in visor.log()
    assert home.records("sigterm"), "the node gets SIGTERM, not the SIGINT"


@pytest.mark.timeout(60)
def test_exec_bits_are_added_to_a_binary_that_lacks_them(home, start_visor):
    folder = home.install_version("genesis", "v1", BLOCKS)
    os.chmod(folder / "vega", 0o644)
    visor = start_visor()
    visor.wait_log("admin socket answering")
    assert os.stat(folder / "vega").st_mode & 0o777 == 0o755
    visor.signal(signal.SIGTERM)
    assert visor.wait_exit() == 0


@pytest.mark.timeout(60)
def test_a_binary_that_is_not_executable_format_is_a_clear_error(home, start_visor):
    folder = home.install_version("genesis", "v1", BLOCKS)
    (folder / "vega").write_bytes(b"\x00\x01 not a program")
    visor = start_visor()
    assert visor.wait_exit() == 1
    assert visor.log().strip().splitlines()[-1].endswith(
        f'ERROR giving up reason="core binary {home.path}/current/vega cannot be started: '
        f'Exec format error"')


@pytest.mark.timeout(60)
def test_only_one_run_per_home(home, start_visor):
    home.install_version("genesis", "v1", BLOCKS)
    first = start_visor()
    first.wait_log("admin socket answering")
    second = run_vegavisor(["run", "--home", str(home.path)], timeout=20)
    assert second.returncode == 1
    assert (f"another vegavisor (pid {first.proc.pid}) is running on {home.path}"
            in second.stderr)
    assert len(started_pids(home)) == 1
    first.signal(signal.SIGTERM)
    assert first.wait_exit() == 0
