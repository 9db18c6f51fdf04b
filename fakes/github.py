#!/usr/bin/env python3
"""A fake GitHub (REST API v3 for releases, and asset downloads) on 127.0.0.1.

It answers the few requests a release downloader makes, with GitHub's shapes:

    GET /repos/{owner}/{repo}/releases?per_page=N&page=M     newest first, Link header
    GET /repos/{owner}/{repo}/releases/tags/{tag}            404 for a draft
    GET /repos/{owner}/{repo}/releases/{id}/assets?per_page=N&page=M
    GET /repos/{owner}/{repo}/releases/assets/{id}           JSON, or with
        Accept: application/octet-stream a 302 to the bytes
    GET /{owner}/{repo}/releases/download/{tag}/{name}       302 to the bytes
    GET /objects/{asset_id}/{name}?token=...                 the bytes

`/repositories/{repo_id}/...` works wherever `/repos/{owner}/{repo}/...` does,
since that is the form GitHub writes into Link headers. API answers carry the
X-RateLimit-* headers of a real budget (60 an hour without a token, 5000 with one).

Hostile answers for the tests: `link_base` and `asset_base` make Link headers and
asset "url"s name another server (a second FakeGitHub on another port, say), and
add_release(odd_assets=[...]) serves raw asset objects beside the real ones.

Tests use the class; faults are injected per path pattern:

    with FakeGitHub(owner="vegaprotocol", repo="vega") as gh:
        gh.add_release("v0.74.0", {"vega-linux-amd64.zip": zip_bytes})
        gh.fail(r"/releases/tags/", 500, times=2)
        ... point the client at gh.url ...
        assert gh.wait_for_requests(r"/releases/tags/", count=3)[-1].status == 200

Operators and shell scripts use the command line: `python3 fakes/github.py --help`.
Standard library only; CPython 3.8 to 3.13.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import http.server
import itertools
import json
import math
import mimetypes
import re
import secrets
import signal
import socket
import struct
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any
from typing import Dict
from typing import Iterable
from typing import Iterator
from typing import List
from typing import Mapping
from typing import NamedTuple
from typing import Optional
from typing import Sequence
from typing import Tuple
from typing import Union

__all__ = ["Asset", "FakeGitHub", "Release", "Request", "main"]

# --- constants ---

# GitHub's page size when the client sends no per_page.
DEFAULT_PER_PAGE = 30
# GitHub silently caps per_page at 100.
MAX_PER_PAGE = 100
# Bytes per file read and socket write: large enough that a 1 GB asset streams at
# disk speed, small enough that memory stays flat.
CHUNK_SIZE = 256 * 1024
# A slow body trickles out in small pieces, so a delay per chunk means something.
SLOW_CHUNK_SIZE = 16 * 1024
# Reads while hashing a file-backed asset once, when it is added.
HASH_CHUNK_SIZE = 1024 * 1024
# GitHub's "core" budget per hour: anonymous clients, then clients with a token.
UNAUTHENTICATED_LIMIT = 60
AUTHENTICATED_LIMIT = 5000
# GitHub's core rate-limit window.
RATE_WINDOW_SECONDS = 3600
# Any number: GitHub writes /repositories/{id}/... into Link headers.
DEFAULT_REPO_ID = 115402311
# Ids look like GitHub's (large, distinct ranges), so a client mixing a release
# id with an asset id gets a 404 instead of a lucky hit.
FIRST_RELEASE_ID = 100000001
FIRST_ASSET_ID = 200000001
# created_at of the first release added (2023-11-14T22:13:20Z); each later one is
# a day newer, so the order of add_release() calls is the order of age.
BASE_TIME = 1700000000
RELEASE_SPACING_SECONDS = 86400
# How long close() waits for connection threads once their sockets are shut.
CLOSE_TIMEOUT_SECONDS = 5.0
# How often the command line re-checks for SIGTERM/SIGINT (signals also wake it).
STOP_CHECK_SECONDS = 1.0

JSON_TYPE = "application/json; charset=utf-8"
OCTET_STREAM = "application/octet-stream"
DOCS_URL = "https://docs.github.com/rest"
RATE_LIMIT_DOCS_URL = (
    "https://docs.github.com/rest/overview/resources-in-the-rest-api#rate-limiting"
)
RATE_LIMIT_MESSAGE = (
    "API rate limit exceeded for 127.0.0.1. (But here's the good news: "
    "Authenticated requests get a higher rate limit. Check out the documentation "
    "for more details.)"
)
# Faults that replace the answer, and faults that act while its body is sent.
ANSWER_FAULTS = ("fail", "redirect")
BODY_FAULTS = ("slow", "truncate", "reset")

# --- records ---


@dataclasses.dataclass(frozen=True)
class Asset:
    """One release asset, backed by bytes in memory or by a file streamed from disk."""

    id: int
    name: str
    size: int
    sha256: Optional[str]  # real hex digest; None for a file not hashed (digest off)
    digest: Optional[str]  # value served in "digest": correct, wrong, or None (null)
    has_digest_key: bool  # False: the "digest" key is absent altogether
    created_at: str
    data: Optional[bytes] = None
    path: Optional[Path] = None


@dataclasses.dataclass(frozen=True)
class Release:
    id: int
    tag: str
    draft: bool
    created_at: str
    assets: Tuple[Asset, ...]
    embed_assets: Optional[int]  # the release JSON embeds only this many; None = all
    odd_assets: Tuple[Any, ...] = ()  # raw asset objects (any JSON) served as they are


class Request(NamedTuple):
    """One request as the fake answered it, recorded once its answer is over."""

    method: str
    path: str  # with the query string
    headers: Dict[str, str]  # as received, Authorization included
    status: int  # 0 when no status line was sent
    bytes_sent: int  # body bytes only

    def header(self, name: str) -> Optional[str]:
        """Return a request header, whatever its case, or None."""
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted:
                return value
        return None


@dataclasses.dataclass
class Fault:
    kind: str  # one of ANSWER_FAULTS or BODY_FAULTS
    pattern: re.Pattern[str]  # searched in the request path with its query
    times: Optional[int]  # matching requests still to hit; None = every one
    status: int = 0  # fail, redirect
    body: Optional[bytes] = None  # fail
    location: str = ""  # redirect
    after_bytes: Optional[int] = None  # truncate, reset, slow (where it stalls)
    delay: float = 0.0  # slow: seconds after each chunk
    chunk_size: int = CHUNK_SIZE


class _FileSlice(NamedTuple):
    path: Path
    start: int
    length: int


Body = Union[bytes, _FileSlice]
Query = List[Tuple[str, str]]  # parsed query string, in the client's order
Headers = Mapping[str, str]  # request headers (case-insensitive in practice)


class _Reply(NamedTuple):
    status: int
    headers: Tuple[Tuple[str, str], ...]
    body: Body = b""


class _RateState(NamedTuple):
    limit: int
    remaining: int
    used: int
    reset: int  # epoch seconds
    limited_status: int  # 0 when the request may go on


# --- pure helpers: time, digests, pagination ---


def format_time(epoch: float) -> str:
    """Return epoch seconds as GitHub writes them: 2023-11-14T22:13:20Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def hash_file(path: Path) -> str:
    """Return the SHA-256 hex digest of a file, reading it in chunks."""
    sha = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(HASH_CHUNK_SIZE), b""):
            sha.update(chunk)
    return sha.hexdigest()


