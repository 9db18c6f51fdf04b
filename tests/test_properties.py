"""Property tests for what vegavisor reads from outside: zip archives, GitHub JSON, URLs.

(a) unpack_zip never writes outside its folder, never makes a symlink, device or
    setuid/setgid file, and fails only with InstallError, whatever the archive;
(b) GitHub's release and asset JSON becomes well-typed records or InstallError;
(c) next_page_url never raises on a Link header;
(d) redact_url never lets userinfo, a query string or a fragment through.
"""
from __future__ import annotations

import io
import json
import os
import re
import stat
import struct
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any
from typing import Dict
from typing import List
from typing import NamedTuple
from typing import Optional
from typing import Tuple

import pytest
from hypothesis import HealthCheck
from hypothesis import event
from hypothesis import example
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import vegavisor

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --- (a) zip archives ---

ROOT = "{ROOT}"  # stands for the example's temporary folder: an absolute path into the tree
# An archive is ordinary entries (so extraction really runs) plus, half the time, one
# hostile entry: parents, current folder, empty parts, long names, drive letters,
# absolute paths, backslashes, symlinks, devices; sometimes a few bytes overwritten.
BENIGN_PARTS = st.sampled_from(["vega", "bin", "lib", "a", "b", "README"])
HOSTILE_PARTS = st.one_of(
    BENIGN_PARTS,
    st.sampled_from(["..", ".", "", "C:", "c:", "..\\..", "n" * 300]),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
            min_size=1, max_size=6),
)
PREFIXES = st.sampled_from(["", "/", "\\", "C:\\", "c:/", "../", "..\\", "./", ROOT + "/",
                            "//"])
BENIGN_KINDS = st.sampled_from([stat.S_IFREG, stat.S_IFREG, 0, stat.S_IFDIR])
HOSTILE_KINDS = st.sampled_from([0, stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFCHR,
                                 stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK])
METHODS = st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2,
                           zipfile.ZIP_LZMA])
DATA = st.one_of(st.binary(max_size=64), st.integers(0, 20000).map(lambda n: b"\0" * n))


class Entry(NamedTuple):
    name: str
    mode: int  # the unix st_mode stored in external_attr's high 16 bits
    data: bytes
    method: int


def entries(parts: Any, prefixes: Any, separators: Any, kinds: Any) -> Any:
    names = st.builds(lambda prefix, parts, separator, trailing:
                      prefix + separator.join(parts) + trailing,
                      prefixes, st.lists(parts, min_size=1, max_size=4), separators,
                      st.sampled_from(["", "", "/"]))
    modes = st.builds(lambda kind, bits: kind | bits, kinds, st.integers(0, 0o7777))
    return st.builds(Entry, names, modes, DATA, METHODS)


BENIGN_ENTRIES = entries(BENIGN_PARTS, st.just(""), st.just("/"), BENIGN_KINDS)
HOSTILE_ENTRIES = entries(HOSTILE_PARTS, PREFIXES, st.sampled_from(["/", "\\"]), HOSTILE_KINDS)


class Archive(NamedTuple):
    entries: Tuple[Entry, ...]
    flips: Tuple[Tuple[int, int], ...]  # (offset, byte) overwritten in the finished zip
    max_bytes: int


@st.composite
def archives(draw: Any) -> Archive:
    items = draw(st.lists(BENIGN_ENTRIES, max_size=5))
    if draw(st.booleans()):
        items.insert(draw(st.integers(0, len(items))), draw(HOSTILE_ENTRIES))
    flips = draw(st.one_of(st.just([]), st.just([]), st.just([]), st.lists(
        st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=3)))
    max_bytes = draw(st.one_of(st.just(10**6), st.just(10**6), st.integers(0, 50000)))
    return Archive(tuple(items), tuple(flips), max_bytes)


ARCHIVES = archives()


