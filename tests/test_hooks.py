"""[hooks] preUpgrade and postUpgrade (issue 13): the decisions in-process (conftest.FakeWorld:
fake clock, fake processes, scripted hooks), then real hooks (tiny shell scripts) around a
real upgrade of the fake core for the real world (their real environment and output, a
process group killed at the timeout), then `validate`, `run` and `status` in-process
(conftest.run_main)."""
from __future__ import annotations

import io
import json
import os
import re
import signal
from contextlib import redirect_stdout
from pathlib import Path

import pytest

import vegavisor
from conftest import FakeChain
from conftest import FakeHook
from conftest import FakeWorld
from conftest import journal
from conftest import lines
from conftest import make_fake_home
from conftest import run_in_process
from conftest import run_main
from conftest import write_fake_binary
from conftest import write_run_config

AUTO = "[autoInstall]\nenabled = true\n"
TOKEN = "ghp_fakeTOKENthatMustNeverShow1234567890"


def script(path: Path, body: str = "exit 0") -> Path:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


def hooks_home(tmp_path: Path, pre: bool = True, post: bool = False, timeout: float = 0,
               extra: str = "") -> Path:
    """A home upgrading v1 -> v2 (auto-install) with the hooks asked for (never run:
    the world fakes them; they must exist for the config to be valid)."""
    lines = [extra + AUTO, "[hooks]"]
    if pre:
        lines.append(f'preUpgrade = ["{script(tmp_path / "pre.sh")}", "--tag-first"]')
    if post:
        lines.append(f'postUpgrade = ["{script(tmp_path / "post.sh")}"]')
    if timeout:
        lines.append(f"timeoutSeconds = {timeout}")
    return make_fake_home(tmp_path, "\n".join(lines) + "\n")


def upgrade_world(home: Path, stop: float = 120, **chain: object) -> FakeWorld:
    world = FakeWorld(home, FakeChain("v2", **dict({"upgrade_height": 20}, **chain)).answer)
    world.releases["v2"] = "v2"
    world.stop_at(stop)
    return world



def event_time(world: FakeWorld, kind: str, *match: object) -> float:
    return next(e[0] for e in world.events if e[1] == kind and e[2:2 + len(match)] == match)


# --- preUpgrade, in-process ---

def test_pre_upgrade_runs_with_the_node_stopped_before_current_is_switched(tmp_path):
    home = hooks_home(tmp_path)
    world = upgrade_world(home)
    world.hooks["preUpgrade"] = {"seconds": 3}
    code, log = run_in_process(home, world, env={"GITHUB_TOKEN": TOKEN, "LANG": "C"})
    assert code == 0, log
    [hook] = world.hook_runs
    v1, v2 = world.started()
    assert v1.code == -signal.SIGTERM
    assert event_time(world, "exit", "core", v1.pid) <= hook.started
    assert event_time(world, "spawn", "core", v2.pid) >= hook.started + 3
    assert hook.argv == (str(tmp_path / "pre.sh"), "--tag-first")
    assert hook.env == {"LANG": "C", "VEGAVISOR_HOOK": "preUpgrade",
                        "VEGAVISOR_HOME": str(home), "VEGAVISOR_UPGRADE_TAG": "v2",
                        "VEGAVISOR_UPGRADE_HEIGHT": "20",
                        "VEGAVISOR_OLD_FOLDER": str(home / "genesis"),
                        "VEGAVISOR_NEW_FOLDER": str(home / "v2")}, "no GITHUB_TOKEN"
    assert log.index("hook started hook=preUpgrade") < log.index("switched")
    assert lines(log, f'hook finished hook=preUpgrade argv="{tmp_path}/pre.sh --tag-first" '
                      f'code=0 seconds=3.0')
    assert os.readlink(home / "current") == "v2"
    record = journal(home)
    assert record["step"] == "done"
    assert (record["preUpgrade"]["state"], record["preUpgrade"]["code"]) == ("ok", 0)
    assert record["postUpgrade"] is None


