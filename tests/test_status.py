"""`vegavisor status`: what is installed, what runs and what the node says; it only reads.

status runs in-process (conftest.run_main). What it reports of a run's state files is
checked against the state an in-process `run` writes (conftest.FakeWorld) or a hand-written
one; real processes only where the real world is the subject: one status of a real running
vegavisor and node, and real cores answering (or not) on a real socket."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FakeChain
from conftest import FakeWorld
from conftest import make_fake_home
from conftest import point_current
from conftest import run_in_process
from conftest import run_main
from conftest import set_table
from conftest import snapshot
from conftest import wait_for
from conftest import write_run_config

# v2 accepted at height 2 (0.1 s in), upgrade block 400 (20 s in): the test is long over.
FAR_UPGRADE = ["--block-interval", "0.05", "--upgrade-tag", "v2", "--accept-height", "2",
               "--upgrade-height", "400"]
REPORT_KEYS = {"home", "current", "installed", "node", "run", "prefetch", "lastUpgrade",
               "upgradeInProgress", "hooks", "problems"}
NODE_KEYS = {"reachable", "answered", "readyToUpgrade", "acceptedReleaseTag", "upgradeBlockHeight", "error",
             "socket"}


def status(home, output="json"):
    """status of a conftest Home or of a home folder."""
    done = run_main(["status", "--home", str(getattr(home, "path", home)), "--output", output])
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    return json.loads(done.stdout) if output == "json" else done.stdout


def write_state(home, name, record) -> None:
    (home.path / name).write_text(json.dumps(record) + "\n")


def is_stopped(pid: int) -> bool:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rfind(")") + 2] in "tT"


@pytest.fixture
def sleeper():
    """A process that is not vegavisor's child: to stand in for a leftover core."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --- while `run` runs ---

@pytest.mark.timeout(60)
def test_status_while_run_runs_shows_the_node_and_the_run_and_changes_nothing(
        home, start_visor):
    home.install_version("genesis", "v1")
    visor = start_visor()
    visor.wait_log("admin socket answering")
    report = wait_for(lambda: (lambda r: r["run"]["phase"] == "running" and r)(status(home)),
                      15, "the run state saying running")
    assert report["node"] == {"reachable": True, "answered": True, "readyToUpgrade": False,
                              "acceptedReleaseTag": None, "upgradeBlockHeight": None,
                              "error": None, "socket": home.socket}
    run = report["run"]
    assert (run["running"], run["pid"], run["stale"]) == (True, visor.proc.pid, False)
    assert (run["version"], run["restarts"]) == ("v1", 0)
    assert [(c["role"], c["alive"]) for c in run["children"]] == [("core", True)]
    assert report["current"] == {"folder": str(home.path / "genesis"), "name": "v1",
                                 "version": "v1", "error": None}
    assert report["problems"] == []
    text = status(home, "human")
    assert f"vegavisor  running (pid {visor.proc.pid}), node running, 0 crash restarts" in text
    assert "node       reachable; no upgrade accepted\n" in text
    assert text.endswith("no problems\n")
    # status changes nothing: visor is frozen so that only status could change a file;
    # core keeps answering
    visor.signal(signal.SIGSTOP)
    try:
        wait_for(lambda: is_stopped(visor.proc.pid), 10, "visor stopped by SIGSTOP")
        before = snapshot(home.path)
        report = status(home)
        status(home, "human")
        assert snapshot(home.path) == before
    finally:
        visor.signal(signal.SIGCONT)
    assert report["run"]["running"] is True and report["node"]["reachable"] is True
    visor.signal(signal.SIGTERM)
    assert visor.wait_exit() == 0, "status disturbed nothing: run stops cleanly"


def test_a_staged_prefetch_is_shown(tmp_path):
    home = make_fake_home(tmp_path, "[autoInstall]\nenabled = true\n")
    write_run_config(home / "genesis", "v1", socket=str(tmp_path / "admin.sock"))
    world = FakeWorld(home, FakeChain("v2", upgrade_height=400).answer)
    world.releases["v2"] = "v2"
    seen = []
    world.at(30, lambda w: seen.append((status(home), status(home, "human"))))
    world.stop_at(31)
    code, log = run_in_process(home, world)
    assert code == 0, log
    [(report, text)] = seen
    prefetch = report["prefetch"]
    assert (prefetch["tag"], prefetch["state"], prefetch["folder"]) == (
        "v2", "staged", str(home / "v2"))
    assert report["installed"] == [{"folder": str(home / "genesis"), "name": "v1"},
                                   {"folder": str(home / "v2"), "name": "v2"}]
    assert f"prefetch   v2 staged in {home}/v2, updated " in text
    # a folder named as its run-config's name is shown by the folder name alone
    assert "installed  genesis (v1, current), v2\n" in text


