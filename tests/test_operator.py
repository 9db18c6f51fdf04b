"""What operators see from outside: systemd notifications, JSON logs, SIGHUP, metrics.

What `run` decides (what systemd is told and in which order, what the log and the metrics
file hold, what a reload changes) is driven in-process (conftest.FakeWorld: fake clock,
processes and admin socket, real files); real datagrams on a real NOTIFY_SOCKET from a real
run, and a real SIGHUP reaching the real signal inbox, for the real world."""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import signal
import socket
import threading
import time

import pytest

import vegavisor
from conftest import ROOT
from conftest import FakeChain
from conftest import FakeWorld
from conftest import lines
from conftest import make_fake_home
from conftest import run_in_process
from conftest import wait_for
from conftest import write_fake_binary
from conftest import write_run_config

BLOCKS = ["--block-interval", "0.05"]


class FakeSystemd:
    """A NOTIFY_SOCKET that keeps every datagram visor sends, in order."""

    def __init__(self, path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.messages = []
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self.receive, daemon=True)
        self.thread.start()

    def receive(self) -> None:
        while not self.closed.is_set():
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except socket.timeout:
                continue
            except OSError:
                return

    def close(self) -> None:
        self.closed.set()
        self.thread.join()
        self.sock.close()


def test_systemd_is_told_ready_status_and_stopping_in_order(tmp_path):
    home = make_fake_home(tmp_path)
    socket_path = str(tmp_path / "admin.sock")
    write_run_config(home / "genesis", "v1", socket=socket_path)
    # core binds its admin socket 3 s late: the node is started but does not answer yet
    world = FakeWorld(home, FakeChain(listen_after=3).answer)
    world.stop_at(10)
    code, log = run_in_process(home, world)
    assert code == 0, log
    messages = [field for _, field in world.notes]
    # READY=1 as soon as the node is started (a core replaying its chain for hours must
    # not keep `systemctl start` waiting), with a STATUS saying what visor waits for
    ready = messages.index("READY=1")
    assert messages[ready + 1] == (f"STATUS=v1: started, waiting for core's admin socket "
                                   f"{socket_path}")
    assert world.notes[ready][0] < 3, "before core answers"
    assert lines(log, "admin socket answering")
    assert messages.count("READY=1") == 1
    assert messages.index("STATUS=v1: starting") < ready < messages.index("STATUS=v1: running")
    assert messages.index("STATUS=v1: running") < messages.index("STOPPING=1")
    # the one exit path enters the stopping phase (STATUS), then tells systemd STOPPING=1,
    # and nothing after it
    assert messages.index("STATUS=v1: stopping") < messages.index("STOPPING=1")
    assert messages[-1] == "STOPPING=1"


@pytest.mark.timeout(60)
def test_systemd_gets_ready_status_watchdog_and_stopping_on_its_socket(home, start_visor):
    """The real datagrams of a real run: READY=1 and its STATUS in one, WATCHDOG=1 at half
    of WATCHDOG_USEC while core does not answer yet, STOPPING=1 last."""
    # core binds its admin socket 2 s late: the node is started but does not answer yet
    home.install_version("genesis", "v1", BLOCKS + ["--socket-delay", "2"])
    systemd = FakeSystemd(home.root / "notify.sock")
    # READY=1 as soon as the node is started (a core replaying its chain for hours must
    # not keep `systemctl start` waiting); STATUS says what visor waits for
    ready_message = (f"READY=1\nSTATUS=v1: started, waiting for core's admin socket "
                     f"{home.socket}")
    try:
        env = dict(os.environ, NOTIFY_SOCKET=systemd.path, WATCHDOG_USEC="200000")
        visor = start_visor(env=env)
        wait_for(lambda: ready_message in systemd.messages, 15, "READY=1")
        ready = systemd.messages.index(ready_message)
        wait_for(lambda: systemd.messages[ready:].count("WATCHDOG=1") >= 5, 10,
                 "WATCHDOG=1 every 0.1 s")
        assert "admin socket answering" not in visor.log(), \
            "the watchdog is fed before the node answers"
        visor.wait_log("admin socket answering", timeout=15)
        visor.signal(signal.SIGTERM)
        assert visor.wait_exit() == 0
    finally:
        systemd.close()
    messages = systemd.messages
    assert messages.index("STATUS=v1: starting") < ready < messages.index("STATUS=v1: running")
    assert messages.index("STATUS=v1: running") < messages.index("STOPPING=1")
    # the one exit path enters the stopping phase (STATUS), then tells systemd STOPPING=1
    assert messages.index("STATUS=v1: stopping") < messages.index("STOPPING=1")
    assert set(messages[messages.index("STOPPING=1") + 1:]) <= {"WATCHDOG=1"}


