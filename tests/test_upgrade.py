"""Protocol upgrades: which folder is used, what is installed and what never runs.

The decisions run in-process (conftest.FakeWorld: fake clock, processes, admin answers and
installs; each test takes milliseconds); the install decisions (checksums, paging, bad
archives) are in test_release.py, against the fake GitHub. A few real `vegavisor.py run`
processes with the fake core and the fake GitHub remain, end to end: a real download that
is verified and switched to, and a SIGTERM during a stalled lookup."""
from __future__ import annotations

import json
import os
import re
import signal
import stat

import pytest

import vegavisor
from conftest import FakeChain
from conftest import FakeJob
from conftest import FakeWorld
from conftest import host_asset_name
from conftest import journal
from conftest import lines
from conftest import make_fake_home
from conftest import make_release_zip
from conftest import run_in_process
from conftest import run_main
from conftest import set_table
from conftest import wait_for
from conftest import write_fake_binary
from conftest import write_run_config

TOKEN = "ghp_fakeTOKENthatMustNeverShow1234567890"
AUTO = "[autoInstall]\nenabled = true\n"
SNAPSHOT = "--snapshot.load-from-block-height"
# v1 accepts v2 at height 2 and is ready to upgrade at height 8 (0.4 s in).
UPGRADE = ["--block-interval", "0.05", "--upgrade-tag", "v2", "--accept-height", "2",
           "--upgrade-height", "8"]


# --- in-process: the supervisor's decisions, on a fake clock ---

def prepare(home, folder: str, version: str, data_node: bool = False) -> None:
    """A release folder as an operator makes it by hand."""
    write_run_config(home / folder, version, data_node=data_node)
    write_fake_binary(home / folder / "vega", version)



def upgrade_world(home, stop: float = 60) -> FakeWorld:
    """v1 accepts v2 at 2 s and is ready to upgrade at block 20 (20 s in)."""
    world = FakeWorld(home, FakeChain("v2", upgrade_height=20).answer)
    world.stop_at(stop)
    return world


def assert_switched(home, world: FakeWorld, code: int, log: str, folder: str = "v2") -> None:
    assert code == 0, log
    v1, v2 = world.started()
    assert (v1.version, v2.version) == ("v1", "v2")
    assert v2.argv[-2:] == (SNAPSHOT, "20"), "the new core starts from the upgrade snapshot"
    assert os.path.realpath(home / "current") == os.path.realpath(home / folder)
    if "/" not in folder:
        assert os.readlink(home / "current") == folder, "relative, as Go's Visor makes it"
    assert log.index("ready to upgrade tag=v2 height=20") < log.index("switched")
    assert lines(log, f"version checked role=core binary={home / folder / 'vega'} version=v2")


def assert_never_switched(home, world: FakeWorld, code: int, log: str, reason: str) -> None:
    """Exit 1 naming why; the node stays at v1, current at genesis; nothing else ran."""
    assert code == 1, log
    last = log.splitlines()[-1]
    assert "ERROR giving up" in last and reason in last, last
    assert os.readlink(home / "current") == "genesis"
    assert [p.version for p in world.started()] == ["v1"], "no node ran another release"


def test_a_pre_made_folder_is_used_as_the_operator_prepared_it(tmp_path):
    home = make_fake_home(tmp_path, AUTO + 'githubApiUrl = "http://127.0.0.1:9"\n')
    prepare(home, "v2", "v2")
    world = upgrade_world(home)  # world.releases is empty: an install would fail
    code, log = run_in_process(home, world)
    assert_switched(home, world, code, log)
    assert world.installs == [], "a prepared folder is checked, never downloaded"
    assert lines(log, "prepared release checked tag=v2")
    assert not lines(log, "installing") and not lines(log, "prefetching")


def test_upgrade_folders_maps_a_tag_to_another_folder(tmp_path):
    home = make_fake_home(tmp_path, AUTO + '[upgradeFolders]\nv2 = "custom-v2"\n')
    prepare(home, "custom-v2", "v2")
    world = upgrade_world(home)
    code, log = run_in_process(home, world)
    assert_switched(home, world, code, log, folder="custom-v2")
    assert world.installs == [] and not (home / "v2").exists()


def test_auto_install_off_and_no_folder_exits_1_naming_it(tmp_path):
    home = make_fake_home(tmp_path, "[autoInstall]\nenabled = false\n")
    world = upgrade_world(home)
    code, log = run_in_process(home, world)
    assert_never_switched(home, world, code, log, (
        f"release v2 is not installed: {home}/v2 does not exist and auto-install is off "
        f"([autoInstall] enabled); create it with the release's binaries and a "
        f"run-config.toml, or run `vegavisor prepare-upgrade --home {home} v2` with "
        f"auto-install on, then start vegavisor again"))
    assert world.installs == []


