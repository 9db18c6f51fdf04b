"""Release install (vegavisor's `# --- release install ---`): deadlines, cancellation, the
token's origin, asset choice, non-zip assets, staging proof, progress, rate limits.

Most tests call install_release in-process against a FakeGitHub on 127.0.0.1 (a fake
clock where time matters); the command-line ones run `vegavisor.py prepare-upgrade`.
"""
from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import re
import resource
import socket
import stat
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any
from typing import Iterator
from typing import List
from typing import Optional

import pytest

import vegavisor
from conftest import COVERAGE_HANDOVER
from conftest import VEGAVISOR
from conftest import host_asset_name
from conftest import make_release_zip
from conftest import run_vegavisor
from conftest import set_table
from fakes.core import make_binary
from fakes.github import FakeGitHub

TOKEN = "ghp_fakeTOKENthatMustNeverLeave1234567890"
API = "/repos/vegaprotocol/vega"


# --- helpers ---

def release_zip(tmp: Path, version: str = "v2", binary_name: str = "vega") -> bytes:
    return make_release_zip(tmp / f"release-{version}.zip", version, binary_name).read_bytes()


def binary_bytes(tmp: Path, version: str = "v2") -> bytes:
    return make_binary(tmp / f"binary-{version}", version).read_bytes()


def load_config(home: Any, github_url: str, asset: Optional[str] = None,
                binary: Optional[str] = None, **auto: Any) -> vegavisor.Config:
    set_table(home, "autoInstall", githubApiUrl=github_url, **auto)
    config, _ = vegavisor.load_config(home.path)
    settings = config.auto_install.asset
    settings = settings._replace(name=asset or settings.name,
                                 binary_name=binary or settings.binary_name)
    return config._replace(auto_install=config.auto_install._replace(asset=settings))


class Installer:
    """install_release on a home whose genesis runs v1, its log kept in a string."""

    def __init__(self, home: Any) -> None:
        self.home = home
        self.stream = io.StringIO()
        self.log = vegavisor.Log(self.stream)
        home.install_version("genesis", "v1")

    def __call__(self, config: vegavisor.Config, tag: str = "v2",
                 token: Optional[str] = None, **kwargs: Any) -> Path:
        current, _ = vegavisor.load_run_config(self.home.path / "genesis")
        folder = self.home.path / tag
        vegavisor.install_release(self.home.path, config, tag, folder, current, token,
                                  self.log, **kwargs)
        return folder

    def lines(self, message: str) -> List[str]:
        return [line for line in self.stream.getvalue().splitlines() if f" {message} " in line]


@pytest.fixture
def installer(home: Any) -> Installer:
    return Installer(home)


def leftovers(home: Any) -> List[str]:
    """HOME's entries besides what init and the test made: staging folders, temporaries."""
    return sorted(p.name for p in home.path.iterdir()
                  if p.name not in ("config.toml", "current", "genesis"))


def assert_install_fails(installer: Installer, config: vegavisor.Config, pattern: str,
                         **kwargs: Any) -> vegavisor.InstallError:
    with pytest.raises(vegavisor.InstallError) as caught:
        installer(config, **kwargs)
    assert re_search(pattern, str(caught.value)), str(caught.value)
    assert "\n" not in str(caught.value)
    assert leftovers(installer.home) == [], "nothing left behind"
    return caught.value


def errors(stderr: str) -> List[str]:
    """vegavisor's error lines, once it is sure no traceback of vegavisor.py came first
    (under `scripts/test` coverage may add its own output after them)."""
    assert 'File "%s"' % VEGAVISOR not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("vegavisor: error: ")]


def re_search(pattern: str, text: str) -> bool:
    import re
    return re.search(pattern, text) is not None


@pytest.fixture
def other_github() -> Iterator[FakeGitHub]:
    """A second fake GitHub on another port: another origin for the token."""
    with FakeGitHub(unauthenticated_limit=10000) as gh:
        yield gh


