"""Children: faults of the binaries visor starts (core and data node), before and after
an upgrade. Each row runs a real `vegavisor.py run` on fake cores and checks the exit
code, the log line an operator greps for, and that no child is left running."""
from __future__ import annotations

import os
import signal
import stat
from typing import Any
from typing import Callable
from typing import Dict

import pytest

from conftest import BLOCKS
from conftest import Row
from conftest import UPGRADE
from conftest import V2_ARGS
from conftest import alive
from conftest import assert_v2_end_state
from conftest import core_starts
from conftest import journal
from conftest import live_processes
from conftest import rows
from conftest import staging
from conftest import stop_visor
from conftest import wait_for


def binary_missing(home) -> Dict[str, Any]:
    folder = home.install_version("genesis", "v1", BLOCKS)
    (folder / "vega").unlink()
    return {"error": f"binary {home.path}/current/vega does not exist"}  # run as current/vega


def binary_is_a_folder(home) -> Dict[str, Any]:
    folder = home.install_version("genesis", "v1", BLOCKS)
    (folder / "vega").unlink()
    (folder / "vega").mkdir()
    return {"error": f"binary {home.path}/current/vega is not a regular file"}


def binary_mode_000(home) -> Dict[str, Any]:
    folder = home.install_version("genesis", "v1", BLOCKS)
    os.chmod(folder / "vega", 0)
    return {"error": f"core binary {home.path}/current/vega cannot be started: "
                     f"Permission denied",
            "mode": (folder / "vega", 0)}


def binary_not_a_program(home) -> Dict[str, Any]:
    folder = home.install_version("genesis", "v1", BLOCKS)
    (folder / "vega").write_bytes(b"\x7fELF\x00\x01 not really a program")
    return {"error": f"core binary {home.path}/current/vega cannot be started: "
                     f"Exec format error"}


def crash_loop(home) -> Dict[str, Any]:
    home.set_config(maxNumberOfRestarts=2)
    home.install_version("genesis", "v1", BLOCKS + ["--crash-at-height", "3",
                                                   "--crash-signal", "SEGV"])
    return {"error": f"core {home.path}/current/vega terminated by SIGSEGV; it was "
                     f"restarted 2 times already (maxNumberOfRestarts = 2), giving up",
            "core_starts": 3}


def exit_zero(home) -> Dict[str, Any]:
    home.set_config(maxNumberOfRestarts=1)
    home.install_version("genesis", "v1", BLOCKS + ["--exit-zero-at-height", "2"])
    return {"error": "exited with status 0; it was restarted 1 times already", "core_starts": 2}


def ignores_sigterm(home) -> Dict[str, Any]:
    home.set_config(stopSignalTimeoutSeconds=0.5)
    home.install_version("genesis", "v1", BLOCKS + ["--ignore-sigterm"])
    return {"stop": True, "log": r'killing role=core pid=\d+ version=v1 signal=SIGKILL '
                                 r'reason="still running 0.5s after SIGTERM"'}


def data_node_ignores_sigterm(home) -> Dict[str, Any]:
    home.set_config(stopSignalTimeoutSeconds=0.5)
    home.install_version("genesis", "v1", BLOCKS, data_node=True,
                         data_node_args=["--ignore-sigterm"])
    return {"stop": True, "log": r'killing role="data node" pid=\d+ version=v1 '
                                 r'signal=SIGKILL reason="still running 0.5s after SIGTERM"'}


def wrong_version_after_upgrade(home) -> Dict[str, Any]:
    home.install_version("genesis", "v1", UPGRADE)
    folder = home.install_version("v2", "v3", V2_ARGS)
    return {"error": f"core binary {folder}/vega reports version v3, not v2; {folder} holds "
                     f"the wrong release", "upgrade": True}


def binary_missing_after_upgrade(home) -> Dict[str, Any]:
    home.install_version("genesis", "v1", UPGRADE)
    folder = home.install_version("v2", "v2", V2_ARGS)
    (folder / "vega").unlink()
    return {"error": f"binary {folder}/vega does not exist", "upgrade": True}


def data_node_crashing_alone(home) -> Dict[str, Any]:
    home.set_config(maxNumberOfRestarts=1)
    home.install_version("genesis", "v1", BLOCKS, data_node=True,
                         data_node_args=["--crash-after", "0.5"])
    return {"error": 'giving up reason="data node', "core_starts": 2, "dn_starts": 2}


def data_node_binary_missing(home) -> Dict[str, Any]:
    folder = home.install_version("genesis", "v1", BLOCKS, data_node=True)
    config = folder / "run-config.toml"
    head, _, tail = config.read_text().partition("[data_node.binary]")
    config.write_text(head + "[data_node.binary]" + tail.replace('path = "vega"',
                                                                 'path = "vega-datanode"'))
    return {"error": f"binary {home.path}/current/vega-datanode does not exist",
            "log": r"started role=core pid=(\d+) version=v1 .*\n.*stopping role=core pid=\1 "}


