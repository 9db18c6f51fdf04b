"""Prefetch: the accepted release is installed and checked while the old version runs.

The supervisor's decisions run in-process (conftest.FakeWorld: fake clock, processes, admin
answers and installs), the Prefetch object with a clock the test moves against the fake
GitHub; two real `vegavisor.py run` processes remain, end to end: a release staged before
its block, which then needs no network, and a SIGTERM during a prefetch's download."""
from __future__ import annotations

import io
import json
import os
import re
import signal

import pytest

import vegavisor
from conftest import FakeChain
from conftest import FakeJob
from conftest import FakeWorld
from conftest import host_asset_name
from conftest import make_release_zip
from conftest import make_fake_home
from conftest import run_in_process
from conftest import set_table
from conftest import wait_for

# Accepted at height 2 (0.1 s in), upgrade block 60 (3 s in): time enough to prefetch.
FAR_UPGRADE = ["--block-interval", "0.05", "--upgrade-tag", "v2", "--accept-height", "2",
               "--upgrade-height", "60"]


def serve_v2(gh, tmp) -> None:
    gh.add_release("v2", {host_asset_name(): make_release_zip(tmp / "v2.zip", "v2")})


def line_index(log: str, pattern: str) -> int:
    for i, line in enumerate(log.splitlines()):
        if re.search(pattern, line):
            return i
    raise AssertionError(f"no line matching {pattern!r} in:\n{log}")


@pytest.mark.timeout(60)
def test_release_is_staged_before_the_block_and_the_block_needs_no_network(
        home, start_visor, github, short_tmp):
    serve_v2(github, short_tmp)
    set_table(home, "autoInstall", githubApiUrl=github.url)
    home.install_version("genesis", "v1", FAR_UPGRADE)
    visor = start_visor()
    visor.wait_log("prefetched tag=v2")
    assert (home.path / "v2" / "run-config.toml").is_file()
    assert os.readlink(home.path / "current") == "genesis", "staged, not switched"
    state = json.loads((home.path / ".prefetch.json").read_text())
    assert (state["tag"], state["state"], state["attempts"]) == ("v2", "staged", 1)
    requests_when_staged = len(github.requests)
    visor.wait_log(r"started role=core pid=\d+ version=v2")
    log = visor.log()
    assert line_index(log, "prefetched tag=v2") < line_index(log, "ready to upgrade")
    ready = line_index(log, "ready to upgrade")
    after_ready = log.splitlines()[ready:]
    assert not [line for line in after_ready if "download" in line]
    checked = [line for line in after_ready if "version checked" in line]
    assert len(checked) == 1 and f"binary={home.path / 'v2' / 'vega'} version=v2" in checked[0], \
        "the staged folder's one binary is version-checked again at the block"
    assert len(github.requests) == requests_when_staged, "no network I/O at the block"
    [new] = wait_for(lambda: [r for r in home.records("start", role="core")
                              if r["version"] == "v2"], 10, "the v2 core's start")
    assert new["argv"][-2:] == ["--snapshot.load-from-block-height", "60"]
    visor.signal(signal.SIGTERM)
    assert visor.wait_exit() == 0


@pytest.mark.timeout(60)
def test_sigterm_during_a_prefetch_exits_0_and_leaves_nothing_half_made(
        home, start_visor, github, short_tmp):
    serve_v2(github, short_tmp)
    github.slow(r"^/objects/", delay_per_chunk=0.5, chunk_size=1024)  # ~8 s for the zip
    set_table(home, "autoInstall", githubApiUrl=github.url)
    home.install_version("genesis", "v1", FAR_UPGRADE)
    visor = start_visor()
    wait_for(lambda: list(home.path.glob(".staging-v2-*/*.zip")), 15, "a download under way")
    visor.signal(signal.SIGTERM)
    assert visor.wait_exit(10) == 0
    assert not (home.path / "v2").exists()
    assert [p.name for p in home.path.iterdir() if p.name.startswith(".staging")] == []


# --- in-process: the supervisor's prefetch decisions, on a fake clock ---

AUTO = "[autoInstall]\nenabled = true\n"


def far_world(home, world_class=FakeWorld, stop: float = 120) -> FakeWorld:
    """v1 accepts v2 at 2 s and is ready to upgrade at block 60 (60 s in)."""
    world = world_class(home, FakeChain("v2", upgrade_height=60).answer)
    world.releases["v2"] = "v2"
    world.stop_at(stop)
    return world


def assert_upgraded_at_60(home, world, code, log) -> None:
    assert code == 0, log
    assert [(p.version, p.argv[1:]) for p in world.started()] == [
        ("v1", ("node",)), ("v2", ("node", "--snapshot.load-from-block-height", "60"))]
    assert os.readlink(home / "current") == "v2"