class TrickledHeaders:
    """A server on 127.0.0.1 that answers a status line, then a header a byte at a time,
    forever: no read ever times out, only an overall deadline ends the request."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.url = "http://127.0.0.1:%d" % self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                connection, _ = self.sock.accept()
            except socket.timeout:
                continue
            with connection:
                try:
                    connection.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                    while not self.stop.wait(0.1):
                        connection.sendall(b"a")
                except OSError:
                    continue

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


# --- pure rules ---

@pytest.mark.parametrize(("tag", "ok"), [
    ("v0.74.0", True), ("v0.74.0-preview.1", True), ("x" * 128, True),
    ("", False), ("x" * 129, False), ("v1/../x", False), ("..", False), (".hidden", False),
    ("a\\b", False), ("v1\n", False), ("v\0", False), ("v\ud800", False), ("v 1", False),
], ids=["plain", "preview", "128-chars", "empty", "129-chars", "slash", "dot-dot",
        "leading-dot", "backslash", "newline", "nul", "surrogate", "space"])
def test_a_tag_must_be_a_plain_bounded_name(tag: str, ok: bool) -> None:
    assert (vegavisor.tag_problem(tag) is None) is ok


@pytest.mark.parametrize(("name", "ok"), [
    ("vega", True), ("bin/vega", True), ("../vega", False), ("/usr/bin/vega", False),
    ("bin/../vega", False), ("bin//vega", False), ("./vega", False), ("", False),
    ("bin/..", False), ("bin/../../vega", False),
], ids=["plain", "subfolder", "parent", "absolute", "inner-parent", "empty-part", "dot",
        "empty", "trailing-parent", "inner-parent-escaping"])
def test_binary_name_stays_inside_the_release_folder(name: str, ok: bool) -> None:
    assert (vegavisor.binary_name_problem(name) is None) is ok


@pytest.mark.parametrize(("url", "same"), [
    ("https://api.github.com/repos/o/r/releases?page=2", True),
    ("https://API.github.com:443/x", True),
    ("http://api.github.com/x", False),
    ("https://api.github.com:8443/x", False),
    ("https://uploads.github.com/x", False),
    ("https://api.github.com.evil.example/x", False),
    ("https://api.github.com:99999/x", False),
], ids=["same", "case-and-default-port", "other-scheme", "other-port", "other-host",
        "suffix-host", "bad-port"])
def test_same_origin_is_scheme_host_and_port(url: str, same: bool) -> None:
    assert vegavisor.same_origin(url, "https://api.github.com") is same


@pytest.mark.parametrize(("code", "headers", "expected"), [
    (403, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1120"}, (True, 120.0)),
    (429, {"Retry-After": "30"}, (True, 30.0)),
    (403, {"Retry-After": "30", "X-RateLimit-Remaining": "12"}, (True, 30.0)),
    (403, {"X-RateLimit-Remaining": "0"}, (True, None)),
    (403, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "900"}, (True, 0.0)),
    (403, {"X-RateLimit-Remaining": "5"}, (False, None)),
    (500, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1120"}, (False, None)),
], ids=["reset", "retry-after", "secondary-limit", "no-reset", "reset-past", "forbidden",
        "server-error"])
def test_rate_limit_reset(code: int, headers: dict, expected: tuple) -> None:
    assert vegavisor.rate_limit_reset(code, headers, 1000.0) == expected


def test_download_progress_rate_and_eta() -> None:
    assert vegavisor.download_progress(0, 100, 0.0) == (0, 100, 0.0, None)
    assert vegavisor.download_progress(25, 100, 5.0) == (25, 100, 5.0, 15.0)


# --- SPEC 3.3.5: an overall deadline per network step, cancellation ---

@pytest.mark.timeout(30)
def test_a_lookup_that_trickles_fails_at_its_deadline_naming_the_url(
        installer, github, short_tmp):
    github.add_release("v2", {host_asset_name(): release_zip(short_tmp)})
    github.slow(r"/releases/tags/v2", 0.05, chunk_size=1)  # ~2 KB at 20 bytes/s: minutes
    config = load_config(installer.home, github.url, httpTimeoutSeconds=0.5)
    started = time.monotonic()
    assert_install_fails(installer, config, (
        r"^cannot install v2 from vegaprotocol/vega: the release lookup did not finish within "
        r"its deadline of 1s \(http://127\.0\.0\.1:\d+/repos/vegaprotocol/vega/releases/tags/"
        r"v2\)$"))
    assert time.monotonic() - started < 5


@pytest.mark.timeout(30)
def test_an_asset_listing_that_trickles_fails_at_its_deadline(installer, github, short_tmp):
    github.add_release("v2", {host_asset_name(): release_zip(short_tmp)}, embed_assets=0)
    github.slow(r"/releases/\d+/assets", 0.05, chunk_size=1)
    config = load_config(installer.home, github.url, httpTimeoutSeconds=0.5)
    assert_install_fails(installer, config, (
        r"the asset listing did not finish within its deadline of 1s \(http://127\.0\.0\.1:"
        r"\d+/repos/vegaprotocol/vega/releases/\d+/assets\)$"))


@pytest.mark.timeout(30)
def test_a_download_that_trickles_fails_at_its_deadline(installer, github, short_tmp):
    data = release_zip(short_tmp)
    github.add_release("v2", {host_asset_name(): data})
    github.slow(r"^/objects/", 0.05, chunk_size=64)  # 1.3 KB/s: never a read timeout
    config = load_config(installer.home, github.url, httpTimeoutSeconds=0.5)
    deadline = round(0.5 + len(data) / vegavisor.MIN_DOWNLOAD_BYTES_PER_SECOND, 1)
    assert_install_fails(installer, config, (
        r"the download did not finish within its deadline of %s \(http://127\.0\.0\.1:\d+/"
        r"objects/\d+/vega-\w+-\w+\.zip\)$" % (r"%gs" % deadline).replace(".", r"\.")))


@pytest.mark.timeout(30)
def test_headers_that_trickle_fail_at_the_deadline():
    server = TrickledHeaders()
    try:
        github = vegavisor.GitHub(server.url, "o", "r", None, 0.5)
        started = time.monotonic()
        with pytest.raises(vegavisor.InstallError, match=(
                r"^the release lookup did not finish within its deadline of 1s \(http://"
                r"127\.0\.0\.1:\d+/repos/o/r/releases/tags/v2\)$")):
            github.find_release("v2")
        assert time.monotonic() - started < 5
    finally:
        server.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("stalled", [r"/releases/tags/v2", r"^/objects/"],
                         ids=["lookup", "download"])
def test_a_cancel_ends_a_stalled_step_as_cancelled_never_installed(
        installer, github, short_tmp, stalled):
    github.add_release("v2", {host_asset_name(): release_zip(short_tmp)})
    github.slow(stalled, stall_after=100)
    config = load_config(installer.home, github.url)  # httpTimeoutSeconds 60: no help
    cancel = vegavisor.Cancellation()
    threading.Timer(0.5, cancel.cancel).start()
    started = time.monotonic()
    with pytest.raises(vegavisor.InstallCancelled) as caught:
        installer(config, cancel=cancel)
    assert str(caught.value) == "the install of v2 was cancelled; nothing was installed"
    assert time.monotonic() - started < 3
    assert leftovers(installer.home) == []
    assert installer.lines("installed") == []


@pytest.mark.timeout(30)
def test_a_cancel_before_the_rename_installs_nothing(installer, github, short_tmp):
    github.add_release("v2", {host_asset_name(): release_zip(short_tmp)})
    config = load_config(installer.home, github.url)
    cancel = vegavisor.Cancellation()
    with pytest.raises(vegavisor.InstallCancelled):
        installer(config, cancel=cancel, on_progress=lambda progress: cancel.cancel())
    assert leftovers(installer.home) == []


@pytest.mark.timeout(60)
def test_prepare_upgrade_has_the_same_deadlines(home, github, short_tmp):
    github.add_release("v2", {host_asset_name(): release_zip(short_tmp)})
    github.slow(r"/releases/tags/v2", 0.05, chunk_size=1)
    set_table(home, "autoInstall", githubApiUrl=github.url, httpTimeoutSeconds=0.5)
    home.install_version("genesis", "v1")
    done = run_vegavisor(["prepare-upgrade", "--home", str(home.path), "v2"])
    assert done.returncode == 1
    assert errors(done.stderr) == [
        f"vegavisor: error: cannot install v2 from vegaprotocol/vega: the release lookup did "
        f"not finish within its deadline of 1s ({github.url}/repos/vegaprotocol/vega/releases/"
        f"tags/v2)"], done.stderr
    assert leftovers(home) == []


@pytest.mark.timeout(60)
def test_sigterm_stops_prepare_upgrade_cleanly(home, github, short_tmp):
    github.add_release("v2", {host_asset_name(): release_zip(short_tmp)})
    github.slow(r"^/objects/", stall_after=100)
    set_table(home, "autoInstall", githubApiUrl=github.url)
    home.install_version("genesis", "v1")
    proc = subprocess.Popen([sys.executable, str(VEGAVISOR), "prepare-upgrade", "--home",
                             str(home.path), "v2"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        github.wait_for_requests(r"/releases/assets/", timeout=20)  # the 302 to the bytes
        deadline = time.monotonic() + 10
        while not list(home.path.glob(".staging-*/*.zip")) and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.terminate()
        _, stderr = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1
    assert errors(stderr) == ["vegavisor: error: stopped by SIGTERM; nothing was installed"]
    assert leftovers(home) == []


# --- SPEC 3.3.6: the token goes to githubApiUrl's origin only ---

@pytest.mark.timeout(60)
def test_the_token_never_reaches_a_link_or_asset_url_on_another_origin(
        home, github, other_github, short_tmp):
    data = release_zip(short_tmp)
    for gh in (github, other_github):  # the same releases (and ids) on both servers
        gh.add_release("v2", {host_asset_name(): data})
        gh.add_releases([f"v1.{i}" for i in range(120)])  # v2 is on the second page
    github.fail(r"/releases/tags/", 404)  # found through the list, not by tag
    github.link_base = other_github.url
    other_github.asset_base = github.url  # page 2 names assets on the API origin again...
    github.asset_base = other_github.url  # ...and the API origin names them elsewhere
    set_table(home, "autoInstall", githubApiUrl=github.url)
    home.install_version("genesis", "v1")
    done = run_vegavisor(["prepare-upgrade", "--home", str(home.path), "v2"],
                         env=dict(os.environ, GITHUB_TOKEN=TOKEN))
    assert done.returncode == 0, done.stderr
    objects = github.wait_for_requests(r"^/objects/")  # the last request, once recorded
    api = [r for r in github.requests if r.path.startswith(("/repos/", "/repositories/"))]
    assert api and all(r.header("Authorization") == f"Bearer {TOKEN}" for r in api)
    other_github.wait_for_requests(r"/releases\?.*page=2")  # the next page, fetched there
    elsewhere = other_github.requests
    assert [r.path for r in elsewhere if r.header("Authorization") is not None] == []
    assert all(r.header("Authorization") is None for r in objects)
    assert TOKEN not in done.stdout + done.stderr


@pytest.mark.timeout(60)
def test_the_token_goes_with_an_asset_url_on_the_api_origin_only(
        installer, github, other_github, short_tmp):
    data = release_zip(short_tmp)
    for gh in (github, other_github):
        gh.add_release("v2", {host_asset_name(): data})
    github.asset_base = other_github.url
    config = load_config(installer.home, github.url)
    installer(config, token=TOKEN)
    [asset] = other_github.wait_for_requests(r"/releases/assets/")
    assert asset.header("Authorization") is None
    [lookup] = github.wait_for_requests(r"/releases/tags/")
    assert lookup.header("Authorization") == f"Bearer {TOKEN}"


# --- SPEC 3.3.7: only the chosen asset is checked ---

ODD_ASSETS = [
    {"name": "vega-linux-amd64.zip.sha512", "size": 10, "url": "https://h/1",
     "digest": "sha512:" + "ab" * 64},
    {"name": "notes.txt", "size": None, "url": "https://h/2"},
    {"name": "no-url-nor-size"},
    {"size": 10, "url": "https://h/3"},
    {"name": ["not", "a", "name"], "digest": 42},
    "not an object",
    None,
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("embed", [None, 0], ids=["embedded", "listed"])
def test_odd_unrelated_assets_do_not_block_the_release(installer, github, short_tmp, embed):
    github.add_release("v2", {host_asset_name(): release_zip(short_tmp)},
                       odd_assets=ODD_ASSETS, embed_assets=embed)
    folder = installer(load_config(installer.home, github.url))
    assert (folder / "run-config.toml").is_file()


@pytest.mark.timeout(30)
def test_the_chosen_asset_without_a_size_is_refused(installer, github):
    github.add_release("v2", odd_assets=[{"name": host_asset_name(), "size": None,
                                          "url": github.url + API + "/releases/assets/1"}])
    assert_install_fails(installer, load_config(installer.home, github.url), (
        r"describes the asset vega-\w+-\w+\.zip without a usable size, url or digest: "
        r'\{"name": "vega-\w+-\w+\.zip", "size": null, "url": "http://127\.0\.0\.1'))


@pytest.mark.timeout(30)
def test_the_chosen_asset_with_another_digest_algorithm_counts_as_no_digest(
        installer, github, short_tmp):
    github.add_release("v2", {host_asset_name(): release_zip(short_tmp)},
                       digest="sha512:" + "ab" * 64)
    installer(load_config(installer.home, github.url))
    assert "checksum=unknown" in installer.lines("downloading")[0]
    assert 'verified="size only"' in installer.lines("downloaded")[0]


# --- SPEC 3.1.8 / 3.1.9: a non-zip asset is the binary; binaryName may name a subfolder ---

@pytest.mark.timeout(60)
@pytest.mark.parametrize("binary", ["vega", "bin/vega"])
def test_a_non_zip_asset_is_the_binary_itself(installer, github, short_tmp, binary):
    name = host_asset_name()[:-len(".zip")]
    github.add_release("v2", {name: binary_bytes(short_tmp)})
    folder = installer(load_config(installer.home, github.url, asset=name, binary=binary))
    installed = folder / binary
    assert stat.S_IMODE(installed.stat().st_mode) == 0o755
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["run-config.toml", binary.split("/")[0]])
    run_config, _ = vegavisor.load_run_config(folder)
    assert run_config.vega.path == binary
    assert vegavisor.binary_version(installed) == "v2"
    assert installer.lines("version checked")


@pytest.mark.timeout(60)
def test_a_non_zip_asset_of_the_wrong_version_is_never_installed(installer, github, short_tmp):
    name = host_asset_name()[:-len(".zip")]
    github.add_release("v2", {name: binary_bytes(short_tmp, "v3")})
    assert_install_fails(installer, load_config(installer.home, github.url, asset=name),
                         r"the asset's vega reports version v3, not v2$")
    assert not (installer.home.path / "v2").exists()


@pytest.mark.timeout(60)
def test_binary_name_in_a_subfolder_of_the_zip(installer, github, short_tmp):
    github.add_release("v2", {host_asset_name(): release_zip(short_tmp, binary_name="bin/vega")})
    folder = installer(load_config(installer.home, github.url, binary="bin/vega"))
    assert vegavisor.load_run_config(folder)[0].vega.path == "bin/vega"
    assert vegavisor.binary_version(folder / "bin" / "vega") == "v2"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", ["../vega.zip", "release", ".vegavisor-staging"])
def test_an_asset_name_that_is_not_a_plain_file_name_is_refused(installer, github, name):
    assert_install_fails(installer, load_config(installer.home, github.url, asset=name),
                         r"^cannot install: \[autoInstall.asset\] name '%s' must be a plain file "
                         r"name$" % name.replace(".", r"\."))
    assert github.requests == []


@pytest.mark.timeout(30)
def test_binary_name_outside_the_folder_is_refused_before_any_request(installer, github):
    assert_install_fails(installer, load_config(installer.home, github.url, binary="../vega"),
                         r"^cannot install: \[autoInstall.asset\] binaryName '\.\./vega': "
                         r"expected a path inside the release \(not absolute; no '\.\.'")
    assert github.requests == []


# --- SPEC 3.3.1: only provable staging folders are deleted; no rename over a folder ---

def make_dead_staging(home: Path, name: str = "v2") -> Path:
    pid = dead_pid()
    staging = vegavisor.make_staging(home, name, home / name, pid=pid)
    (staging / "release" / "vega").write_bytes(b"half")
    return staging


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.timeout(30)
def test_remove_stale_staging_deletes_only_what_it_can_prove_it_made(tmp_path):
    home = tmp_path
    stale = make_dead_staging(home)
    alive = vegavisor.make_staging(home, "v3", home / "v3", pid=os.getppid())
    earlier_me = vegavisor.make_staging(home, "v7", home / "v7")  # my pid, before I ran
    release = home / "v2"
    release.mkdir()
    (release / "run-config.toml").write_text("name = 'v2'\n")
    unmarked = home / f".staging-v2-{dead_pid()}-0123abcd"
    unmarked.mkdir()
    wrong_pid = make_dead_staging(home, "v4")
    (wrong_pid / vegavisor.STAGING_MARKER).write_text(json.dumps({"pid": 1}))
    link = home / f".staging-v5-{dead_pid()}-0123abcd"
    link.symlink_to(release)
    (release / vegavisor.STAGING_MARKER).write_text(json.dumps({"pid": 0}))
    old_format = home / f".staging-v6-{dead_pid()}"
    old_format.mkdir()
    temporary = home / f"..run-state.json.{dead_pid()}.tmp"
    temporary.write_text("{}")
    operators = home / f".notes.{dead_pid()}.tmp"
    operators.write_text("mine")

    vegavisor.remove_stale_staging(home)

    assert not stale.exists() and not temporary.exists() and not earlier_me.exists()
    for kept in (alive, release, unmarked, wrong_pid, old_format, operators):
        assert kept.is_dir() or kept.is_file(), kept
    assert link.is_symlink() and (release / "run-config.toml").is_file()


@pytest.mark.timeout(30)
def test_move_into_place_never_renames_over_a_folder_that_appeared(tmp_path):
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "vega").write_text("new")
    for appeared in ("empty", "full", "link"):
        folder = tmp_path / appeared
        if appeared == "link":
            folder.symlink_to(tmp_path / "missing")
        else:
            folder.mkdir()
        if appeared == "full":
            (folder / "vega").write_text("the operator's")
        with pytest.raises(vegavisor.InstallError, match=(
                rf"^{folder} appeared while {appeared} was being installed; it was left as "
                rf"it is and nothing was installed$")):
            vegavisor.move_into_place(staged, folder)
    assert (tmp_path / "full" / "vega").read_text() == "the operator's"
    assert (staged / "vega").read_text() == "new"


@pytest.mark.timeout(60)
def test_a_folder_that_appears_during_the_install_is_left_and_nothing_installed(
        installer, github, short_tmp):
    github.add_release("v2", {host_asset_name(): release_zip(short_tmp)})
    target = installer.home.path / "v2"

    def operator_copies_a_release(progress: vegavisor.Progress) -> None:
        if progress.done == progress.total:
            installer.home.install_version("v2", "v3")  # meanwhile, by hand
    with pytest.raises(vegavisor.InstallError, match=r"appeared while v2 was being installed"):
        installer(load_config(installer.home, github.url), on_progress=operator_copies_a_release)
    assert vegavisor.binary_version(target / "vega") == "v3", "the operator's folder is intact"
    assert installer.lines("installed") == []
    assert [p for p in installer.home.path.iterdir() if p.name.startswith(".staging")] == []


# --- SPEC 3.2.4: progress, at most every 10 s ---

@pytest.mark.timeout(60)
def test_progress_is_logged_and_reported_at_most_every_10s(installer, github, short_tmp):
    padding = os.urandom(6 * vegavisor.DOWNLOAD_CHUNK_BYTES)
    binary = binary_bytes(short_tmp)
    data = io.BytesIO()
    info = zipfile.ZipInfo("vega")
    info.external_attr = 0o100755 << 16
    with zipfile.ZipFile(data, "w", zipfile.ZIP_STORED) as z:
        z.writestr(info, binary)
        z.writestr("padding.bin", padding)
    github.add_release("v2", {host_asset_name(): data.getvalue()})
    ticks = itertools.count(0.0, 4.0)  # every look at the clock: 4 s later
    reports: List[vegavisor.Progress] = []
    installer(load_config(installer.home, github.url), on_progress=reports.append,
              clock=lambda: next(ticks))
    total = len(data.getvalue())
    assert reports[-1] == (total, total, reports[-1].rate, 0.0), "the last report: done"
    assert 2 <= len(reports) <= 5
    for earlier, later in zip(reports, reports[1:]):
        assert later.done > earlier.done
    logged = installer.lines("download progress")
    assert len(logged) == len(reports) - 1, "the end is the 'downloaded' line, not progress"
    assert re_search(r"INFO  download progress tag=v2 done=\d+ total=%d rate=\d+ eta=\d+$"
                     % total, logged[0]), logged


# --- SPEC 3.2.2: no traceback, one line naming the path or URL ---

def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("body", "error"), [
    (nested(100000), r"releases/tags/v2 answered JSON nested too deeply$"),
    ('{"tag_name": "v2", "id": 1, "assets": %s}' % nested(100000),
     r"releases/tags/v2 answered JSON nested too deeply$"),
    ("\xff\xfe not json", r"releases/tags/v2 did not answer JSON: "),
    ('{"tag_name": "v3", "id": 1, "assets": []}', r"releases/tags/v2 answered release 'v3'$"),
], ids=["nested-list", "nested-assets", "not-json", "another-tag"])
def test_a_hostile_release_answer_is_one_line(installer, github, body, error):
    github.fail(r"/releases/tags/v2", 200, body=body)
    assert_install_fails(installer, load_config(installer.home, github.url), error)


@pytest.mark.timeout(30)
def test_a_release_list_that_is_not_a_list_is_one_line(installer, github):
    github.fail(r"/releases/tags/v2", 404)
    github.fail(r"/releases\?", 200, body='{"message": "a list, once"}')
    assert_install_fails(installer, load_config(installer.home, github.url),
                         r"^cannot install v2 from vegaprotocol/vega: http://127\.0\.0\.1:\d+/"
                         r"repos/vegaprotocol/vega/releases did not answer a list$")


@pytest.mark.timeout(30)
def test_a_release_list_with_odd_tags_is_one_line(installer, github):
    github.fail(r"/releases/tags/v2", 404)
    github.fail(r"/releases\?", 200, body='[{"tag_name": %s}, 7]' % nested(500))
    assert_install_fails(installer, load_config(installer.home, github.url),
                         r"vegaprotocol/vega has no release v2; its 0 releases are: none$")


def encrypted_zip(data: bytes) -> bytes:
    """A zip whose entry says it is encrypted (flag bit 0), as `zip -e` writes it."""
    raw = bytearray(data)
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = raw.find(signature)
        raw[at + offset] |= 0x1
    return bytes(raw)


@pytest.mark.timeout(30)
def test_an_encrypted_zip_entry_is_one_line(installer, github, short_tmp):
    github.add_release("v2", {host_asset_name(): encrypted_zip(release_zip(short_tmp))})
    assert_install_fails(installer, load_config(installer.home, github.url),
                         r"vega-\w+-\w+\.zip holds 'vega' encrypted; a release is not$")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("tag", ["v" * 300, "../v2", "", ".v2"],
                         ids=["300-chars", "dot-dot", "empty", "leading-dot"])
def test_prepare_upgrade_refuses_a_tag_that_is_not_a_plain_name(home, tag):
    done = run_vegavisor(["prepare-upgrade", "--home", str(home.path), tag])
    assert done.returncode == 2
    [error] = errors(done.stderr)
    assert re.fullmatch(r'vegavisor: error: prepare-upgrade: release tag "[^"]*("|\.\.\.) ('
                        r'is empty|is longer than 128 characters|holds "/", "\\" or "\.\."|'
                        r'starts with a dot)', error), error
    assert leftovers(home) == []


@pytest.mark.timeout(60)
def test_prepare_upgrade_with_the_disk_full_is_one_line(home, github, short_tmp):
    data = release_zip(short_tmp)
    github.add_release("v2", {host_asset_name(): data})
    set_table(home, "autoInstall", githubApiUrl=github.url)
    home.install_version("genesis", "v1")
    limit = len(data) // 2

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    # Unmeasured: under the limit coverage could not write its data file either, and a
    # half-written one made `coverage combine` warn at every run.
    unmeasured = {k: v for k, v in os.environ.items() if k not in COVERAGE_HANDOVER}
    done = subprocess.run([sys.executable, str(VEGAVISOR), "prepare-upgrade", "--home",
                           str(home.path), "v2"], stdout=subprocess.PIPE, env=unmeasured,
                          stderr=subprocess.PIPE, text=True, timeout=30, preexec_fn=small_disk)
    assert done.returncode == 1
    [error] = errors(done.stderr)
    assert re_search(r"^vegavisor: error: cannot install v2 from vegaprotocol/vega: download of "
                     r"vega-\w+-\w+\.zip \(http://127\.0\.0\.1:\d+/\S+\) failed after \d+ "
                     r"bytes: \[Errno 27\] File too large$", error), done.stderr
    assert leftovers(home) == []


# --- rate limits: when the limit lifts travels with the error ---

@pytest.mark.timeout(30)
@pytest.mark.parametrize("status", [403, 429])
def test_a_rate_limit_error_carries_the_seconds_until_it_lifts(installer, github, status):
    github.rate_limit(status, reset=time.time() + 120)
    error = assert_install_fails(installer, load_config(installer.home, github.url),
                                 r"GitHub's API rate limit is used up \(.* answered %d\); it "
                                 r"resets at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC; set "
                                 r"GITHUB_TOKEN for a higher limit$" % status)
    assert 100 < error.retry_after <= 121


@pytest.mark.timeout(30)
def test_other_failures_carry_no_retry_after(installer, github):
    github.fail(r"/releases/tags/v2", 500)
    error = assert_install_fails(installer, load_config(installer.home, github.url),
                                 r"answered HTTP 500 Internal Server Error$")
    assert error.retry_after is None


class HTTPErrorLike:
    def __init__(self, code: int, headers: dict) -> None:
        self.code, self.headers, self.reason = code, headers, "Too Many Requests"


@pytest.mark.parametrize(("headers", "when", "wait"), [
    ({"Retry-After": "90"}, "in 90s", 90.0),
    ({"X-RateLimit-Remaining": "0"}, "an unknown time", None),
    ({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "4102444800"},
     "2100-01-01 00:00:00 UTC", 4102444800.0),
], ids=["retry-after-only", "no-reset", "reset"])
def test_a_rate_limit_message_says_when_it_lifts(headers: dict, when: str,
                                                 wait: Optional[float]) -> None:
    github = vegavisor.GitHub("https://api.github.com", "o", "r", "token", 5)
    error = github.http_error("https://api.github.com/x?secret=1", HTTPErrorLike(429, headers))
    assert str(error) == ("GitHub's API rate limit is used up (https://api.github.com/x "
                          f"answered 429); it resets at {when}")
    if wait is None or wait < 1e9:
        assert error.retry_after == wait
    else:  # seconds from now until that epoch
        assert abs(error.retry_after - (wait - time.time())) < 60


@pytest.mark.timeout(30)
def test_an_os_error_while_installing_is_one_line_naming_the_folder(installer, github,
                                                                    short_tmp):
    github.add_release("v2", {host_asset_name(): release_zip(short_tmp)})
    config = load_config(installer.home, github.url)
    current, _ = vegavisor.load_run_config(installer.home.path / "genesis")
    (installer.home.path / "a-file").write_text("not a folder\n")
    folder = installer.home.path / "a-file" / "v2"  # a subfolder of a file
    with pytest.raises(vegavisor.InstallError, match=(
            rf"^cannot install v2 into {folder}: \[Errno \d+\] File exists: ")):
        vegavisor.install_release(installer.home.path, config, "v2", folder, current, None,
                                  installer.log)
    assert leftovers(installer.home) == ["a-file"]


# --- what a real `run` installed at the upgrade block (test_upgrade.py), decided here ---

def zip_with(entries: List[Any]) -> bytes:
    """A zip of (ZipInfo, bytes) entries, for hostile archives."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        for info, data in entries:
            z.writestr(info, data)
    return buffer.getvalue()


