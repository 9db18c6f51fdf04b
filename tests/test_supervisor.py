"""`vegavisor.py run` supervising the fake core: start, poll, crashes, signals, limits."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from conftest import VEGAVISOR
from conftest import wait_for

BLOCKS = ["--block-interval", "0.05"]


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
    visor = start_visor()
    visor.wait_log(r"INFO  started role=core pid=\d+ version=v1 attempt=1")
    visor.wait_log(r"INFO  admin socket answering socket=")
    [pid] = started_pids(home)
    rpc_calls = wait_for(lambda: len(home.records("rpc")) >= 3, 10, "three admin polls")
    assert rpc_calls
    visor.signal(signal.SIGTERM)
    assert visor.wait_exit() == 0
    assert not alive(pid)
    log = visor.log()
    assert f"stopping role=core pid={pid} version=v1 signal=SIGTERM" in log
    assert f"stopped role=core pid={pid} version=v1 status=\"exited with status 0\"" in log
    assert "vegavisor stopped signal=SIGTERM" in log
    assert [r["event"] for r in home.records(role="core")].count("sigterm") == 1


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
def test_crash_loop_exits_1_after_exactly_max_restarts(home, start_visor):
    home.set_config(maxNumberOfRestarts=2)
    home.install_version("genesis", "v1", BLOCKS + ["--crash-at-height", "3",
                                                    "--crash-signal", "SEGV"])
    visor = start_visor()
    assert visor.wait_exit(30) == 1
    assert len(started_pids(home)) == 3  # the first start and exactly 2 restarts
    last = visor.log().strip().splitlines()[-1]
    assert "ERROR giving up" in last
    assert "terminated by SIGSEGV; it was restarted 2 times already " \
           "(maxNumberOfRestarts = 2), giving up" in last
    # children run as HOME/current/<binary> (SPEC 3.1.5)
    assert f'reason="core {home.path}/current/vega terminated by SIGSEGV' in last


@pytest.mark.timeout(60)
def test_restarts_back_off_doubling_up_to_the_cap(home, start_visor):
    home.set_config(maxNumberOfRestarts=3, restartsDelaySeconds=0.2,
                    restartsBackoffMaxSeconds=0.5)
    home.install_version("genesis", "v1", BLOCKS + ["--crash-at-height", "1"])
    visor = start_visor()
    assert visor.wait_exit(30) == 1
    delays = [float(d) for d in __import__("re").findall(r"restarting delay=([\d.]+)",
                                                           visor.log())]
    assert delays == [0.2, 0.4, 0.5]
    starts = [r["time"] for r in home.records("start")]
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert all(gap >= delay for gap, delay in zip(gaps, delays)), (gaps, delays)


@pytest.mark.timeout(60)
def test_a_child_exiting_0_counts_as_a_crash(home, start_visor):
    home.set_config(maxNumberOfRestarts=0)
    home.install_version("genesis", "v1", BLOCKS + ["--exit-zero-at-height", "2"])
    visor = start_visor()
    assert visor.wait_exit(30) == 1
    assert "exited with status 0; it was restarted 0 times already" in visor.log()


@pytest.mark.timeout(60)
def test_restart_count_resets_after_a_long_enough_uptime(home, start_visor):
    home.set_config(maxNumberOfRestarts=1, restartsResetAfterSeconds=0.3)
    home.install_version("genesis", "v1", BLOCKS + ["--crash-at-height", "12"])
    visor = start_visor()
    wait_for(lambda: len(started_pids(home)) >= 4, 30, "a fourth start")
    assert visor.proc.poll() is None, visor.log()
    assert "restart=1 limit=1" in visor.log() and "restart=2" not in visor.log()
    visor.signal(signal.SIGTERM)
    assert visor.wait_exit() == 0


@pytest.mark.timeout(60)
def test_a_node_ignoring_sigterm_is_killed_after_the_grace(home, start_visor):
    home.set_config(stopSignalTimeoutSeconds=0.5)
    home.install_version("genesis", "v1", BLOCKS + ["--ignore-sigterm"])
    visor = start_visor()
    visor.wait_log("admin socket answering")
    [pid] = started_pids(home)
    visor.signal(signal.SIGTERM)
    assert visor.wait_exit() == 0
    assert not alive(pid)
    assert f"killing role=core pid={pid} version=v1 signal=SIGKILL reason=\"still running " \
           f"0.5s after SIGTERM\"" in visor.log()
    assert "status=\"terminated by SIGKILL\"" in visor.log()


@pytest.mark.timeout(60)
def test_admin_socket_that_never_answers_gives_up(home, start_visor):
    home.set_config(maxNumberOfFirstConnectionRetries=3)
    home.install_version("genesis", "v1", BLOCKS + ["--socket-delay", "600"])
    visor = start_visor()
    assert visor.wait_exit(30) == 1
    last = visor.log().strip().splitlines()[-1]
    assert last.endswith(f'ERROR giving up reason="core\'s admin socket {home.socket} failed 4 '
                         f'polls in a row, 0.1s apart (maxNumberOfFirstConnectionRetries = 3); '
                         f'last error: the socket file does not exist (core still starting?)"')
    assert not any(alive(pid) for pid in started_pids(home))


@pytest.mark.timeout(60)
def test_hanging_admin_socket_counts_as_failed_polls(home, start_visor):
    home.set_config(maxNumberOfFirstConnectionRetries=2, rpcTimeoutSeconds=0.3)
    home.install_version("genesis", "v1", BLOCKS + ["--rpc-fault", "hang"])
    visor = start_visor()
    assert visor.wait_exit(30) == 1
    assert "failed 3 polls in a row" in visor.log()
    assert "last error: no answer within 0.3s" in visor.log()


@pytest.mark.timeout(60)
def test_data_node_runs_and_a_crash_restarts_core_from_its_history(home, start_visor):
    home.dn_home.mkdir()
    (home.dn_home / "fake-latest-segment").write_text("500\n")
    home.install_version("genesis", "v1", BLOCKS + ["--crash-at-height", "4"], data_node=True)
    visor = start_visor()
    wait_for(lambda: len(started_pids(home)) >= 2, 30, "a restart of core")
    visor.wait_log("core resumes from the data node's history height=500")
    restarted = home.records("start", role="core")[1]
    assert restarted["argv"][-2:] == ["--snapshot.load-from-block-height", "500"]
    wait_for(lambda: len(started_pids(home, "datanode")) >= 2, 10, "the data node's restart")
    first_dn = started_pids(home, "datanode")[0]
    assert not alive(first_dn), "a crash brings the data node down"
    visor.signal(signal.SIGTERM)
    assert visor.wait_exit() == 0


@pytest.mark.timeout(60)
def test_a_data_node_without_history_restarts_core_as_configured(home, start_visor):
    home.install_version("genesis", "v1", BLOCKS + ["--crash-at-height", "4"], data_node=True)
    visor = start_visor()
    visor.wait_log("data node has no history segments; core restarts as configured")
    wait_for(lambda: len(started_pids(home)) >= 2, 30, "a restart of core")
    assert "--snapshot.load-from-block-height" not in home.records("start", role="core")[1]["argv"]
    visor.signal(signal.SIGTERM)
    assert visor.wait_exit() == 0


@pytest.mark.timeout(60)
def test_a_data_node_crashing_alone_brings_core_down(home, start_visor):
    home.set_config(maxNumberOfRestarts=0)
    home.install_version("genesis", "v1", BLOCKS, data_node=True,
                         data_node_args=["--crash-after", "0.5"])
    visor = start_visor()
    assert visor.wait_exit(30) == 1
    assert "giving up reason=\"data node" in visor.log()
    assert not any(alive(pid) for pid in started_pids(home))


@pytest.mark.timeout(60)
def test_missing_binary_exits_1_naming_it(home, start_visor):
    folder = home.install_version("genesis", "v1", BLOCKS)
    (folder / "vega").unlink()
    visor = start_visor()
    assert visor.wait_exit() == 1
    assert visor.log().strip().splitlines()[-1].endswith(
        f'ERROR giving up reason="binary {home.path}/current/vega does not exist"')


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
    second = subprocess.run([sys.executable, str(VEGAVISOR), "run", "--home", str(home.path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=20)
    assert second.returncode == 1
    assert (f"another vegavisor (pid {first.proc.pid}) is running on {home.path}"
            in second.stderr)
    assert len(started_pids(home)) == 1
    first.signal(signal.SIGTERM)
    assert first.wait_exit() == 0


@pytest.mark.timeout(60)
def test_dangling_current_points_back_at_genesis(home, start_visor):
    home.install_version("genesis", "v1", BLOCKS)
    os.symlink("v9-gone", home.path / "current")
    visor = start_visor()
    visor.wait_log("current points at genesis")
    visor.wait_log("admin socket answering")
    assert os.readlink(home.path / "current") == "genesis"
    visor.signal(signal.SIGTERM)
    assert visor.wait_exit() == 0


@pytest.mark.timeout(60)
def test_current_that_is_a_real_folder_is_moved_aside_not_deleted(home, start_visor):
    # SPEC 3.1.6: a real folder without a run-config is moved aside and genesis linked
    home.install_version("genesis", "v1", BLOCKS)
    (home.path / "current").mkdir()
    (home.path / "current" / "keep.txt").write_text("operator data")
    visor = start_visor()
    visor.wait_log(f"WARN  current points at genesis now link={home.path}/current "
                   f"was=\"{home.path}/current is a folder without run-config.toml; "
                   f"`vegavisor run` points it at genesis\"")
    aside = visor.wait_log(r"WARN  current was a real folder; moved aside folder=(\S+)").group(1)
    visor.wait_log("admin socket answering")
    assert os.readlink(home.path / "current") == "genesis"
    [moved] = home.path.glob(".current-replaced-*")
    assert str(moved) == aside
    assert (moved / "keep.txt").read_text() == "operator data"
    visor.signal(signal.SIGTERM)
    assert visor.wait_exit() == 0


@pytest.mark.timeout(60)
def test_unknown_config_key_is_warned_and_run_goes_on(home, start_visor):
    home.set_config(restartDelaySeconds=1)
    home.install_version("genesis", "v1", BLOCKS)
    visor = start_visor()
    visor.wait_log(r"WARN  config warning problem=.*unknown key restartDelaySeconds is ignored "
                   r"\(did you mean restartsDelaySeconds\?\)")
    visor.wait_log("admin socket answering")
    visor.signal(signal.SIGTERM)
    assert visor.wait_exit() == 0