def test_a_failing_pre_upgrade_stops_the_upgrade_before_the_switch_and_runs_again_next_time(
        tmp_path):
    home = hooks_home(tmp_path)
    world = upgrade_world(home)
    world.hooks["preUpgrade"] = {"seconds": 2, "code": 3, "output": "backup disk full"}
    code, log = run_in_process(home, world)
    assert code == 1
    assert [p.version for p in world.started()] == ["v1"], "v2 never started"
    assert world.live("core") is None, "the node stays stopped"
    assert os.readlink(home / "current") == "genesis"
    assert lines(log, "ERROR hook failed hook=preUpgrade")[0].endswith(
        'code=3 seconds=2.0 error="exited with status 3 (last output: backup disk full)"')
    last = log.splitlines()[-1]
    assert "ERROR giving up" in last
    assert (f"the preUpgrade hook {tmp_path}/pre.sh --tag-first exited with status 3 (last "
            f"output: backup disk full) ([hooks] preUpgrade); the upgrade to v2 stopped before "
            f"{home}/current was switched") in last
    record = journal(home)
    assert record["step"] == "installed"
    assert "([hooks] preUpgrade)" in record["error"]
    assert (record["preUpgrade"]["state"], record["preUpgrade"]["code"]) == ("failed", 3)

    again = FakeWorld(home, FakeChain("v2", upgrade_height=20).answer)  # the hook fixed
    again.stop_at(60)
    code, log = run_in_process(home, again)
    assert code == 0, log
    assert lines(log, "WARN  resuming upgrade tag=v2 height=20 step=installed")
    assert [h.name for h in again.hook_runs] == ["preUpgrade"], "it runs again"
    assert log.index("hook finished hook=preUpgrade") < log.index("upgrade complete tag=v2")
    [v2] = again.started()
    assert v2.version == "v2" and v2.argv[-2:] == ("--snapshot.load-from-block-height", "20")
    assert os.readlink(home / "current") == "v2"
    assert journal(home)["preUpgrade"]["state"] == "ok"


def test_a_pre_upgrade_that_cannot_be_started_stops_the_upgrade(tmp_path):
    home = hooks_home(tmp_path)
    world = upgrade_world(home)
    world.hooks["preUpgrade"] = PermissionError(13, "Permission denied")
    code, log = run_in_process(home, world)
    assert code == 1
    assert "cannot be started: Permission denied ([hooks] preUpgrade)" in log.splitlines()[-1]
    assert os.readlink(home / "current") == "genesis"
    assert journal(home)["preUpgrade"]["state"] == "failed"


@pytest.mark.parametrize("ignores_sigterm, signals", [
    (False, [signal.SIGTERM]),
    (True, [signal.SIGTERM, signal.SIGKILL]),
], ids=["ends-on-sigterm", "needs-sigkill"])
def test_a_pre_upgrade_past_its_timeout_is_killed_and_stops_the_upgrade(
        tmp_path, ignores_sigterm, signals):
    home = hooks_home(tmp_path, timeout=30, extra="stopSignalTimeoutSeconds = 4\n")
    world = upgrade_world(home, stop=10**4)
    world.hooks["preUpgrade"] = {"seconds": None, "ignores_sigterm": ignores_sigterm}
    code, log = run_in_process(home, world)
    assert code == 1
    [hook] = world.hook_runs
    assert hook.signals == signals
    assert 30 <= world.clock - hook.started <= 31 + 4 * ignores_sigterm + 1
    assert ("did not finish within 30s ([hooks] timeoutSeconds); its process group was "
            "killed ([hooks] preUpgrade)") in log.splitlines()[-1]
    assert os.readlink(home / "current") == "genesis"
    assert journal(home)["preUpgrade"]["state"] == "failed"


def test_sigterm_during_pre_upgrade_kills_it_and_the_next_run_runs_it_again(tmp_path):
    home = hooks_home(tmp_path)
    world = upgrade_world(home, stop=40)
    world.hooks["preUpgrade"] = {"seconds": None}
    code, log = run_in_process(home, world)
    assert code == 0
    assert world.hook_runs[0].signals == [signal.SIGTERM]
    assert lines(log, "hook stopped hook=preUpgrade")
    assert log.splitlines()[-1].endswith("INFO  vegavisor stopped signal=SIGTERM")
    assert os.readlink(home / "current") == "genesis"
    record = journal(home)
    assert (record["step"], record["preUpgrade"]["state"]) == ("installed", "stopped")

    again = FakeWorld(home, FakeChain("v2", upgrade_height=20).answer)
    again.stop_at(60)
    code, log = run_in_process(home, again)
    assert code == 0, log
    assert len(again.hook_runs) == 1, "preUpgrade runs again"
    assert [p.version for p in again.started()] == ["v2"]
    assert os.readlink(home / "current") == "v2"
    assert journal(home)["step"] == "done"