def choose_digest(
    digest: Union[bool, str, None], sha256: Optional[str]
) -> Tuple[bool, Optional[str]]:
    """Return (has "digest" key, its value) for add_release's digest option."""
    if digest is None:
        return False, None
    if digest is True:
        return True, "sha256:" + str(sha256)
    if digest is False:
        return True, None
    return True, str(digest)


def read_page_options(query: Sequence[Tuple[str, str]]) -> Tuple[int, int]:
    """Return (page, per_page) as GitHub reads them, with its defaults and cap."""
    options = dict(query)
    page = _to_int(options.get("page"), 1)
    per_page = _to_int(options.get("per_page"), DEFAULT_PER_PAGE)
    return max(page, 1), min(max(per_page, 1), MAX_PER_PAGE)


def _to_int(text: Optional[str], default: int) -> int:
    try:
        return int(str(text))
    except ValueError:
        return default


def count_pages(total: int, per_page: int) -> int:
    return max(1, -(-total // per_page))


def link_header(
    base: str, query: Sequence[Tuple[str, str]], page: int, last_page: int
) -> Optional[str]:
    """Return GitHub's Link header (prev, next, last, first) or None for one page."""
    if last_page <= 1 and page <= 1:
        return None
    links = []
    if page > 1:
        links.append((page - 1, "prev"))
    if page < last_page:
        links.extend([(page + 1, "next"), (last_page, "last")])
    if page > 1:
        links.append((1, "first"))
    return ", ".join(
        '<%s?%s>; rel="%s"' % (base, _with_page(query, number), rel)
        for number, rel in links
    )


def _with_page(query: Sequence[Tuple[str, str]], page: int) -> str:
    """Return the query string with page set, keeping the client's order."""
    pairs = [(key, str(page) if key == "page" else value) for key, value in query]
    if not any(key == "page" for key, _ in pairs):
        pairs.append(("page", str(page)))
    return urllib.parse.urlencode(pairs)


def body_length(body: Body) -> int:
    return body.length if isinstance(body, _FileSlice) else len(body)


def iter_chunks(body: Body, chunk_size: int, limit: Optional[int]) -> Iterator[bytes]:
    """Yield the body in chunks, stopping after `limit` bytes when it is set."""
    remaining = body_length(body) if limit is None else min(limit, body_length(body))
    if not isinstance(body, _FileSlice):
        view = memoryview(body)
        for start in range(0, remaining, chunk_size):
            yield view[start : min(start + chunk_size, remaining)]
        return
    with body.path.open("rb") as f:
        f.seek(body.start)
        while remaining > 0:
            chunk = f.read(min(chunk_size, remaining))
            if not chunk:
                return  # the file shrank under us: the client sees a short body
            remaining -= len(chunk)
            yield chunk


def sniff_content_type(body: bytes) -> str:
    return JSON_TYPE if body.lstrip()[:1] in (b"{", b"[") else "text/html; charset=utf-8"


def reason_phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()  # compact, as GitHub


def not_found_json(docs_url: str) -> Dict[str, str]:
    return {"message": "Not Found", "documentation_url": docs_url, "status": "404"}


# --- JSON shapes ---


class _Site(NamedTuple):
    url: str  # http://127.0.0.1:PORT
    owner: str
    repo: str
    asset_base: str  # where asset "url"s point: url, or another server's

    @property
    def api(self) -> str:
        return "%s/repos/%s/%s" % (self.url, self.owner, self.repo)

    @property
    def web(self) -> str:
        return "%s/%s/%s" % (self.url, self.owner, self.repo)


def user_json(site: _Site) -> Dict[str, Any]:
    return {
        "login": "vega-ci",
        "id": 1000001,
        "node_id": "MDQ6VXNlcjEwMDAwMDE=",
        "url": site.url + "/users/vega-ci",
        "html_url": site.url + "/vega-ci",
        "type": "User",
        "site_admin": False,
    }


def asset_json(site: _Site, release: Release, asset: Asset, downloads: int) -> Dict[str, Any]:
    tag = urllib.parse.quote(release.tag)
    value: Dict[str, Any] = {
        "url": "%s/repos/%s/%s/releases/assets/%d"
        % (site.asset_base, site.owner, site.repo, asset.id),
        "id": asset.id,
        "node_id": "RA_kwDOfake%d" % asset.id,
        "name": asset.name,
        "label": "",
        "uploader": user_json(site),
        "content_type": mimetypes.guess_type(asset.name)[0] or OCTET_STREAM,
        "state": "uploaded",
        "size": asset.size,
        "digest": asset.digest,
        "download_count": downloads,
        "created_at": asset.created_at,
        "updated_at": asset.created_at,
        "browser_download_url": "%s/releases/download/%s/%s"
        % (site.web, tag, urllib.parse.quote(asset.name)),
    }
    if not asset.has_digest_key:
        del value["digest"]
    return value


def release_json(site: _Site, release: Release, downloads: Mapping[int, int]) -> Dict[str, Any]:
    url = "%s/releases/%d" % (site.api, release.id)
    return {
        "url": url,
        "assets_url": url + "/assets",
        "upload_url": url + "/assets{?name,label}",
        "html_url": "%s/releases/tag/%s" % (site.web, urllib.parse.quote(release.tag)),
        "id": release.id,
        "author": user_json(site),
        "node_id": "RE_kwDOfake%d" % release.id,
        "tag_name": release.tag,
        "target_commitish": "develop",
        "name": release.tag,
        "draft": release.draft,
        "prerelease": False,
        "created_at": release.created_at,
        "published_at": None if release.draft else release.created_at,
        "assets": assets_json(site, release, downloads)[: release.embed_assets],
        "tarball_url": "%s/tarball/%s" % (site.api, release.tag),
        "zipball_url": "%s/zipball/%s" % (site.api, release.tag),
        "body": "Release %s" % release.tag,
    }


def assets_json(site: _Site, release: Release, downloads: Mapping[int, int]) -> List[Any]:
    """The release's assets as GitHub lists them, then its odd ones as they were given."""
    listed = [asset_json(site, release, a, downloads.get(a.id, 0)) for a in release.assets]
    return listed + list(release.odd_assets)


# --- routes ---

# API paths relative to /repos/{owner}/{repo}, each with the FakeGitHub method
# answering it and the documentation_url GitHub puts in that route's 404.
API_ROUTES = (
    (r"/releases", "_list_releases", "releases/releases#list-releases"),
    (r"/releases/tags/(?P<tag>.+)", "_release_by_tag",
     "releases/releases#get-a-release-by-tag-name"),
    (r"/releases/(?P<release_id>\d+)/assets", "_list_assets",
     "releases/assets#list-release-assets"),
    (r"/releases/assets/(?P<asset_id>\d+)", "_get_asset", "releases/assets#get-a-release-asset"),
)
REPOS_PATH = re.compile(r"/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)(?P<rest>/.*)?")
REPOSITORIES_PATH = re.compile(r"/repositories/(?P<repo_id>\d+)(?P<rest>/.*)?")
DOWNLOAD_PATH = re.compile(
    r"/(?P<owner>[^/]+)/(?P<repo>[^/]+)/releases/download/(?P<tag>.+)/(?P<name>[^/]+)"
)
OBJECT_PATH = re.compile(r"/objects/(?P<asset_id>\d+)/(?P<name>[^/]+)")


def is_api_path(path: str) -> bool:
    return not (OBJECT_PATH.fullmatch(path) or DOWNLOAD_PATH.fullmatch(path))


# --- the fake ---


class FakeGitHub:
    """A fake GitHub on host:port (port 0 picks a free one), serving in a thread.

    `url` is the API base (githubApiUrl). Use it as a context manager, or call
    start() and close(). Releases and faults may change while it serves.
    """

    def __init__(
        self,
        owner: str = "vegaprotocol",
        repo: str = "vega",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        repo_id: int = DEFAULT_REPO_ID,
        token: Optional[str] = None,
        unauthenticated_limit: int = UNAUTHENTICATED_LIMIT,
        authenticated_limit: int = AUTHENTICATED_LIMIT,
        request_log: Optional[Path] = None,
    ) -> None:
        """token: when set, an Authorization header with another token gets 401.
        request_log: a file to append one JSON line per request to (no tokens).
        """
        self.owner = owner
        self.repo = repo
        self.repo_id = repo_id
        self.token = token
        self.closing = threading.Event()  # set by close(); stalled bodies wait on it
        self._limits = {False: unauthenticated_limit, True: authenticated_limit}
        self._request_log = request_log
        self._lock = threading.Condition()
        self._releases: List[Release] = []
        self._next_ids = [FIRST_RELEASE_ID, FIRST_ASSET_ID]
        self._downloads: Dict[int, int] = {}
        self._faults: List[Fault] = []
        self._forced_limit: Optional[Tuple[int, float]] = None  # (status, reset epoch)
        self._used = {False: 0, True: 0}
        self._window_start = time.time()
        self._arrivals = itertools.count()  # numbers requests in the order they came
        self._requests: List[Tuple[int, Request]] = []  # (arrival, record)
        self._connections: Dict[socket.socket, threading.Thread] = {}
        self._object_token = secrets.token_hex(16)
        self._server = _Server((host, port), self)
        self.url = "http://%s:%d" % (host, self._server.server_address[1])
        # Bases of Link headers and of asset "url"s: this server, unless a test points
        # them at another (a client must not send the token there).
        self.link_base = self.url
        self.asset_base = self.url
        self._thread: Optional[threading.Thread] = None

    @property
    def _site(self) -> _Site:
        return _Site(self.url, self.owner, self.repo, self.asset_base)

    # --- life cycle ---

    def start(self) -> FakeGitHub:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
            name="fake-github", daemon=True,
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and end every connection, stalled downloads included."""
        self.closing.set()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(CLOSE_TIMEOUT_SECONDS)
        self._server.server_close()
        with self._lock:
            connections = list(self._connections.items())
        for connection, _ in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + CLOSE_TIMEOUT_SECONDS
        for _, thread in connections:
            thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> FakeGitHub:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- releases ---

    def add_release(
        self,
        tag: str,
        assets: Optional[Mapping[str, Union[bytes, Path]]] = None,
        *,
        digest: Union[bool, str, None] = True,
        draft: bool = False,
        embed_assets: Optional[int] = None,
        odd_assets: Sequence[Any] = (),
    ) -> Release:
        """Add a release, newer than every one added before, and return it.

        assets maps names to bytes or to a file (streamed, never loaded).
        digest: True serves the right "sha256:<hex>", False serves null (assets
        uploaded before mid-2025), None leaves the key out, a string is served as
        it is (a wrong digest). embed_assets: the release JSON embeds only the
        first N assets, so a client must page the assets endpoint for the rest.
        odd_assets: raw asset objects (a null size, a sha512 digest, no url...)
        served after the real ones, as they are.
        """
        measured = [_measure(name, content, digest) for name, content in (assets or {}).items()]
        with self._lock:
            if any(r.tag == tag for r in self._releases):
                raise ValueError("release %s already exists" % tag)
            created_at = format_time(BASE_TIME + RELEASE_SPACING_SECONDS * len(self._releases))
            records = tuple(
                dataclasses.replace(asset, id=self._take_id(1), created_at=created_at)
                for asset in measured
            )
            release = Release(
                self._take_id(0), tag, draft, created_at, records, embed_assets,
                tuple(odd_assets),
            )
            self._releases.append(release)
        return release

    def add_releases(
        self,
        tags: Iterable[str],
        assets: Optional[Mapping[str, Union[bytes, Path]]] = None,
        **options: Any,
    ) -> List[Release]:
        """Add one release per tag, oldest first, each with the same assets."""
        return [self.add_release(tag, assets, **options) for tag in tags]

    def _take_id(self, kind: int) -> int:
        self._next_ids[kind] += 1
        return self._next_ids[kind] - 1

    # --- requests ---

    @property
    def requests(self) -> List[Request]:
        """The requests answered so far, in the order they arrived.

        A request is recorded when its answer is over, which may be a moment
        after the client has read it: wait_for_requests() waits for it.
        """
        with self._lock:
            return [request for _, request in sorted(self._requests)]

    @property
    def connections(self) -> int:
        """Connections open now: a stalled request shows here, not yet in `requests`."""
        with self._lock:
            return len(self._connections)

    def wait_for_requests(
        self, pattern: str = "", count: int = 1, timeout: float = 5.0
    ) -> List[Request]:
        """Return the answered requests whose path matches, once there are `count`."""
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                found = [r for r in self.requests if compiled.search(r.path)]
                left = deadline - time.monotonic()
                if len(found) >= count or left <= 0:
                    break
                self._lock.wait(left)
        if len(found) < count:
            raise TimeoutError("%d of %d requests matching %r after %gs"
                               % (len(found), count, pattern, timeout))
        return found

    def _track(self, connection: socket.socket) -> None:
        """Remember an open connection and its thread, for close() to end them."""
        with self._lock:
            self._connections[connection] = threading.current_thread()

    def _untrack(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.pop(connection, None)

    def _arrive(self) -> int:
        with self._lock:
            return next(self._arrivals)

    def _record(self, arrival: int, request: Request) -> None:
        """Keep a finished request, and log it (the log is in order of finishing)."""
        with self._lock:
            self._requests.append((arrival, request))
            self._lock.notify_all()
            if self._request_log is not None:
                with self._request_log.open("a") as log:
                    log.write(json.dumps(log_line(request)) + "\n")

    # --- faults ---

    def fail(
        self, pattern: str, status: int, *, times: Optional[int] = None,
        body: Union[bytes, str, None] = None,
    ) -> None:
        """Answer `status` (body: JSON {"message": reason} unless given)."""
        data = body.encode() if isinstance(body, str) else body
        self._add_fault(Fault("fail", re.compile(pattern), times, status=status, body=data))

    def redirect(
        self, pattern: str, location: str, *, times: Optional[int] = None, status: int = 302
    ) -> None:
        """Answer a redirect to any URL (an http:// host elsewhere, say)."""
        self._add_fault(
            Fault("redirect", re.compile(pattern), times, status=status, location=location)
        )

    def slow(
        self, pattern: str, delay_per_chunk: float = 0.0, *,
        stall_after: Optional[int] = None, chunk_size: int = SLOW_CHUNK_SIZE,
        times: Optional[int] = None,
    ) -> None:
        """Send the body in chunks with a pause before each; with stall_after, send
        that many bytes then nothing more until close()."""
        self._add_fault(Fault(
            "slow", re.compile(pattern), times, after_bytes=stall_after,
            delay=delay_per_chunk, chunk_size=chunk_size,
        ))

    def truncate(self, pattern: str, after_bytes: int, *, times: Optional[int] = None) -> None:
        """Announce the full Content-Length, send after_bytes, close cleanly (FIN)."""
        self._add_fault(Fault("truncate", re.compile(pattern), times, after_bytes=after_bytes))

    def reset(self, pattern: str, after_bytes: int, *, times: Optional[int] = None) -> None:
        """Send after_bytes of the body, then abort the connection with a TCP RST."""
        self._add_fault(Fault("reset", re.compile(pattern), times, after_bytes=after_bytes))

    def rate_limit(self, status: int = 403, reset: Optional[float] = None) -> None:
        """Rate-limit every API request until `reset` (epoch; default an hour on)
        or clear_faults()."""
        until = time.time() + RATE_WINDOW_SECONDS if reset is None else reset
        with self._lock:
            self._forced_limit = (status, until)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._forced_limit = None

    def _add_fault(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def _take_fault(self, target: str, kinds: Sequence[str]) -> Optional[Fault]:
        """Return the first live fault of these kinds matching, using up one time."""
        with self._lock:
            for fault in self._faults:
                if fault.kind in kinds and fault.times != 0 and fault.pattern.search(target):
                    if fault.times is not None:
                        fault.times -= 1
                    return fault
        return None

    def _take_body_fault(self, target: str, reply: _Reply) -> Optional[Fault]:
        """Return the body fault for this answer; an empty body has none."""
        if body_length(reply.body) == 0:
            return None
        return self._take_fault(target, BODY_FAULTS)

    # --- answering ---

    def _answer(self, target: str, headers: Headers) -> _Reply:
        """Return the reply to one GET: a fault, a rate limit, or the route's."""
        path, _, query_string = target.partition("?")
        query = urllib.parse.parse_qsl(query_string, keep_blank_values=True)
        reply = self._answer_fault(target)
        if reply is not None:
            return reply
        if not is_api_path(path):
            return self._answer_download(path, query)
        authorization = headers.get("Authorization")
        if self.token is not None and authorization is not None:
            if authorization.split(" ", 1)[-1] != self.token:
                return json_reply(401, {
                    "message": "Bad credentials", "documentation_url": DOCS_URL,
                    "status": "401",
                })
        rate = self._charge_rate(authorization is not None)
        if rate.limited_status:
            return add_headers(rate_limited_reply(rate), rate_headers(rate))
        return add_headers(self._route_api(path, query, headers), rate_headers(rate))

    def _answer_fault(self, target: str) -> Optional[_Reply]:
        fault = self._take_fault(target, ANSWER_FAULTS)
        if fault is None:
            return None
        if fault.kind == "redirect":
            return _Reply(fault.status, (("Location", fault.location),))
        if fault.body is None:
            message = reason_phrase(fault.status)
            return json_reply(fault.status, {"message": message, "documentation_url": DOCS_URL})
        content_type = (("Content-Type", sniff_content_type(fault.body)),)
        return _Reply(fault.status, content_type, fault.body)

    def _charge_rate(self, authenticated: bool) -> _RateState:
        """Count one API request against its hourly budget; say if it is over."""
        with self._lock:
            now = time.time()
            if now >= self._window_start + RATE_WINDOW_SECONDS:
                self._window_start, self._used = now, {False: 0, True: 0}
            limit, used = self._limits[authenticated], self._used[authenticated]
            reset = int(self._window_start + RATE_WINDOW_SECONDS)
            if self._forced_limit is not None and self._forced_limit[1] <= now:
                self._forced_limit = None
            if self._forced_limit is not None:
                status, forced_reset = self._forced_limit
                return _RateState(limit, 0, used, math.ceil(forced_reset), status)
            if used >= limit:
                return _RateState(limit, 0, used, reset, 403)
            self._used[authenticated] = used + 1
            return _RateState(limit, limit - used - 1, used + 1, reset, 0)

    def _route_api(self, path: str, query: Query, headers: Headers) -> _Reply:
        """Return the answer of the route matching the path, or GitHub's 404."""
        rest = self._repo_relative(path)
        for pattern, method, docs in API_ROUTES if rest is not None else ():
            match = re.fullmatch(pattern, str(rest))
            if match is not None:
                reply = getattr(self, method)(match, query, headers)
                return reply or json_reply(404, not_found_json("%s/%s" % (DOCS_URL, docs)))
        return json_reply(404, not_found_json(DOCS_URL))

    def _is_ours(self, owner: str, repo: str) -> bool:
        """Say if owner/repo names this repository (GitHub ignores their case)."""
        return (owner.lower(), repo.lower()) == (self.owner.lower(), self.repo.lower())

    def _repo_relative(self, path: str) -> Optional[str]:
        """Return the path after /repos/{owner}/{repo} or /repositories/{id}, if ours."""
        match = REPOS_PATH.fullmatch(path)
        if match and self._is_ours(match["owner"], match["repo"]):
            return match["rest"] or ""
        match = REPOSITORIES_PATH.fullmatch(path)
        if match and int(match["repo_id"]) == self.repo_id:
            return match["rest"] or ""
        return None

    def _snapshot(self) -> Tuple[List[Release], Dict[int, int]]:
        """Return the releases newest first, and the download counts."""
        with self._lock:
            return list(reversed(self._releases)), dict(self._downloads)

    def _release_reply(self, release: Optional[Release]) -> Optional[_Reply]:
        if release is None:
            return None
        return json_reply(200, release_json(self._site, release, self._snapshot()[1]))

    def _list_releases(self, match: re.Match[str], query: Query, headers: Headers) -> _Reply:
        releases, downloads = self._snapshot()
        items = [release_json(self._site, r, downloads) for r in releases]
        return self._page_reply(items, query, "/releases")

    def _release_by_tag(
        self, match: re.Match[str], query: Query, headers: Headers
    ) -> Optional[_Reply]:
        return self._release_reply(self._find_release_by_tag(urllib.parse.unquote(match["tag"])))

    def _list_assets(
        self, match: re.Match[str], query: Query, headers: Headers
    ) -> Optional[_Reply]:
        release = self._find_release(int(match["release_id"]))
        if release is None:
            return None
        items = assets_json(self._site, release, self._snapshot()[1])
        return self._page_reply(items, query, "/releases/%d/assets" % release.id)

    def _get_asset(self, match: re.Match[str], query: Query, headers: Headers) -> Optional[_Reply]:
        found = self._find_asset(int(match["asset_id"]))
        if found is None:
            return None
        release, asset = found
        if OCTET_STREAM in headers.get("Accept", ""):
            return _Reply(302, (("Location", self._object_url(asset)),))
        downloads = self._snapshot()[1]
        return json_reply(200, asset_json(self._site, release, asset, downloads.get(asset.id, 0)))

    def _page_reply(self, items: List[Dict[str, Any]], query: Query, rest: str) -> _Reply:
        """Answer one page of items, linking the others like GitHub."""
        page, per_page = read_page_options(query)
        base = "%s/repositories/%d%s" % (self.link_base, self.repo_id, rest)
        link = link_header(base, query, page, count_pages(len(items), per_page))
        reply = json_reply(200, items[(page - 1) * per_page : page * per_page])
        return add_headers(reply, (("Link", link),) if link else ())

    def _find_release(self, release_id: int) -> Optional[Release]:
        return next((r for r in self._snapshot()[0] if r.id == release_id), None)

    def _find_asset(self, asset_id: int) -> Optional[Tuple[Release, Asset]]:
        for release in self._snapshot()[0]:
            for asset in release.assets:
                if asset.id == asset_id:
                    return release, asset
        return None

    def _object_url(self, asset: Asset) -> str:
        name = urllib.parse.quote(asset.name)
        return "%s/objects/%d/%s?token=%s" % (self.url, asset.id, name, self._object_token)

    # --- downloads (not API: no rate limit) ---

    def _answer_download(self, path: str, query: Query) -> _Reply:
        match = OBJECT_PATH.fullmatch(path)
        if match is not None:
            return self._serve_object(int(match["asset_id"]), dict(query))
        match = DOWNLOAD_PATH.fullmatch(path)
        if match is None or not self._is_ours(match["owner"], match["repo"]):
            return text_reply(404, "Not Found")
        release = self._find_release_by_tag(urllib.parse.unquote(match["tag"]))
        name = urllib.parse.unquote(match["name"])
        asset = next((a for a in release.assets if a.name == name), None) if release else None
        if asset is None:
            return text_reply(404, "Not Found")
        return _Reply(302, (("Location", self._object_url(asset)),))

    def _find_release_by_tag(self, tag: str) -> Optional[Release]:
        """Return the published (not draft) release with this tag, as GitHub finds it."""
        return next((r for r in self._snapshot()[0] if r.tag == tag and not r.draft), None)

    def _serve_object(self, asset_id: int, query: Mapping[str, str]) -> _Reply:
        """Answer the bytes of an asset, like a CDN."""
        found = self._find_asset(asset_id)
        if found is None:
            return text_reply(404, "Not Found")
        if query.get("token") != self._object_token:
            return text_reply(403, "Request has expired or its signature does not match")
        asset = found[1]
        with self._lock:
            self._downloads[asset_id] = self._downloads.get(asset_id, 0) + 1
        body = (asset.data or b"") if asset.path is None else _FileSlice(asset.path, 0, asset.size)
        return _Reply(200, (("Content-Type", OCTET_STREAM),), body)


def _measure(name: str, content: Union[bytes, Path], digest: Union[bool, str, None]) -> Asset:
    """Return an Asset (id and time still to set), hashing a file only if needed."""
    if isinstance(content, (bytes, bytearray)):
        data: Optional[bytes] = bytes(content)
        path, size, sha256 = None, len(content), hashlib.sha256(content).hexdigest()
    else:
        data, path, size = None, Path(content), Path(content).stat().st_size
        sha256 = hash_file(path) if digest is True else None
    has_key, value = choose_digest(digest, sha256)
    return Asset(0, name, size, sha256, value, has_key, "", data, path)


def json_reply(status: int, value: Any) -> _Reply:
    return _Reply(status, (("Content-Type", JSON_TYPE),), json_bytes(value))


def text_reply(status: int, text: str, extra: Tuple[Tuple[str, str], ...] = ()) -> _Reply:
    return _Reply(status, (("Content-Type", "text/plain; charset=utf-8"),) + extra, text.encode())


def add_headers(reply: _Reply, extra: Iterable[Tuple[str, str]]) -> _Reply:
    return reply._replace(headers=reply.headers + tuple(extra))


def rate_headers(rate: _RateState) -> Tuple[Tuple[str, str], ...]:
    headers = (
        ("X-GitHub-Media-Type", "github.v3; format=json"),
        ("X-RateLimit-Limit", str(rate.limit)),
        ("X-RateLimit-Remaining", str(rate.remaining)),
        ("X-RateLimit-Reset", str(rate.reset)),
        ("X-RateLimit-Used", str(rate.used)),
        ("X-RateLimit-Resource", "core"),
    )
    if rate.limited_status == 429:
        headers += (("Retry-After", str(max(0, rate.reset - int(time.time())))),)
    return headers


def rate_limited_reply(rate: _RateState) -> _Reply:
    return json_reply(
        rate.limited_status,
        {"message": RATE_LIMIT_MESSAGE, "documentation_url": RATE_LIMIT_DOCS_URL},
    )


def log_line(request: Request) -> Dict[str, Any]:
    """Return the request-log record: never the token, only whether one was sent."""
    return {
        "time": format_time(time.time()),
        "method": request.method,
        "path": request.path,
        "status": request.status,
        "bytes_sent": request.bytes_sent,
        "authorization": request.header("Authorization") is not None,
        "accept": request.header("Accept"),
    }


# --- HTTP plumbing ---


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: Tuple[str, int], fake: FakeGitHub) -> None:
        self.fake = fake
        super().__init__(address, _Handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    """Answers GETs with FakeGitHub._answer, acting out body faults while sending."""

    protocol_version = "HTTP/1.1"  # keep-alive, like GitHub
    server: _Server

    def version_string(self) -> str:
        return "GitHub.com"

    def setup(self) -> None:
        super().setup()
        self.server.fake._track(self.connection)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        self.server.fake._untrack(self.connection)

    def handle(self) -> None:
        """Serve requests until the client or close() ends the connection."""
        with contextlib.suppress(OSError):  # resets, broken pipes, timeouts
            super().handle()

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: tests read fake.requests, the CLI writes --request-log."""

    def send_response(self, code: int, message: Optional[str] = None) -> None:
        self.status_sent = code
        super().send_response(code, message)

    def do_GET(self) -> None:
        fake = self.server.fake
        self.status_sent, self.bytes_sent = 0, 0
        arrival = fake._arrive()
        try:
            reply = fake._answer(self.path, self.headers)
            self.send_reply(reply, fake._take_body_fault(self.path, reply))
        finally:
            fake._record(arrival, Request(
                self.command, self.path, dict(self.headers.items()),
                self.status_sent, self.bytes_sent,
            ))

    def send_reply(self, reply: _Reply, fault: Optional[Fault]) -> None:
        self.send_response(reply.status)
        for name, value in reply.headers:
            self.send_header(name, value)
        self.send_header("X-GitHub-Request-Id", new_request_id())
        self.send_header("Content-Length", str(body_length(reply.body)))
        self.end_headers()
        self.write_body(reply.body, fault)

    def write_body(self, body: Body, fault: Optional[Fault]) -> None:
        """Send the body, or as much of it as the fault allows, then act the fault out."""
        closing = self.server.fake.closing
        chunk_size = fault.chunk_size if fault else CHUNK_SIZE
        limit = fault.after_bytes if fault else None
        with contextlib.closing(iter_chunks(body, chunk_size, limit)) as chunks:
            for chunk in chunks:
                if fault is not None and fault.delay and closing.wait(fault.delay):
                    break  # close() was called: stop trickling
                self.wfile.write(chunk)
                self.bytes_sent += len(chunk)
        if fault is not None:
            self.end_faulty_body(fault)

    def end_faulty_body(self, fault: Fault) -> None:
        """Truncate closes (FIN), reset aborts (RST), a stall waits for close()."""
        stalls = fault.kind == "slow" and fault.after_bytes is not None
        if fault.kind != "slow" or stalls or self.server.fake.closing.is_set():
            self.close_connection = True
        if fault.kind == "reset":
            self.abort_connection()
        elif stalls:
            self.server.fake.closing.wait()

    def abort_connection(self) -> None:
        """Close with SO_LINGER 0, so the kernel sends RST instead of FIN."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()  # drop makefile's reference, so close() really closes
        self.connection.close()


def new_request_id() -> str:
    """Return an id shaped like GitHub's X-GitHub-Request-Id (C0DE:1F2E:...)."""
    parts = (secrets.randbits(16), secrets.randbits(24), secrets.randbits(24),
             secrets.randbits(24), secrets.randbits(32))
    return "%04X:%06X:%06X:%06X:%08X" % parts


# --- command line ---


def natural_key(text: str) -> List[Union[int, str]]:
    """Sort key putting v0.9.0 before v0.10.0."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def load_assets_dir(gh: FakeGitHub, folder: Path, **options: Any) -> List[Release]:
    """Add one release per subfolder (tag), oldest first by version order."""
    tags = sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: natural_key(p.name))
    return [
        gh.add_release(
            tag.name, {f.name: f for f in sorted(tag.iterdir()) if f.is_file()}, **options
        )
        for tag in tags
    ]


# Fault flags of the command line, each with what its VALUE is.
FAULT_FLAGS = (
    ("fail", "STATUS[xTIMES]"),
    ("truncate", "BYTES"),
    ("reset", "BYTES"),
    ("stall", "BYTES"),
    ("slow", "SECONDS"),
)


def parse_fault_spec(text: str) -> Tuple[str, str]:
    """Split 'VALUE:REGEX' (argparse type for the fault flags)."""
    value, sep, pattern = text.partition(":")
    if not sep or not value:
        raise argparse.ArgumentTypeError("expected VALUE:REGEX, got %r" % text)
    return value, pattern


def apply_cli_faults(gh: FakeGitHub, args: argparse.Namespace) -> None:
    for value, pattern in args.fail:
        status, _, times = value.partition("x")
        gh.fail(pattern, int(status), times=int(times) if times else None)
    for value, pattern in args.truncate:
        gh.truncate(pattern, int(value))
    for value, pattern in args.reset:
        gh.reset(pattern, int(value))
    for value, pattern in args.stall:
        gh.slow(pattern, stall_after=int(value))
    for value, pattern in args.slow:
        gh.slow(pattern, float(value))
    if args.rate_limit:
        gh.rate_limit(args.rate_limit)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fakes/github.py",
        description="Serve a fake GitHub releases API and asset downloads from DIR, "
        "printing 'fake-github listening url=URL' once ready, until SIGTERM or SIGINT.",
        epilog="DIR holds one folder per tag (sorted by version, the highest newest), "
        "each holding that release's asset files. Fault flags take VALUE:REGEX, REGEX "
        "being searched in each request path with its query, and may repeat: "
        "--fail 500x2:/releases/tags/ answers 500 twice; --truncate 1000:/objects/ "
        "sends 1000 body bytes then closes; --reset 1000:/objects/ sends 1000 then "
        "a TCP RST; --stall 1000:/objects/ sends 1000 then nothing; --slow "
        "0.05:/objects/ pauses 0.05 s before every 16 KiB.",
    )
    parser.add_argument("--assets", type=Path, required=True, metavar="DIR",
                        help="one folder per tag, holding that release's assets")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--owner", default="vegaprotocol")
    parser.add_argument("--repo", default="vega")
    parser.add_argument("--no-digest", action="store_true",
                        help='serve "digest": null, as for assets uploaded before mid-2025')
    parser.add_argument("--embed-assets", type=int, metavar="N",
                        help="embed only the first N assets in each release")
    parser.add_argument("--token", help="answer 401 to any other bearer token")
    parser.add_argument("--unauthenticated-limit", type=int, default=UNAUTHENTICATED_LIMIT,
                        metavar="N", help="API requests an hour without a token")
    parser.add_argument("--rate-limit", type=int, nargs="?", const=403, choices=(403, 429),
                        metavar="STATUS", help="rate-limit every API request (403 or 429)")
    parser.add_argument("--request-log", type=Path, metavar="FILE",
                        help="append one JSON line per request (never the token)")
    for flag, value in FAULT_FLAGS:
        parser.add_argument("--" + flag, type=parse_fault_spec, action="append", default=[],
                            metavar="%s:REGEX" % value)
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if not args.assets.is_dir():
        print("fake-github: --assets %s is not a folder" % args.assets, file=sys.stderr)
        return 2
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())  # only record; the loop acts
    gh = FakeGitHub(
        args.owner, args.repo, host=args.host, port=args.port, token=args.token,
        unauthenticated_limit=args.unauthenticated_limit, request_log=args.request_log,
    )
    with gh:
        load_assets_dir(
            gh, args.assets, digest=not args.no_digest, embed_assets=args.embed_assets
        )
        apply_cli_faults(gh, args)
        print("fake-github listening url=%s" % gh.url, flush=True)
        while not stop.wait(STOP_CHECK_SECONDS):
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
