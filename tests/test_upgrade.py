"""Protocol upgrades through `vegavisor.py run` with the fake core and the fake GitHub."""
from __future__ import annotations

import io
import json
import os
import re
import signal
import stat
import zipfile

import pytest

from conftest import host_asset_name
from conftest import make_release_zip
from conftest import run_vegavisor
from conftest import set_table
from conftest import wait_for

TOKEN = "ghp_fakeTOKENthatMustNeverShow1234567890"
# v1 accepts v2 at height 2 and is ready to upgrade at height 8 (0.4 s in).
UPGRADE = ["--block-interval", "0.05", "--upgrade-tag", "v2", "--accept-height", "2",
           "--upgrade-height", "8"]


def use_github(home, gh, **keys) -> None:
    set_table(home, "autoInstall", githubApiUrl=gh.url, **keys)


def release_zip(tmp, version="v2", **kwargs) -> bytes:
    return make_release_zip(tmp / f"release-{version}.zip", version, **kwargs).read_bytes()


def zip_with(entries) -> bytes:
    """A zip of (ZipInfo or name, bytes) entries, for hostile archives."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        for info, data in entries:
            z.writestr(info, data)
    return buffer.getvalue()


def core_starts(home, version=None):
    return [r for r in home.records("start", role="core")
            if version is None or r["version"] == version]


def assert_upgraded(home, visor, folder="v2", data_node=False):
    visor.wait_log(r"INFO  started role=core pid=\d+ version=v2 attempt=1")
    wait_for(lambda: core_starts(home, "v2"), 10, "the v2 core's first line of life")
    [new] = core_starts(home, "v2")
    assert new["argv"][-2:] == ["--snapshot.load-from-block-height", "8"]
    assert (home.path / "current").resolve() == (home.path / folder).resolve()
    if "/" not in folder:
        assert os.readlink(home.path / "current") == folder, "relative, as Go's Visor makes it"
    if data_node:
        wait_for(lambda: [r for r in home.records("start", role="datanode")
                          if r["version"] == "v2"], 10, "the v2 data node")
    log = visor.log()
    assert log.index("ready to upgrade tag=v2 height=8") < log.index("switched")
    assert "version checked " in log
    visor.signal(signal.SIGTERM)
    assert visor.wait_exit() == 0


def assert_nothing_installed(home, visor, error):
    assert visor.wait_exit(30) == 1
    last = visor.log().strip().splitlines()[-1]
    assert "ERROR giving up" in last
    assert re.search(error, last), last
    assert not (home.path / "v2").exists()
    assert [p.name for p in home.path.iterdir() if p.name.startswith(".staging")] == []
    assert os.readlink(home.path / "current") == "genesis"
    assert core_starts(home, "v2") == [], "no node ran the bad release"
    assert len(core_starts(home, "v1")) == 1


@pytest.mark.timeout(60)
def test_pre_made_folder_is_used_as_the_operator_prepared_it(home, start_visor):
    set_table(home, "autoInstall", githubApiUrl="http://127.0.0.1:9")  # never called
    home.install_version("genesis", "v1", UPGRADE)
    home.install_version("v2", "v2", UPGRADE)
    visor = start_visor()
    assert_upgraded(home, visor)
    assert "downloading" not in visor.log()


@pytest.mark.timeout(60)
def test_upgrade_folders_maps_a_tag_to_another_folder(home, start_visor):
    set_table(home, "upgradeFolders", v2="custom-v2")
    home.install_version("genesis", "v1", UPGRADE)
    home.install_version("custom-v2", "v2", UPGRADE)
    visor = start_visor()
    assert_upgraded(home, visor, folder="custom-v2")


@pytest.mark.timeout(60)
def test_auto_install_off_and_no_folder_exits_1_naming_it(home, start_visor):
    set_table(home, "autoInstall", enabled=False)
    home.install_version("genesis", "v1", UPGRADE)
    visor = start_visor()
    assert visor.wait_exit(30) == 1
    assert (f"release v2 is not installed: {home.path}/v2 does not exist and auto-install "
            f"is off ([autoInstall] enabled); create it with the release's binaries and a "
            f"run-config.toml, or run `vegavisor prepare-upgrade --home {home.path} v2` with "
            f"auto-install on, then start vegavisor again") in visor.log()
    assert os.readlink(home.path / "current") == "genesis"


@pytest.mark.timeout(60)
def test_a_folder_without_run_config_is_a_clear_error(home, start_visor):
    home.install_version("genesis", "v1", UPGRADE)
    (home.path / "v2").mkdir()
    visor = start_visor()
    assert visor.wait_exit(30) == 1
    assert f"{home.path}/v2 exists but has no run-config.toml" in visor.log()
    assert os.readlink(home.path / "current") == "genesis"


@pytest.mark.timeout(60)
def test_a_pre_made_folder_with_the_wrong_version_never_runs(home, start_visor):
    home.install_version("genesis", "v1", UPGRADE)
    home.install_version("v2", "v3", UPGRADE)
    visor = start_visor()
    assert visor.wait_exit(30) == 1
    assert f"core binary {home.path}/v2/vega reports version v3, not v2" in visor.log()
    assert os.readlink(home.path / "current") == "genesis"
    assert core_starts(home, "v3") == []


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
def test_auto_install_into_a_mapped_subfolder_that_does_not_exist_yet(
        home, start_visor, github, short_tmp):
    """SPEC 1.7: an [upgradeFolders] value may name a subfolder; its parent is made."""
    github.add_release("v2", {host_asset_name(): release_zip(short_tmp, "v2")})
    use_github(home, github)
    set_table(home, "upgradeFolders", v2="releases/v2")
    home.install_version("genesis", "v1", UPGRADE)
    visor = start_visor()
    assert_upgraded(home, visor, folder="releases/v2")
    assert 'name = "v2"' in (home.path / "releases" / "v2" / "run-config.toml").read_text()


@pytest.mark.timeout(60)
def test_auto_install_with_a_data_node(home, start_visor, github, short_tmp):
    github.add_release("v2", {host_asset_name(): release_zip(short_tmp)})
    use_github(home, github)
    home.install_version("genesis", "v1", UPGRADE, data_node=True)
    visor = start_visor()
    assert_upgraded(home, visor, data_node=True)
    [dn] = [r for r in home.records("start", role="datanode") if r["version"] == "v2"]
    assert dn["argv"][:2] == ["datanode", "start"]  # argv without the program


@pytest.mark.timeout(60)
def test_more_than_100_releases_and_assets_are_paged(home, start_visor, github, short_tmp):
    filler = {f"extra-{i:03}.zip": b"x" for i in range(150)}
    github.add_release("v2", dict(filler, **{host_asset_name(): release_zip(short_tmp)}),
                       embed_assets=10)
    github.add_releases([f"v1.{i}" for i in range(160)])
    github.fail(r"/releases/tags/", 404)  # as for a tag the API does not find directly
    use_github(home, github)
    home.install_version("genesis", "v1", UPGRADE)
    visor = start_visor()
    assert_upgraded(home, visor)
    pages = [r.path for r in github.requests if re.search(r"/releases\?|/assets\?", r.path)]
    assert any("page=2" in p and "/releases?" in p for p in pages), pages
    assert any("page=2" in p and "/assets?" in p for p in pages), pages


def hostile(name, mode):
    info = zipfile.ZipInfo(name)
    info.external_attr = mode << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


def rate_limited(gh, z):
    gh.add_release("v2", {host_asset_name(): z})
    gh.rate_limit(403, reset=4102444800)


# A retry at the block waits for the rate limit's reset (in 2100 here): give up at once.
rate_limited.max_restarts = 0

FAILURES = [
    pytest.param(lambda gh, z: gh.add_release("v2", {host_asset_name(): z},
                                              digest="sha256:" + "0" * 64),
                 r"has SHA-256 [0-9a-f]{64}, expected 0{64}", id="wrong-digest"),
    pytest.param(lambda gh, z: gh.add_releases(["v1", "v3"], {host_asset_name(): z}),
                 r"vegaprotocol/vega has no release v2; its 2 releases are: v3, v1",
                 id="missing-tag"),
    pytest.param(lambda gh, z: gh.add_release("v2", {"vega-plan9-mips.zip": z}),
                 r"release v2 of vegaprotocol/vega has no asset vega-\w+-\w+\.zip; it has: "
                 r"vega-plan9-mips\.zip", id="missing-asset"),
    pytest.param(lambda gh, z: (gh.add_release("v2", {host_asset_name(): z}),
                                gh.truncate(r"^/objects/", 1000)),
                 r"gave 1000 bytes, GitHub says it has \d+", id="truncated"),
    pytest.param(lambda gh, z: gh.add_release("v2", {host_asset_name(): zip_with(
        [(hostile("vega", 0o100755), b"#!/bin/sh\n"),
         (hostile("../escaped", 0o100644), b"owned")])}),
        r"holds '\.\./escaped', a path outside its folder", id="zip-slip"),
    pytest.param(lambda gh, z: gh.add_release("v2", {host_asset_name(): zip_with(
        [(hostile("vega", 0o120777), b"/bin/sh")])}),
        r"holds 'vega', a symlink; only files and folders are unpacked", id="symlink"),
    pytest.param(lambda gh, z: gh.add_release("v2", {host_asset_name(): zip_with(
        [(hostile("vega", 0o100755), b"\0" * (80 * 1024 * 1024))])}),
        r"would unpack to 83886080 bytes, more than the 67108864 allowed \(a zip bomb\?\)",
        id="zip-bomb"),
    pytest.param(rate_limited,
                 r"GitHub's API rate limit is used up \(.* answered 403\); it resets at "
                 r"2100-01-01 00:00:00 UTC; set GITHUB_TOKEN for a higher limit",
                 id="rate-limit"),
    pytest.param(lambda gh, z: (gh.add_release("v2", {host_asset_name(): z}),
                                gh.redirect(r"^/repos/.*/releases/assets/",
                                            "http://downloads.example.com/vega.zip")),
                 r"refused the redirect from .*: 'http://downloads\.example\.com/vega\.zip' is "
                 r"plain http:// to a host that is not loopback", id="insecure-redirect"),
    pytest.param(lambda gh, z: gh.add_release("v2", {host_asset_name(): b"PK not a zip"}),
                 r"is not a valid zip archive", id="not-a-zip"),
    pytest.param(lambda gh, z: gh.add_release("v2", {host_asset_name(): zip_with(
        [(hostile("vega", 0o100755), b"#!/bin/sh\necho '{\"version\": \"v3\"}'\n")])}),
        r"the asset's vega reports version v3, not v2", id="wrong-version"),
    pytest.param(lambda gh, z: gh.add_release("v2", {host_asset_name(): zip_with(
        [(hostile("vega-binary", 0o100755), b"#!/bin/sh\n")])}),
        r"the asset holds no vega \(its top level holds: vega-binary\)", id="no-binary"),
]


@pytest.mark.parametrize(("arrange", "error"), FAILURES)
@pytest.mark.timeout(90)
def test_a_bad_release_is_never_installed_nor_run(home, start_visor, github, short_tmp,
                                                  arrange, error):
    arrange(github, release_zip(short_tmp))
    use_github(home, github)
    if hasattr(arrange, "max_restarts"):
        home.set_config(maxNumberOfRestarts=arrange.max_restarts)
    home.install_version("genesis", "v1", UPGRADE)
    visor = start_visor()
    assert_nothing_installed(home, visor, r"cannot install v2 from vegaprotocol/vega: .*" + error)
    assert not (home.path.parent / "escaped").exists()


@pytest.mark.timeout(60)
def test_require_checksum_refuses_an_asset_without_one(home, start_visor, github, short_tmp):
    github.add_release("v2", {host_asset_name(): release_zip(short_tmp)}, digest=None)
    use_github(home, github, requireChecksum=True)
    home.install_version("genesis", "v1", UPGRADE)
    visor = start_visor()
    assert_nothing_installed(home, visor, r"has no known SHA-256 .* requireChecksum = true")
    assert not [r for r in github.requests if r.path.startswith("/objects/")], \
        "nothing was downloaded"


@pytest.mark.timeout(60)
def test_a_pinned_checksum_verifies_an_asset_without_digest(home, start_visor, github,
                                                            short_tmp):
    import hashlib
    data = release_zip(short_tmp)
    github.add_release("v2", {host_asset_name(): data}, digest=None)
    use_github(home, github, requireChecksum=True)
    set_table(home, "autoInstall.checksums", v2="sha256:" + hashlib.sha256(data).hexdigest())
    home.install_version("genesis", "v1", UPGRADE)
    visor = start_visor()
    assert_upgraded(home, visor)


@pytest.mark.timeout(30)
def test_an_insecure_api_url_is_refused_before_anything_runs(home):
    set_table(home, "autoInstall", githubApiUrl="http://api.github.com")
    done = run_vegavisor(["run", "--home", str(home.path)])
    assert done.returncode == 2
    assert ("autoInstall.githubApiUrl: 'http://api.github.com' is plain http:// to a host "
            "that is not loopback; use https://") in done.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("prefetch", [False, True], ids=["at-the-block", "prefetch"])
def test_sigterm_during_a_stalled_lookup_is_never_an_install(home, start_visor, github,
                                                             short_tmp, prefetch):
    github.add_release("v2", {host_asset_name(): release_zip(short_tmp)})
    github.slow(r"/releases/tags/v2", stall_after=10)  # then nothing, for ever
    use_github(home, github, prefetch=prefetch)
    home.install_version("genesis", "v1", UPGRADE)
    visor = start_visor()
    wait_for(lambda: github.connections, 20, "the lookup under way")
    if not prefetch:
        visor.wait_log(r"INFO  stopped role=core")
    visor.signal(signal.SIGTERM)
    assert visor.wait_exit(4) == 0, "the cancel ended the lookup at once, not after 5 s"
    log = visor.log()
    assert not re.search(r" (installed|prefetched) ", log), log
    assert "has no run-config.toml" not in log
    assert not (home.path / "v2").exists()
    assert [p.name for p in home.path.iterdir() if p.name.startswith(".staging")] == []
    journal = home.path / ".upgrade-journal.json"
    if not prefetch:
        assert json.loads(journal.read_text())["step"] == "stopped"


# --- prepare-upgrade ---

@pytest.mark.timeout(60)
def test_prepare_upgrade_installs_once_then_is_a_no_op(home, github, short_tmp):
    github.add_release("v2", {host_asset_name(): release_zip(short_tmp)})
    use_github(home, github)
    home.install_version("genesis", "v1", UPGRADE, data_node=True)
    done = run_vegavisor(["prepare-upgrade", "--home", str(home.path), "v2"])
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"installed v2 in {home.path}/v2\n"
    assert (home.path / "v2" / "run-config.toml").is_file()
    assert not os.path.lexists(home.path / "current"), "prepare-upgrade links nothing"
    requests = len(github.requests)
    again = run_vegavisor(["prepare-upgrade", "--home", str(home.path), "v2"])
    assert (again.returncode, again.stdout) == (0, f"v2 is already installed in {home.path}/v2\n")
    assert len(github.requests) == requests


@pytest.mark.timeout(60)
def test_prepare_upgrade_failure_exits_1_and_leaves_nothing(home, github):
    use_github(home, github)
    home.install_version("genesis", "v1", UPGRADE)
    done = run_vegavisor(["prepare-upgrade", "--home", str(home.path), "v2"])
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "vegavisor: error: cannot install v2 from vegaprotocol/vega: vegaprotocol/vega has no "
        "release v2; its 0 releases are: none")
    assert sorted(p.name for p in home.path.iterdir()) == ["config.toml", "genesis"]