def test_a_folder_without_run_config_is_a_clear_error(tmp_path):
    home = make_fake_home(tmp_path, AUTO)
    (home / "v2").mkdir()
    world = upgrade_world(home)
    world.releases["v2"] = "v2"  # never installed: the folder is there
    code, log = run_in_process(home, world)
    assert_never_switched(home, world, code, log, f"{home}/v2 exists but has no run-config.toml")
    assert world.installs == [] and list((home / "v2").iterdir()) == []


def test_a_pre_made_folder_with_the_wrong_version_never_runs(tmp_path):
    home = make_fake_home(tmp_path, AUTO)
    prepare(home, "v2", "v3")
    world = upgrade_world(home)
    code, log = run_in_process(home, world)
    assert_never_switched(home, world, code, log,
                          f"core binary {home}/v2/vega reports version v3, not v2")


class ReleaseWorld(FakeWorld):
    """Installs write the run-config vegavisor's installer writes (derived from the running
    one, data node and all) beside a fake binary, and move it into place as it does."""

    def install(self, home, config, tag, folder, current, cancel, on_progress=None):
        self.installs.append((self.clock, tag))
        self.folders = getattr(self, "folders", []) + [folder]
        if self.releases.get(tag) is None:
            raise vegavisor.InstallError(self.install_error)
        staged = home / f".staged-{tag}"
        write_fake_binary(staged / "vega", self.releases[tag])
        document = vegavisor.run_config_document(vegavisor.release_run_config(current, tag,
                                                                              "vega"))
        (staged / "run-config.toml").write_text(vegavisor.write_toml(document))
        vegavisor.move_into_place(staged, folder)


def test_auto_install_into_a_mapped_subfolder_that_does_not_exist_yet(tmp_path):
    """SPEC 1.7: an [upgradeFolders] value may name a subfolder; its parent is made."""
    home = make_fake_home(tmp_path, AUTO + '[upgradeFolders]\nv2 = "releases/v2"\n')
    world = ReleaseWorld(home, FakeChain("v2", upgrade_height=20).answer)
    world.releases["v2"] = "v2"
    world.stop_at(60)
    code, log = run_in_process(home, world)
    assert_switched(home, world, code, log, folder="releases/v2")
    assert world.folders == [home / "releases" / "v2"]
    assert 'name = "v2"' in (home / "releases" / "v2" / "run-config.toml").read_text()
    assert journal(home)["to"] == "releases/v2"


def test_auto_install_with_a_data_node(tmp_path):
    home = make_fake_home(tmp_path, AUTO, data_node=True)
    world = ReleaseWorld(home, FakeChain("v2", upgrade_height=20).answer)
    world.releases["v2"] = "v2"
    world.stop_at(60)
    code, log = run_in_process(home, world)
    assert_switched(home, world, code, log)
    assert [p.version for p in world.started("data node")] == ["v1", "v2"]
    v2 = world.started("data node")[1]
    assert v2.argv[1:3] == ("datanode", "start"), "the installed run-config keeps the data node"
    assert lines(log, f"version checked role=\"data node\" binary={home / 'v2' / 'vega'}")


@pytest.mark.parametrize("restarts", [0, 2])
def test_a_failed_install_at_the_block_is_retried_then_gives_up_and_never_runs(
        tmp_path, restarts):
    home = make_fake_home(tmp_path, f"maxNumberOfRestarts = {restarts}\nrestartsDelaySeconds = 5\n"
                          + AUTO + "prefetch = false\n")
    world = upgrade_world(home, stop=10**3)
    world.install_error = "cannot install v2 from vegaprotocol/vega: answered HTTP 500"
    code, log = run_in_process(home, world)
    assert_never_switched(home, world, code, log, (
        f"cannot install v2 from vegaprotocol/vega: answered HTTP 500 (gave up after "
        f"{restarts + 1} attempts: maxNumberOfRestarts = {restarts})"))
    times = [t for t, _ in world.installs]
    assert len(times) == restarts + 1 and times[0] >= 20, "at the block, not before"
    assert [b - a for a, b in zip(times, times[1:])] == [5, 10][:restarts], "the backoff"
    assert len(lines(log, "ERROR install failed tag=v2")) == restarts
    assert world.live("core") is None and not (home / "v2").exists()


def test_a_sigterm_in_the_install_retry_delay_ends_the_run_leaving_the_journal(tmp_path):
    home = make_fake_home(tmp_path, "maxNumberOfRestarts = 3\nrestartsDelaySeconds = 60\n"
                          + AUTO + "prefetch = false\n")
    world = upgrade_world(home, stop=50)
    code, log = run_in_process(home, world)
    assert code == 0, log
    assert len(world.installs) == 1, "no second attempt after the signal"
    assert lines(log, "ERROR install failed tag=v2 attempt=1 limit=3 retry_in=60.0 ")
    assert log.splitlines()[-1].endswith("INFO  vegavisor stopped signal=SIGTERM")
    assert world.clock == 50, "the retry delay was cut short by the signal"
    assert journal(home)["step"] != "done", "the next run finishes the upgrade"
    assert os.readlink(home / "current") == "genesis" and world.live("core") is None


