"""Supervisor decisions against hostile answers, files and faults (SPEC 3.3), in-process.

Each row drives the real supervisor (vegavisor.Supervisor) on conftest.FakeWorld: a fake
clock, fake processes, a fake admin socket and a fake GitHub, with real files in a
temporary home. A row takes milliseconds of fake time; the same invariants end to end
are in the other test_faults_*.py matrices, the state machine of test_invariants.py
and scripts/soak.py.
"""
from __future__ import annotations

import functools
import json
import os
import signal
from pathlib import Path
from typing import Callable

import pytest

import vegavisor
from conftest import FakeChain
from conftest import FakeProc
from conftest import FakeWorld
from conftest import Row
from conftest import journal
from conftest import lines
from conftest import make_fake_home
from conftest import rows
from conftest import run_in_process
from conftest import write_fake_binary
from conftest import write_run_config

AUTO = "[autoInstall]\nenabled = true\n"



def run_state(home: Path) -> dict:
    return json.loads((home / ".run-state.json").read_text())


def assert_stopped_cleanly(home: Path, world: FakeWorld) -> None:
    """The one exit path: children stopped and recorded as gone before vegavisor exits."""
    assert world.live("core") is None and world.live("data node") is None
    assert run_state(home)["children"] == [] and run_state(home)["ended"]


# --- what may be deleted (SPEC 3.3.1) ---

def null_answer_after_a_crash(tmp_path: Path) -> None:
    home = make_fake_home(tmp_path, AUTO)
    world = FakeWorld(home, FakeChain("v2", upgrade_height=100).answer)
    world.releases["v2"] = "v2"
    world.at(20, lambda w: w.live("core").exit(1))
    world.at(21, lambda w: w.releases.pop("v2"))  # GitHub goes down
    world.stop_at(300)
    code, log = run_in_process(home, world)
    assert code == 0, log
    assert (home / "v2" / "run-config.toml").is_file()
    assert [p.version for p in world.started()] == ["v1", "v1", "v2"]
    assert world.installs == [(2.0, "v2")]


def withdrawn_release(tmp_path: Path) -> None:
    home = make_fake_home(tmp_path, AUTO)
    answers = {"tag": "v2"}
    world = FakeWorld(home, lambda w: vegavisor.UpgradeStatus(False, answers["tag"], 50))
    world.releases.update(v2="v2", v3="v3")
    world.at(10, lambda w: answers.update(tag="v3"))
    world.stop_at(400)
    code, _ = run_in_process(home, world)
    assert code == 0
    assert (home / "v2" / "vega").is_file() and (home / "v3" / "vega").is_file()
    assert [t for _, t in world.installs] == ["v2", "v3"]
    assert world.installs[1][0] >= 300, "a new tag waits PREFETCH_MIN_START_SECONDS"


def stale_prefetch_record_names_an_operators_folder(tmp_path: Path) -> None:
    """A .prefetch.json left from an earlier run names HOME/v2, which the operator made;
    core now accepts v3 and GitHub fails: HOME/v2 is not vegavisor's to remove."""
    home = make_fake_home(tmp_path, AUTO)
    write_run_config(home / "v2", "v2")
    write_fake_binary(home / "v2" / "vega", "v2")
    (home / "v2" / "notes.txt").write_text("the operator's own\n")
    (home / ".prefetch.json").write_text(json.dumps(vegavisor.PrefetchState(
        "v2", str(home / "v2"), "staged", 1).to_json()))
    world = FakeWorld(home, lambda w: vegavisor.UpgradeStatus(False, "v3", 10**6))
    world.stop_at(900)
    code, _ = run_in_process(home, world)
    assert code == 0
    assert sorted(p.name for p in (home / "v2").iterdir()) == ["notes.txt", "run-config.toml",
                                                               "vega"]


def flapping_tag(tmp_path: Path) -> None:
    home = make_fake_home(tmp_path, AUTO + "prefetchRetryDelaySeconds = 1\n")
    world = FakeWorld(home, lambda w: vegavisor.UpgradeStatus(
        False, "v2" if int(w.clock / 0.25) % 2 else "v3", 10**6), max_seconds=3700)
    world.stop_at(3600)
    code, log = run_in_process(home, world)
    assert code == 0
    assert len(world.installs) <= 20, world.installs
    assert len(lines(log, "upgrade accepted")) == 1, "the first tag, then no line a flip"
    flips = lines(log, "the accepted release keeps changing")
    assert 12 <= len(flips) <= 13, "logged at once, then every 5 minutes with a count"
    assert "repeated=" in flips[1]


# --- answers that name no release to upgrade to ---