@pytest.mark.parametrize(("usec", "pid", "interval"), [
    pytest.param("30000000", "", 15.0, id="half"),
    pytest.param("30000000", "4242", None, id="other-pid"),
    pytest.param("30000000", "77", 15.0, id="our-pid"),
    pytest.param("0", "", None, id="zero"),
    pytest.param("abc", "", None, id="garbage"),
    pytest.param("", "", None, id="unset"),
])
def test_watchdog_interval(usec, pid, interval):
    env = {"WATCHDOG_USEC": usec, "WATCHDOG_PID": pid}
    assert vegavisor.watchdog_interval(env, 77) == interval


def test_json_logs_are_one_object_a_line_and_level_filters(tmp_path):
    home = make_fake_home(tmp_path, 'restartDelaySeconds = 1\nmaxNumberOfRestarts = 0\n'
                                    '[logging]\nformat = "json"\nlevel = "warn"\n')
    out = io.StringIO()
    # as cmd_run opens the home: config warnings are its first lines
    _, config, log = vegavisor.open_home(argparse.Namespace(home=str(home)), out)
    world = FakeWorld(home)
    world.at(10, lambda w: w.live("core").exit(-signal.SIGSEGV))
    assert vegavisor.Supervisor(home, config, log, world, {}).run() == 1
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    # Vega's own JSON log keys: T (time), L (level), N (logger name), M (message)
    assert records and all({"T", "L", "N", "M"} <= set(r) for r in records)
    assert {r["N"] for r in records} == {"vegavisor"}
    assert {r["L"] for r in records} <= {"warn", "error"}, "info is filtered out"
    assert records[0]["M"] == "config warning" and "restartsDelaySeconds" in \
        records[0]["problem"]
    assert records[-1]["M"] == "giving up" and records[-1]["L"] == "error"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", records[-1]["T"])


def test_sighup_applies_a_valid_config_and_keeps_the_old_one_when_invalid(tmp_path):
    home = make_fake_home(tmp_path, "pollIntervalSeconds = 1\n")

    def edit_and_hup(text):
        def act(world):
            (home / "config.toml").write_text(text)
            world.reload_requested = True  # what SIGHUP records
        return act
    world = FakeWorld(home)
    # a bad file: logged, nothing changes, supervision goes on
    world.at(10.5, edit_and_hup('pollIntervalSeconds = 1\nmaxNumberOfRestarts = "many"\n'))
    # a good file: every key takes effect, here the log format and the poll interval
    world.at(20.5, edit_and_hup('pollIntervalSeconds = 0.5\n'
                                '[logging]\nformat = "json"\nlevel = "debug"\n'))
    world.stop_at(30)
    code, log = run_in_process(home, world)
    assert code == 0, log
    # at once, not at the next config check (every pollIntervalSeconds, on the second)
    [failed] = lines(log, "ERROR config reload failed; keeping the old settings error=")
    assert failed.startswith("2027-01-15T08:00:10.500Z ") and "maxNumberOfRestarts" in failed
    [reloaded] = [json.loads(line) for line in lines(log, '"M": "config reloaded"')]
    assert reloaded["T"] == "2027-01-15T08:00:20.500Z"
    assert reloaded["changed"] == "pollIntervalSeconds,logging.format,logging.level"
    gaps = [round(b - a, 3) for a, b in zip(world.polls, world.polls[1:])]
    before = [g for t, g in zip(world.polls[1:], gaps) if 2 < t <= 20.5]
    after = [g for t, g in zip(world.polls[1:], gaps) if t > 21.5]
    assert set(before) == {1.0}, "polls going on as before the bad file"
    assert len(after) > 10 and set(after) == {0.5}, "faster polls"


