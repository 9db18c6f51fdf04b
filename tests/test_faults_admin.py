"""Fault matrix, admin socket: each row a fault of core's admin socket under `vegavisor.py run`.

With maxNumberOfFirstConnectionRetries = 3 a failing row must end with exit 1, the
last log line `ERROR giving up reason="core's admin socket SOCK failed 4 polls in a
row, 0.25s apart (maxNumberOfFirstConnectionRetries = 3); last error: <reason>"`,
and no core left running. The rows that must succeed upgrade v1 -> v2 (a pre-made
folder) instead.

Permission denied: the tests run as root, and root's CAP_DAC_OVERRIDE connects to a
socket file of mode 000 anyway. So that row runs visor (and, inherited, its core)
under `setpriv --bounding-set=-all --inh-caps=-all`: still uid 0, but without any
capability, so the kernel checks the socket's mode bits and connect() fails with a
real EACCES once the test has made the socket mode 000.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
from pathlib import Path
from typing import Any
from typing import Callable
from typing import NamedTuple
from typing import Optional
from typing import Sequence

import pytest

from conftest import Home
from conftest import Row
from conftest import Visor
from conftest import rows
from conftest import wait_for

# v1 accepts v2 at height 2 and is ready to upgrade at height 8 (0.4 s in).
UPGRADE = ("--block-interval", "0.05", "--upgrade-tag", "v2", "--accept-height", "2",
           "--upgrade-height", "8")
LIMIT = 3  # maxNumberOfFirstConnectionRetries: the 4th failure in a row gives up
# 4 polls span 1 s: a core slow to start (a loaded machine) binds its socket before the
# last one, so the last error is the row's fault, not "the socket file does not exist".
POLL_INTERVAL = 0.25
# Drops every capability, CAP_DAC_OVERRIDE included, while staying uid 0.
NO_CAPABILITIES = ("setpriv", "--bounding-set=-all", "--inh-caps=-all")


# --- arrangements: what the test does to the socket besides the core's flags ---

def point_rpc_at(home: Home, path: str) -> None:
    run_config = home.path / "genesis" / "run-config.toml"
    text = run_config.read_text().replace(f"socketPath = {json.dumps(home.socket)}",
                                          f"socketPath = {json.dumps(path)}")
    run_config.write_text(text)


def socket_under_a_file(home: Home) -> str:
    """A socket path whose folder is a regular file: ENOTDIR, whoever asks."""
    (home.root / "plain-file").write_text("not a folder\n")
    return str(home.root / "plain-file" / "admin.sock")


def stale_socket(home: Home) -> str:
    """A socket file nobody listens on any more, as a crashed core leaves it."""
    path = str(home.root / "stale.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.close()
    return path


class Fails(NamedTuple):
    reason: str  # a regex for the last error, after "last error: "
    log: Sequence[str] = ()  # regexes of earlier log lines


class Answers(NamedTuple):
    """Polls succeed: the upgrade at height 8 completes."""
    log: Sequence[str] = ()


class Case(NamedTuple):
    core: Sequence[str] = ()  # fault flags of the fake core
    outcome: Any = Answers()
    rpc_timeout: float = 1
    limit: int = LIMIT  # maxNumberOfFirstConnectionRetries
    prefix: Sequence[str] = ()
    socket_path: Optional[Callable[[Home], str]] = None  # visor polls this path instead
    after_start: Optional[Callable[[Home], None]] = None


FAULTS = [
    Row("admin socket", "socket-missing",
        "core never binds its admin socket (--socket-delay 600)",
        "exit 1 after 4 polls: last error: the socket file does not exist (core still "
        "starting?); core stopped",
        (Case(["--socket-delay", "600"],
              Fails(r"the socket file does not exist \(core still starting\?\)")),)),
    Row("admin socket", "socket-appears-late",
        "maxNumberOfFirstConnectionRetries = 20; core binds its admin socket 0.3 s after "
        "it starts, so the first polls fail",
        "INFO waiting for admin socket, then admin socket answering; the upgrade completes",
        (Case(["--socket-delay", "0.3"], Answers([
            r"INFO  waiting for admin socket .*error=\"the socket file does not exist",
            r"INFO  admin socket answering"]), limit=20),)),
    Row("admin socket", "permission-denied",
        "visor runs as root without capabilities (setpriv); core makes its socket mode 000 "
        "before it listens",
        "exit 1 after 4 polls: last error: Permission denied; core stopped",
        (Case(["--socket-mode", "000"], Fails(r"Permission denied"),
              prefix=NO_CAPABILITIES),)),
    Row("admin socket", "not-a-directory",
        "socketPath's folder is a regular file",
        "exit 1 after 4 polls: last error: Not a directory; core stopped",
        (Case(outcome=Fails(r"Not a directory"), socket_path=socket_under_a_file),)),
    Row("admin socket", "stale-socket",
        "socketPath is a socket file nobody listens on (left by a crashed core)",
        "exit 1 after 4 polls: last error: Connection refused; core stopped",
        (Case(outcome=Fails(r"Connection refused"), socket_path=stale_socket),)),
    Row("admin socket", "accepts-then-hangs",
        "rpcTimeoutSeconds = 0.5; core reads the request and never answers",
        "each poll fails after 0.5 s; exit 1 after 4 polls: last error: no answer within "
        "0.5s; core stopped",
        (Case(["--rpc-fault", "hang"], Fails(r"no answer within 0\.5s"), rpc_timeout=0.5),)),
    Row("admin socket", "hangs-after-answering",
        "rpcTimeoutSeconds = 0.5; core answers until height 6, then hangs every request",
        "WARN admin socket stopped answering; exit 1 after 4 polls: last error: no answer "
        "within 0.5s; core stopped",
        (Case(["--block-interval", "0.05", "--rpc-fault", "hang",
               "--rpc-fault-after-height", "6"],
              Fails(r"no answer within 0\.5s", [r"INFO  admin socket answering",
                                                 r"WARN  admin socket stopped answering"]),
              rpc_timeout=0.5),)),
    Row("admin socket", "accepts-then-closes",
        "core accepts each connection and closes it without reading",
        "exit 1 after 4 polls: last error: the connection was closed without an answer; "
        "core stopped",
        (Case(["--rpc-fault", "close"],
              Fails(r"^the connection was closed without an answer")),)),
    Row("admin socket", "garbage-bytes",
        "core answers with bytes that are not HTTP, then closes",
        "exit 1 after 4 polls: last error: answer is not HTTP: b'\\xff\\x00\\x13garbage...'; "
        "core stopped",
        (Case(["--rpc-fault", "garbage"],
              Fails(r"^answer is not HTTP: b'\\xff\\x00\\x13garbage")),)),
    Row("admin socket", "plain-text-400",
        "core answers HTTP 400 text/plain: rpc: method not found (gorilla/rpc style)",
        "exit 1 after 4 polls: last error: HTTP 400: rpc: method not found; core stopped",
        (Case(["--rpc-fault", "http400"], Fails(r"HTTP 400: rpc: method not found$")),)),
    Row("admin socket", "json-error-member",
        'core answers 200 with "error": "some failure"',
        "exit 1 after 4 polls: last error: core answered with an error: some failure; "
        "core stopped",
        (Case(["--rpc-fault", "error-member"],
              Fails(r"core answered with an error: some failure$")),)),
    Row("admin socket", "null-result",
        'core answers 200 with "result": null and no error',
        "exit 1 after 4 polls: last error: result is not an UpgradeStatus: null; core stopped",
        (Case(["--rpc-fault", "null-result"],
              Fails(r"result is not an UpgradeStatus: null$")),)),
    Row("admin socket", "wrong-types",
        'core answers ReadyToUpgrade "yes" and AcceptedReleaseInfo a string',
        "exit 1 after 4 polls: last error: result is not an UpgradeStatus; core stopped",
        (Case(["--rpc-fault", "wrong-types"],
              Fails(r'result is not an UpgradeStatus: \{"AcceptedReleaseInfo": '
                    r'"not-a-release-info", "ReadyToUpgrade": "yes"\}$')),)),
    Row("admin socket", "answer-just-under-timeout",
        "rpcTimeoutSeconds = 1; core answers every poll after 0.6 s",
        "no poll fails for time; the upgrade completes",
        (Case(["--rpc-fault", "slow:0.6"], limit=20),)),
    Row("admin socket", "answer-just-over-timeout",
        "rpcTimeoutSeconds = 1; core answers every poll after 1.4 s",
        "exit 1 after 4 polls: last error: no answer within 1s; core stopped",
        (Case(["--rpc-fault", "slow:1.4"], Fails(r"no answer within 1s$")),)),
]


def giving_up_reason(visor: Visor) -> str:
    last = visor.log().strip().splitlines()[-1]
    match = re.search(r' ERROR giving up reason=(".*")$', last)
    assert match, f"the last line is not the giving-up line: {last!r}\n{visor.log()}"
    return json.loads(match.group(1))


def is_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def assert_gave_up(home: Home, visor: Visor, socket_path: str, outcome: Fails) -> None:
    assert visor.wait_exit(30) == 1, visor.log()
    prefix = (f"core's admin socket {socket_path} failed {LIMIT + 1} polls in a row, "
              f"{POLL_INTERVAL:g}s apart (maxNumberOfFirstConnectionRetries = {LIMIT}); "
              f"last error: ")
    reason = giving_up_reason(visor)
    assert reason.startswith(prefix), reason
    assert re.search(outcome.reason, reason[len(prefix):]), reason
    for pattern in outcome.log:
        assert re.search(pattern, visor.log()), f"no {pattern!r} in:\n{visor.log()}"
    starts = home.records("start", role="core")
    assert len(starts) == 1, "one core, never restarted"
    assert not is_alive(starts[0]["pid"]), "no core left running"
    assert os.readlink(home.path / "current") == "genesis"


def assert_upgrades(home: Home, visor: Visor, outcome: Answers) -> None:
    visor.wait_log(r"INFO  started role=core pid=\d+ version=v2 attempt=1", timeout=20)
    [new] = wait_for(lambda: home.records("start", role="core")[1:], 10, "the v2 core")
    assert new["version"] == "v2"
    assert new["argv"][-2:] == ["--snapshot.load-from-block-height", "8"]
    assert os.readlink(home.path / "current") == "v2"
    log = visor.log()
    assert "admin socket answering" in log
    assert "no answer within" not in log and "giving up" not in log
    for pattern in outcome.log:
        assert re.search(pattern, log), f"no {pattern!r} in:\n{log}"
    visor.signal(signal.SIGTERM)
    assert visor.wait_exit() == 0, visor.log()


@pytest.mark.parametrize(("row", "case"), rows(FAULTS))
@pytest.mark.timeout(60)
def test_admin_socket_fault(home, start_visor, row, case):
    prefix = case.prefix if os.geteuid() == 0 else ()  # others get EACCES without help
    if prefix and shutil.which(prefix[0]) is None:
        pytest.skip(f"{prefix[0]} is not installed")
    home.set_config(maxNumberOfFirstConnectionRetries=case.limit,
                    rpcTimeoutSeconds=case.rpc_timeout, pollIntervalSeconds=POLL_INTERVAL)
    core = list(case.core) if isinstance(case.outcome, Fails) else list(case.core) + list(UPGRADE)
    home.install_version("genesis", "v1", core)
    home.install_version("v2", "v2", UPGRADE)
    socket_path = case.socket_path(home) if case.socket_path else home.socket
    point_rpc_at(home, socket_path)
    visor = start_visor(prefix=prefix)
    if case.after_start:
        case.after_start(home)
    if isinstance(case.outcome, Fails):
        assert_gave_up(home, visor, socket_path, case.outcome)
    else:
        assert_upgrades(home, visor, case.outcome)
