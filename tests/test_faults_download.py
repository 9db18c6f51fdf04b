"""Fault matrix, downloads: each row a GitHub or network fault during a v1 -> v2 upgrade.

Every row runs the real `vegavisor.py run` against the fake core and a FakeGitHub on
127.0.0.1, through a small launcher that records (with a `sys.addaudithook` hook)
every host name visor resolves and every IP address it connects to: no row may
resolve or reach anything but loopback.

A row that fails must leave the node where it was: exit 1, the last log line
`ERROR giving up reason="cannot install v2 from vegaprotocol/vega: <cause> (gave up
after N attempts: maxNumberOfRestarts = N-1)"`, no
HOME/v2, no HOME/.staging-*, current -> genesis, and no v2 core ever started.
maxNumberOfRestarts = 1 keeps the install retries at the block (and the file) short (0
where a retry would wait for GitHub's rate limit to reset).
"""
from __future__ import annotations

import functools
import io
import json
import os
import re
import resource
import signal
import stat
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any
from typing import Callable
from typing import Dict
from typing import List
from typing import NamedTuple
from typing import Optional
from typing import Sequence

import pytest

from conftest import Home
from conftest import Row
from conftest import VIA_CACHED_BYTECODE
from conftest import Visor
from conftest import host_asset_name
from conftest import make_release_zip
from conftest import rows
from conftest import set_table
from conftest import wait_for
from fakes.github import FakeGitHub

# v1 accepts v2 at height 2 and is ready to upgrade at height 8 (0.4 s in).
UPGRADE = ("--block-interval", "0.05", "--upgrade-tag", "v2", "--accept-height", "2",
           "--upgrade-height", "8")
# Ready at height 30 (1.5 s in): time for a failed prefetch to be retried before the block.
LATER_UPGRADE = ("--block-interval", "0.05", "--upgrade-tag", "v2", "--accept-height", "2",
                 "--upgrade-height", "30")
GIVING_UP = "cannot install v2 from vegaprotocol/vega: "
# Each reason ends so: the attempt at the block and its retries all failed.
GAVE_UP_AFTER = " (gave up after {n} attempts: maxNumberOfRestarts = {limit})"
# Disk full: the download is 20 MB, files may grow to 5 MB (the fake cores, logs and
# state files are far smaller). Python ignores SIGXFSZ, so a write fails with EFBIG.
BIG_ASSET_BYTES = 20 * 1024 * 1024
FILE_SIZE_LIMIT = 5 * 1024 * 1024
LOOPBACK = {"127.0.0.1", "::1", "localhost"}

# Runs vegavisor.py through conftest's VIA_CACHED_BYTECODE after installing an audit hook
# that appends one line per name lookup ("resolve HOST") and per IP connect ("connect
# HOST") to argv[1].
AUDIT_LAUNCHER = r"""
import os, sys
LOG = sys.argv.pop(1)
def record(kind, host):
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, ("%s %s\n" % (kind, host if isinstance(host, str) else repr(host))).encode())
    finally:
        os.close(fd)
def hook(event, args):
    if event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex",
                 "socket.gethostbyaddr", "socket.getnameinfo"):
        record("resolve", args[0])
    elif event in ("socket.connect", "socket.sendto", "socket.sendmsg") \
            and isinstance(args[-1], tuple):
        record("connect", args[-1][0])
sys.addaudithook(hook)
""" + VIA_CACHED_BYTECODE


def audited_hosts(home: Home) -> List[str]:
    """Every host name resolved and IP address connected to, as 'resolve X'/'connect X'."""
    audit = home.root / "audit.log"
    return audit.read_text().splitlines() if audit.exists() else []


@pytest.fixture
def launch(home: Home, start_visor: Callable[..., Visor]) -> Callable[..., Visor]:
    """`vegavisor.py run` under the audit launcher, optionally with a preexec_fn."""
    def start(preexec_fn: Optional[Callable[[], None]] = None) -> Visor:
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        return start_visor(env=env, preexec_fn=preexec_fn, launcher=[
            "-c", AUDIT_LAUNCHER, str(home.root / "audit.log")])
    return start


