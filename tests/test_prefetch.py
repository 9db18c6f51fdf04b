"""Prefetch: the accepted release is installed and checked while the old version runs."""
from __future__ import annotations

import io
import json
import os
import re
import signal

import pytest

import vegavisor
from conftest import host_asset_name
from conftest import make_release_zip
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
def test_admin_polling_goes_on_while_a_slow_prefetch_downloads(
        home, start_visor, github, short_tmp):
    serve_v2(github, short_tmp)
    github.slow(r"^/objects/", delay_per_chunk=0.05, chunk_size=1024)  # ~1 s for the zip
    set_table(home, "autoInstall", githubApiUrl=github.url)
    home.install_version("genesis", "v1", FAR_UPGRADE)
    visor = start_visor()
    visor.wait_log("prefetching tag=v2")
    polls_at_start = len(home.records("rpc"))
    visor.wait_log("prefetched tag=v2", timeout=30)
    assert len(home.records("rpc")) >= polls_at_start + 5, "polls went on during the download"
    visor.wait_log(r"started role=core pid=\d+ version=v2")
    visor.signal(signal.SIGTERM)
    assert visor.wait_exit() == 0


@pytest.mark.timeout(60)
def test_a_failed_prefetch_is_retried_with_backoff(home, start_visor, github, short_tmp):
    serve_v2(github, short_tmp)
    github.fail(r"^/objects/", 500, times=2)
    set_table(home, "autoInstall", githubApiUrl=github.url, prefetchRetryDelaySeconds=0.2)
    home.install_version("genesis", "v1", FAR_UPGRADE)
    visor = start_visor()
    visor.wait_log("prefetched tag=v2", timeout=30)
    log = visor.log()
    assert re.search(r"WARN  prefetch failed tag=v2 attempt=1 retry_in=0.2 error=.*HTTP 500", log)
    assert re.search(r"WARN  prefetch failed tag=v2 attempt=2 retry_in=0.4 ", log)
    assert "prefetching tag=v2 folder=" in log and "attempt=3" in log
    visor.wait_log(r"started role=core pid=\d+ version=v2")
    visor.signal(signal.SIGTERM)
    assert visor.wait_exit() == 0


@pytest.mark.timeout(60)
def test_prefetch_off_downloads_at_the_block_like_the_original(
        home, start_visor, github, short_tmp):
    serve_v2(github, short_tmp)
    set_table(home, "autoInstall", githubApiUrl=github.url, prefetch=False)
    home.install_version("genesis", "v1", FAR_UPGRADE)
    visor = start_visor()
    visor.wait_log(r"started role=core pid=\d+ version=v2")
    log = visor.log()
    assert re.search(r"INFO  auto-install is on .* prefetch=false\n", log), log
    assert [line for line in log.splitlines() if "prefetch" in line
            and "auto-install is on" not in line] == []
    assert line_index(log, "ready to upgrade") < line_index(log, "downloading tag=v2")
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