def ready_naming_no_other_release(status: vegavisor.UpgradeStatus, tmp_path: Path) -> None:
    home = make_fake_home(tmp_path)
    world = FakeWorld(home, lambda w: status)
    world.stop_at(900)
    code, log = run_in_process(home, world)
    assert code == 0
    assert len(world.started()) == 1, "no restart loop"
    ignored = lines(log, "ignored")
    assert len(ignored) == 3, "logged at once, then every 5 minutes with a count"
    assert "repeated=" in ignored[1]


def unusable_answer(status: vegavisor.UpgradeStatus, error: str, tmp_path: Path) -> None:
    """An answer the parser refuses is a failed poll (SPEC 3.3.4), named in one line and in
    the growing warnings: nothing is installed, followed out of HOME or restarted."""
    home = make_fake_home(tmp_path, AUTO)
    world = FakeWorld(home, lambda w: status)
    world.stop_at(900)
    code, log = run_in_process(home, world)
    assert code == 0, log
    assert world.installs == [] and len(world.started()) == 1, "no install, no restart"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"], "nothing outside HOME"
    assert os.readlink(home / "current") == "genesis"
    assert error in lines(log, "waiting for admin socket")[0]
    warnings = lines(log, "core has not answered yet")
    assert len(warnings) == 5, "at 10 s, 30 s, 1 min, then every 5 minutes"
    assert "something answers on socketPath, but not as core's admin server does" \
        in warnings[0] and error in warnings[0]
    assert "Traceback" not in log and "unexpected" not in log


# --- one version check at the block, on the folder actually started (SPEC 3.3.3) ---

def release_replaced_after_the_prefetch(tmp_path: Path) -> None:
    home = make_fake_home(tmp_path, AUTO)
    world = FakeWorld(home, FakeChain("v2", upgrade_height=30).answer)
    world.releases["v2"] = "v2"
    world.at(10, lambda w: write_fake_binary(home / "v2" / "vega", "v3"))
    code, log = run_in_process(home, world)
    assert code == 1
    assert [p.version for p in world.started()] == ["v1"], "v3 never started"
    assert "reports version v3, not v2" in log.splitlines()[-1]
    assert os.readlink(home / "current") == "genesis"
    assert journal(home)["step"] == "installed"
    assert_stopped_cleanly(home, world)


def stale_prefetch_record_claims_a_checked_release(tmp_path: Path) -> None:
    """An old .prefetch.json says v2 was staged and checked; HOME/v2 holds a v3 binary."""
    home = make_fake_home(tmp_path)
    write_run_config(home / "v2", "v2")
    write_fake_binary(home / "v2" / "vega", "v3")
    (home / ".prefetch.json").write_text(json.dumps(vegavisor.PrefetchState(
        "v2", str(home / "v2"), "staged", 1).to_json()))
    world = FakeWorld(home, FakeChain("v2", upgrade_height=30).answer)
    code, log = run_in_process(home, world)
    assert code == 1
    assert [p.version for p in world.started()] == ["v1"], "v3 never started"
    assert "reports version v3, not v2" in log.splitlines()[-1]
    assert os.readlink(home / "current") == "genesis"


def crash_before_the_upgraded_core_answered(tmp_path: Path) -> None:
    home = make_fake_home(tmp_path, AUTO)
    chain = FakeChain("v2", upgrade_height=20, snapshot_listen_after=30)
    world = FakeWorld(home, chain.answer)
    world.releases["v2"] = "v2"
    world.at(25, lambda w: w.live("core").exit(1))
    world.stop_at(200)
    code, log = run_in_process(home, world)
    assert code == 0
    v1, v2, v2_again = world.started()
    assert v2_again.argv[-2:] == ("--snapshot.load-from-block-height", "20")
    assert len(lines(log, "version checked")) == 1, "checked once in this process"
    assert journal(home)["step"] == "done"


def empty_prepared_folder(tmp_path: Path) -> None:
    home = make_fake_home(tmp_path)
    (home / "v2").mkdir()
    world = FakeWorld(home, FakeChain("v2", upgrade_height=10**6).answer)
    world.stop_at(60)
    code, log = run_in_process(home, world)
    assert code == 0
    failed = lines(log, "prefetch failed")[0]
    assert "v2 exists but has no run-config.toml" in failed
    prefetch = json.loads((home / ".prefetch.json").read_text())
    assert (prefetch["state"], prefetch["tag"]) == ("failed", "v2")


# --- one exit path: children stopped and recorded first ---

def sigterm_during_the_install_at_the_block(tmp_path: Path) -> None:
    home = make_fake_home(tmp_path, AUTO + "prefetch = false\n")
    world = FakeWorld(home, FakeChain("v2", upgrade_height=20).answer)

    def install_then_stop(*args, **kwargs):
        world.stop_signal = "SIGTERM"
        raise vegavisor.InstallError("cancelled")
    world.install = install_then_stop
    code, _ = run_in_process(home, world)
    assert code == 0
    assert journal(home)["step"] == "stopped"
    assert not (home / "v2").exists() and os.readlink(home / "current") == "genesis"
    assert_stopped_cleanly(home, world)