class SlowJob:
    """An install that takes `seconds` of the world's clock (a FakeJob is done at once)."""

    def __init__(self, world: FakeWorld, work, seconds: float) -> None:
        self.world, self.work, self.started = world, work, world.clock
        self.due, self.finished = world.clock + seconds, False
        self.error, self.retry_after = "not finished", None

    def done(self) -> bool:
        if not self.finished and self.world.clock >= self.due:
            self.finished = True
            job = FakeJob(self.work)
            self.error, self.retry_after = job.error, job.retry_after
        return self.finished

    def cancel(self) -> None:
        pass


class SlowInstallWorld(FakeWorld):
    install_seconds = 20.0

    def start_job(self, name, work):
        self.job = SlowJob(self, work, self.install_seconds)
        return self.job


def test_admin_polling_goes_on_while_a_slow_prefetch_downloads(tmp_path):
    home = make_fake_home(tmp_path, AUTO)
    world = far_world(home, SlowInstallWorld)
    code, log = run_in_process(home, world)
    assert_upgraded_at_60(home, world, code, log)
    job = world.job
    assert 2 <= job.started < 3 and job.finished, "started once v2 was accepted"
    during = [t for t in world.polls if job.started < t < job.due]
    assert len(during) >= 60, "polls went on every 0.25 s during the 20 s download"
    assert log.index("prefetching tag=v2") < log.index("prefetched tag=v2") \
        < log.index("ready to upgrade")
    assert [t for t, _ in world.installs] == [job.due], "one install, none at the block"


def test_a_prefetch_still_under_way_at_the_block_is_waited_for_not_started_again(tmp_path):
    home = make_fake_home(tmp_path, AUTO)
    world = far_world(home, SlowInstallWorld)
    world.install_seconds = 80.0  # accepted at 2 s, done at 82 s: after the block at 60
    code, log = run_in_process(home, world)
    assert_upgraded_at_60(home, world, code, log)
    job = world.job
    assert [t for t, _ in world.installs] == [job.due], "one install: the prefetch's"
    assert line_index(log, "ready to upgrade tag=v2") \
        < line_index(log, "waiting for the prefetch to finish tag=v2") \
        < line_index(log, "prefetched tag=v2") < line_index(log, "switched")
    assert "installing tag=v2" not in log
    [v1_exit] = [e[0] for e in world.events if e[1] == "exit" and e[3] == world.started()[0].pid]
    assert v1_exit >= job.due, "the node runs on at the block until the prefetch is done"
    assert world.started()[1].started >= job.due


class FlakyWorld(FakeWorld):
    """The first `failures` installs fail as a GitHub answering HTTP 500 makes them."""
    failures = 2

    def install(self, home, config, tag, folder, current, cancel, on_progress=None):
        if self.failures:
            self.failures -= 1
            self.installs.append((self.clock, tag))
            raise vegavisor.InstallError(f"cannot install {tag} from vegaprotocol/vega: "
                                         f"answered HTTP 500 Internal Server Error")
        super().install(home, config, tag, folder, current, cancel, on_progress)


def test_a_failed_prefetch_is_retried_with_backoff(tmp_path):
    home = make_fake_home(tmp_path, AUTO + "prefetchRetryDelaySeconds = 10\n")
    world = far_world(home, FlakyWorld)
    code, log = run_in_process(home, world)
    assert_upgraded_at_60(home, world, code, log)
    assert re.search(r"WARN  prefetch failed tag=v2 attempt=1 retry_in=10(\.0)? error=.*HTTP "
                     r"500", log), log
    assert re.search(r"WARN  prefetch failed tag=v2 attempt=2 retry_in=20(\.0)? ", log), log
    assert re.search(r"INFO  prefetching tag=v2 folder=\S+ attempt=3", log), log
    first, second, third = [t for t, _ in world.installs]
    assert 10 <= second - first < 10.5 and 20 <= third - second < 20.5, world.installs
    assert line_index(log, "prefetched tag=v2") < line_index(log, "ready to upgrade")


def test_prefetch_off_downloads_at_the_block_like_the_original(tmp_path):
    home = make_fake_home(tmp_path, AUTO + "prefetch = false\n")
    world = far_world(home)
    code, log = run_in_process(home, world)
    assert_upgraded_at_60(home, world, code, log)
    assert re.search(r"INFO  auto-install is on .* prefetch=false\n", log), log
    assert [line for line in log.replace(str(tmp_path), "TMP").splitlines()
            if "prefetch" in line and "auto-install is on" not in line] == []
    [(when, tag)] = world.installs
    assert when >= 60 and tag == "v2", "installed at the block, not before"
    assert line_index(log, "ready to upgrade") < line_index(log, "installing tag=v2")