def prepared_v2(home: Path) -> None:
    write_run_config(home / "v2", "v2")
    write_fake_binary(home / "v2" / "vega", "v2")


def left_journal(home: Path, step: str, **hooks: object) -> None:
    """The journal as a visor killed with -9 at `step` leaves it."""
    record = {"tag": "v2", "height": 20, "from": "genesis", "to": "v2", "step": step,
              "started": "2026-12-02T22:00:00Z", "updated": "2026-12-02T22:00:01Z"}
    record.update(hooks)
    (home / ".upgrade-journal.json").write_text(json.dumps(record) + "\n")


def test_after_kill_9_during_pre_upgrade_its_leftover_is_stopped_and_it_runs_again(tmp_path):
    home = hooks_home(tmp_path)
    prepared_v2(home)
    world = FakeWorld(home, FakeChain("v2", upgrade_height=20).answer)
    world.stop_at(60)
    leftover = FakeHook(world, 77, "preUpgrade", ["pre.sh"], {}, None, 0)
    world.leftovers.append(leftover)
    left_journal(home, "installed", preUpgrade={"state": "running", "pid": 77,
                                                "startTime": 77 * 7})
    code, log = run_in_process(home, world)
    assert code == 0, log
    assert leftover.signals == [signal.SIGTERM]
    assert lines(log, "stopping a hook left by an earlier vegavisor hook=preUpgrade pid=77")
    assert len(world.hook_runs) == 1 and world.hook_runs[0].started >= 0
    assert event_time(world, "hook", "preUpgrade") < event_time(world, "spawn", "core")
    assert os.readlink(home / "current") == "v2"
    assert journal(home)["preUpgrade"]["state"] == "ok"


@pytest.mark.parametrize("step, pre", [
    ("installed", {"state": "ok", "code": 0, "seconds": 1}),
    ("switched", None),
    ("started", {"state": "running", "pid": 5}),
], ids=["finished-ok", "current-switched", "current-switched-hook-unfinished"])
def test_pre_upgrade_is_not_run_again_once_it_succeeded_or_current_was_switched(
        tmp_path, step, pre):
    home = hooks_home(tmp_path)
    prepared_v2(home)
    if step != "installed":
        (home / "current").symlink_to("v2")
    left_journal(home, step, preUpgrade=pre)
    world = FakeWorld(home, FakeChain("v2", upgrade_height=20).answer)
    world.stop_at(60)
    code, log = run_in_process(home, world)
    assert code == 0, log
    assert world.hook_runs == []
    assert [p.version for p in world.started()] == ["v2"]
    assert journal(home)["step"] == "done"


def test_a_journal_written_before_hooks_existed_is_resumed(tmp_path):
    home = hooks_home(tmp_path, pre=False, post=True)
    prepared_v2(home)
    left_journal(home, "stopped")  # no preUpgrade, no postUpgrade
    world = FakeWorld(home, FakeChain("v2", upgrade_height=20).answer)
    world.stop_at(60)
    code, log = run_in_process(home, world)
    assert code == 0, log
    assert [h.name for h in world.hook_runs] == ["postUpgrade"]
    assert journal(home)["postUpgrade"]["state"] == "ok"


# --- postUpgrade, in-process ---

def test_hooks_are_told_the_old_folder_when_current_names_a_subfolder(tmp_path):
    home = hooks_home(tmp_path, post=True)
    (home / "releases").mkdir()
    os.rename(home / "genesis", home / "releases" / "v1")
    os.symlink("releases/v1", home / "current")
    world = upgrade_world(home)
    code, log = run_in_process(home, world)
    assert code == 0, log
    assert [(h.name, h.env["VEGAVISOR_OLD_FOLDER"]) for h in world.hook_runs] == [
        ("preUpgrade", str(home / "releases" / "v1")),
        ("postUpgrade", str(home / "releases" / "v1"))]
    assert (journal(home)["from"], journal(home)["to"]) == ("releases/v1", "v2")


def test_post_upgrade_runs_once_the_new_core_answers(tmp_path):
    home = hooks_home(tmp_path, pre=False, post=True)
    world = upgrade_world(home)
    code, log = run_in_process(home, world)
    assert code == 0, log
    [hook] = world.hook_runs
    assert hook.name == "postUpgrade"
    assert log.index("upgrade complete tag=v2") < log.index("hook started hook=postUpgrade")
    assert hook.env["VEGAVISOR_NEW_FOLDER"] == str(home / "v2")
    assert hook.env["VEGAVISOR_OLD_FOLDER"] == str(home / "genesis")
    assert lines(log, "INFO  hook finished hook=postUpgrade")
    record = journal(home)
    assert (record["step"], record["postUpgrade"]["state"]) == ("done", "ok")