# --- assets ---

def zip_with(entries: Sequence[tuple], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip of (ZipInfo, bytes) entries, for hostile archives."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as z, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate names we mean
        for info, data in entries:
            z.writestr(info, data)
    return buffer.getvalue()


def entry(name: str, mode: int, method: int = zipfile.ZIP_DEFLATED) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))
    info.external_attr = mode << 16
    info.compress_type = method
    return info


def with_method(data: bytes, method: int) -> bytes:
    """The zip with every entry's compression method (local and central headers) patched."""
    raw = bytearray(data)
    for signature, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        at = raw.find(signature)
        while at >= 0:
            raw[at + offset:at + offset + 2] = struct.pack("<H", method)
            at = raw.find(signature, at + 4)
    return bytes(raw)


def invalid_deflate() -> bytes:
    """A zip whose one entry claims deflate but starts with block type 3 (reserved)."""
    stored = zip_with([(entry("vega", 0o100755, zipfile.ZIP_STORED), b"\xff" * 100)],
                      zipfile.ZIP_STORED)
    return with_method(stored, zipfile.ZIP_DEFLATED)


def deflate64() -> bytes:
    """A zip in Deflate64 (method 9), as Windows writes large archives: zipfile cannot read it."""
    stored = zip_with([(entry("vega", 0o100755, zipfile.ZIP_STORED), b"\xff" * 100)],
                      zipfile.ZIP_STORED)
    return with_method(stored, 9)


def release_zip(tmp: Path, version: str = "v2") -> bytes:
    return make_release_zip(tmp / f"release-{version}.zip", version).read_bytes()


def binary_bytes(tmp: Path, version: str = "v2") -> bytes:
    with zipfile.ZipFile(io.BytesIO(release_zip(tmp, version))) as z:
        return z.read("vega")


@functools.lru_cache(maxsize=None)
def zip_bomb() -> bytes:
    """80 MiB of zeros in an 80 KB zip: past the 64 MiB floor of the unpack limit."""
    return zip_with([(entry("vega", 0o100755), b"\0" * (80 * 1024 * 1024))])


def big_release(tmp: Path) -> bytes:
    """A working v2 release padded with 20 MB that does not compress."""
    binary = binary_bytes(tmp)
    return zip_with([(entry("vega", 0o100755), binary),
                     (entry("padding.bin", 0o100644, zipfile.ZIP_STORED),
                      os.urandom(BIG_ASSET_BYTES))])


def serve(gh: FakeGitHub, tmp: Path, data: Optional[bytes] = None, **kwargs: Any) -> None:
    gh.add_release("v1", {host_asset_name(): release_zip(tmp, "v1")})
    gh.add_release("v2", {host_asset_name(): release_zip(tmp) if data is None else data},
                   **kwargs)


def nested_json(depth: int = 100000) -> str:
    return "[" * depth + "]" * depth


def encrypted(data: bytes) -> bytes:
    """The zip with its entries flagged encrypted (bit 0), as `zip -e` writes them."""
    raw = bytearray(data)
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = raw.find(signature)
        while at >= 0:
            raw[at + offset] |= 0x1
            at = raw.find(signature, at + 4)
    return bytes(raw)


# Unrelated assets GitHub might list beside the one chosen: none may block the release.
ODD_ASSETS = [{"name": "vega.sha512", "size": 1, "url": "https://h/1", "digest": "sha512:ab"},
              {"name": "notes.txt", "size": None}, {"name": ["x"]}, "not an object", None]


def limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))


# --- outcomes ---

class Fails(NamedTuple):
    """Exit 1, giving up with this cause (a regex after GIVING_UP); nothing installed."""
    cause: str


class Upgrades(NamedTuple):
    """v2 runs from the snapshot at `height`, and the log shows each regex in `log`."""
    height: int
    log: Sequence[str] = ()
    mode: Optional[int] = None  # permission bits of the installed HOME/v2/vega