def hostile(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = mode << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


BAD_RELEASES = [
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
    pytest.param(lambda gh, z: (gh.add_release("v2", {host_asset_name(): z}),
                                gh.rate_limit(403, reset=4102444800)),
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


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("arrange", "error"), BAD_RELEASES)
def test_a_bad_release_is_never_installed(installer, github, short_tmp, arrange, error):
    arrange(github, release_zip(short_tmp))
    assert_install_fails(installer, load_config(installer.home, github.url),
                         r"^cannot install v2 from vegaprotocol/vega: .*" + error)
    assert not (installer.home.path.parent / "escaped").exists()


@pytest.mark.timeout(60)
def test_more_than_100_releases_and_assets_are_paged(installer, github, short_tmp):
    filler = {f"extra-{i:03}.zip": b"x" for i in range(150)}
    github.add_release("v2", dict(filler, **{host_asset_name(): release_zip(short_tmp)}),
                       embed_assets=10)
    github.add_releases([f"v1.{i}" for i in range(160)])
    github.fail(r"/releases/tags/", 404)  # as for a tag the API does not find directly
    folder = installer(load_config(installer.home, github.url))
    assert vegavisor.binary_version(folder / "vega") == "v2"
    pages = [r.path for r in github.requests if re.search(r"/releases\?|/assets\?", r.path)]
    assert any("page=2" in p and "/releases?" in p for p in pages), pages
    assert any("page=2" in p and "/assets?" in p for p in pages), pages


@pytest.mark.timeout(30)
def test_require_checksum_refuses_an_asset_without_one(installer, github, short_tmp):
    github.add_release("v2", {host_asset_name(): release_zip(short_tmp)}, digest=None)
    assert_install_fails(installer, load_config(installer.home, github.url,
                                                requireChecksum=True),
                         r"has no known SHA-256 .* requireChecksum = true")
    assert not [r for r in github.requests if r.path.startswith("/objects/")], \
        "nothing was downloaded"


@pytest.mark.timeout(30)
def test_a_pin_that_differs_from_githubs_digest_refuses_both(installer, github, short_tmp):
    data = release_zip(short_tmp)
    github.add_release("v2", {host_asset_name(): data})
    pin = "sha256:" + "0" * 64
    set_table(installer.home, "autoInstall.checksums", v2=pin)
    assert_install_fails(installer, load_config(installer.home, github.url), (
        rf"^cannot install v2 from vegaprotocol/vega: \[autoInstall.checksums\] pins v2 to "
        rf"{pin} but GitHub says {host_asset_name()} has "
        rf"sha256:{hashlib.sha256(data).hexdigest()}; refusing both$"))
    assert not [r for r in github.requests if r.path.startswith("/objects/")], \
        "nothing was downloaded"


@pytest.mark.timeout(30)
def test_a_download_reset_midway_is_one_line_naming_the_asset(installer, github, short_tmp):
    github.add_release("v2", {host_asset_name(): release_zip(short_tmp)})
    github.reset(r"/objects/", after_bytes=100)
    assert_install_fails(installer, load_config(installer.home, github.url),
                         rf"^cannot install v2 from vegaprotocol/vega: download of "
                         rf"{host_asset_name()} \(http://127\.0\.0\.1:\d+/repos/vegaprotocol/"
                         rf"vega/releases/assets/\d+\) failed after \d+ bytes: ")


@pytest.mark.timeout(30)
def test_an_asset_url_that_is_not_http_is_never_fetched(installer, github):
    asset = {"name": host_asset_name(), "size": 100, "url": "file:///etc/passwd",
             "digest": None}
    github.fail(r"/releases/tags/v2", 200,
                body=json.dumps({"tag_name": "v2", "id": 1, "assets": [asset]}))
    assert_install_fails(installer, load_config(installer.home, github.url),
                         r"^cannot install v2 from vegaprotocol/vega: refused to fetch: "
                         r"'file:///etc/passwd' is not an https:// URL$")


@pytest.mark.timeout(30)
def test_a_pinned_checksum_verifies_an_asset_without_digest(installer, github, short_tmp):
    data = release_zip(short_tmp)
    github.add_release("v2", {host_asset_name(): data}, digest=None)
    set_table(installer.home, "autoInstall.checksums",
              v2="sha256:" + hashlib.sha256(data).hexdigest())
    folder = installer(load_config(installer.home, github.url, requireChecksum=True))
    assert "verified=sha256" in installer.lines("downloaded")[0]
    assert vegavisor.binary_version(folder / "vega") == "v2"


@pytest.mark.timeout(30)
def test_an_install_into_a_subfolder_makes_its_parent(installer, github, short_tmp):
    """SPEC 1.7: an [upgradeFolders] value may name a subfolder that does not exist yet."""
    github.add_release("v2", {host_asset_name(): release_zip(short_tmp)})
    config = load_config(installer.home, github.url)
    current, _ = vegavisor.load_run_config(installer.home.path / "genesis")
    folder = installer.home.path / "releases" / "v2"
    vegavisor.install_release(installer.home.path, config, "v2", folder, current, None,
                              installer.log)
    assert 'name = "v2"' in (folder / "run-config.toml").read_text()
    assert vegavisor.binary_version(folder / "vega") == "v2"


@pytest.mark.timeout(30)
def test_the_installed_run_config_keeps_the_running_data_node(installer, github, short_tmp):
    github.add_release("v2", {host_asset_name(): release_zip(short_tmp)})
    installer.home.install_version("genesis", "v1", ["--flag"], data_node=True)
    genesis, _ = vegavisor.load_run_config(installer.home.path / "genesis")
    folder = installer(load_config(installer.home, github.url))
    installed, _ = vegavisor.load_run_config(folder)
    assert installed.name == "v2" and installed.rpc == genesis.rpc
    assert installed.vega.args == genesis.vega.args
    assert installed.data_node == genesis.data_node and installed.data_node.args[:2] == (
        "datanode", "start")