def unexpected_exception(error: BaseException, tmp_path: Path) -> None:
    home = make_fake_home(tmp_path)

    def broken(w):
        if w.clock > 5:
            raise error
        return vegavisor.UpgradeStatus(False, "", 0)
    world = FakeWorld(home, broken)
    code, log = run_in_process(home, world)
    assert code == 1
    assert f"unexpected {type(error).__name__}: {error} at" in log.splitlines()[-1]
    assert run_state(home)["phase"] == "failed"
    assert_stopped_cleanly(home, world)


def journal_unwritable_at_the_block(tmp_path: Path) -> None:
    home = make_fake_home(tmp_path, AUTO)
    world = FakeWorld(home, FakeChain("v2", upgrade_height=20).answer)
    world.releases["v2"] = "v2"
    world.at(19, lambda w: (home / ".upgrade-journal.json").mkdir())  # unwritable
    code, log = run_in_process(home, world)
    assert code == 1
    assert f"the upgrade journal {home}/.upgrade-journal.json cannot be written" in \
        log.splitlines()[-1]
    assert world.live("core") is None


def truncated_journal(tmp_path: Path) -> None:
    home = make_fake_home(tmp_path)
    (home / ".upgrade-journal.json").write_text('{"tag": "v2", "hei')
    world = FakeWorld(home)
    world.stop_at(3)
    code, log = run_in_process(home, world)
    assert code == 0
    [warned] = lines(log, "upgrade journal unreadable")
    assert f"{home}/.upgrade-journal.json is not a valid Journal record" in warned


# --- children that outlive what started them ---

def leftover_children(kind: str, tmp_path: Path) -> None:
    home = make_fake_home(tmp_path)
    world = FakeWorld(home)
    leftover = FakeProc(world, 42, ["/old/vega", "node"], {"VEGAVISOR_CHILD": "m-1"}, "v1")
    world.leftovers.append(leftover)
    record = vegavisor.RunState(
        9999, "", "running", "v1", str(home / "genesis"),
        children=(vegavisor.ChildRecord("core", 42, leftover.start_time, ("/old/vega",)),)
        if kind == "recorded" else (), starting=("m-1",) if kind == "being-started" else ())
    (home / ".run-state.json").write_text(json.dumps(record.to_json()))
    world.stop_at(5)
    code, log = run_in_process(home, world)
    assert code == 0
    assert leftover.signals == [signal.SIGTERM]
    order = [(e[1], e[3]) for e in world.events]
    assert order.index(("exit", 42)) < order.index(("spawn", 1001))
    assert lines(log, "stopping a child left by an earlier vegavisor")


def grandchild_outlives_core(tmp_path: Path) -> None:
    home = make_fake_home(tmp_path, "stopSignalTimeoutSeconds = 3\n")
    world = FakeWorld(home)

    def wrapper_stays(w):
        w.live("core").lingering = 10**9  # its group keeps a process until SIGKILL
    world.at(1, wrapper_stays)
    world.stop_at(5)
    code, log = run_in_process(home, world)
    assert code == 0
    [core] = world.started()
    assert core.signals == [signal.SIGTERM, signal.SIGKILL]
    assert lines(log, "killing role=core")
    assert 8 <= world.clock < 9


def case(scenario: Callable[..., None], *args: object) -> tuple:
    return (functools.partial(scenario, *args),)