class RefusedConfig(NamedTuple):
    """Exit 2 before anything runs, the message naming the key."""
    message: str


class Case(NamedTuple):
    arrange: Callable[[FakeGitHub, Path], object]
    outcome: Any
    auto: Dict[str, Any] = {}  # [autoInstall] keys besides githubApiUrl
    upgrade: Sequence[str] = UPGRADE
    preexec_fn: Optional[Callable[[], None]] = None
    restarts: int = 1  # maxNumberOfRestarts


def fail_once_then_serve(pattern: str) -> Callable[[FakeGitHub, Path], object]:
    def arrange(gh: FakeGitHub, tmp: Path) -> None:
        serve(gh, tmp)
        gh.fail(pattern, 500, times=1)
    return arrange


FAULTS = [
    Row("downloads", "tag-404",
        "GitHub answers 404 for /releases/tags/v2 and the release list has only v1 and v3",
        "exit 1; giving up: vegaprotocol/vega has no release v2, its releases listed; "
        "nothing installed",
        (Case(lambda gh, tmp: gh.add_releases(["v1", "v3"], {host_asset_name(): b"zip"}),
              Fails(r"vegaprotocol/vega has no release v2; its 2 releases are: v3, v1$")),)),
    Row("downloads", "asset-missing",
        "release v2 exists but has no asset for this host",
        "exit 1; giving up: release v2 has no asset vega-OS-ARCH.zip, the assets it has "
        "listed; nothing installed",
        (Case(lambda gh, tmp: gh.add_release("v2", {"vega-plan9-mips.zip": b"zip"}),
              Fails(r"release v2 of vegaprotocol/vega has no asset vega-\w+-\w+\.zip; it has: "
                    r"vega-plan9-mips\.zip$")),)),
    Row("downloads", "500-then-success-at-block",
        "prefetch off; the first /releases/tags/v2 answers HTTP 500",
        "ERROR install failed attempt=1 (HTTP 500), retried after restartsDelaySeconds; "
        "v2 starts from the upgrade snapshot",
        (Case(fail_once_then_serve(r"/releases/tags/v2"),
              Upgrades(8, [r"ERROR install failed tag=v2 attempt=1 limit=1 retry_in=0\.1 "
                           r"error=.*answered HTTP 500"]),
              auto={"prefetch": False}),)),
    Row("downloads", "500-then-success-prefetch",
        "prefetch on; the first download of the asset answers HTTP 500",
        "WARN prefetch failed attempt=1 (HTTP 500), retried after prefetchRetryDelaySeconds; "
        "prefetched before the block; v2 starts from the upgrade snapshot",
        (Case(fail_once_then_serve(r"^/objects/"),
              Upgrades(30, [r"WARN  prefetch failed tag=v2 attempt=1 retry_in=0\.1 "
                            r"error=.*answered HTTP 500", r"INFO  prefetched tag=v2"]),
              auto={"prefetchRetryDelaySeconds": 0.1}, upgrade=LATER_UPGRADE),)),
    Row("downloads", "rate-limited",
        "every API call answers 403 with X-RateLimit-Remaining: 0 (reset in 2100); "
        "maxNumberOfRestarts = 0, as a retry waits for the reset",
        "exit 1; giving up: GitHub's API rate limit is used up, when it resets, "
        "set GITHUB_TOKEN; nothing installed",
        (Case(lambda gh, tmp: (serve(gh, tmp), gh.rate_limit(403, reset=4102444800)),
              Fails(r"GitHub's API rate limit is used up \(.* answered 403\); it resets at "
                    r"2100-01-01 00:00:00 UTC; set GITHUB_TOKEN for a higher limit$"),
              restarts=0),)),
    Row("downloads", "rate-limited-429",
        "every API call answers 429 with X-RateLimit-Remaining: 0 (reset in 2100); "
        "maxNumberOfRestarts = 0, as a retry waits for the reset",
        "exit 1; giving up: GitHub's API rate limit is used up (answered 429); "
        "nothing installed",
        (Case(lambda gh, tmp: (serve(gh, tmp), gh.rate_limit(429, reset=4102444800)),
              Fails(r"GitHub's API rate limit is used up \(.* answered 429\)"),
              restarts=0),)),
    Row("downloads", "reset-mid-body",
        "the asset's body stops after 1000 bytes with a TCP RST",
        "exit 1; giving up: the download failed, Connection reset by peer; "
        "nothing installed",
        (Case(lambda gh, tmp: (serve(gh, tmp), gh.reset(r"^/objects/", 1000)),
              Fails(r"download of vega-\w+-\w+\.zip \(http://127\.0\.0\.1:\d+/repos/"
                    r"vegaprotocol/vega/releases/assets/\d+\) failed after \d+ bytes: "
                    r"\[Errno 104\] Connection reset by peer$")),)),
    Row("downloads", "truncated-body",
        "the asset's body ends cleanly (FIN) after 1000 bytes of a larger Content-Length",
        "exit 1; giving up: the download gave 1000 bytes, GitHub says it has more; "
        "nothing installed",
        (Case(lambda gh, tmp: (serve(gh, tmp), gh.truncate(r"^/objects/", 1000)),
              Fails(r"gave 1000 bytes, GitHub says it has \d+$")),)),
    Row("downloads", "body-stalls",
        "httpTimeoutSeconds = 1, prefetch off; the asset's body sends 1000 bytes then "
        "nothing",
        "each attempt fails after 1 s; exit 1; giving up: the download timed out; "
        "nothing installed",
        (Case(lambda gh, tmp: (serve(gh, tmp), gh.slow(r"^/objects/", stall_after=1000)),
              Fails(r"download of vega-\w+-\w+\.zip .* failed after \d+ bytes: timed out$"),
              auto={"httpTimeoutSeconds": 1, "prefetch": False}),)),
    Row("downloads", "wrong-digest",
        "GitHub's digest for the asset is sha256:000...",
        "exit 1; giving up: the asset has SHA-256 X, expected 000...; nothing installed",
        (Case(lambda gh, tmp: serve(gh, tmp, digest="sha256:" + "0" * 64),
              Fails(r"has SHA-256 [0-9a-f]{64}, expected 0{64}; the download is corrupt or "
                    r"not the published release$")),)),
    Row("downloads", "pinned-checksum-mismatch",
        "[autoInstall.checksums] pins v2 to another SHA-256 than GitHub's digest",
        "exit 1; giving up: the pin and GitHub disagree, both refused; nothing downloaded",
        (Case(lambda gh, tmp: serve(gh, tmp),
              Fails(r"\[autoInstall.checksums\] pins v2 to sha256:1{64} but GitHub says "
                    r"vega-\w+-\w+\.zip has sha256:[0-9a-f]{64}; refusing both$"),
              auto={"checksums": {"v2": "sha256:" + "1" * 64}}),)),
    Row("downloads", "no-digest-required",
        "requireChecksum = true; the asset has no digest and nothing is pinned",
        "exit 1; giving up: no known SHA-256 and requireChecksum = true; nothing installed",
        (Case(lambda gh, tmp: serve(gh, tmp, digest=None),
              Fails(r"has no known SHA-256 .* and requireChecksum = true$"),
              auto={"requireChecksum": True}),)),
    Row("downloads", "not-a-zip",
        "the asset is 12 bytes starting with PK that are not a zip",
        "exit 1; giving up: the asset is not a valid zip archive; nothing installed",
        (Case(lambda gh, tmp: serve(gh, tmp, b"PK not a zip"),
              Fails(r"vega-\w+-\w+\.zip is not a valid zip archive: ")),)),
    Row("downloads", "zip-slip",
        "the zip holds ../../../escaped beside the binary",
        "exit 1; giving up: a path outside its folder; nothing written outside HOME",
        (Case(lambda gh, tmp: serve(gh, tmp, zip_with([
            (entry("vega", 0o100755), binary_bytes(tmp)),
            (entry("../../../escaped", 0o100644), b"owned")])),
            Fails(r"holds '\.\./\.\./\.\./escaped', a path outside its folder$")),)),
    Row("downloads", "absolute-path",
        "the zip holds /tmp/escaped-abs beside the binary",
        "exit 1; giving up: a path outside its folder; nothing written",
        (Case(lambda gh, tmp: serve(gh, tmp, zip_with([
            (entry("vega", 0o100755), binary_bytes(tmp)),
            (entry(str(tmp / "escaped-abs"), 0o100644), b"owned")])),
            Fails(r"holds '/tmp/.*escaped-abs', a path outside its folder$")),)),
    Row("downloads", "symlink-entry",
        "the zip's vega is a symlink to /bin/sh",
        "exit 1; giving up: a symlink, only files and folders are unpacked; nothing installed",
        (Case(lambda gh, tmp: serve(gh, tmp, zip_with([(entry("vega", 0o120777),
                                                         b"/bin/sh")])),
              Fails(r"holds 'vega', a symlink; only files and folders are unpacked$")),)),
    Row("downloads", "device-entry",
        "the zip holds a character device entry",
        "exit 1; giving up: a device or special file; nothing installed",
        (Case(lambda gh, tmp: serve(gh, tmp, zip_with([
            (entry("vega", 0o100755), binary_bytes(tmp)), (entry("null", 0o020666), b"")])),
            Fails(r"holds 'null', a device or special file; only files and folders are "
                  r"unpacked$")),)),
    Row("downloads", "duplicate-entry",
        "the zip holds vega twice",
        "exit 1; giving up: cannot install v2 from vegaprotocol/vega, the archive names vega "
        "twice; nothing installed",
        (Case(lambda gh, tmp: serve(gh, tmp, zip_with([
            (entry("vega", 0o100755), binary_bytes(tmp)),
            (entry("vega", 0o100755), b"#!/bin/sh\n")])),
            Fails(r"vega")),)),
    Row("downloads", "corrupt-deflate",
        "the zip's only entry is a deflate stream that does not decompress (digest matches)",
        "exit 1; giving up: cannot install v2 from vegaprotocol/vega, the asset cannot be "
        "unpacked; nothing installed",
        (Case(lambda gh, tmp: serve(gh, tmp, invalid_deflate()),
              Fails(r"vega-\w+-\w+\.zip cannot be unpacked: .*invalid block type")),)),
    Row("downloads", "deflate64",
        "the zip's entry uses Deflate64 (method 9), which Python's zipfile cannot read",
        "exit 1; giving up: cannot install v2 from vegaprotocol/vega, the compression "
        "method is not supported; nothing installed",
        (Case(lambda gh, tmp: serve(gh, tmp, deflate64()),
              Fails(r"compression method is not supported")),)),
    Row("downloads", "zip-bomb",
        "an 80 KB zip that unpacks to 80 MiB",
        "exit 1; giving up: would unpack to 83886080 bytes, more than the 67108864 allowed; "
        "nothing unpacked",
        (Case(lambda gh, tmp: serve(gh, tmp, zip_bomb()),
              Fails(r"would unpack to 83886080 bytes, more than the 67108864 allowed "
                    r"\(a zip bomb\?\)$")),)),
    Row("downloads", "setuid-bits",
        "the zip's vega has mode 6755 (setuid and setgid)",
        "the upgrade completes; HOME/v2/vega has mode 0755, the bits are dropped",
        (Case(lambda gh, tmp: serve(gh, tmp, zip_with([(entry("vega", 0o106755),
                                                         binary_bytes(tmp))])),
              Upgrades(8, mode=0o755)),)),
    Row("downloads", "disk-full",
        "RLIMIT_FSIZE 5 MB on visor; the asset is 20 MB",
        "exit 1; giving up: the download failed, File too large (EFBIG); the partial "
        "download removed",
        (Case(lambda gh, tmp: serve(gh, tmp, big_release(tmp)),
              Fails(r"download of vega-\w+-\w+\.zip .* failed after \d+ bytes: "
                    r"\[Errno 27\] File too large$"),
              preexec_fn=limit_file_size),)),
    Row("downloads", "lookup-trickles",
        "httpTimeoutSeconds = 1, prefetch off; /releases/tags/v2 sends its body a byte "
        "every 0.1 s (no read ever times out)",
        "each attempt ends at the lookup's overall deadline (2 s); exit 1; giving up: the "
        "release lookup did not finish within its deadline, the URL named; nothing installed",
        (Case(lambda gh, tmp: (serve(gh, tmp), gh.slow(r"/releases/tags/v2", 0.1,
                                                       chunk_size=1)),
              Fails(r"the release lookup did not finish within its deadline of 2s \(http://"
                    r"127\.0\.0\.1:\d+/repos/vegaprotocol/vega/releases/tags/v2\)$"),
              auto={"httpTimeoutSeconds": 1, "prefetch": False}),)),
    Row("downloads", "download-trickles",
        "httpTimeoutSeconds = 1, prefetch off; the asset's body comes 64 bytes every 0.05 s",
        "each attempt ends at the download's overall deadline (1 s + size at 16 KiB/s); "
        "exit 1; giving up: the download did not finish within its deadline, the URL "
        "named; nothing installed",
        (Case(lambda gh, tmp: (serve(gh, tmp), gh.slow(r"^/objects/", 0.05, chunk_size=64)),
              Fails(r"the download did not finish within its deadline of [\d.]+s \(http://"
                    r"127\.0\.0\.1:\d+/objects/\d+/vega-\w+-\w+\.zip\)$"),
              auto={"httpTimeoutSeconds": 1, "prefetch": False}),)),
    Row("downloads", "nested-json",
        "/releases/tags/v2 answers 200 with a JSON list nested 100000 deep",
        "exit 1; giving up: the URL answered JSON nested too deeply; no traceback, "
        "nothing installed",
        (Case(lambda gh, tmp: (serve(gh, tmp), gh.fail(r"/releases/tags/v2", 200,
                                                       body=nested_json())),
              Fails(r"releases/tags/v2 answered JSON nested too deeply$")),)),
    Row("downloads", "odd-unrelated-assets",
        "release v2 also lists assets with a sha512 digest, a null size, a list as name, "
        "a string and null",
        "the upgrade completes: only the chosen asset is checked",
        (Case(lambda gh, tmp: serve(gh, tmp, odd_assets=ODD_ASSETS), Upgrades(8)),)),
    Row("downloads", "chosen-asset-null-size",
        "the asset for this host is listed with \"size\": null",
        "exit 1; giving up: the asset has no usable size, url or digest; nothing downloaded",
        (Case(lambda gh, tmp: gh.add_release("v2", odd_assets=[{
            "name": host_asset_name(), "size": None, "url": gh.url + "/x"}]),
              Fails(r"describes the asset vega-\w+-\w+\.zip without a usable size, url or "
                    r"digest: ")),)),
    Row("downloads", "non-zip-asset",
        "[autoInstall.asset] name = \"vega-{os}-{arch}\"; that asset is the binary itself, "
        "not a zip",
        "the upgrade completes: the asset is saved as HOME/v2/vega, mode 0755, and its "
        "version checked before the folder is renamed into place",
        (Case(lambda gh, tmp: gh.add_release("v2", {host_asset_name()[:-4]: binary_bytes(tmp)}),
              Upgrades(8, [r"INFO  version checked tag=v2 binary=vega version=v2"], mode=0o755),
              auto={"asset": {"name": "vega-{os}-{arch}"}}),)),
    Row("downloads", "encrypted-entry",
        "the zip's vega entry is flagged encrypted",
        "exit 1; giving up: the zip holds 'vega' encrypted; no traceback, nothing installed",
        (Case(lambda gh, tmp: serve(gh, tmp, encrypted(release_zip(tmp))),
              Fails(r"vega-\w+-\w+\.zip holds 'vega' encrypted; a release is not$")),)),
    Row("downloads", "http-api-url",
        "githubApiUrl = http://api.github.com (plain http to a host that is not loopback)",
        "exit 2 before anything runs, naming autoInstall.githubApiUrl; no node started, "
        "nothing resolved",
        (Case(lambda gh, tmp: serve(gh, tmp),
              RefusedConfig("autoInstall.githubApiUrl: 'http://api.github.com' is plain "
                            "http:// to a host that is not loopback; use https://"),
              auto={"githubApiUrl": "http://api.github.com"}),)),
    Row("downloads", "redirect-to-http",
        "the asset URL redirects to http://downloads.example.com/vega.zip",
        "exit 1; giving up: refused the redirect, plain http:// to a host that is not "
        "loopback; downloads.example.com never resolved nor connected",
        (Case(lambda gh, tmp: (serve(gh, tmp), gh.redirect(
            r"^/repos/.*/releases/assets/", "http://downloads.example.com/vega.zip")),
            Fails(r"refused the redirect from http://127\.0\.0\.1:\d+/repos/vegaprotocol/vega/"
                  r"releases/assets/\d+: 'http://downloads\.example\.com/vega\.zip' is plain "
                  r"http:// to a host that is not loopback; use https://$")),)),
    Row("downloads", "redirect-to-file",
        "the asset URL redirects to file:///etc/passwd",
        "exit 1; giving up: urllib refuses the redirect (Redirection to url ... is not "
        "allowed); nothing read",
        (Case(lambda gh, tmp: (serve(gh, tmp), gh.redirect(
            r"^/repos/.*/releases/assets/", "file:///etc/passwd")),
            Fails(r"releases/assets/\d+ answered HTTP 302 Found - Redirection to url "
                  r"'file:///etc/passwd' is not allowed$")),)),
    Row("downloads", "garbage-json",
        "/releases/tags/v2 answers 200 with an HTML page",
        "exit 1; giving up: the URL did not answer JSON; nothing installed",
        (Case(lambda gh, tmp: (serve(gh, tmp), gh.fail(
            r"/releases/tags/v2", 200, body="<html>Unicorn!</html>")),
            Fails(r"http://127\.0\.0\.1:\d+/repos/vegaprotocol/vega/releases/tags/v2 did not "
                  r"answer JSON: b'<html>Unicorn!</html>'$")),)),
    Row("downloads", "assets-not-a-list",
        "the release embeds no assets and /releases/ID/assets answers 200 with a JSON object",
        "exit 1; giving up: the assets URL did not answer a list, the URL named; "
        "nothing installed",
        (Case(lambda gh, tmp: (serve(gh, tmp, embed_assets=0), gh.fail(
            r"/releases/\d+/assets", 200, body='{"message": "not a list"}')),
            Fails(r"http://127\.0\.0\.1:\d+/repos/vegaprotocol/vega/releases/\d+/assets did "
                  r"not answer a list$")),)),
    Row("downloads", "asset-url-bad-port",
        "the release JSON gives the asset the URL https://127.0.0.1:99999/asset",
        "exit 1; giving up: cannot install v2 from vegaprotocol/vega, the asset URL is "
        "invalid; nothing installed",
        (Case(lambda gh, tmp: gh.fail(r"/releases/tags/v2", 200, body=json.dumps({
            "tag_name": "v2", "id": 1, "assets": [{
                "name": host_asset_name(), "size": 10, "digest": None,
                "url": "https://127.0.0.1:99999/asset"}]})),
            Fails(r"https://127\.0\.0\.1:99999/asset is not a valid URL \(Port out of "
                  r"range")),)),
    Row("downloads", "json-not-a-release",
        "/releases/tags/v2 answers 200 with a JSON list",
        "exit 1; giving up: did not answer with a release object; nothing installed",
        (Case(lambda gh, tmp: (serve(gh, tmp), gh.fail(r"/releases/tags/v2", 200, body="[]")),
              Fails(r"releases/tags/v2 did not answer with a release object$")),)),
]