def test_a_failing_post_upgrade_is_a_warning_and_the_node_keeps_running(tmp_path):
    home = hooks_home(tmp_path, pre=False, post=True)
    world = upgrade_world(home, stop=100)
    world.hooks["postUpgrade"] = {"seconds": 2, "code": 4}
    code, log = run_in_process(home, world)
    assert code == 0
    assert lines(log, "WARN  hook failed hook=postUpgrade")[0].endswith(
        'code=4 seconds=2.0 error="exited with status 4"')
    v1, v2 = world.started()
    assert v2.code == -signal.SIGTERM and v2.signals == [signal.SIGTERM], "stopped at 100 s"
    assert journal(home)["postUpgrade"]["state"] == "failed"


def test_a_hung_post_upgrade_does_not_hold_supervision_and_is_killed_at_its_timeout(tmp_path):
    home = hooks_home(tmp_path, pre=False, post=True, timeout=60)
    world = upgrade_world(home, stop=200)
    world.hooks["postUpgrade"] = {"seconds": None}
    # v2 answers from about 21 s; it crashes at 40 s, while the hook runs
    world.at(40, lambda w: w.live("core").exit(1))
    code, log = run_in_process(home, world)
    assert code == 0, log
    [hook] = world.hook_runs
    v1, v2, v2_again = world.started()
    assert hook.started < v2_again.started < hook.started + 60, "restarted meanwhile"
    assert hook.signals == [signal.SIGTERM]
    assert "did not finish within 60s ([hooks] timeoutSeconds)" in \
        lines(log, "WARN  hook failed hook=postUpgrade")[0]
    assert v2_again.code == -signal.SIGTERM, "kept running until the stop at 200 s"


def test_sigterm_during_post_upgrade_kills_it_and_the_next_run_runs_it_again(tmp_path):
    home = hooks_home(tmp_path, pre=False, post=True)
    world = upgrade_world(home, stop=50)
    world.hooks["postUpgrade"] = {"seconds": None}
    code, log = run_in_process(home, world)
    assert code == 0
    assert world.hook_runs[0].signals == [signal.SIGTERM]
    record = journal(home)
    assert (record["step"], record["postUpgrade"]["state"]) == ("done", "stopped")

    again = FakeWorld(home, FakeChain("v2", upgrade_height=20).answer)
    again.stop_at(60)
    code, log = run_in_process(home, again)
    assert code == 0, log
    assert lines(log, "postUpgrade hook did not finish; it runs again once core answers")
    [hook] = again.hook_runs
    assert hook.started >= again.polls[0], "after core answered"
    assert journal(home)["postUpgrade"]["state"] == "ok"


@pytest.mark.parametrize("state", ["ok", "failed"])
def test_a_post_upgrade_that_ran_to_its_end_is_not_run_again(tmp_path, state):
    home = hooks_home(tmp_path, pre=True, post=True)
    prepared_v2(home)
    (home / "current").symlink_to("v2")
    left_journal(home, "done", preUpgrade={"state": "ok"}, postUpgrade={"state": state})
    world = FakeWorld(home, FakeChain("v2", upgrade_height=20).answer)
    world.stop_at(60)
    code, log = run_in_process(home, world)
    assert code == 0, log
    assert world.hook_runs == []


def test_old_journal_fields_and_hook_records_round_trip():
    old = {"tag": "v2", "height": 20, "from": "genesis", "to": "v2", "step": "done"}
    record = vegavisor.Journal.from_json(old)
    assert (record.pre_upgrade, record.post_upgrade) == (None, None)
    hooked = record._replace(post_upgrade=vegavisor.HookRecord("failed", 4, 2.5, "boom"))
    assert vegavisor.Journal.from_json(hooked.to_json()) == hooked
    with pytest.raises(ValueError, match="hook state is 'maybe'"):
        vegavisor.Journal.from_json(dict(old, preUpgrade={"state": "maybe"}))


# --- real hooks around a real upgrade (fake core, shell scripts) ---