# --- the Prefetch object itself, with a clock the test moves ---

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ClockWorld:
    """The part of vegavisor.World a Prefetch uses, with the test's clock."""

    def __init__(self, clock: Clock) -> None:
        self.now, self.stop_signal = clock, ""

    def wait(self, seconds: float) -> None:
        self.now.now += seconds

    def notify(self, *fields: str) -> None:
        pass

    def query(self, argv):
        return vegavisor.query_binary(argv)

    def install(self, home, config, tag, folder, current, cancel, on_progress=None):
        vegavisor.install_release(home, config, tag, folder, current, None,
                                  vegavisor.Log(io.StringIO()), cancel, on_progress)

    def start_job(self, name, work):
        return vegavisor.InstallJob(work, lambda: None, name)


def make_prefetch(home, gh, clock, **auto):
    set_table(home, "autoInstall", githubApiUrl=gh.url, enabled=True, **auto)
    config, _ = vegavisor.load_config(home.path)
    stream = io.StringIO()
    log = vegavisor.Log(stream)
    world = ClockWorld(clock)
    reporter = vegavisor.Reporter(home.path, config, log, world)
    prefetch = vegavisor.Prefetch(home.path, config, log, world, reporter)
    current, _ = vegavisor.load_run_config(home.path / "genesis")
    return prefetch, current, stream


def drive(prefetch, tag, current, home, until, what):
    def step():
        prefetch.update(tag, current, home.path / "genesis")
        return until()
    wait_for(step, 20, what)


@pytest.mark.timeout(60)
def test_a_tag_replaced_by_a_newer_proposal_is_staged_and_the_old_one_kept(
        home, github, short_tmp):
    serve_v2(github, short_tmp)
    github.add_release("v3", {host_asset_name(): make_release_zip(short_tmp / "v3.zip", "v3")})
    home.install_version("genesis", "v1")
    clock = Clock()
    prefetch, current, stream = make_prefetch(home, github, clock)
    drive(prefetch, "v2", current, home, lambda: prefetch.state == "staged", "v2 staged")
    assert (home.path / "v2" / "run-config.toml").is_file()
    requests = len(github.requests)
    prefetch.update("v3", current, home.path / "genesis")
    assert prefetch.job is None and len(github.requests) == requests, \
        "a new tag's prefetch waits PREFETCH_MIN_START_SECONDS after the previous start"
    clock.now += vegavisor.PREFETCH_MIN_START_SECONDS
    drive(prefetch, "v3", current, home, lambda: prefetch.state == "staged", "v3 staged")
    assert (home.path / "v3" / "run-config.toml").is_file()
    assert (home.path / "v2" / "run-config.toml").is_file(), "a replaced tag's folder stays"
    assert "removing" not in stream.getvalue()
    prefetch.settle("v3")
    assert prefetch.state == "staged"
    state = json.loads((home.path / ".prefetch.json").read_text())
    assert (state["tag"], state["state"]) == ("v3", "staged")


@pytest.mark.timeout(60)
def test_repeated_failures_become_errors_and_wait_for_the_backoff(home, github, short_tmp):
    home.install_version("genesis", "v1")  # GitHub has no v2 at all
    clock = Clock()
    prefetch, current, stream = make_prefetch(home, github, clock, prefetchRetryDelaySeconds=10)
    for attempt in (1, 2, 3):
        drive(prefetch, "v2", current, home, lambda: prefetch.attempts == attempt
              and prefetch.job is None and prefetch.last_error, f"attempt {attempt} failed")
        requests = len(github.requests)
        prefetch.update("v2", current, home.path / "genesis")
        assert len(github.requests) == requests, "no retry before the backoff elapsed"
        clock.now += 10 * 2 ** (attempt - 1)
    levels = re.findall(r"(WARN |ERROR) prefetch failed tag=v2 attempt=(\d)", stream.getvalue())
    assert levels == [("WARN ", "1"), ("WARN ", "2"), ("ERROR", "3")]
    state = json.loads((home.path / ".prefetch.json").read_text())
    assert state["state"] == "failed" and "has no release v2" in state["lastError"]
    prefetch.settle("v2")
    assert prefetch.state == "failed"


@pytest.mark.timeout(60)
def test_an_operator_prepared_folder_is_left_alone(home, github):
    home.install_version("genesis", "v1")
    home.install_version("v2", "v2")
    clock = Clock()
    prefetch, current, stream = make_prefetch(home, github, clock)
    drive(prefetch, "v2", current, home, lambda: prefetch.state == "checked",
          "the prepared v2 checked")
    assert github.requests == [], "a prepared folder is checked, never downloaded"
    assert "prepared release checked tag=v2" in stream.getvalue()
    clock.now += vegavisor.PREFETCH_MIN_START_SECONDS
    prefetch.update("v3", current, home.path / "genesis")
    assert (home.path / "v2" / "run-config.toml").is_file(), "not ours to remove"