# --- the matrix ---

def giving_up_reason(visor: Visor) -> str:
    last = visor.log().strip().splitlines()[-1]
    match = re.search(r' ERROR giving up reason=(".*")$', last)
    assert match, f"the last line is not the giving-up line: {last!r}\n{visor.log()}"
    return json.loads(match.group(1))


def core_starts(home: Home, version: Optional[str] = None) -> List[dict]:
    return [r for r in home.records("start", role="core")
            if version is None or r["version"] == version]


def assert_failed(home: Home, visor: Visor, outcome: Fails, restarts: int) -> None:
    assert visor.wait_exit(40) == 1, visor.log()
    reason = giving_up_reason(visor)
    assert reason.startswith(GIVING_UP), reason
    gave_up = GAVE_UP_AFTER.format(n=restarts + 1, limit=restarts)
    assert reason.endswith(gave_up), reason
    assert re.search(outcome.cause, reason[len(GIVING_UP):-len(gave_up)]), reason
    assert not (home.path / "v2").exists()
    assert [p.name for p in home.path.iterdir() if p.name.startswith(".staging")] == []
    assert os.readlink(home.path / "current") == "genesis"
    assert core_starts(home, "v2") == [], "no node ran the bad release"
    assert len(core_starts(home, "v1")) == 1