def build_zip(archive: Archive, root: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are part of the game
        for item in archive.entries:
            info = zipfile.ZipInfo(item.name.replace(ROOT, str(root)),
                                   date_time=(2026, 1, 1, 0, 0, 0))
            info.external_attr = (item.mode & 0xFFFF) << 16
            info.compress_type = item.method
            z.writestr(info, item.data)
    data = bytearray(buffer.getvalue())
    for offset, byte in archive.flips:
        data[offset % len(data)] = byte
    return bytes(data)


def snapshot(root: Path) -> Dict[str, Tuple[int, int]]:
    """Every path under root (root itself included): (st_mode, size), links not followed."""
    found = {str(root): (os.lstat(root).st_mode, 0)}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            found[path] = (info.st_mode, info.st_size if stat.S_ISREG(info.st_mode) else 0)
    return found


class Unpacked(NamedTuple):
    error: Optional[BaseException]
    names: Optional[List[str]]
    before: Dict[str, Tuple[int, int]]
    after: Dict[str, Tuple[int, int]]
    into: str
    total: int  # the sum of the members' sizes, as the archive declares them


def unpack(archive: Archive) -> Unpacked:
    with tempfile.TemporaryDirectory(prefix="vv-prop-") as tmp:
        root = Path(tmp)
        (root / "into").mkdir()
        (root / "sibling").mkdir()
        (root / "sibling" / "keep").write_bytes(b"keep")
        path = root / "asset.zip"
        path.write_bytes(build_zip(archive, root))
        try:
            with zipfile.ZipFile(path) as z:
                total = sum(info.file_size for info in z.infolist())
        except Exception:
            total = -1
        before = snapshot(root)
        error, names = None, None
        try:
            names = vegavisor.unpack_zip(path, root / "into", archive.max_bytes)
        except Exception as e:  # judged by the callers: one property each
            error = e
        return Unpacked(error, names, before, snapshot(root), str(root / "into"), total)


def _one_entry(name: str, data: bytes) -> bytes:
    return build_zip(Archive((Entry(name, stat.S_IFREG | 0o755, data, zipfile.ZIP_STORED),),
                             (), 0), Path("/"))


def _stored(name: str, data: bytes, method: int) -> Archive:
    """One entry written stored, then its compression method set to `method` in both headers."""
    central = _one_entry(name, data).find(b"PK\x01\x02")
    low, high = struct.pack("<H", method)
    flips = ((8, low), (9, high), (central + 10, low), (central + 11, high))
    return Archive((Entry(name, stat.S_IFREG | 0o755, data, zipfile.ZIP_STORED),), flips, 10**6)


def _not_utf8_name() -> Archive:
    """An entry flagged UTF-8 (its name is "é") whose name bytes become 0xff 0xff."""
    central = _one_entry("\u00e9", b"x").find(b"PK\x01\x02")
    flips = ((30, 0xFF), (31, 0xFF), (central + 46, 0xFF), (central + 47, 0xFF))
    return Archive((Entry("\u00e9", stat.S_IFREG | 0o755, b"x", zipfile.ZIP_STORED),), flips,
                   10**6)


DUPLICATE = Archive((Entry("vega", 0o100755, b"1", zipfile.ZIP_STORED),
                     Entry("vega", 0o100755, b"2", zipfile.ZIP_STORED)), (), 100)
FILE_THEN_FOLDER = Archive((Entry("a", 0o100644, b"1", zipfile.ZIP_STORED),
                            Entry("a/b", 0o100644, b"2", zipfile.ZIP_STORED)), (), 100)
DOT = Archive((Entry(".", 0o100644, b"1", zipfile.ZIP_STORED),), (), 100)
LONG_NAME = Archive((Entry("n" * 300, 0o100644, b"1", zipfile.ZIP_STORED),), (), 100)
CORRUPT_DEFLATE = _stored("vega", b"\xff" * 100, zipfile.ZIP_DEFLATED)
CORRUPT_BZIP2 = _stored("vega", b"\xff" * 100, zipfile.ZIP_BZIP2)
DEFLATE64 = _stored("vega", b"\xff" * 100, 9)
CORRUPT_LZMA = _stored("vega", b"\x00" * 100, zipfile.ZIP_LZMA)
NOT_UTF8_NAME = _not_utf8_name()


@pytest.mark.timeout(60)
@SETTINGS
@example(DUPLICATE)
@example(FILE_THEN_FOLDER)
@example(DOT)
@example(LONG_NAME)
@example(CORRUPT_DEFLATE)
@example(CORRUPT_BZIP2)
@example(DEFLATE64)
@example(CORRUPT_LZMA)
@example(NOT_UTF8_NAME)
@given(ARCHIVES)
def test_unpack_zip_stays_in_its_folder_and_fails_only_with_install_error(archive):
    """Each archive is built and unpacked once and judged by every property of (a): the
    building and unpacking is what costs, not the judging."""
    done = unpack(archive)
    event("unpacked" if done.error is None else type(done.error).__name__)
    assert done.error is None or isinstance(done.error, vegavisor.InstallError), \
        f"{type(done.error).__name__}: {done.error}"
    outside = {p: v for p, v in done.after.items() if not p.startswith(done.into + os.sep)}
    assert outside == done.before, "only paths under into may appear or change"
    for path, (mode, _) in done.after.items():
        assert stat.S_ISREG(mode) or stat.S_ISDIR(mode), f"{path} is {stat.filemode(mode)}"
        assert not mode & (stat.S_ISUID | stat.S_ISGID), f"{path} is {stat.filemode(mode)}"
    if done.error is None:
        assert done.total <= archive.max_bytes
        assert isinstance(done.names, list) and all(isinstance(n, str) for n in done.names)
    if isinstance(done.error, vegavisor.InstallError) and "zip bomb" in str(done.error):
        assert [p for p in done.after if p.startswith(done.into + os.sep)] == [], \
            "a zip bomb is refused before anything is unpacked"


def _case(archive: Archive, id: str, what: str) -> Any:
    """An archive that once made unpack_zip raise `what` instead of InstallError."""
    return pytest.param(archive, id=id)


@pytest.mark.parametrize("archive", [
    _case(DUPLICATE, "duplicate", "FileExistsError (open(target, 'xb') on the second 'vega')"),
    _case(FILE_THEN_FOLDER, "file-then-folder", "FileExistsError (mkdir of 'a' over the file)"),
    _case(DOT, "dot", "FileExistsError (a member named '.' is opened as `into` itself)"),
    _case(LONG_NAME, "long-name", "OSError ENAMETOOLONG (a 300-byte member name)"),
    _case(CORRUPT_DEFLATE, "corrupt-deflate", "zlib.error (invalid block type)"),
    _case(CORRUPT_BZIP2, "corrupt-bzip2", "OSError 'Invalid data stream' (from bz2)"),
    _case(DEFLATE64, "deflate64", "NotImplementedError (compression method 9)"),
    _case(CORRUPT_LZMA, "corrupt-lzma", "lzma.LZMAError (not an OSError): 'Invalid or "
          "unsupported options' or 'Corrupt input data'"),
    _case(NOT_UTF8_NAME, "not-utf8-name", "UnicodeDecodeError (name flagged UTF-8, bytes ff ff)"),
])
@pytest.mark.timeout(10)
def test_unpack_zip_bug_cases_fail_with_install_error(archive):
    """Each case of the bug above on its own, so a partial fix shows which remain."""
    error = unpack(archive).error
    assert error is None or isinstance(error, vegavisor.InstallError), \
        f"{type(error).__name__}: {error}"


@pytest.mark.parametrize(("archive", "problem"), [
    pytest.param(Archive((Entry("../x", 0o100644, b"1", 0),), (), 100),
                 "a path outside its folder", id="parent"),
    pytest.param(Archive((Entry("a/../../x", 0o100644, b"1", 0),), (), 100),
                 "a path outside its folder", id="nested-parent"),
    pytest.param(Archive((Entry("a/..", 0o100644, b"1", 0),), (), 100),
                 "a path outside its folder", id="trailing-parent"),
    pytest.param(Archive((Entry("a\\..\\..\\x", 0o100644, b"1", 0),), (), 100),
                 "a path outside its folder", id="nested-backslash-parent"),
    pytest.param(Archive((Entry("..\\x", 0o100644, b"1", 0),), (), 100),
                 "a path outside its folder", id="backslash-parent"),
    pytest.param(Archive((Entry(ROOT + "/x", 0o100644, b"1", 0),), (), 100),
                 "a path outside its folder", id="absolute"),
    pytest.param(Archive((Entry("C:\\x", 0o100644, b"1", 0),), (), 100),
                 "a path outside its folder", id="drive-letter"),
    pytest.param(Archive((Entry("x", 0o120777, b"/etc/passwd", 0),), (), 100),
                 "a symlink", id="symlink"),
    pytest.param(Archive((Entry("x", 0o060644, b"", 0),), (), 100),
                 "a device or special file", id="block-device"),
    pytest.param(Archive((Entry("x", 0o100644, b"\0" * 101, 8),), (), 100),
                 "a zip bomb", id="too-big"),
])
@pytest.mark.timeout(10)
def test_unpack_zip_refuses(archive, problem):
    done = unpack(archive)
    assert isinstance(done.error, vegavisor.InstallError) and problem in str(done.error)
    assert done.after == done.before, "nothing unpacked"


@pytest.mark.timeout(10)
def test_unpack_zip_drops_setuid_setgid_and_sticky_bits():
    done = unpack(Archive((Entry("bin/vega", 0o107755, b"x", 8),), (), 100))
    assert done.error is None
    [mode] = [m for p, (m, _) in done.after.items() if p.endswith("vega")]
    assert stat.S_IMODE(mode) == 0o755


# --- (b) GitHub JSON ---

KEYS = ["tag_name", "id", "assets", "name", "size", "url", "digest", "browser_download_url",
        "content_type", "x"]
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
    | st.text(max_size=8) | st.sampled_from(["sha256:" + "a" * 64, "sha256:" + "G" * 64,
                                              "vega-linux-amd64.zip", "https://h/x"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner,
                                                                max_size=5),
    max_leaves=15)
ASSET_JSON = st.fixed_dictionaries({}, optional={
    "name": st.one_of(st.text(max_size=12), st.just("vega-linux-amd64.zip"), JSON),
    "size": st.one_of(st.integers(-5, 10**12), JSON),
    "url": st.one_of(st.just("https://api.github.com/repos/o/r/releases/assets/1"), JSON),
    "digest": st.one_of(st.none(), st.just("sha256:" + "ab" * 32),
                        st.just("SHA256:" + "ab" * 32), JSON),
    "browser_download_url": JSON,
})
RELEASE_JSON = st.one_of(JSON, st.fixed_dictionaries({}, optional={
    "tag_name": st.one_of(st.text(max_size=8), JSON),
    "id": st.one_of(st.integers(), st.booleans(), JSON),
    "assets": st.one_of(st.lists(st.one_of(ASSET_JSON, JSON), max_size=4), JSON),
}))
URL = "https://user:SeCrEt9@api.github.com/repos/o/r/releases/tags/v1?ToKeN9=abc"


def assert_asset(asset: Any) -> None:
    assert isinstance(asset, vegavisor.Asset)
    assert isinstance(asset.name, str) and isinstance(asset.url, str)
    assert isinstance(asset.size, int) and not isinstance(asset.size, bool) and asset.size >= 0
    assert asset.digest is None or re.fullmatch(r"sha256:[0-9a-fA-F]{64}", asset.digest)


def assert_installerror_is_redacted(error: vegavisor.InstallError) -> None:
    assert "SeCrEt9" not in str(error) and "ToKeN9" not in str(error)


@pytest.mark.timeout(60)
@SETTINGS
@given(RELEASE_JSON)
def test_release_json_is_a_release_or_an_install_error(data):
    data = json.loads(json.dumps(data))  # only what a JSON answer can hold
    try:
        release = vegavisor._release_from_json(data, URL)
    except vegavisor.InstallError as e:
        assert_installerror_is_redacted(e)
        return
    assert isinstance(release, vegavisor.Release)
    assert isinstance(release.tag, str)
    assert isinstance(release.id, int) and not isinstance(release.id, bool)
    assert isinstance(release.assets, tuple)


CHOSEN = "vega-linux-amd64.zip"


@pytest.mark.timeout(60)
@SETTINGS
@given(st.one_of(st.lists(st.one_of(ASSET_JSON, JSON), max_size=5), JSON))
def test_only_the_chosen_asset_is_checked(data):
    data = json.loads(json.dumps(data))
    try:
        items = vegavisor._assets_from_json(data, URL)
        asset = vegavisor.choose_asset(items, CHOSEN, URL)
    except vegavisor.InstallError as e:
        assert_installerror_is_redacted(e)
        chosen = [i for i in data if isinstance(i, dict) and i.get("name") == CHOSEN] \
            if isinstance(data, list) else []
        assert not isinstance(data, list) or chosen, "only the chosen asset may be refused"
        return
    assert isinstance(items, tuple) and len(items) == len(data)
    if asset is not None:
        assert_asset(asset)
        assert asset.name == CHOSEN


# --- (c) Link headers ---

LINK_URL = st.text(st.characters(blacklist_characters="<>,", blacklist_categories=("Cs",)),
                   max_size=30)
LINK_PART = st.builds(
    lambda url, rel, space: f"{space}<{url}>;{space}rel={rel}",
    LINK_URL, st.sampled_from(['"next"', '"prev"', '"last"', '"first"', "next", '"next',
                               '"Next"', '""']),
    st.sampled_from(["", " ", "  "]))


@pytest.mark.timeout(60)
@SETTINGS
@given(st.one_of(st.none(), st.text(max_size=80),
                 st.lists(st.one_of(LINK_PART, st.text(max_size=20)), max_size=5)
                 .map(", ".join)))
def test_next_page_url_never_raises(header):
    url = vegavisor.next_page_url(header)
    assert url is None or isinstance(url, str)


@pytest.mark.timeout(60)
@SETTINGS
@given(st.lists(st.tuples(LINK_URL, st.sampled_from(["prev", "last", "first"])), max_size=3),
       LINK_URL, st.integers(0, 3))
def test_next_page_url_finds_the_next_link_among_others(others, next_url, at):
    parts = [f'<{url}>; rel="{rel}"' for url, rel in others]
    parts.insert(min(at, len(parts)), f'<{next_url}>; rel="next"')
    assert vegavisor.next_page_url(", ".join(parts)) == next_url


# --- (d) redact_url ---

LOWER = "abcdefghijklmnopqrstuvwxyz"
# Secrets are upper case with a marker prefix; hosts and paths are lower case, so a
# secret in the output can only have leaked from the userinfo, query or fragment.
SECRET = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:@/?#%!$&'()*+,;=", min_size=1,
                 max_size=12)
