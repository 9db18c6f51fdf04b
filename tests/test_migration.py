"""Migrating from the Go Visor: an operator swaps the binary on an existing home.

The home is written here by hand, byte for byte as the Go Visor's `init` (vega
v0.79, BurntSushi/toml's encoder) writes it, then edited as the operator docs say:
genesis/run-config.toml filled in, the binary copied next to it, the next release
pre-installed in its own folder, and optionally `ln -s HOME/genesis HOME/current`.
`python3 vegavisor.py run --home HOME` then runs it unchanged through an upgrade,
with a core that, like a real one, takes seconds to open its admin socket at every
start: the first, a crash restart while the upgrade is accepted, and the upgraded
one (it loads a snapshot and replays blocks). What is asserted is what the
operator sees: exit codes, `current`, `pgrep -f HOME/current/vega`, vegavisor's
own lines on stdout, and no network call.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Callable
from typing import Dict
from typing import List
from typing import NamedTuple
from typing import Optional

import pytest

from conftest import CoreMonitor
from conftest import GO_VISOR_CONFIG
from conftest import GO_VISOR_EXAMPLE_RUN_CONFIG
from conftest import Home
from conftest import Visor
from conftest import wait_for
from fakes.core import make_binary

GENESIS, NEXT = "v0.78.7", "v0.79.0"
# Seconds the fake core takes to open its admin socket, at a plain start and when
# resuming from the upgrade snapshot (--snapshot.load-from-block-height).
SLOW_START_SECONDS = 3
UPGRADE_HEIGHT = 25
# What the fake core is told besides what a real core is given: it starts slowly,
# makes a block every 0.1 s once listening, accepts NEXT at block 3 and is ready to
# upgrade at block 25. (A core of NEXT ignores the script: it is its own version.)
FAKE_CORE_FLAGS = ["--socket-delay", str(SLOW_START_SECONDS),
                   "--snapshot-socket-delay", str(SLOW_START_SECONDS),
                   "--block-interval", "0.1", "--upgrade-tag", NEXT, "--accept-height", "3",
                   "--upgrade-height", str(UPGRADE_HEIGHT)]
# In the crash variant, core crashes at block 15 (NEXT accepted, the block ahead) and
# the data node's newest history segment ends at 16: the restart resumes from there.
CRASH_HEIGHT, SEGMENT_HEIGHT = 15, 16
# Long enough for two slow starts polled at the Go Visor's 2 s pace on a loaded box.
UPGRADE_DEADLINE_SECONDS = 60

# `visor init --home HOME` of vega v0.79: conftest.GO_VISOR_CONFIG (SPEC 1.2).
GO_INIT_CONFIG = GO_VISOR_CONFIG

# visor/config/run_config.go ExampleRunConfig, as init writes it in genesis/ and vX.X.X/:
# conftest.GO_VISOR_EXAMPLE_RUN_CONFIG (with --with-data-node, the [data_node] table
# below follows, its path "vega data-node").
GO_INIT_RUN_CONFIG = GO_VISOR_EXAMPLE_RUN_CONFIG
GO_INIT_DATA_NODE = """
[data_node]
  [data_node.binary]
    path = "vega data-node"
    args = ["arg1", "arg2", "..."]
"""

# Core's own config (HOME/config/node/config.toml of `vega init`): where it listens.
CORE_ADMIN_CONFIG = """\
[Admin]
  Level = "Info"
  [Admin.Server]
    SocketPath = "{socket}"
    HTTPPath = "/rpc"
"""

# A sitecustomize that logs every network call of any Python process started with it
# on PYTHONPATH (vegavisor and the fake cores): unix sockets are not the network.
NETWORK_AUDIT = """\
import os
import socket
import sys

_LOG = os.environ.get("VEGAVISOR_TEST_NETWORK_LOG")
_LOOKUPS = ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex",
            "socket.gethostbyaddr", "urllib.Request")