def test_sighup_wakes_the_wait_and_asks_for_a_reload():
    """A real SIGHUP: the handler only records, the one wait returns at once."""
    inbox = vegavisor.SignalInbox()
    world = vegavisor.World(inbox, vegavisor.Notifier({}, time.monotonic),
                            vegavisor.Log(io.StringIO(), "text", "info"), None)
    inbox.install()
    try:
        assert world.take_reload_request() is False
        os.kill(os.getpid(), signal.SIGHUP)
        started = time.monotonic()
        world.wait(30)
        assert time.monotonic() - started < 10
        assert world.take_reload_request() is True
        assert world.take_reload_request() is False, "one SIGHUP, one reload"
        assert world.stop_signal == ""
    finally:
        inbox.restore()


SAMPLE = re.compile(r'^[a-z_]+(\{[a-z_]+="(?:[^"\\]|\\.)*"(,[a-z_]+="(?:[^"\\]|\\.)*")*\})? '
                    r'[0-9.e+-]+$')


def test_metrics_file_is_a_valid_textfile_collector_file_kept_current(tmp_path):
    metrics = tmp_path / "metrics" / "vegavisor.prom"
    metrics.parent.mkdir()
    home = make_fake_home(tmp_path, f"metricsFile = {json.dumps(str(metrics))}\n")
    write_run_config(home / "v2", "v2")
    write_fake_binary(home / "v2" / "vega", "v2")
    world = FakeWorld(home, FakeChain("v2", upgrade_height=10).answer)
    seen = {}
    world.at(5, lambda w: seen.update(accepted=metrics.read_text()))
    world.at(20, lambda w: seen.update(upgraded=metrics.read_text()))
    world.stop_at(25)
    code, log = run_in_process(home, world)
    assert code == 0, log
    assert 'vegavisor_accepted_upgrade_height{tag="v2"} 10\n' in seen["accepted"]
    assert "vegavisor_upgrades_completed_total 0\n" in seen["accepted"]
    text = seen["upgraded"]
    assert "vegavisor_upgrades_completed_total 1\n" in text
    for line in text.splitlines():
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or SAMPLE.match(line), line
    assert re.search(r'^vegavisor_info\{vegavisor="[^"]+",version="v2",phase="running"\} 1$',
                     text, re.M)
    last_poll = float(re.search(r"^vegavisor_last_admin_poll_success_timestamp_seconds (\S+)$",
                                text, re.M).group(1))
    assert last_poll > 1.7e9
    # kept current to the end: the stop is the last thing it says
    assert re.search(r'^vegavisor_info\{.*,version="v2",phase="stopped"\} 1$',
                     metrics.read_text(), re.M)
    assert [p.name for p in metrics.parent.iterdir()] == ["vegavisor.prom"], "no temp files"


def test_metric_labels_are_escaped():
    assert vegavisor.metric_labels(tag='a"b\\c\nd') == '{tag="a\\"b\\\\c\\nd"}'


def test_the_unit_file_keeps_children_and_stop_timeouts_right():
    unit = (ROOT / "contrib" / "vegavisor.service").read_text()
    assert "Type=notify" in unit and "Restart=on-failure" in unit
    assert re.search(r"^KillMode=mixed$", unit, re.M), "SIGKILL reaches children at the end"
    stop = int(re.search(r"^TimeoutStopSec=(\d+)$", unit, re.M).group(1))
    grace = vegavisor.parse_config({}, ROOT / "x").__getitem__(0).stop_signal_timeout
    assert stop > grace + 10, "systemd must outwait vegavisor's own SIGTERM grace"
    assert re.search(r"^WatchdogSec=\d+$", unit, re.M)