HOSTS = st.one_of(st.text(LOWER, min_size=1, max_size=10).map(lambda h: h + ".com"),
                  st.just("127.0.0.1"), st.just("[::1]"), st.just("[2001:db8::1]"),
                  st.just("localhost"))


class SecretUrl(NamedTuple):
    url: str
    secrets: Tuple[str, ...]


@st.composite
def secret_urls(draw: Any) -> SecretUrl:
    import urllib.parse
    user = "USR" + draw(SECRET)
    password = "PWD" + draw(SECRET)
    token = "TKN" + draw(SECRET)
    userinfo = draw(st.sampled_from(["u", "up", "p", ""]))
    quoted_user = urllib.parse.quote(user, safe="")
    quoted_password = urllib.parse.quote(password, safe="")
    auth = {"u": f"{quoted_user}@", "up": f"{quoted_user}:{quoted_password}@",
            "p": f":{quoted_password}@", "": ""}[userinfo]
    port = draw(st.one_of(st.just(""), st.integers(1, 65535).map(lambda p: f":{p}")))
    path = draw(st.lists(st.text(LOWER, max_size=6), max_size=3).map(lambda p: "/" + "/".join(p)))
    query = draw(st.sampled_from(["", f"?token={token}", f"?a=b&token={token}",
                                  f"?{token}", "?"]))
    fragment = draw(st.sampled_from(["", f"#{token}", f"#access_token={token}"]))
    scheme = draw(st.sampled_from(["https", "http", "HTTPS"]))
    url = f"{scheme}://{auth}{draw(HOSTS)}{port}{path}{query}{fragment}"
    return SecretUrl(url, (user, password, token, quoted_user, quoted_password))


@pytest.mark.timeout(60)
@SETTINGS
@given(secret_urls())
def test_redact_url_never_leaks_userinfo_or_query(case):
    shown = vegavisor.redact_url(case.url)
    for secret in case.secrets:
        assert secret not in shown
    for marker in ("USR", "PWD", "TKN", "?", "#", "@"):
        assert marker not in shown, shown


@pytest.mark.timeout(60)
@SETTINGS
@example("https://127.0.0.1:99999/asset")
@given(st.one_of(st.text(max_size=40), st.builds(
    lambda scheme, host, port: f"{scheme}://{host}:{port}/x", st.sampled_from(["http", "https"]),
    HOSTS, st.one_of(st.integers(0, 10**6).map(str), st.text(LOWER + "0123456789", max_size=6))),
    st.builds(lambda host: f"https://{host[:-1]}/x", st.just("[::1]"))))
def test_redact_url_never_raises(url):
    assert isinstance(vegavisor.redact_url(url), str)