def _audit(event, args):
    if event == "socket.connect":
        if args[0].family == socket.AF_UNIX:
            return
    elif event not in _LOOKUPS:
        return
    with open(_LOG, "a") as log:
        log.write("pid %d %s %r\\n" % (os.getpid(), event, args[1:2] if event ==
                                       "socket.connect" else args[:2]))


if _LOG:
    sys.addaudithook(_audit)
"""

# A line of vegavisor's own text log: `2026-01-02T03:04:05.678Z INFO  message k=v`.
VISOR_LOG_LINE = re.compile(r"(?m)^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARN|ERROR)")


class Variant(NamedTuple):
    operator_links_current: bool  # the docs' `ln -s HOME/genesis HOME/current`
    config_edits: Dict[str, str]  # line of init's config.toml -> the operator's line
    data_node: bool  # `visor init --with-data-node`, the data node run by `vega datanode`
    crash_at: Optional[int]  # the genesis core crashes at this block, once


VARIANTS = {
    # Exactly what init wrote (auto-install on, as Go's init writes it); no `current`:
    # run links it to genesis. The next release is pre-installed, so nothing is fetched.
    "go-init-as-written": Variant(False, {}, data_node=False, crash_at=None),
    # With a data node; the operator linked current by hand, turned auto-install off,
    # shortened the restart delay and lowered the first-connection retries: 5 failed
    # polls, 2 s apart in Go, are 10 s for a core that takes 3 s to listen. Core
    # crashes once the upgrade is accepted: its restart gets the default 10 retries,
    # 20 s in Go, to open its socket (SPEC 3.1.1: retry limits are time).
    "data-node-and-a-crash": Variant(True, {
        "  enabled = true": "  enabled = false",
        "restartsDelaySeconds = 5": "restartsDelaySeconds = 1",
        "maxNumberOfFirstConnectionRetries = 175000": "maxNumberOfFirstConnectionRetries = 5",
    }, data_node=True, crash_at=CRASH_HEIGHT),
}


# --- the home, as the Go Visor and the operator docs leave it ---


def toml_array(values: List[str]) -> str:
    return "[%s]" % ", ".join('"%s"' % value for value in values)


def go_init_run_config(name: str, data_node: bool) -> str:
    return GO_INIT_RUN_CONFIG.format(name=name) + (GO_INIT_DATA_NODE if data_node else "")


def go_run_config(name: str, home: Home, core_args: List[str],
                  data_node_args: Optional[List[str]]) -> str:
    """run-config.toml in init's layout, with the operator's values filled in."""
    text = GO_INIT_RUN_CONFIG.format(name=name).replace(
        'args = ["arg1", "arg2", "..."]', "args = " + toml_array(core_args)
    ).replace('socketPath = ""', 'socketPath = "%s"' % home.socket).replace(
        'httpPath = ""', 'httpPath = "/rpc"')
    if data_node_args is None:
        return text
    return text + GO_INIT_DATA_NODE.replace('"vega data-node"', '"vega"').replace(
        'args = ["arg1", "arg2", "..."]', "args = " + toml_array(data_node_args))


def make_go_visor_home(home: Home, variant: Variant) -> None:
    root = home.path
    root.mkdir()
    config = GO_INIT_CONFIG
    for line, edited in variant.config_edits.items():
        assert line in config
        config = config.replace(line, edited)
    (root / "config.toml").write_text(config)
    for folder in ("genesis", "vX.X.X"):
        (root / folder).mkdir(mode=0o755)
        (root / folder / "run-config.toml").write_text(
            go_init_run_config(folder, variant.data_node))
    core_home, tendermint_home = home.root / "vega", home.root / "tendermint"
    (core_home / "config" / "node").mkdir(parents=True)
    (core_home / "config" / "node" / "config.toml").write_text(
        CORE_ADMIN_CONFIG.format(socket=home.socket))
    record = ["--record", str(home.record)]
    core_args = ["node", "--home", str(core_home), "--tendermint-home", str(tendermint_home)] \
        + FAKE_CORE_FLAGS + record
    if variant.crash_at is not None:
        core_args += ["--crash-at-height", str(variant.crash_at)]
    data_node_args = None
    if variant.data_node:
        home.dn_home.mkdir()
        (home.dn_home / "fake-latest-segment").write_text("%d\n" % SEGMENT_HEIGHT)
        data_node_args = ["datanode", "start", "--home", str(home.dn_home)] + record
    # The operator fills in genesis and copies the binary next to it ...
    make_binary(root / "genesis" / "vega", GENESIS)
    (root / "genesis" / "run-config.toml").write_text(
        go_run_config("genesis", home, core_args, data_node_args))
    # ... pre-installs the next release in its own folder ...
    make_binary(root / NEXT / "vega", NEXT)
    (root / NEXT / "run-config.toml").write_text(
        go_run_config(NEXT, home, core_args, data_node_args))
    # ... and may link current by hand, as the docs show.
    if variant.operator_links_current:
        os.symlink(str(root / "genesis"), str(root / "current"))


def home_files(home: Home) -> Dict[str, str]:
    """The operator's files, to check that running changed none of them."""
    names = ["config.toml", "genesis/run-config.toml", "vX.X.X/run-config.toml",
             f"{NEXT}/run-config.toml"]
    return {name: (home.path / name).read_text() for name in names}