# --- without `run` ---

@pytest.mark.timeout(30)
def test_status_without_run_says_the_node_is_unreachable_and_what_to_do(home):
    home.install_version("genesis", "v1")
    os.symlink("genesis", home.path / "current")  # by hand, as the operator docs say
    before = snapshot(home.path)
    report = status(home)
    assert report["node"]["reachable"] is False
    assert report["node"]["error"].startswith("the socket file does not exist")
    assert report["run"]["running"] is False and report["run"]["pid"] is None
    assert report["problems"] == [
        f"node: not reachable at {home.socket}: {report['node']['error']}; is "
        f"`vegavisor run --home {home.path}` running?"]
    text = status(home, "human")
    assert "vegavisor  not running\n" in text
    assert f"  - node: not reachable at {home.socket}: the socket file does not exist" in text
    assert snapshot(home.path) == before


@pytest.mark.timeout(30)
def test_status_json_has_the_spec_shape(home):
    home.install_version("genesis", "v1")
    os.symlink("genesis", home.path / "current")  # by hand, as the operator docs say
    home.install_version("v2", "v2")
    report = status(home)
    assert set(report) == REPORT_KEYS
    assert set(report["node"]) == NODE_KEYS
    assert report["home"] == str(home.path)
    assert report["current"] == {"folder": str(home.path / "genesis"), "name": "v1",
                                 "version": "v1", "error": None}
    assert report["installed"] == [{"folder": str(home.path / "genesis"), "name": "v1"},
                                   {"folder": str(home.path / "v2"), "name": "v2"}]
    assert {"running", "pid", "restarts", "phase", "lastPollOk", "stale"} <= set(report["run"])
    assert (report["prefetch"], report["lastUpgrade"], report["upgradeInProgress"]) == (
        None, None, None)


@pytest.mark.timeout(30)
def test_installed_names_mapped_subfolders_and_what_current_runs(home):
    set_table(home, "upgradeFolders", v2="releases/v2")
    home.install_version("releases/v2", "v2")
    home.install_version(str(home.root / "opt" / "v1"), "v1")
    os.symlink(home.root / "opt" / "v1", home.path / "current")
    report = status(home)
    assert report["installed"] == [
        {"folder": str(home.path / "genesis"), "name": "genesis"},
        {"folder": str(home.path / "releases" / "v2"), "name": "v2"},
        {"folder": str(home.root / "opt" / "v1"), "name": "v1"}]
    assert re.search(r"^installed +genesis, v2, v1 \(current\)$", status(home, "human"), re.M)


@pytest.mark.timeout(30)
def test_a_node_that_hangs_is_unreachable_after_rpc_timeout(home, short_tmp):
    home.set_config(rpcTimeoutSeconds=0.5)
    binary = home.install_version("genesis", "v1") / "vega"
    core = subprocess.Popen([str(binary)] + home.core_args(["--rpc-fault", "hang"]),
                            stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: os.path.exists(home.socket), 10, "the fake core's socket")
        node = status(home)["node"]
    finally:
        core.kill()
        core.wait()
    assert (node["reachable"], node["error"]) == (False, "no answer within 0.5s")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("fault, error", [("garbage", "answer is not HTTP"),
                                          ("wrong-types", "result is not an UpgradeStatus")])
def test_a_socket_that_answers_unlike_core_is_told_apart_from_one_that_is_down(
        home, fault, error):
    binary = home.install_version("genesis", "v1") / "vega"
    core = subprocess.Popen([str(binary)] + home.core_args(["--rpc-fault", fault]),
                            stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: os.path.exists(home.socket), 10, "the fake core's socket")
        report, human = status(home), status(home, output="human")
    finally:
        core.kill()
        core.wait()
    node = report["node"]
    assert (node["reachable"], node["answered"]) == (False, True)
    assert node["error"].startswith(error), node["error"]
    assert f"answers at {home.socket}, but not as core does" in human
    problem = [p for p in report["problems"] if p.startswith("node: ")]
    assert len(problem) == 1 and "check that socketPath and httpPath name core's " \
        "[Admin.Server] SocketPath and HTTPPath" in problem[0], problem
    assert "running?" not in problem[0]