def test_a_sigterm_while_the_node_stops_at_the_block_installs_nothing(tmp_path):
    home = make_fake_home(tmp_path, "stopDelaySeconds = 10\n" + AUTO + "prefetch = false\n")
    world = upgrade_world(home, stop=25)  # ready at 20 s, stopping until 30 s
    world.releases["v2"] = "v2"
    code, log = run_in_process(home, world)
    assert code == 0, log
    assert world.installs == [], "a stop requested at the block installs nothing"
    assert [p.version for p in world.started()] == ["v1"] and world.live("core") is None
    assert journal(home)["step"] == "stopped", "the next run finishes the upgrade"
    assert os.readlink(home / "current") == "genesis"
    assert log.splitlines()[-1].endswith("INFO  vegavisor stopped signal=SIGTERM")


class RateLimitedWorld(FakeWorld):
    def install(self, home, config, tag, folder, current, cancel, on_progress=None):
        self.installs.append((self.clock, tag))
        raise vegavisor.InstallError("GitHub's API rate limit is used up", retry_after=100)


def test_an_install_retry_at_the_block_waits_for_the_rate_limit_reset(tmp_path):
    home = make_fake_home(tmp_path, "maxNumberOfRestarts = 1\nrestartsDelaySeconds = 5\n"
                          + AUTO + "prefetch = false\n")
    world = RateLimitedWorld(home, FakeChain("v2", upgrade_height=20).answer)
    code, log = run_in_process(home, world)
    assert_never_switched(home, world, code, log, "GitHub's API rate limit is used up (gave "
                          "up after 2 attempts: maxNumberOfRestarts = 1)")
    first, second = [t for t, _ in world.installs]
    assert second - first == 100, "not restartsDelaySeconds (5 s): the reset"
    assert lines(log, "ERROR install failed tag=v2 attempt=1 limit=1 retry_in=100 ")


class ProgressJob:
    """An install that runs at once, reporting half its bytes, then takes `seconds` of the
    world's clock to finish (a FakeJob is done at once)."""

    def __init__(self, world: FakeWorld, work, seconds: float) -> None:
        self.world, self.due = world, world.clock + seconds
        job = FakeJob(work)
        self.error, self.retry_after = job.error, job.retry_after

    def done(self) -> bool:
        return self.world.clock >= self.due

    def cancel(self) -> None:
        pass


class ProgressWorld(FakeWorld):
    def install(self, home, config, tag, folder, current, cancel, on_progress=None):
        super().install(home, config, tag, folder, current, cancel, on_progress)
        on_progress(vegavisor.download_progress(500, 1000, 5.0))

    def start_job(self, name, work):
        return ProgressJob(self, work, 30)


def test_a_download_at_the_block_shows_its_progress_in_the_run_state(tmp_path):
    home = make_fake_home(tmp_path, AUTO + "prefetch = false\n")
    world = ProgressWorld(home, FakeChain("v2", upgrade_height=20).answer)
    world.releases["v2"] = "v2"
    seen = []
    world.at(35, lambda w: seen.append(json.loads((home / ".run-state.json").read_text())))
    world.stop_at(90)
    code, log = run_in_process(home, world)
    assert_switched(home, world, code, log)
    [during] = seen
    assert during["phase"] == "upgrading"
    assert during["download"] == {"tag": "v2", "done": 500, "total": 1000, "rate": 100,
                                  "eta": 5.0}, "status shows the download under way"
    assert json.loads((home / ".run-state.json").read_text())["download"] is None


# --- real processes, end to end ---

def use_github(home, gh, **keys) -> None:
    set_table(home, "autoInstall", githubApiUrl=gh.url, **keys)


def release_zip(tmp, version="v2", **kwargs) -> bytes:
    return make_release_zip(tmp / f"release-{version}.zip", version, **kwargs).read_bytes()


def core_starts(home, version=None):
    return [r for r in home.records("start", role="core")
            if version is None or r["version"] == version]


def assert_upgraded(home, visor, folder="v2"):
    visor.wait_log(r"INFO  started role=core pid=\d+ version=v2 attempt=1")
    wait_for(lambda: core_starts(home, "v2"), 10, "the v2 core's first line of life")
    [new] = core_starts(home, "v2")
    assert new["argv"][-2:] == [SNAPSHOT, "8"]
    assert (home.path / "current").resolve() == (home.path / folder).resolve()
    assert os.readlink(home.path / "current") == folder, "relative, as Go's Visor makes it"
    log = visor.log()
    assert log.index("ready to upgrade tag=v2 height=8") < log.index("switched")
    assert "version checked " in log
    visor.signal(signal.SIGTERM)
    assert visor.wait_exit() == 0