UPGRADE = ["--block-interval", "0.05", "--upgrade-tag", "v2", "--accept-height", "2",
           "--upgrade-height", "8"]
RECORD_ENV = """\
out="$(dirname "$0")/$VEGAVISOR_HOOK.env"
env | grep -E '^(VEGAVISOR_|GITHUB_TOKEN)' | grep -v VEGAVISOR_CHILD | sort > "$out.tmp"
echo "current=$(readlink "$VEGAVISOR_HOME/current")" >> "$out.tmp"
mv "$out.tmp" "$out"
"""


def set_hooks(home, **keys: object) -> None:
    from conftest import toml_value
    path = home.path / "config.toml"
    path.write_text(path.read_text() + "\n[hooks]\n" + "".join(
        f"{key} = {toml_value(value)}\n" for key, value in keys.items()))


def env_file(path: Path) -> dict:
    return dict(line.split("=", 1) for line in path.read_text().splitlines())


@pytest.mark.timeout(60)
def test_real_hooks_see_the_upgrade_in_their_environment(home, start_visor):
    pre = script(home.root / "pre.sh", RECORD_ENV + "echo pre says hello; echo oops >&2")
    post = script(home.root / "post.sh", RECORD_ENV)
    set_hooks(home, preUpgrade=[str(pre)], postUpgrade=[str(post), "x"])
    home.install_version("genesis", "v1", UPGRADE)
    home.install_version("v2", "v2", UPGRADE)
    # Only what vegavisor sets: not a VEGAVISOR_* of the shell running the tests.
    env = {k: v for k, v in os.environ.items() if not k.startswith("VEGAVISOR_")}
    visor = start_visor(env=dict(env, GITHUB_TOKEN=TOKEN))
    visor.wait_log(r"INFO  hook finished hook=postUpgrade")
    facts = {"VEGAVISOR_HOME": str(home.path), "VEGAVISOR_UPGRADE_TAG": "v2",
             "VEGAVISOR_UPGRADE_HEIGHT": "8",
             "VEGAVISOR_OLD_FOLDER": str(home.path / "genesis"),
             "VEGAVISOR_NEW_FOLDER": str(home.path / "v2")}
    assert env_file(home.root / "preUpgrade.env") == dict(
        facts, VEGAVISOR_HOOK="preUpgrade", current="genesis")
    assert env_file(home.root / "postUpgrade.env") == dict(
        facts, VEGAVISOR_HOOK="postUpgrade", current="v2")
    log = visor.log()
    assert re.search(r"INFO  hook output hook=preUpgrade pid=\d+ line=\"pre says hello\"", log)
    assert re.search(r"INFO  hook output hook=preUpgrade pid=\d+ line=oops", log)
    assert (log.index("stopped role=core") < log.index("hook started hook=preUpgrade")
            < log.index("hook finished hook=preUpgrade") < log.index("switched")
            < log.index("upgrade complete") < log.index("hook started hook=postUpgrade"))
    assert re.search(rf'hook finished hook=postUpgrade argv="{home.root}/post.sh x" code=0 '
                     rf'seconds=[\d.]+', log)
    record = journal(home)
    assert (record["preUpgrade"]["state"], record["postUpgrade"]["state"]) == ("ok", "ok")
    visor.signal(signal.SIGTERM)
    assert visor.wait_exit() == 0
    assert TOKEN not in log


@pytest.mark.timeout(60)
def test_a_real_pre_upgrade_past_its_timeout_loses_its_whole_process_group(home, start_visor):
    pids = home.root / "pids"
    pre = script(home.root / "pre.sh", f'sleep 300 & echo $$ $! > {pids}.tmp; '
                                       f'mv {pids}.tmp {pids}; wait')
    set_hooks(home, preUpgrade=[str(pre)], timeoutSeconds=1)
    home.install_version("genesis", "v1", UPGRADE)
    home.install_version("v2", "v2", UPGRADE)
    visor = start_visor()
    assert visor.wait_exit(30) == 1
    assert "did not finish within 1s ([hooks] timeoutSeconds); its process group was killed " \
           "([hooks] preUpgrade)" in visor.log().strip().splitlines()[-1]
    for pid in map(int, pids.read_text().split()):
        assert vegavisor.process_start_time(pid) is None, f"pid {pid} of the hook still runs"
    assert os.readlink(home.path / "current") == "genesis"


# --- validate, run and status, in-process ---