def write_network_audit(folder: Path) -> Dict[str, str]:
    """The environment that makes every Python process log its network calls."""
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(NETWORK_AUDIT)
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path,
                VEGAVISOR_TEST_NETWORK_LOG=str(folder / "network.log"))


# --- what the operator looks at ---


def core_start(home: Home, version: str, nth: int = 1) -> Optional[dict]:
    """The nth start of a core of this version (1: the first)."""
    starts = [r for r in home.records("start", role="core") if r["version"] == version]
    return starts[nth - 1] if len(starts) >= nth else None


def data_node_start(home: Home, version: str) -> Optional[dict]:
    starts = [r for r in home.records("start", role="datanode") if r["version"] == version]
    return starts[-1] if starts else None


def answered(home: Home, pid: int) -> bool:
    """Whether the core with this pid answered an UpgradeStatus poll."""
    return any(r["pid"] == pid and r["status"] == 200 for r in home.records("rpc"))


def listening_delay(home: Home, start: dict) -> float:
    listening = [r for r in home.records("socket-listening") if r["pid"] == start["pid"]]
    assert listening, f"core {start['pid']} never opened its socket"
    return listening[0]["time"] - start["time"]


def pgrep(pattern: str) -> List[int]:
    done = subprocess.run(["pgrep", "-f", pattern], stdout=subprocess.PIPE,
                          universal_newlines=True, timeout=10)
    return [int(pid) for pid in done.stdout.split()]