@pytest.mark.timeout(60)
def test_auto_install_downloads_verifies_and_switches(home, start_visor, github, short_tmp):
    github.add_release("v1", {host_asset_name(): release_zip(short_tmp, "v1")})
    github.add_release("v2", {host_asset_name(): release_zip(short_tmp, "v2"),
                              "vega-darwin-arm64.zip": b"not this one"})
    use_github(home, github)
    home.install_version("genesis", "v1", UPGRADE)
    visor = start_visor(env=dict(os.environ, GITHUB_TOKEN=TOKEN))
    assert_upgraded(home, visor)
    log = visor.log()
    assert re.search(r"downloaded tag=v2 asset=\S+ size=\d+ seconds=[\d.]+ verified=sha256", log)
    run_config = (home.path / "v2" / "run-config.toml").read_text()
    assert 'name = "v2"' in run_config
    assert stat.S_IMODE(os.stat(home.path / "v2" / "vega").st_mode) == 0o755
    # The token went to the API and nowhere else: not the storage host, not a log, not a file.
    api = [r for r in github.requests if r.path.startswith("/repos/")]
    assert api and all(r.header("Authorization") == f"Bearer {TOKEN}" for r in api)
    objects = [r for r in github.requests if r.path.startswith("/objects/")]
    assert objects and all(r.header("Authorization") is None for r in objects)
    assert TOKEN not in log
    for path in home.root.rglob("*"):
        if path.is_file() and not path.name.startswith("visor-"):
            assert TOKEN.encode() not in path.read_bytes(), path


@pytest.mark.timeout(60)
def test_sigterm_during_a_stalled_lookup_at_the_block_is_never_an_install(
        home, start_visor, github, short_tmp):
    github.add_release("v2", {host_asset_name(): release_zip(short_tmp)})
    github.slow(r"/releases/tags/v2", stall_after=10)  # then nothing, for ever
    use_github(home, github, prefetch=False)
    home.install_version("genesis", "v1", UPGRADE)
    visor = start_visor()
    wait_for(lambda: github.connections, 20, "the lookup under way")
    visor.wait_log(r"INFO  stopped role=core")
    visor.signal(signal.SIGTERM)
    assert visor.wait_exit(4) == 0, "the cancel ended the lookup at once, not after 5 s"
    log = visor.log()
    assert not re.search(r" (installed|prefetched) ", log), log
    assert "has no run-config.toml" not in log
    assert not (home.path / "v2").exists()
    assert [p.name for p in home.path.iterdir() if p.name.startswith(".staging")] == []
    assert journal(home)["step"] == "stopped"


# --- commands that need no node, in-process through vegavisor.main ---

@pytest.mark.timeout(30)
def test_an_insecure_api_url_is_refused_before_anything_runs(home):
    set_table(home, "autoInstall", githubApiUrl="http://api.github.com")
    done = run_main(["run", "--home", str(home.path)])
    assert done.returncode == 2
    assert ("autoInstall.githubApiUrl: 'http://api.github.com' is plain http:// to a host "
            "that is not loopback; use https://") in done.stderr
    assert not os.path.lexists(home.path / "current"), "nothing ran"


@pytest.mark.timeout(60)
def test_prepare_upgrade_installs_once_then_is_a_no_op(home, github, short_tmp):
    github.add_release("v2", {host_asset_name(): release_zip(short_tmp)})
    use_github(home, github)
    home.install_version("genesis", "v1", UPGRADE, data_node=True)
    done = run_main(["prepare-upgrade", "--home", str(home.path), "v2"])
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"installed v2 in {home.path}/v2\n"
    assert (home.path / "v2" / "run-config.toml").is_file()
    assert not os.path.lexists(home.path / "current"), "prepare-upgrade links nothing"
    requests = len(github.requests)
    again = run_main(["prepare-upgrade", "--home", str(home.path), "v2"])
    assert (again.returncode, again.stdout) == (0, f"v2 is already installed in {home.path}/v2\n")
    assert len(github.requests) == requests


@pytest.mark.timeout(60)
def test_prepare_upgrade_failure_exits_1_and_leaves_nothing(home, github):
    use_github(home, github)
    home.install_version("genesis", "v1", UPGRADE)
    done = run_main(["prepare-upgrade", "--home", str(home.path), "v2"])
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "vegavisor: error: cannot install v2 from vegaprotocol/vega: vegaprotocol/vega has no "
        "release v2; its 0 releases are: none")
    assert sorted(p.name for p in home.path.iterdir()) == ["config.toml", "genesis"]