@pytest.mark.timeout(30)
def test_a_dangling_current_is_reported_not_switched(home):
    home.install_version("genesis", "v1")
    os.symlink("v9", home.path / "current")
    report = status(home)
    assert report["current"]["folder"] == str(home.path / "v9")
    assert report["current"]["name"] is None
    assert "is dangling: it points at v9" in report["current"]["error"]
    assert report["problems"][0] == f"current: {report['current']['error']}"
    assert report["node"]["socket"] == home.socket, "the socket run would poll: genesis's"
    assert os.readlink(home.path / "current") == "v9"
    assert "current    " + str(home.path / "v9") + " (broken: see problems)" in status(
        home, "human")


@pytest.mark.timeout(30)
def test_a_missing_current_is_null_and_not_created(home):
    home.install_version("genesis", "v1")  # init made no current
    report = status(home)
    assert report["current"] is None
    assert report["problems"][0] == (f"current: {home.path}/current does not exist; "
                                     f"`vegavisor run` points it at genesis")
    assert not os.path.lexists(home.path / "current")


@pytest.mark.timeout(30)
def test_a_failed_prefetch_is_a_problem(home):
    binary = home.install_version("genesis", "v1") / "vega"
    write_state(home, ".prefetch.json", {
        "tag": "v2", "folder": str(home.path / "v2"), "state": "failed", "attempts": 3,
        "lastError": "GitHub's API rate limit is used up", "updated": "2026-11-27T03:00:00Z"})
    # a failed prefetch is a problem while core has v2 accepted
    core = subprocess.Popen([str(binary)] + home.core_args(FAR_UPGRADE),
                            stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        report = wait_for(lambda: (lambda r: r["node"]["acceptedReleaseTag"] == "v2" and r)(
            status(home)), 15, "core having v2 accepted")
        text = status(home, "human")
    finally:
        core.kill()
        core.wait()
    node = report["node"]
    assert (node["acceptedReleaseTag"], node["upgradeBlockHeight"], node["readyToUpgrade"]) == (
        "v2", 400, False)
    assert "node       reachable; upgrade to v2 accepted for block 400, not ready yet" in text
    assert report["prefetch"]["state"] == "failed"
    assert ("prefetch: v2: GitHub's API rate limit is used up (attempt 3); fix the cause "
            "before the upgrade block") in report["problems"]
    assert "prefetch   v2 failed (attempt 3): GitHub's API rate limit is used up, updated " \
           "2026-11-27T03:00:00Z" in text


@pytest.mark.timeout(30)
def test_an_accepted_release_missing_with_auto_install_off_is_one_problem(home):
    home.install_version("genesis", "v1")
    point_current(home, "genesis")
    set_table(home, "autoInstall", enabled=False)
    write_state(home, ".prefetch.json", {
        "tag": "v2", "folder": str(home.path / "v2"), "state": "missing", "attempts": 0,
        "lastError": None, "updated": "2026-11-27T03:00:00Z"})
    core = subprocess.Popen([str(home.path / "genesis" / "vega")] + home.core_args(FAR_UPGRADE),
                            stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        report = wait_for(lambda: (lambda r: r["node"]["acceptedReleaseTag"] == "v2" and r)(
            status(home)), 15, "core having v2 accepted")
    finally:
        core.kill()
        core.wait()
    assert report["problems"] == [
        f"upgrade: v2 is accepted for block 400, but {home.path / 'v2'} holds no "
        f"run-config.toml and auto-install is off: install it before the block"]


@pytest.mark.timeout(30)
def test_the_last_finished_upgrade_is_shown(home):
    home.install_version("genesis", "v1")
    home.install_version("v2", "v2")
    write_state(home, ".upgrade-journal.json", {
        "tag": "v2", "height": 8, "from": "genesis", "to": "v2", "step": "done",
        "started": "2026-11-27T03:00:00Z", "updated": "2026-11-27T03:00:09Z"})
    report = status(home)
    assert report["lastUpgrade"] == {"tag": "v2", "height": 8, "from": "genesis", "to": "v2",
                                     "finished": "2026-11-27T03:00:09Z"}
    assert report["upgradeInProgress"] is None
    assert "last upgrade  genesis -> v2 (v2 at block 8), finished 2026-11-27T03:00:09Z" in \
        status(home, "human")


@pytest.mark.timeout(30)
def test_an_unfinished_upgrade_without_run_is_a_problem(home):
    home.install_version("genesis", "v1")
    write_state(home, ".upgrade-journal.json", {
        "tag": "v2", "height": 8, "from": "genesis", "to": "v2", "step": "stopped",
        "started": "2026-11-27T03:00:00Z", "updated": "2026-11-27T03:00:01Z"})
    report = status(home)
    assert report["lastUpgrade"] is None
    assert report["upgradeInProgress"]["step"] == "stopped"
    assert [p for p in report["problems"] if p.startswith(
        "upgrade: the upgrade to v2 stopped at step stopped (2026-11-27T03:00:01Z) and no "
        "vegavisor is running")]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("name", "record", "why"), [
    pytest.param(".upgrade-journal.json",
                 {"tag": "v2", "height": True, "from": "genesis", "to": "v2", "step": "stopped"},
                 "Journal record (height is true)", id="journal-height"),
    pytest.param(".run-state.json",
                 {"pid": 1, "phase": "running", "version": "v1", "upgradeHeight": True},
                 "RunState record (upgradeHeight is true)", id="run-state-height"),
])
def test_a_bool_for_a_height_in_a_state_file_is_a_problem_naming_it(home, name, record, why):
    """A bool is an int to Python: true must not pass as block 1, which a resumed upgrade
    would restart core from (SPEC 3.3.9: a garbage state file is reported by name)."""
    home.install_version("genesis", "v1")
    write_state(home, name, record)
    assert f"{home.path / name} is not a valid {why}; `vegavisor run` rewrites it" in \
        status(home)["problems"]


@pytest.mark.timeout(30)
def test_a_run_state_left_by_a_dead_visor_is_stale_and_its_live_children_a_problem(
        home, sleeper):
    home.install_version("genesis", "v1")
    stat_line = Path(f"/proc/{sleeper.pid}/stat").read_text()
    start_time = int(stat_line[stat_line.rfind(")") + 2:].split()[19])
    gone = dead_pid()
    write_state(home, ".run-state.json", {
        "pid": gone, "started": "2026-11-27T03:00:00Z", "phase": "running", "version": "v1",
        "folder": str(home.path / "genesis"), "restarts": 0, "lastPollOk": None,
        "acceptedTag": "", "upgradeHeight": 0,
        "children": [{"role": "core", "pid": sleeper.pid, "argv": sleeper.args,
                      "startTime": start_time}], "updated": "2026-11-27T03:00:05Z"})
    report = status(home)
    run = report["run"]
    assert (run["running"], run["pid"], run["phase"], run["stale"], run["stalePid"]) == (
        False, None, None, True, gone)
    assert [(c["pid"], c["alive"]) for c in run["leftoverChildren"]] == [(sleeper.pid, True)]
    assert (f"run: core pid {sleeper.pid}, started by vegavisor pid {gone} which is gone, still "
            f"run; the next `vegavisor run --home {home.path}` stops them first"
            ) in report["problems"]
    assert run["ended"] == f"died without a word (kill -9, OOM or power loss?); pid {gone}"
    assert (f"vegavisor  not running since 2026-11-27T03:00:05Z: died without a word (kill -9, "
            f"OOM or power loss?); pid {gone}\n") in status(home, "human")


# --- usage and configuration errors ---

@pytest.mark.timeout(30)
def test_a_bad_config_is_one_problem_naming_file_and_key(home):
    # SPEC 3.2.3: status answers whatever the state of HOME; a broken config is a finding
    home.set_config(rpcTimeoutSeconds=0)
    done = run_main(["status", "--home", str(home.path)])
    assert (done.returncode, done.stderr) == (0, "")
    problem = (f"config: {home.path}/config.toml: rpcTimeoutSeconds: expected a number of "
               f"seconds > 0, got 0")
    assert f"  - {problem}\n" in done.stdout
    assert status(home)["problems"][0] == problem


@pytest.mark.timeout(30)
def test_status_without_a_home_is_a_usage_error():
    env = {k: v for k, v in os.environ.items() if k != "VEGAVISOR_HOME"}
    done = run_main(["status"], env=env)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "vegavisor: error: status: --home is required (or set VEGAVISOR_HOME)\n"
