"""Tests of the fake GitHub itself (fakes/github.py), over real HTTP on 127.0.0.1."""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Dict
from typing import Iterator
from typing import List
from typing import Optional
from typing import Tuple

import pytest

from conftest import wait_for
from fakes.github import FakeGitHub
from fakes.github import link_header

ROOT = Path(__file__).resolve().parent.parent
FAKE_GITHUB = ROOT / "fakes" / "github.py"
API = "/repos/vegaprotocol/vega"
ZIP = "vega-linux-amd64.zip"
PYENV_ROOT = Path(os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv")))
PYTHON38 = PYENV_ROOT / "versions" / "3.8.18" / "bin" / "python3"  # the oldest we support
RATE_LIMIT_MESSAGE = (
    "API rate limit exceeded for 127.0.0.1. (But here's the good news: Authenticated "
    "requests get a higher rate limit. Check out the documentation for more details.)"
)

Headers = Dict[str, str]
Answer = Tuple[int, http.client.HTTPMessage, bytes]
JsonAnswer = Tuple[int, http.client.HTTPMessage, object]


@pytest.fixture
def gh() -> Iterator[FakeGitHub]:
    with FakeGitHub(owner="vegaprotocol", repo="vega") as fake:
        yield fake


@contextlib.contextmanager
def open_response(
    url: str, headers: Optional[Headers] = None, timeout: float = 5.0, method: str = "GET"
) -> Iterator[http.client.HTTPResponse]:
    """Ask for url without following redirects; the body is left for the caller to read."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        target = parts.path + ("?" + parts.query if parts.query else "")
        connection.request(method, target, headers=headers or {})
        yield connection.getresponse()
    finally:
        connection.close()


def fetch(url: str, headers: Optional[Headers] = None) -> Answer:
    with open_response(url, headers) as response:
        return response.status, response.headers, response.read()


def fetch_json(url: str, headers: Optional[Headers] = None) -> JsonAnswer:
    status, response_headers, body = fetch(url, headers)
    return status, response_headers, json.loads(body)


def download(url: str, headers: Optional[Headers] = None) -> bytes:
    """GET url following redirects, as a release downloader would."""
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read()


def parse_links(header: Optional[str]) -> Dict[str, str]:
    return {rel: url for url, rel in re.findall(r'<([^>]+)>; rel="(\w+)"', header or "")}


def follow_pages(url: str, headers: Optional[Headers] = None) -> List[list]:
    """Return every page of a paginated list, following rel="next" to the end."""
    pages = []
    next_url: Optional[str] = url
    while next_url:
        status, response_headers, page = fetch_json(next_url, headers)
        assert status == 200
        pages.append(page)
        next_url = parse_links(response_headers.get("Link")).get("next")
    return pages


def read_line(proc: subprocess.Popen, timeout: float) -> str:
    """Return the first stdout line of proc, failing at the deadline."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no line from %s within %ss" % (proc.args, timeout)
    return proc.stdout.readline().decode()


# --- releases and their JSON ---


@pytest.mark.timeout(10)
def test_release_by_tag_has_githubs_fields_and_headers(gh: FakeGitHub) -> None:
    release = gh.add_release("v0.74.0", {ZIP: b"zip bytes"})

    status, headers, body = fetch_json(gh.url + API + "/releases/tags/v0.74.0")

    assert status == 200
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert headers["X-RateLimit-Limit"] == "60"
    assert headers["X-RateLimit-Remaining"] == "59"
    assert int(headers["X-RateLimit-Reset"]) > time.time()
    assert re.fullmatch(r"[0-9A-F:]+", headers["X-GitHub-Request-Id"])
    assert set(body) >= {
        "url", "html_url", "assets_url", "upload_url", "tarball_url", "zipball_url", "id",
        "node_id", "tag_name", "target_commitish", "name", "draft", "prerelease",
        "created_at", "published_at", "author", "body", "assets",
    }
    assert (body["id"], body["tag_name"], body["draft"]) == (release.id, "v0.74.0", False)
    [asset] = body["assets"]
    assert asset["url"] == "%s%s/releases/assets/%d" % (gh.url, API, release.assets[0].id)
    assert asset["browser_download_url"] == (
        gh.url + "/vegaprotocol/vega/releases/download/v0.74.0/" + ZIP
    )
    assert (asset["name"], asset["size"], asset["state"]) == (ZIP, 9, "uploaded")
    assert asset["content_type"] == "application/zip"
    assert asset["digest"] == "sha256:" + hashlib.sha256(b"zip bytes").hexdigest()


@pytest.mark.timeout(10)
def test_unknown_tag_answers_githubs_404(gh: FakeGitHub) -> None:
    status, headers, body = fetch_json(gh.url + API + "/releases/tags/v9.9.9")

    assert status == 404
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert body == {
        "message": "Not Found",
        "documentation_url":
            "https://docs.github.com/rest/releases/releases#get-a-release-by-tag-name",
        "status": "404",
    }


@pytest.mark.timeout(10)
def test_other_repository_answers_404(gh: FakeGitHub) -> None:
    gh.add_release("v0.74.0", {ZIP: b"x"})

    assert fetch(gh.url + "/repos/someone/else/releases/tags/v0.74.0")[0] == 404
    assert fetch(gh.url + "/someone/else/releases/download/v0.74.0/" + ZIP)[0] == 404


@pytest.mark.timeout(10)
def test_draft_is_hidden_from_tag_lookup_but_listed(gh: FakeGitHub) -> None:
    gh.add_release("v0.75.0", {ZIP: b"x"}, draft=True)

    assert fetch(gh.url + API + "/releases/tags/v0.75.0")[0] == 404
    status, _, listed = fetch_json(gh.url + API + "/releases")
    assert [(r["tag_name"], r["draft"], r["published_at"]) for r in listed] == [
        ("v0.75.0", True, None)
    ]


# --- pagination ---


@pytest.mark.timeout(15)
def test_releases_paginate_across_250_following_links(gh: FakeGitHub) -> None:
    gh.add_releases("v0.%d.0" % n for n in range(250))

    pages = follow_pages(gh.url + API + "/releases?per_page=100&page=1")

    assert [len(page) for page in pages] == [100, 100, 50]
    tags = [release["tag_name"] for page in pages for release in page]
    assert tags == ["v0.%d.0" % n for n in reversed(range(250))]  # newest first


@pytest.mark.timeout(10)
def test_link_headers_have_githubs_format(gh: FakeGitHub) -> None:
    gh.add_releases("v0.%d.0" % n for n in range(250))
    base = "%s/repositories/%d/releases" % (gh.url, gh.repo_id)

    first = fetch(gh.url + API + "/releases?per_page=100&page=1")[1]["Link"]
    middle = fetch(gh.url + API + "/releases?per_page=100&page=2")[1]["Link"]

    assert first == (
        '<%s?per_page=100&page=2>; rel="next", <%s?per_page=100&page=3>; rel="last"'
        % (base, base)
    )
    assert middle == (
        '<{0}?per_page=100&page=1>; rel="prev", <{0}?per_page=100&page=3>; rel="next", '
        '<{0}?per_page=100&page=3>; rel="last", <{0}?per_page=100&page=1>; rel="first"'
        .format(base)
    )


@pytest.mark.timeout(10)
def test_default_page_size_is_30_and_one_page_has_no_link(gh: FakeGitHub) -> None:
    gh.add_releases("v0.%d.0" % n for n in range(31))

    status, headers, page = fetch_json(gh.url + API + "/releases")
    assert len(page) == 30
    assert parse_links(headers["Link"])["last"].endswith("/releases?page=2")
    assert "Link" not in fetch(gh.url + API + "/releases?per_page=100")[1]


@pytest.mark.timeout(10)
def test_assets_endpoint_pages_past_embedded_assets(gh: FakeGitHub) -> None:
    names = ["asset-%d.zip" % n for n in range(5)]
    release = gh.add_release("v0.74.0", {name: name.encode() for name in names}, embed_assets=2)

    body = fetch_json(gh.url + API + "/releases/tags/v0.74.0")[2]
    pages = follow_pages(body["assets_url"] + "?per_page=2")

    assert [a["name"] for a in body["assets"]] == names[:2]
    assert [len(page) for page in pages] == [2, 2, 1]
    assert [a["name"] for page in pages for a in page] == names
    assert body["assets_url"] == "%s%s/releases/%d/assets" % (gh.url, API, release.id)


@pytest.mark.parametrize(
    ("page", "last", "expected"),
    [
        (1, 1, None),
        (1, 2, '<B?page=2>; rel="next", <B?page=2>; rel="last"'),
        (2, 2, '<B?page=1>; rel="prev", <B?page=1>; rel="first"'),
        (3, 2, '<B?page=2>; rel="prev", <B?page=1>; rel="first"'),
    ],
    ids=["one-page", "first-of-two", "last-of-two", "past-the-end"],
)
def test_link_header(page: int, last: int, expected: Optional[str]) -> None:
    assert link_header("B", [("page", str(page))], page, last) == expected


@pytest.mark.timeout(10)
def test_link_base_points_the_pages_at_another_server(gh: FakeGitHub) -> None:
    gh.add_releases("v0.%d.0" % n for n in range(3))
    with FakeGitHub() as other:
        other.add_releases("v0.%d.0" % n for n in range(3))
        gh.link_base = other.url

        pages = follow_pages(gh.url + API + "/releases?per_page=2")

        assert [len(page) for page in pages] == [2, 1]
        assert [r.path for r in other.wait_for_requests()] == [
            "/repositories/%d/releases?per_page=2&page=2" % gh.repo_id]


@pytest.mark.timeout(10)
def test_asset_base_points_asset_urls_at_another_server(gh: FakeGitHub) -> None:
    gh.add_release("v0.74.0", {ZIP: b"zip bytes"})
    with FakeGitHub() as other:
        other.add_release("v0.74.0", {ZIP: b"zip bytes"})
        gh.asset_base = other.url

        asset_url = fetch_json(gh.url + API + "/releases/tags/v0.74.0")[2]["assets"][0]["url"]

        assert asset_url.startswith(other.url + API + "/releases/assets/")
        assert download(asset_url, {"Accept": "application/octet-stream"}) == b"zip bytes"


@pytest.mark.timeout(10)
def test_odd_assets_are_served_as_given_after_the_real_ones(gh: FakeGitHub) -> None:
    odd = [{"name": "x.sha512", "size": None, "digest": "sha512:" + "a" * 128}, {"id": 7}]
    release = gh.add_release("v0.74.0", {ZIP: b"x"}, odd_assets=odd, embed_assets=1)

    body = fetch_json(gh.url + API + "/releases/tags/v0.74.0")[2]
    listed = fetch_json(gh.url + API + "/releases/%d/assets" % release.id)[2]

    assert [a["name"] for a in body["assets"]] == [ZIP]
    assert listed[0]["name"] == ZIP and listed[1:] == odd


# --- asset downloads ---


@pytest.mark.timeout(10)
def test_asset_url_redirects_for_octet_stream_and_answers_json_otherwise(gh: FakeGitHub) -> None:
    gh.add_release("v0.74.0", {ZIP: b"zip bytes"})
    asset_url = fetch_json(gh.url + API + "/releases/tags/v0.74.0")[2]["assets"][0]["url"]

    status, headers, _ = fetch(asset_url, {"Accept": "application/octet-stream"})
    json_status, _, asset = fetch_json(asset_url)

    assert status == 302
    objects = re.escape(gh.url) + r"/objects/\d+/%s\?token=\w+" % ZIP
    assert re.fullmatch(objects, headers["Location"])
    assert (json_status, asset["name"]) == (200, ZIP)
    assert download(asset_url, {"Accept": "application/octet-stream"}) == b"zip bytes"


@pytest.mark.timeout(10)
def test_objects_path_checks_its_token(gh: FakeGitHub) -> None:
    gh.add_release("v0.74.0", {ZIP: b"0123456789"})
    location = fetch(gh.url + "/vegaprotocol/vega/releases/download/v0.74.0/" + ZIP)[1]["Location"]

    assert fetch(location)[0] == 200
    assert fetch(location.split("?")[0] + "?token=forged")[0] == 403


@pytest.mark.timeout(10)
def test_browser_download_url_redirects_to_the_bytes(gh: FakeGitHub) -> None:
    gh.add_release("v0.74.0", {ZIP: b"zip bytes"})
    url = gh.url + "/vegaprotocol/vega/releases/download/v0.74.0/" + ZIP

    status, headers, _ = fetch(url)
    with open_response(headers["Location"]) as response:
        answer = (response.headers["Content-Type"], response.headers["Content-Length"])
        body = response.read()

    assert status == 302
    assert (answer, body) == (("application/octet-stream", "9"), b"zip bytes")
    asset = fetch_json(gh.url + API + "/releases/tags/v0.74.0")[2]["assets"][0]
    assert asset["download_count"] == 1


@pytest.mark.parametrize(
    ("digest", "expected"),
    [
        (True, "sha256:" + hashlib.sha256(b"zip bytes").hexdigest()),
        (False, None),
        ("sha256:" + "0" * 64, "sha256:" + "0" * 64),
    ],
    ids=["correct", "null", "wrong"],
)
@pytest.mark.timeout(10)
def test_digest_options(gh: FakeGitHub, digest: object, expected: Optional[str]) -> None:
    gh.add_release("v0.74.0", {ZIP: b"zip bytes"}, digest=digest)

    asset = fetch_json(gh.url + API + "/releases/tags/v0.74.0")[2]["assets"][0]

    assert asset["digest"] == expected


@pytest.mark.timeout(10)
def test_digest_none_leaves_the_key_out(gh: FakeGitHub) -> None:
    gh.add_release("v0.74.0", {ZIP: b"zip bytes"}, digest=None)

    assert "digest" not in fetch_json(gh.url + API + "/releases/tags/v0.74.0")[2]["assets"][0]


@pytest.mark.timeout(20)
def test_file_backed_50mb_asset_streams_intact(gh: FakeGitHub, tmp_path: Path) -> None:
    path, expected = tmp_path / ZIP, hashlib.sha256()
    with path.open("wb") as f:
        for _ in range(50):
            chunk = os.urandom(1024 * 1024)
            expected.update(chunk)
            f.write(chunk)
    gh.add_release("v0.74.0", {ZIP: path})
    asset = fetch_json(gh.url + API + "/releases/tags/v0.74.0")[2]["assets"][0]

    received, size = hashlib.sha256(), 0
    request = urllib.request.Request(asset["url"], headers={"Accept": "application/octet-stream"})
    with urllib.request.urlopen(request, timeout=10) as response:
        for chunk in iter(lambda: response.read(1024 * 1024), b""):
            received.update(chunk)
            size += len(chunk)

    assert (asset["size"], size) == (50 * 1024 * 1024, 50 * 1024 * 1024)
    assert asset["digest"] == "sha256:" + expected.hexdigest() == "sha256:" + received.hexdigest()


# --- faults ---


@pytest.mark.timeout(10)
def test_fail_answers_status_n_times_then_succeeds(gh: FakeGitHub) -> None:
    gh.add_release("v0.74.0")
    gh.fail(r"/releases/tags/", 500, times=2)
    url = gh.url + API + "/releases/tags/v0.74.0"

    statuses = [fetch(url)[0] for _ in range(3)]

    assert statuses == [500, 500, 200]
    assert [r.status for r in gh.wait_for_requests(count=3)] == [500, 500, 200]


@pytest.mark.timeout(10)
def test_fail_sends_a_given_body(gh: FakeGitHub) -> None:
    gh.fail(r"/releases", 502, body="<html>Bad gateway</html>")

    status, headers, body = fetch(gh.url + API + "/releases")

    assert (status, headers["Content-Type"], body) == (
        502, "text/html; charset=utf-8", b"<html>Bad gateway</html>"
    )


@pytest.mark.parametrize("status", [403, 429])
@pytest.mark.timeout(10)
def test_rate_limit_answers_githubs_headers_and_body(gh: FakeGitHub, status: int) -> None:
    reset = int(time.time()) + 600
    gh.rate_limit(status=status, reset=reset)

    got, headers, body = fetch_json(gh.url + API + "/releases")

    assert got == status
    assert (headers["X-RateLimit-Remaining"], headers["X-RateLimit-Reset"]) == ("0", str(reset))
    assert body == {
        "message": RATE_LIMIT_MESSAGE,
        "documentation_url":
            "https://docs.github.com/rest/overview/resources-in-the-rest-api#rate-limiting",
    }
    gh.clear_faults()
    assert fetch(gh.url + API + "/releases")[0] == 200


@pytest.mark.timeout(10)
def test_rate_limit_lifts_at_its_reset_time(gh: FakeGitHub) -> None:
    gh.rate_limit(reset=time.time() + 0.3)
    url = gh.url + API + "/releases"
    assert fetch(url)[0] == 403

    deadline = time.monotonic() + 5
    while fetch(url)[0] != 200:
        assert time.monotonic() < deadline, "rate limit never lifted"


@pytest.mark.timeout(10)
def test_hourly_budget_runs_out_for_anonymous_clients_only() -> None:
    with FakeGitHub(unauthenticated_limit=2) as gh:
        url = gh.url + API + "/releases"
        anonymous = [fetch(url)[0] for _ in range(3)]
        with_token = fetch(url, {"Authorization": "Bearer t0ken"})

    assert anonymous == [200, 200, 403]
    assert (with_token[0], with_token[1]["X-RateLimit-Limit"]) == (200, "5000")


@pytest.mark.timeout(10)
def test_wrong_token_answers_bad_credentials() -> None:
    with FakeGitHub(token="right") as gh:
        url = gh.url + API + "/releases"
        wrong = fetch_json(url, {"Authorization": "Bearer wrong"})
        right = fetch(url, {"Authorization": "Bearer right"})

    assert (wrong[0], wrong[2]["message"]) == (401, "Bad credentials")
    assert right[0] == 200


@pytest.mark.timeout(10)
def test_truncate_closes_before_content_length(gh: FakeGitHub) -> None:
    gh.add_release("v0.74.0", {ZIP: b"x" * 100000})
    gh.truncate(r"/objects/", 1000)
    location = fetch(gh.url + "/vegaprotocol/vega/releases/download/v0.74.0/" + ZIP)[1]["Location"]

    with open_response(location) as response:
        assert response.headers["Content-Length"] == "100000"
        with pytest.raises(http.client.IncompleteRead) as error:
            response.read()

    assert len(error.value.partial) == 1000
    assert gh.wait_for_requests(r"/objects/")[0].bytes_sent == 1000


@pytest.mark.timeout(10)
def test_reset_aborts_with_connection_reset(gh: FakeGitHub) -> None:
    gh.add_release("v0.74.0", {ZIP: b"x" * 1000000})
    gh.reset(r"/objects/", 1000)
    location = fetch(gh.url + "/vegaprotocol/vega/releases/download/v0.74.0/" + ZIP)[1]["Location"]

    with open_response(location) as response:
        with pytest.raises(ConnectionResetError):
            response.read()


@pytest.mark.timeout(10)
def test_fault_times_lets_a_retry_succeed(gh: FakeGitHub) -> None:
    gh.add_release("v0.74.0", {ZIP: b"x" * 100000})
    gh.truncate(r"/objects/", 10, times=1)
    url = gh.url + "/vegaprotocol/vega/releases/download/v0.74.0/" + ZIP

    with pytest.raises(http.client.IncompleteRead):
        download(url)
    assert download(url) == b"x" * 100000


@pytest.mark.timeout(10)
def test_stall_times_out_the_client_and_close_ends_it_promptly(tmp_path: Path) -> None:
    gh = FakeGitHub().start()
    try:
        gh.add_release("v0.74.0", {ZIP: b"x" * 100000})
        gh.slow(r"/objects/", stall_after=500)
        url = gh.url + "/vegaprotocol/vega/releases/download/v0.74.0/" + ZIP
        location = fetch(url)[1]["Location"]
        with open_response(location, timeout=0.5) as response:
            assert response.read(500) == b"x" * 500
            with pytest.raises(socket.timeout):
                response.read(1)
    finally:
        started = time.monotonic()
        gh.close()
    assert time.monotonic() - started < 2
    assert gh.wait_for_requests(r"/objects/")[0].bytes_sent == 500


@pytest.mark.timeout(10)
def test_close_ends_a_download_stalled_mid_body() -> None:
    gh = FakeGitHub().start()
    gh.add_release("v0.74.0", {ZIP: b"x" * 100000})
    gh.slow(r"/objects/", stall_after=10)
    location = fetch(gh.url + "/vegaprotocol/vega/releases/download/v0.74.0/" + ZIP)[1]["Location"]
    with open_response(location, timeout=5) as response:
        assert response.read(10) == b"x" * 10
        wait_for(lambda: gh.connections == 1, 5, "the stalled connection alone open")
        assert not [r for r in gh.requests if r.path.startswith("/objects/")]
        started = time.monotonic()
        gh.close()
        with pytest.raises(http.client.IncompleteRead):
            response.read()
    assert time.monotonic() - started < 2


@pytest.mark.timeout(10)
def test_slow_pauses_after_each_chunk(gh: FakeGitHub) -> None:
    gh.add_release("v0.74.0", {ZIP: b"x" * 4000})
    gh.slow(r"/objects/", 0.1, chunk_size=1000)
    url = gh.url + "/vegaprotocol/vega/releases/download/v0.74.0/" + ZIP

    started = time.monotonic()
    assert download(url) == b"x" * 4000
    assert time.monotonic() - started >= 0.4


@pytest.mark.timeout(10)
def test_redirect_points_anywhere(gh: FakeGitHub) -> None:
    gh.add_release("v0.74.0", {ZIP: b"x"})
    gh.redirect(r"/releases/download/", "http://example.invalid/vega.zip")

    status, headers, _ = fetch(gh.url + "/vegaprotocol/vega/releases/download/v0.74.0/" + ZIP)

    assert (status, headers["Location"]) == (302, "http://example.invalid/vega.zip")


# --- requests and the request log ---


@pytest.mark.timeout(10)
def test_requests_record_headers_status_and_bytes(gh: FakeGitHub) -> None:
    gh.add_release("v0.74.0", {ZIP: b"zip bytes"})

    download(gh.url + "/vegaprotocol/vega/releases/download/v0.74.0/" + ZIP,
             {"Authorization": "Bearer s3cret"})

    [second] = gh.wait_for_requests(r"^/objects/")
    [first] = gh.wait_for_requests(r"/releases/download/")
    assert (first.method, first.status, first.bytes_sent) == ("GET", 302, 0)
    assert first.header("authorization") == "Bearer s3cret"
    assert second.path.startswith("/objects/")
    assert (second.status, second.bytes_sent) == (200, 9)


@pytest.mark.timeout(10)
def test_one_connection_serves_many_requests(gh: FakeGitHub) -> None:
    gh.add_release("v0.74.0")
    connection = http.client.HTTPConnection("127.0.0.1", int(gh.url.rsplit(":", 1)[1]), timeout=5)
    try:
        for _ in range(3):
            connection.request("GET", API + "/releases/tags/v0.74.0")
            response = connection.getresponse()
            assert (response.status, json.loads(response.read())["tag_name"]) == (200, "v0.74.0")
    finally:
        connection.close()


@pytest.mark.timeout(10)
def test_request_log_records_authorization_without_the_token(tmp_path: Path) -> None:
    log = tmp_path / "requests.jsonl"
    with FakeGitHub(request_log=log) as gh:
        fetch(gh.url + API + "/releases", {"Authorization": "Bearer s3cret"})
        fetch(gh.url + API + "/releases/tags/nope")

    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted((r["path"], r["status"], r["authorization"]) for r in lines) == [
        (API + "/releases", 200, True), (API + "/releases/tags/nope", 404, False),
    ]  # in the order answers ended, which may differ from the order they were asked
    assert "s3cret" not in log.read_text()


# --- command line ---


def make_assets_dir(root: Path) -> Path:
    for tag in ("v0.9.0", "v0.10.0"):
        (root / tag).mkdir(parents=True)
        (root / tag / ZIP).write_bytes(tag.encode())
    return root


@pytest.mark.parametrize(
    "python",
    [
        sys.executable,
        pytest.param(str(PYTHON38), marks=pytest.mark.skipif(
            not PYTHON38.exists(), reason="no CPython 3.8 under pyenv")),
    ],
    ids=["current", "3.8"],
)
@pytest.mark.timeout(20)
def test_cli_serves_a_folder_until_sigterm(tmp_path: Path, python: str) -> None:
    assets, log = make_assets_dir(tmp_path / "assets"), tmp_path / "requests.jsonl"
    proc = subprocess.Popen(
        [python, str(FAKE_GITHUB), "--assets", str(assets), "--request-log", str(log),
         "--fail", "503x1:/releases/tags/"],
        stdout=subprocess.PIPE,
    )
    try:
        line = read_line(proc, timeout=10)
        url = re.fullmatch(r"fake-github listening url=(http://127\.0\.0\.1:\d+)\n", line).group(1)
        tag_url = url + API + "/releases/tags/v0.10.0"
        statuses = [fetch(tag_url)[0], fetch(tag_url)[0]]
        listed = fetch_json(url + API + "/releases")[2]
        data = download(url + "/vegaprotocol/vega/releases/download/v0.9.0/" + ZIP)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()

    assert statuses == [503, 200]
    assert [r["tag_name"] for r in listed] == ["v0.10.0", "v0.9.0"]
    assert data == b"v0.9.0"
    assert len(log.read_text().splitlines()) == 5


@pytest.mark.timeout(10)
def test_cli_help_documents_the_options() -> None:
    done = subprocess.run([sys.executable, str(FAKE_GITHUB), "--help"],
                          stdout=subprocess.PIPE, timeout=10)

    assert done.returncode == 0
    for option in (b"--assets", b"--port", b"--no-digest", b"--rate-limit", b"--request-log"):
        assert option in done.stdout


@pytest.mark.timeout(10)
def test_cli_refuses_a_missing_folder(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(FAKE_GITHUB), "--assets", str(tmp_path / "nope")],
                          stderr=subprocess.PIPE, timeout=10)

    assert (done.returncode, b"is not a folder" in done.stderr) == (2, True)
