"""The supervisor in-process (SPEC 1.6, 2.4, 3.1, 3.2, 3.3): a fake clock, fake processes
and a fake admin socket (conftest.FakeWorld), real files in a temporary home. Each test
takes milliseconds; test_supervisor.py has more, beside the few real-process runs that
check the real world end to end (signals, exec formats, the lock between two runs)."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

import vegavisor
from conftest import FakeChain
from conftest import FakeWorld
from conftest import journal
from conftest import lines
from conftest import make_fake_home
from conftest import run_in_process
from conftest import write_fake_binary
from conftest import write_run_config

AUTO = "[autoInstall]\nenabled = true\n"


def state(home: Path) -> dict:
    return json.loads((home / ".run-state.json").read_text())



def test_an_upgrade_stops_switches_and_starts_the_new_core_from_the_snapshot(tmp_path):
    home = make_fake_home(tmp_path, AUTO)
    world = FakeWorld(home, FakeChain("v2", upgrade_height=20).answer)
    world.releases["v2"] = "v2"
    world.stop_at(60)
    code, log = run_in_process(home, world)
    assert code == 0
    v1, v2 = world.started()
    assert (v1.version, v2.version) == ("v1", "v2")
    assert v1.code == -signal.SIGTERM and v1.signals == [signal.SIGTERM]
    assert v2.argv == (str(home / "current" / "vega"), "node",
                       "--snapshot.load-from-block-height", "20")
    assert os.readlink(home / "current") == "v2"
    assert journal(home)["step"] == "done"
    assert lines(log, "upgrade complete tag=v2")
    assert log.splitlines()[-1].endswith("INFO  vegavisor stopped signal=SIGTERM")
    assert state(home)["ended"] == "stopped by SIGTERM" and state(home)["children"] == []


def test_upgrades_a_minute_apart_each_log_their_acceptance(tmp_path):
    """A flipping tag is one repeated WARN (the flapping-tag row); two upgrades in a row are
    two acceptances, each logged as such."""
    home = make_fake_home(tmp_path, AUTO)
    to_v2 = FakeChain("v2", upgrade_height=20).answer

    def answer(world):  # v1 upgrades to v2 at 20 s, v2 accepts v3 at once, ready 30 s later
        core = world.live("core")
        if core is None or core.version == "v1":
            return to_v2(world)
        up = world.clock - core.started
        if core.version == "v3" or up < 1:
            return vegavisor.UpgradeStatus(False, "", 0)
        return vegavisor.UpgradeStatus(up >= 30, "v3", 60)
    world = FakeWorld(home, answer)
    world.releases.update(v2="v2", v3="v3")
    world.stop_at(120)
    code, log = run_in_process(home, world)
    assert code == 0
    assert [p.version for p in world.started()] == ["v1", "v2", "v3"]
    assert [line.split("INFO  ")[1] for line in lines(log, "upgrade accepted")] == [
        "upgrade accepted tag=v2 height=20", "upgrade accepted tag=v3 height=60"]
    assert not lines(log, "keeps changing")


def test_a_flapping_tag_writes_the_run_state_as_polls_do_not_at_every_flip(tmp_path,
                                                                            monkeypatch):
    home = make_fake_home(tmp_path)
    writes = []
    write_record = vegavisor.write_record

    def counted(path, record, *args, **kwargs):
        writes.append((path.name, record))
        return write_record(path, record, *args, **kwargs)
    monkeypatch.setattr(vegavisor, "write_record", counted)
    for tag in ("v2", "v3"):
        write_run_config(home / tag, tag)
        write_fake_binary(home / tag / "vega", tag)

    def answer(world):  # the tag flips at every poll for ten minutes
        return vegavisor.UpgradeStatus(False, ("v2", "v3")[len(world.polls) % 2], 5000)
    world = FakeWorld(home, answer)
    world.stop_at(600)
    code, log = run_in_process(home, world)
    assert code == 0
    assert len(world.polls) > 1000
    states = [record for name, record in writes if name == ".run-state.json"]
    assert len(states) < 30, f"{len(states)} writes of .run-state.json"  # 2,403 before
    assert len(lines(log, "the accepted release keeps changing")) == 2  # at 0 and 5 min
    assert states[-1].accepted_tag in ("v2", "v3")


def test_a_crash_loop_starts_core_max_restarts_plus_one_times_then_gives_up(tmp_path):
    home = make_fake_home(tmp_path, "maxNumberOfRestarts = 2\nrestartsDelaySeconds = 5\n")
    world = FakeWorld(home)
    world.on_step = lambda w: [p.exit(-signal.SIGSEGV) for p in w.procs
                               if p.code is None and w.clock - p.started >= 1]
    code, log = run_in_process(home, world)
    assert code == 1
    assert len(world.started()) == 3
    exits = [e[0] for e in world.events if e[1] == "exit"]
    starts = [e[0] for e in world.events if e[1] == "spawn"]
    assert [s - e for e, s in zip(exits, starts[1:])] == [5, 10], "5 s, then doubled"
    assert log.splitlines()[-1].endswith(
        f'giving up reason="core {home}/current/vega terminated by SIGSEGV; it was restarted 2 '
        f'times already (maxNumberOfRestarts = 2), giving up"')
    assert state(home)["ended"].startswith("gave up: core")
    assert state(home)["phase"] == "failed"


@pytest.mark.parametrize("listen_after, survives", [(15, True), (25, False)],
                         ids=["listens-within-20s", "listens-after-20s"])
def test_a_restarted_core_has_restart_retries_times_the_poll_interval_to_listen(
        tmp_path, listen_after, survives):
    """SPEC 3.1.1: with an upgrade accepted polls run every 0.25 s while core answers, but
    a core that does not answer is retried every pollIntervalSeconds: 10 x 2 s = 20 s."""
    home = make_fake_home(tmp_path, "maxNumberOfRestartConnectionRetries = 10\n")
    chain = FakeChain("v2", upgrade_height=10**6)
    world = FakeWorld(home, chain.answer)
    world.at(30, lambda w: w.live("core").exit(1))
    world.at(30, lambda w: setattr(chain, "listen_after", listen_after))
    world.stop_at(120)
    code, log = run_in_process(home, world)
    assert len(world.started()) == 2
    if survives:
        assert code == 0 and lines(log, "admin socket answering")[1:]
    else:
        assert code == 1
        assert "failed 11 polls in a row, 2s apart (maxNumberOfRestartConnectionRetries = 10)" \
            in log.splitlines()[-1]
        restarted = world.started()[1].started
        assert 20 <= world.clock - restarted <= 24


def test_the_upgraded_core_has_first_retries_times_the_poll_interval_to_listen(tmp_path):
    """Go gives the new core maxNumberOfFirstConnectionRetries x 2 s: 20 retries = 40 s."""
    home = make_fake_home(tmp_path, AUTO + "[autoInstall.asset]\n" if False else
                          "maxNumberOfFirstConnectionRetries = 20\n" + AUTO)
    chain = FakeChain("v2", upgrade_height=10, snapshot_listen_after=38)
    world = FakeWorld(home, chain.answer)
    world.releases["v2"] = "v2"
    world.stop_at(200)
    code, log = run_in_process(home, world)
    assert code == 0, log
    assert lines(log, "upgrade complete tag=v2")


def test_a_core_that_never_answers_is_named_at_growing_intervals(tmp_path):
    home = make_fake_home(tmp_path)
    world = FakeWorld(home, FakeChain(listen_after=10**9).answer)
    world.stop_at(700)
    code, log = run_in_process(home, world)
    assert code == 0
    warned = [round(float(line.split("waited=")[1].split()[0]))
              for line in lines(log, "core has not answered yet")]
    assert warned == [10, 30, 60, 360, 660]
    assert "socketPath/httpPath differ from core's [Admin.Server]" in lines(log, "waited=10 ")[0]
    assert "has not answered for 660s" in state(home)["waiting"]
    assert any(n.startswith("STATUS=core's admin socket /tmp/fake.sock has not answered")
               for _, n in world.notes)


def test_systemd_hears_ready_once_the_node_is_started_not_when_core_answers(tmp_path):
    home = make_fake_home(tmp_path)
    world = FakeWorld(home, FakeChain(listen_after=10**9).answer)
    world.stop_at(5)
    run_in_process(home, world)
    ready = [t for t, n in world.notes if n == "READY=1"]
    assert ready == [0.0]
    assert ("STOPPING=1" in [n for _, n in world.notes])


def test_children_do_not_inherit_the_github_token_but_carry_a_marker(tmp_path):
    home = make_fake_home(tmp_path)
    world = FakeWorld(home)
    world.stop_at(5)
    run_in_process(home, world, env={"GITHUB_TOKEN": "ghp_secret", "PATH": "/bin"})
    [core] = world.started()
    assert "GITHUB_TOKEN" not in core.env and core.env["PATH"] == "/bin"
    assert core.env["VEGAVISOR_CHILD"]


def test_auto_install_off_and_no_folder_is_an_error_when_accepted_and_at_the_block(tmp_path):
    home = make_fake_home(tmp_path)
    world = FakeWorld(home, FakeChain("v2", upgrade_height=30).answer)
    code, log = run_in_process(home, world)
    assert code == 1
    assert lines(log, "accepted release is not installed and auto-install is off tag=v2")
    assert "release v2 is not installed" in log.splitlines()[-1]
    assert world.installs == []


def test_a_journal_left_at_stopped_is_finished_before_anything_runs(tmp_path):
    home = make_fake_home(tmp_path)
    write_run_config(home / "v2", "v2")
    write_fake_binary(home / "v2" / "vega", "v2")
    (home / ".upgrade-journal.json").write_text(json.dumps(
        {"tag": "v2", "height": 77, "from": "genesis", "to": "v2", "step": "stopped"}))
    # the run that stopped at the block had found v2 missing; an operator installed it
    (home / ".prefetch.json").write_text(json.dumps(
        {"tag": "v2", "folder": str(home / "v2"), "state": "missing"}))
    world = FakeWorld(home, FakeChain().answer)
    world.stop_at(10)
    code, log = run_in_process(home, world)
    assert code == 0
    [core] = world.started()
    assert core.version == "v2" and core.argv[-2:] == ("--snapshot.load-from-block-height", "77")
    assert lines(log, "resuming upgrade tag=v2 height=77 step=stopped")
    assert journal(home)["step"] == "done"
    assert not (home / ".prefetch.json").exists(), "status would say v2 is not installed"


def test_a_missing_release_is_reported_once_and_found_once_an_operator_installs_it(tmp_path):
    """Auto-install off, the accepted release not installed: one ERROR, not one per 0.25 s
    poll (it came with a .prefetch.json rewrite); the folder is still looked for, so a
    release installed by hand later is checked and used at the block."""
    home = make_fake_home(tmp_path)
    world = FakeWorld(home, FakeChain("v2", upgrade_height=120).answer)

    def install(w):
        write_run_config(home / "v2", "v2")
        write_fake_binary(home / "v2" / "vega", "v2")
    world.at(60, install)
    world.stop_at(150)
    code, log = run_in_process(home, world)
    assert code == 0
    assert len(lines(log, "accepted release is not installed and auto-install is off "
                          "tag=v2")) == 1
    assert lines(log, "checking prepared release tag=v2")
    assert lines(log, "prepared release checked tag=v2")
    assert [p.version for p in world.started()] == ["v1", "v2"]
    assert not (home / ".prefetch.json").exists(), "the upgrade to v2 ended its prefetch"


def test_a_saved_config_edit_applies_by_itself(tmp_path):
    """SPEC 3.1.4: no SIGHUP needed; the log names the changed keys as config.toml does."""
    home = make_fake_home(tmp_path, "maxNumberOfRestarts = 3\n")

    def edit(w):
        path = home / "config.toml"
        path.write_text("maxNumberOfRestarts = 0\n")
        os.utime(path, (1, 1))
    world = FakeWorld(home)
    world.at(10, edit)
    world.at(20, lambda w: w.live("core").exit(1))
    code, log = run_in_process(home, world)
    assert code == 1
    assert lines(log, "config reloaded changed=maxNumberOfRestarts")
    assert "(maxNumberOfRestarts = 0)" in log.splitlines()[-1]


def test_a_broken_config_edit_keeps_the_old_settings(tmp_path):
    home = make_fake_home(tmp_path, "maxNumberOfRestarts = 3\n")
    world = FakeWorld(home)
    world.at(10, lambda w: (home / "config.toml").write_text("maxNumberOfRestarts = [\n"))
    world.stop_at(20)
    code, log = run_in_process(home, world)
    assert code == 0
    assert len(lines(log, "config reload failed; keeping the old settings")) == 1


def test_a_real_current_folder_runs_and_is_moved_aside_at_the_upgrade(tmp_path):
    """SPEC 3.1.6: a `current` that is a real folder is used as it is, never deleted."""
    home = make_fake_home(tmp_path, AUTO)
    write_run_config(home / "current", "v1")
    write_fake_binary(home / "current" / "vega", "v1")
    world = FakeWorld(home, FakeChain("v2", upgrade_height=20).answer)
    world.releases["v2"] = "v2"
    world.stop_at(60)
    code, log = run_in_process(home, world)
    assert code == 0
    [aside] = home.glob(".current-replaced-*")
    assert (aside / "vega").read_text().endswith("v1\n")
    assert os.readlink(home / "current") == "v2"


def test_a_current_naming_a_missing_folder_is_a_warning_and_genesis_runs(tmp_path):
    home = make_fake_home(tmp_path)
    os.symlink("v9", home / "current")
    world = FakeWorld(home)
    world.stop_at(5)
    code, log = run_in_process(home, world)
    assert code == 0
    [line] = lines(log, "current points at genesis now")
    assert " WARN " in line and "it points at v9, which does not exist" in line
    assert os.readlink(home / "current") == "genesis"
    assert [(p.version, p.argv[0]) for p in world.started()] == [("v1", f"{home}/current/vega")]
    assert lines(log, "admin socket answering")


def test_an_unwritable_metrics_file_is_warned_about_every_five_minutes(tmp_path):
    home = make_fake_home(tmp_path, f'metricsFile = "{tmp_path}/missing/vv.prom"\n')
    world = FakeWorld(home, FakeChain("v2", upgrade_height=10**6).answer)
    world.stop_at(700)
    code, log = run_in_process(home, world)
    assert code == 0
    assert len(lines(log, "metrics file not written")) == 3


@pytest.mark.parametrize("args, command", [
    (("start", "--home", "/dn"), []),
    (("datanode", "start", "--home", "/dn"), ["datanode"]),
], ids=["standalone-data-node", "vega-datanode"])
def test_the_history_query_adds_datanode_only_when_the_data_node_args_do(
        tmp_path, args, command):
    """SPEC 1.7: an old standalone data-node binary has no `datanode` subcommand."""
    write_fake_binary(tmp_path / "vega", "v1")
    calls = []
    height = vegavisor.latest_history_segment(
        tmp_path, vegavisor.Binary("vega", args),
        lambda argv: calls.append(argv) or '{"LatestSegment": {"to_height": 7}}')
    assert height == 7
    assert calls == [[str(tmp_path / "vega")] + command + [
        "network-history", "latest-history-segment", "--home", "/dn", "--output", "json"]]