def argv_of(pid: int) -> List[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def while_running(visor: Visor, condition: Callable[[], object]) -> Callable[[], object]:
    """condition(), failing at once (with the log) when vegavisor has exited."""
    def check() -> object:
        if visor.proc.poll() is not None:
            raise AssertionError(f"vegavisor exited {visor.proc.returncode} before that; "
                                 f"stdout:\n{visor.log()}\nstderr:\n{visor.errors.read_text()}")
        return condition()
    return check


# --- the migration ---


@pytest.mark.timeout(120)
@pytest.mark.parametrize("variant", list(VARIANTS.values()), ids=list(VARIANTS))
def test_a_go_visor_home_upgrades_unchanged_with_a_slow_core(
    short_tmp: Path, variant: Variant
) -> None:
    home = Home(short_tmp)
    make_go_visor_home(home, variant)
    before = home_files(home)
    env = write_network_audit(short_tmp / "audit")
    current = home.path / "current"
    assert os.path.lexists(str(current)) == variant.operator_links_current
    monitor = CoreMonitor(short_tmp).start()
    visor = Visor(home, env=env, split_stderr=True)  # `vegavisor run --home H > visor.log`
    try:
        # 1. The genesis core, slow to listen, is found by `pgrep -f HOME/current/vega`.
        old = wait_for(while_running(visor, lambda: core_start(home, GENESIS)), 30,
                       lambda: f"the {GENESIS} core; log:\n{visor.log()}")
        assert old["program"] == f"{home.path}/current/vega"
        wait_for(while_running(visor, lambda: answered(home, old["pid"])), 30,
                 lambda: f"a poll answered by {GENESIS}; log:\n{visor.log()}")
        assert listening_delay(home, old) >= SLOW_START_SECONDS
        if variant.crash_at is not None:
            # 1b. Core crashes with NEXT accepted; the restart resumes from the data
            #     node's newest segment, as slowly, and says null until its first block.
            old = wait_for(while_running(visor, lambda: core_start(home, GENESIS, 2)),
                           UPGRADE_DEADLINE_SECONDS,
                           lambda: f"the {GENESIS} core's restart; log:\n{visor.log()}")
            assert [r["height"] for r in home.records("crash")] == [variant.crash_at]
            assert old["argv"][-2:] == ["--snapshot.load-from-block-height",
                                        str(SEGMENT_HEIGHT)]
            assert old["program"] == f"{home.path}/current/vega"
            wait_for(while_running(visor, lambda: answered(home, old["pid"])), 30,
                     lambda: f"a poll answered by the restarted core; log:\n{visor.log()}")
            assert listening_delay(home, old) >= SLOW_START_SECONDS
        # 2. The upgrade: NEXT's core, as slow, resumes from the upgrade block's snapshot,
        #    and vegavisor waits for it instead of giving up.
        new = wait_for(while_running(visor, lambda: core_start(home, NEXT)),
                       UPGRADE_DEADLINE_SECONDS, lambda: f"the {NEXT} core; log:\n{visor.log()}")
        wait_for(while_running(visor, lambda: answered(home, new["pid"])),
                 UPGRADE_DEADLINE_SECONDS,
                 lambda: f"a poll answered by {NEXT}; log:\n{visor.log()}")
        assert listening_delay(home, new) >= SLOW_START_SECONDS
        assert new["argv"][-2:] == ["--snapshot.load-from-block-height", str(UPGRADE_HEIGHT)]
        # 3. What the operator checks: current, ps/pgrep, the log on stdout, the network.
        assert current.resolve() == home.path / NEXT
        assert new["program"] == f"{home.path}/current/vega"
        assert argv_of(new["pid"])[1:3] == [f"{home.path}/current/vega", "node"]
        found = pgrep(f"{home.path}/current/vega")
        assert new["pid"] in found and old["pid"] not in found, found
        if variant.data_node:
            data_node = wait_for(while_running(visor, lambda: data_node_start(home, NEXT)), 10,
                                 lambda: f"the {NEXT} data node; log:\n{visor.log()}")
            assert data_node["program"] == f"{home.path}/current/vega"
            assert data_node["argv"][:2] == ["datanode", "start"]
        log = visor.log()
        assert VISOR_LOG_LINE.search(log), log
        assert re.search(rf"(?m)Z INFO  ready to upgrade tag={NEXT} height={UPGRADE_HEIGHT}",
                         log), log
        assert re.search(rf"(?m)Z INFO  started role=core pid={new['pid']} version={NEXT}",
                         log), log
        errors = visor.errors.read_text()
        assert not VISOR_LOG_LINE.search(errors) and "Traceback" not in errors, errors
        # 4. Stopped as a service is stopped: exit 0, no node left behind.
        visor.signal(signal.SIGTERM)
        assert visor.wait_exit(30) == 0, visor.log()
        wait_for(lambda: not pgrep(f"{home.path}/current/vega"), 10, "the cores to be gone")
    finally:
        visor.close()
        monitor.stop()
        home.kill_leftovers()
    monitor.assert_never_two(visor.log())
    network_log = Path(env["VEGAVISOR_TEST_NETWORK_LOG"])
    assert not network_log.exists(), network_log.read_text()
    assert home_files(home) == before
    assert (home.path / "vX.X.X" / "run-config.toml").read_text() == \
        go_init_run_config("vX.X.X", variant.data_node)
