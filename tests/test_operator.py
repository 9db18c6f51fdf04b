"""What operators see from outside: systemd notifications, JSON logs, SIGHUP, metrics."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading

import pytest

import vegavisor
from conftest import ROOT
from conftest import set_table
from conftest import wait_for

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


@pytest.mark.timeout(60)
def test_systemd_gets_ready_status_watchdog_and_stopping_in_order(home, start_visor):
    # core binds its admin socket 3 s late: the node is started but does not answer yet
    home.install_version("genesis", "v1", BLOCKS + ["--socket-delay", "3"])
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


@pytest.mark.timeout(60)
def test_json_logs_are_one_object_a_line_and_level_filters(home, start_visor):
    set_table(home, "logging", format="json", level="warn")
    home.set_config(restartDelaySeconds=1)  # a typo: a warning
    home.install_version("genesis", "v1", BLOCKS + ["--crash-at-height", "4"])
    home.set_config(maxNumberOfRestarts=0)
    visor = start_visor()
    assert visor.wait_exit(30) == 1
    lines = [line for line in visor.log().splitlines() if not line.startswith("fake-vega")]
    records = [json.loads(line) for line in lines]
    # Vega's own JSON log keys: T (time), L (level), N (logger name), M (message)
    assert records and all({"T", "L", "N", "M"} <= set(r) for r in records)
    assert {r["N"] for r in records} == {"vegavisor"}
    assert {r["L"] for r in records} <= {"warn", "error"}, "info is filtered out"
    assert records[0]["M"] == "config warning" and "restartsDelaySeconds" in \
        records[0]["problem"]
    assert records[-1]["M"] == "giving up" and records[-1]["L"] == "error"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", records[-1]["T"])


@pytest.mark.timeout(60)
def test_sighup_applies_a_valid_config_and_keeps_the_old_one_when_invalid(home, start_visor):
    home.install_version("genesis", "v1", BLOCKS)
    visor = start_visor()
    visor.wait_log("admin socket answering")
    # a bad file: logged, nothing changes, supervision goes on
    config = (home.path / "config.toml").read_text()
    home.set_config(maxNumberOfRestarts="many")
    visor.signal(signal.SIGHUP)
    visor.wait_log(r"ERROR config reload failed; keeping the old settings error=.*"
                   r"maxNumberOfRestarts")
    polls = len(home.records("rpc"))
    wait_for(lambda: len(home.records("rpc")) >= polls + 3, 5, "polls going on as before")
    # a good file: every key takes effect, here the log format and the poll interval
    (home.path / "config.toml").write_text(config)
    set_table(home, "logging", format="json", level="debug")
    home.set_config(pollIntervalSeconds=0.05)
    visor.signal(signal.SIGHUP)
    visor.wait_log(r'"M": "config reloaded", '
                   r'"changed": "pollIntervalSeconds,logging.format,logging.level"')
    polls = len(home.records("rpc"))
    wait_for(lambda: len(home.records("rpc")) >= polls + 10, 5, "faster polls")
    visor.signal(signal.SIGTERM)
    assert visor.wait_exit() == 0
    assert visor.proc.returncode == 0


SAMPLE = re.compile(r'^[a-z_]+(\{[a-z_]+="(?:[^"\\]|\\.)*"(,[a-z_]+="(?:[^"\\]|\\.)*")*\})? '
                    r'[0-9.e+-]+$')


@pytest.mark.timeout(60)
def test_metrics_file_is_a_valid_textfile_collector_file_kept_current(home, start_visor):
    metrics = home.root / "metrics" / "vegavisor.prom"
    metrics.parent.mkdir()
    home.set_config(metricsFile=str(metrics))
    home.install_version("genesis", "v1", ["--block-interval", "0.05", "--upgrade-tag", "v2",
                                           "--accept-height", "2", "--upgrade-height", "30"])
    home.install_version("v2", "v2", ["--block-interval", "0.05"])
    visor = start_visor()
    wait_for(lambda: metrics.exists() and 'tag="v2"} 30' in metrics.read_text(), 15,
             "the accepted upgrade in the metrics")
    wait_for(lambda: "vegavisor_upgrades_completed_total 1" in metrics.read_text(), 20,
             "the completed upgrade in the metrics")
    text = metrics.read_text()
    for line in text.splitlines():
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or SAMPLE.match(line), line
    assert re.search(r'^vegavisor_info\{vegavisor="[^"]+",version="v2",phase="running"\} 1$',
                     text, re.M)
    last_poll = float(re.search(r"^vegavisor_last_admin_poll_success_timestamp_seconds (\S+)$",
                                text, re.M).group(1))
    assert last_poll > 1.7e9
    assert [p.name for p in metrics.parent.iterdir()] == ["vegavisor.prom"], "no temp files"
    visor.signal(signal.SIGTERM)
    assert visor.wait_exit() == 0


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