@pytest.mark.parametrize("value, problem", [
    ("[]", "expected a command as an array"),
    ('["pre.sh"]', "pre.sh is not an absolute path"),
    ('["/nonexistent/pre.sh"]', "/nonexistent/pre.sh does not exist"),
    ('["{tmp}"]', "{tmp} is not a regular file"),
    ('["{tmp}/plain"]', "{tmp}/plain is not executable"),
    ('"{tmp}/pre.sh"', "expected an array of strings"),
], ids=["empty", "relative", "missing", "folder", "not-executable", "not-an-array"])
def test_validate_and_run_refuse_a_bad_hook_naming_the_key(home, value, problem):
    tmp = home.root
    (tmp / "plain").write_text("#!/bin/sh\n")
    (tmp / "plain").chmod(0o644)
    path = home.path / "config.toml"
    path.write_text(path.read_text() + "\n[hooks]\npostUpgrade = " + value.format(tmp=tmp) + "\n")
    problem = problem.format(tmp=tmp)
    done = run_main(["validate", "--home", str(home.path)])
    assert done.returncode == 1
    assert f"problem: {path}: hooks.postUpgrade: {problem}" in done.stdout
    # run refuses the file before it starts anything (no lock, no signal handler, no child)
    done = run_main(["run", "--home", str(home.path)])
    assert done.returncode == 2
    assert f"{path}: hooks.postUpgrade: {problem}" in done.stderr
    assert not (home.path / ".run-state.json").exists(), "nothing ran"


def test_validate_refuses_a_timeout_that_is_not_positive(home):
    path = home.path / "config.toml"
    path.write_text(path.read_text() + "\n[hooks]\ntimeoutSeconds = 0\n")
    done = run_main(["validate", "--home", str(home.path)])
    assert done.returncode == 1
    assert (f"problem: {path}: hooks.timeoutSeconds: expected a number of seconds > 0, "
            f"got 0") in done.stdout


def test_validate_accepts_good_hooks(home):
    pre = script(home.root / "pre.sh")
    path = home.path / "config.toml"
    path.write_text(path.read_text() + f'\n[hooks]\npreUpgrade = ["{pre}", "-v"]\n'
                                       f"timeoutSeconds = 60\n")
    done = run_main(["validate", "--home", str(home.path)])
    assert "hooks" not in done.stdout + done.stderr


def status_of(home: Path) -> dict:
    out = io.StringIO()
    with redirect_stdout(out):
        assert vegavisor.main(["status", "--home", str(home), "--output", "json"]) == 0
    return json.loads(out.getvalue())


def human_status(home: Path) -> str:
    out = io.StringIO()
    with redirect_stdout(out):
        assert vegavisor.main(["status", "--home", str(home)]) == 0
    return out.getvalue()


def test_status_shows_the_hooks_and_the_last_hook_outcome(tmp_path):
    home = hooks_home(tmp_path, pre=True, post=True, timeout=60)
    left_journal(home, "installed", preUpgrade={
        "state": "failed", "code": 3, "seconds": 1.5, "error": "exited with status 3",
        "updated": "2026-12-02T22:00:02Z"})
    hooks = status_of(home)["hooks"]
    assert hooks == {
        "preUpgrade": [str(tmp_path / "pre.sh"), "--tag-first"],
        "postUpgrade": [str(tmp_path / "post.sh")], "timeoutSeconds": 60.0,
        "last": {"hook": "preUpgrade", "tag": "v2", "state": "failed", "code": 3,
                 "seconds": 1.5, "error": "exited with status 3",
                 "updated": "2026-12-02T22:00:02Z"}}
    text = human_status(home)
    assert re.search(rf"hooks +preUpgrade {tmp_path}/pre.sh --tag-first; postUpgrade "
                     rf"{tmp_path}/post.sh; timeout 60s\n", text)
    assert re.search(r"last hook +preUpgrade of v2 failed \(exited with status 3\) after "
                     r"1.5s, 2026-12-02T22:00:02Z\n", text)
    assert re.search(r"  - hooks: the preUpgrade hook failed for the upgrade to v2", text)


def test_status_says_when_no_hooks_are_configured(tmp_path):
    home = make_fake_home(tmp_path)
    report = status_of(home)
    assert report["hooks"] == {"preUpgrade": None, "postUpgrade": None,
                               "timeoutSeconds": 300.0, "last": None}
    assert re.search(r"hooks +none\n", human_status(home))