FAULTS = [
    Row("children", "binary-missing",
        "core's binary does not exist",
        "exit 1, `ERROR giving up reason=\"binary <home>/current/vega does not exist\"`; "
        "nothing started", (binary_missing,)),
    Row("children", "binary-is-a-folder",
        "not executable: a folder stands where core's binary should be (exec bits are "
        "added to a file that lacks them, so a folder is a case that truly cannot run)",
        "exit 1, `binary <home>/current/vega is not a regular file`; nothing started",
        (binary_is_a_folder,)),
    Row("children", "binary-mode-000",
        "not executable: core's binary has mode 000 (no read bits, so visor adds no exec "
        "bits; even root cannot exec a file without any exec bit)",
        "exit 1, `core binary <home>/current/vega cannot be started: Permission denied`; "
        "the mode is left as it was", (binary_mode_000,)),
    Row("children", "not-an-executable-format",
        "core's binary is bytes the kernel cannot run (an ELF magic and junk)",
        "exit 1, `core binary <home>/current/vega cannot be started: Exec format error`",
        (binary_not_a_program,)),
    Row("children", "crash-loop",
        "core dies by SIGSEGV at height 3 every time (maxNumberOfRestarts = 2)",
        "3 starts, then exit 1, `... terminated by SIGSEGV; it was restarted 2 times already "
        "(maxNumberOfRestarts = 2), giving up`", (crash_loop,)),
    Row("children", "exit-0",
        "core exits with status 0 at height 2, every time (maxNumberOfRestarts = 1)",
        "counted as a crash: restarted once, then exit 1, `exited with status 0; it was "
        "restarted 1 times already`", (exit_zero,)),
    Row("children", "ignores-sigterm",
        "core ignores SIGTERM (stopSignalTimeoutSeconds = 0.5), visor gets SIGTERM",
        "exit 0; `killing role=core ... signal=SIGKILL reason=\"still running 0.5s after "
        "SIGTERM\"`; core dead", (ignores_sigterm,)),
    Row("children", "data-node-ignores-sigterm",
        "the data node ignores SIGTERM (stopSignalTimeoutSeconds = 0.5), visor gets SIGTERM",
        "exit 0; `killing role=\"data node\" ... signal=SIGKILL`; no child left",
        (data_node_ignores_sigterm,)),
    Row("children", "wrong-version-after-upgrade",
        "the pre-made v2 folder's binary reports v3",
        "exit 1, `core binary <home>/v2/vega reports version v3, not v2; <home>/v2 holds the "
        "wrong release`; `current` stays genesis, no v3 ever runs, journal `installed`: once "
        "the operator puts the right v2 there a restart finishes the upgrade",
        (wrong_version_after_upgrade,)),
    Row("children", "binary-missing-after-upgrade",
        "the pre-made v2 folder has a run-config.toml but no binary",
        "exit 1, `binary <home>/v2/vega does not exist`; `current` stays genesis, v1 is not "
        "run past the block; a restart after the fix finishes the upgrade",
        (binary_missing_after_upgrade,)),
    Row("children", "data-node-crashing-alone",
        "the data node exits 1 after 0.5 s, every time (maxNumberOfRestarts = 1)",
        "core is brought down with it each time, both restarted once, then exit 1, "
        "`giving up reason=\"data node ...`; no child left", (data_node_crashing_alone,)),
    Row("children", "data-node-binary-missing",
        "the data node's binary does not exist (core's does)",
        "core, already started, is stopped again; exit 1, `binary "
        "<home>/current/vega-datanode does not exist`", (data_node_binary_missing,)),
]


@pytest.mark.parametrize(("row", "arrange"), rows(FAULTS))
@pytest.mark.timeout(60)
def test_child_fault(row: Row, arrange: Callable[[Any], Dict[str, Any]], home, start_visor,
                     monitor) -> None:
    expect = arrange(home)
    visor = start_visor()
    if expect.get("stop"):
        visor.wait_log("admin socket answering")
        if "data node" in expect["log"]:  # its handlers are set before its first record
            wait_for(lambda: home.records("start", role="datanode"), 10, "the data node's start")
        visor.signal(signal.SIGTERM)
        assert visor.wait_exit() == 0
    else:
        assert visor.wait_exit(30) == 1, visor.log()
        last = visor.log().strip().splitlines()[-1]
        assert "ERROR giving up" in last and expect["error"] in last, visor.log()
    wait_for(lambda: not live_processes(home.root), 10, "no child left running")
    assert all(not alive(s["pid"]) for s in home.records("start"))
    if "log" in expect:
        visor.wait_log(expect["log"], timeout=1)
    if "core_starts" in expect:
        assert len(core_starts(home)) == expect["core_starts"]
    if "dn_starts" in expect:
        assert len(core_starts(home, role="datanode")) == expect["dn_starts"]
    if "mode" in expect:
        path, mode = expect["mode"]
        assert stat.S_IMODE(os.stat(path).st_mode) == mode
    if expect.get("upgrade"):
        assert_upgrade_resumes_once_fixed(home, start_visor, monitor)
    elif not expect.get("stop") and "core_starts" not in expect and "log" not in expect:
        assert core_starts(home) == [], "nothing started"
    monitor.assert_never_two(visor.log())


def assert_upgrade_resumes_once_fixed(home, start_visor, monitor) -> None:
    assert os.readlink(home.path / "current") == "genesis"
    assert len(core_starts(home, "v1")) == 1, "v1 was not run past the block"
    assert [s for s in core_starts(home) if s["version"] != "v1"] == []
    assert journal(home)["step"] == "installed" and staging(home) == []
    home.install_version("v2", "v2", V2_ARGS)  # the operator puts the right release there
    visor = start_visor()
    assert_v2_end_state(home, visor, monitor)
    assert len(core_starts(home, "v1")) == 1
    stop_visor(visor)