def assert_upgraded(home: Home, visor: Visor, outcome: Upgrades) -> None:
    visor.wait_log(r"INFO  started role=core pid=\d+ version=v2 attempt=1", timeout=20)
    [new] = wait_for(lambda: core_starts(home, "v2"), 10, "the v2 core's first line of life")
    assert new["argv"][-2:] == ["--snapshot.load-from-block-height", str(outcome.height)]
    assert os.readlink(home.path / "current") == "v2"
    log = visor.log()
    for pattern in outcome.log:
        assert re.search(pattern, log), f"no {pattern!r} in:\n{log}"
    if outcome.mode is not None:
        mode = os.stat(home.path / "v2" / "vega").st_mode
        assert stat.S_IMODE(mode) == outcome.mode, oct(mode)
    visor.signal(signal.SIGTERM)
    assert visor.wait_exit() == 0, visor.log()


def assert_refused(home: Home, visor: Visor, github: FakeGitHub,
                   outcome: RefusedConfig) -> None:
    assert visor.wait_exit() == 2, visor.log()
    assert outcome.message in visor.log().strip().splitlines()[-1], visor.log()
    assert home.records() == [], "no node started"
    assert github.requests == []
    assert not os.path.lexists(home.path / "current"), "init made none; a refused run links none"


@pytest.mark.parametrize(("row", "case"), rows(FAULTS))
@pytest.mark.timeout(60)
def test_download_fault(home, launch, github, short_tmp, row, case):
    case.arrange(github, short_tmp)
    auto = dict({"githubApiUrl": github.url}, **case.auto)
    checksums, asset = auto.pop("checksums", {}), auto.pop("asset", {})
    set_table(home, "autoInstall", **auto)
    if checksums:
        set_table(home, "autoInstall.checksums", **checksums)
    if asset:
        set_table(home, "autoInstall.asset", **asset)
    home.set_config(maxNumberOfRestarts=case.restarts)
    home.install_version("genesis", "v1", case.upgrade)
    visor = launch(preexec_fn=case.preexec_fn)
    if isinstance(case.outcome, Fails):
        assert_failed(home, visor, case.outcome, case.restarts)
    elif isinstance(case.outcome, Upgrades):
        assert_upgraded(home, visor, case.outcome)
    else:
        assert_refused(home, visor, github, case.outcome)
    assert not (home.root / "escaped").exists() and not (short_tmp / "escaped-abs").exists()
    hosts = audited_hosts(home)
    if not isinstance(case.outcome, RefusedConfig):
        assert "connect 127.0.0.1" in hosts, "the audit hook saw visor reach the fake GitHub"
    strangers = [line for line in hosts if line.split(" ", 1)[1] not in LOOPBACK]
    assert strangers == [], "visor resolved or reached a host that is not loopback"