FAULTS = [
    Row("supervisor", "null-answer-after-crash",
        "core crashes after v2 was prefetched; the restarted core answers AcceptedReleaseInfo "
        "null until its first block; then GitHub goes down",
        "HOME/v2 stays; the node upgrades to it at the block with no download",
        case(null_answer_after_a_crash)),
    Row("supervisor", "withdrawn-release",
        "core's accepted tag changes from v2 to v3",
        "HOME/v2 stays; v3 is prefetched too, no sooner than 300 s after v2's",
        case(withdrawn_release)),
    Row("supervisor", "stale-prefetch-record-operator-folder",
        "an old .prefetch.json names HOME/v2, which the operator made; core accepts v3",
        "HOME/v2 and every file in it stay",
        case(stale_prefetch_record_names_an_operators_folder)),
    Row("supervisor", "flapping-tag",
        "the accepted tag flips between v2 and v3 at every poll (0.25 s) for an hour",
        "at most 20 installs in the hour; \"upgrade accepted\" once, then WARN \"the accepted "
        "release keeps changing\" at once and every 5 minutes with a count",
        case(flapping_tag)),
    Row("supervisor", "ready-without-tag",
        "ReadyToUpgrade true with AcceptedReleaseInfo null",
        "a failed poll: INFO \"ReadyToUpgrade is true but no release is accepted\", WARNs "
        "at 10 s, 30 s, 1 min, then every 5 min; no install, no restart",
        case(unusable_answer, vegavisor.UpgradeStatus(True, "", 0),
             "ReadyToUpgrade is true but no release is accepted")),
    Row("supervisor", "ready-for-the-running-version",
        "ReadyToUpgrade true for v1, the version running",
        "ignored: one WARN, then one every 5 minutes with a count; core never restarted",
        case(ready_naming_no_other_release, vegavisor.UpgradeStatus(True, "v1", 10))),
    Row("supervisor", "tag-leaving-home",
        "ReadyToUpgrade for tag ../x",
        "a failed poll naming the tag, growing WARNs; no install, no folder outside HOME, "
        "no restart",
        case(unusable_answer, vegavisor.UpgradeStatus(True, "../x", 20),
             "which holds")),
    Row("supervisor", "tag-too-long",
        "a 300-character tag accepted, prefetch on",
        "a failed poll (\"longer than\"), growing WARNs; no install, no restart, no traceback",
        case(unusable_answer, vegavisor.UpgradeStatus(False, "v" + "9" * 299, 20),
             "which is longer than")),
    Row("supervisor", "tag-with-a-surrogate",
        "ReadyToUpgrade for a tag holding a lone surrogate (invalid UTF-16 in Go's JSON)",
        "a failed poll naming the tag as invalid text; no install, no restart",
        case(unusable_answer, vegavisor.UpgradeStatus(True, "v\ud800", 20),
             "invalid text")),
    Row("supervisor", "release-replaced-after-prefetch",
        "HOME/v2/vega is replaced by a v3 binary after the prefetch checked it",
        "exit 1 at the block: \"reports version v3, not v2\"; current stays genesis; v3 never "
        "started; core stopped and recorded",
        case(release_replaced_after_the_prefetch)),
    Row("supervisor", "stale-prefetch-record-wrong-binary",
        "an old .prefetch.json says v2 was staged; HOME/v2 holds a v3 binary",
        "exit 1 at the block: \"reports version v3, not v2\"; v3 never started",
        case(stale_prefetch_record_claims_a_checked_release)),
    Row("supervisor", "crash-before-upgraded-core-answers",
        "the v2 core crashes before it first answers",
        "it restarts with the snapshot flag again; the version check ran once; journal done",
        case(crash_before_the_upgraded_core_answered)),
    Row("supervisor", "empty-prepared-folder",
        "HOME/v2 exists and is empty when core accepts v2",
        "WARN prefetch failed: \"v2 exists but has no run-config.toml\" at once, not at the "
        "block",
        case(empty_prepared_folder)),
    Row("supervisor", "sigterm-during-install-at-block",
        "SIGTERM while the release is installed at the block",
        "exit 0; journal \"stopped\"; nothing installed; current stays genesis",
        case(sigterm_during_the_install_at_the_block)),
    Row("supervisor", "unexpected-error",
        "an unexpected exception in the supervisor's loop",
        "core stopped and recorded; exit 1; last line \"unexpected RuntimeError: boom at …\"",
        case(unexpected_exception, RuntimeError("boom"))),
    Row("supervisor", "recursion-error",
        "a RecursionError (a deeply nested answer) in the supervisor's loop",
        "core stopped and recorded; exit 1; last line names the RecursionError",
        case(unexpected_exception,
             RecursionError("maximum recursion depth exceeded"))),
    Row("supervisor", "journal-unwritable-at-block",
        "the journal cannot be written at the block (disk full, read-only HOME)",
        "core stopped; exit 1; last line names the journal and says to free space",
        case(journal_unwritable_at_the_block)),
    Row("supervisor", "truncated-journal",
        "the journal holds half a JSON object",
        "WARN naming the file as not a valid Journal record; the node runs",
        case(truncated_journal)),
    Row("supervisor", "leftover-child-recorded",
        "a child recorded in .run-state.json by a killed vegavisor still runs",
        "it is stopped (SIGTERM) before anything starts",
        case(leftover_children, "recorded")),
    Row("supervisor", "leftover-child-being-started",
        "a child a killed vegavisor was starting (marker recorded, pid not yet) still runs",
        "found by its VEGAVISOR_CHILD marker and stopped before anything starts",
        case(leftover_children, "being-started")),
    Row("supervisor", "grandchild-outlives-core",
        "core's process group keeps a process after SIGTERM (a wrapper script)",
        "waited for stopSignalTimeoutSeconds, then the group gets SIGKILL",
        case(grandchild_outlives_core)),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("row, scenario", rows(FAULTS))
def test_supervisor_fault(row: Row, scenario: Callable[[Path], None], tmp_path: Path) -> None:
    scenario(tmp_path)
