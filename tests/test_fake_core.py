"""Tests of fakes/core.py, the fake `vega` binary, run as real subprocesses.

Each node gets a unix socket in a short folder (AF_UNIX paths are limited to 107
bytes), a stdout file and a --record file; the tests wait on those with
deadlines and kill every process they started.
"""
from __future__ import annotations

import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from typing import Callable
from typing import Dict
from typing import Iterator
from typing import List
from typing import NamedTuple
from typing import Optional

import pytest

import conftest
from hypothesis import given
from hypothesis import strategies as st

from fakes import core

REPO = Path(__file__).resolve().parent.parent
CORE = REPO / "fakes" / "core.py"
# Any condition a test waits for should come true well within this on a slow CI box.
DEADLINE_SECONDS = 10.0
# How often the wait loops look again.
POLL_SECONDS = 0.01
# Longer temp folders are swapped for one in /tmp: the socket path must stay short.
MAX_FOLDER_CHARS = 60
STATUS_CALL = {"method": "protocolupgrade.UpgradeStatus", "params": [None],
               "id": 8485730894528034258}
EMPTY_RELEASE = {"VegaReleaseTag": "", "UpgradeBlockHeight": 0}
JSON_TYPE = "application/json"
# The fakes run on the test interpreter without the test venv's packages (conftest's
# python3): under coverage the venv's .pth starts coverage in every Python it runs,
# twice a fake's start-up, for a fake coverage does not measure.
PYTHON = os.path.join(conftest.FAKE_PYTHON_DIR, "python3")


# --- helpers ---


def wait_for(condition: Callable[[], Any], what: str, timeout: float = DEADLINE_SECONDS) -> Any:
    """Return the first truthy value of condition(), or fail after timeout."""
    return conftest.wait_for(condition, timeout, what)


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a unix socket, as vegavisor talks to core."""

    def __init__(self, socket_path: str, timeout: float = DEADLINE_SECONDS) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


class Reply(NamedTuple):
    status: int
    headers: Dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def send(
    connection: UnixHTTPConnection,
    body: Any = STATUS_CALL,
    content_type: Optional[str] = "application/json",
    path: str = "/rpc",
    verb: str = "POST",
    headers: Optional[Dict[str, str]] = None,
) -> Reply:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    all_headers = dict(headers or {})
    if content_type is not None:
        all_headers["Content-Type"] = content_type
    connection.request(verb, path, body=data, headers=all_headers)
    response = connection.getresponse()
    payload = response.read()
    return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, payload)


def call(socket_path: str, timeout: float = DEADLINE_SECONDS, **kwargs: Any) -> Reply:
    connection = UnixHTTPConnection(socket_path, timeout)
    try:
        return send(connection, **kwargs)
    finally:
        connection.close()


def answers(socket_path: str) -> bool:
    """Whether the socket answers at all (it may not exist or listen yet)."""
    try:
        return call(socket_path).status == 200
    except OSError:
        return False


def upgrade_status(socket_path: str) -> Dict[str, Any]:
    reply = call(socket_path)
    assert reply.status == 200, reply
    return reply.json()["result"]


def latest_height(node: "FakeProcess") -> int:
    """The height of the last answered RPC (recorded before the answer is sent)."""
    return max((entry["height"] for entry in node.events("rpc")), default=-1)


def raw_exchange(socket_path: str, request: bytes, timeout: float = DEADLINE_SECONDS) -> bytes:
    """Send bytes (maybe none) and read until the server closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(socket_path)
        if request:
            sock.sendall(request)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def status_request(body: bytes = b"") -> bytes:
    body = body or json.dumps(STATUS_CALL).encode()
    head = ("POST /rpc HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            "Content-Length: %d\r\n\r\n" % len(body))
    return head.encode() + body


class FakeProcess:
    """One fake started in the background, with its stdout, stderr and record."""

    def __init__(self, popen: subprocess.Popen, folder: Path, socket_path: str) -> None:
        self.popen = popen
        self.folder = folder
        self.socket = socket_path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def lines(self) -> List[str]:
        return (self.folder / "stdout").read_text().splitlines()

    def stderr(self) -> str:
        return (self.folder / "stderr").read_text()

    def events(self, name: Optional[str] = None) -> List[Dict[str, Any]]:
        path = self.folder / "record.jsonl"
        if not path.exists():
            return []
        entries = [json.loads(line) for line in path.read_text().splitlines()]
        return [entry for entry in entries if name is None or entry["event"] == name]

    def wait_event(self, name: str, **fields: Any) -> Dict[str, Any]:
        def find() -> Optional[Dict[str, Any]]:
            for entry in self.events(name):
                if all(entry.get(key) == value for key, value in fields.items()):
                    return entry
            return None

        return wait_for(find, "event %s %r" % (name, fields))

    def wait_socket(self) -> None:
        self.wait_event("socket-listening")

    def wait_exit(self) -> int:
        return self.popen.wait(timeout=DEADLINE_SECONDS)

    def send_signal(self, signum: int) -> None:
        self.popen.send_signal(signum)


class Launcher:
    """Starts fakes in a short folder and kills whatever is left at teardown."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.processes: List[FakeProcess] = []

    def start(self, *args: str, name: str = "p") -> FakeProcess:
        folder = self.folder / ("%s%d" % (name, len(self.processes)))
        folder.mkdir()
        socket_path = str(folder / "s")
        argv = [PYTHON, str(CORE)] + [a.replace("{socket}", socket_path) for a in args]
        argv += ["--record", str(folder / "record.jsonl")]
        with open(folder / "stdout", "wb") as out, open(folder / "stderr", "wb") as err:
            popen = subprocess.Popen(argv, stdout=out, stderr=err, cwd=str(folder))
        process = FakeProcess(popen, folder, socket_path)
        self.processes.append(process)
        return process

    def node(self, *args: str) -> FakeProcess:
        process = self.start("node", "--admin-socket", "{socket}", *args)
        process.wait_socket()
        return process

    def kill_all(self) -> None:
        for process in self.processes:
            if process.popen.poll() is None:
                process.popen.kill()
            process.popen.wait()


def run_fake(*args: str, executable: str = PYTHON) -> subprocess.CompletedProcess:
    return subprocess.run([executable, str(CORE)] + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True,
                          timeout=DEADLINE_SECONDS)


def make_short_folder(tmp_path: Path) -> Iterator[Path]:
    if len(str(tmp_path)) <= MAX_FOLDER_CHARS:
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(prefix="fc-", dir="/tmp"))
    try:
        yield folder
    finally:
        shutil.rmtree(str(folder), ignore_errors=True)


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    yield from make_short_folder(tmp_path)


@pytest.fixture
def launcher(folder: Path) -> Iterator[Launcher]:
    fakes = Launcher(folder)
    try:
        yield fakes
    finally:
        fakes.kill_all()


@pytest.fixture(scope="module")
def idle_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeProcess]:
    """One node for the protocol table: past its first block, no proposal, ever."""
    for folder in make_short_folder(tmp_path_factory.mktemp("idle")):
        fakes = Launcher(folder)
        try:
            node = fakes.node("--start-height", "100", "--block-interval", "0.1")
            wait_for(lambda: upgrade_status(node.socket)["AcceptedReleaseInfo"], "a first block")
            yield node
        finally:
            fakes.kill_all()


# --- pure parts: the block clock, exits, signals, the admin protocol ---

SCRIPT = core.UpgradeScript("v0.74.0", accept_height=3, upgrade_height=6, ready_delay=0.5)
NULL = None
EMPTY = core.NO_RELEASE
ACCEPTED = core.ReleaseInfo("v0.74.0", 6)


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "start, elapsed, expected",
    [
        (0, 0.0, core.ChainState(0, NULL, False)),
        (0, 0.09, core.ChainState(0, NULL, False)),
        (0, 0.1, core.ChainState(1, EMPTY, False)),
        (0, 0.35, core.ChainState(3, ACCEPTED, False)),
        (0, 0.65, core.ChainState(6, ACCEPTED, False)),
        (0, 1.05, core.ChainState(6, ACCEPTED, False)),
        (0, 1.1, core.ChainState(6, ACCEPTED, True)),
        (0, 99.0, core.ChainState(6, ACCEPTED, True)),
        (2, 0.0, core.ChainState(2, NULL, False)),
        (2, 0.1, core.ChainState(3, ACCEPTED, False)),
        (4, 0.09, core.ChainState(4, NULL, False)),
        (4, 0.1, core.ChainState(5, ACCEPTED, False)),
    ],
    ids=["start", "before-first-block", "first-block", "accepted", "halted-at-upgrade",
         "waiting-ready-delay", "ready", "stays-ready", "resumed-below-accept",
         "resumed-then-accepted", "restarted-while-accepted", "first-block-after-restart"],
)
def test_chain_state_follows_the_script(start: int, elapsed: float, expected: Any) -> None:
    chain = core.ChainConfig(start, 0.1, SCRIPT)
    assert core.chain_state_at(chain, elapsed) == expected


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "tag, start, expected",
    [
        ("v0.74.0", 0, (SCRIPT, None)),
        ("v0.73.0", 0, (None, "the upgrade tag is this binary's version")),
        ("v0.74.0", 6, (None, "the start height is at or past the upgrade height")),
    ],
    ids=["plays", "own-version", "restarted-from-upgrade-snapshot"],
)
def test_upgrade_script_is_off_for_its_own_version_or_past_the_upgrade(
    tag: str, start: int, expected: Any
) -> None:
    script = SCRIPT._replace(tag=tag)
    assert core.choose_upgrade_script(script, start, "v0.73.0") == (
        (script if expected[0] else None), expected[1])


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "start, height, expected",
    [(0, 3, None), (0, 4, "crash"), (0, 9, "crash"), (4, 9, None), (500, 500, None)],
    ids=["below", "at", "past", "resumed-at-it", "resumed-past-it"],
)
def test_a_crash_fires_only_when_this_run_makes_the_block(
    start: int, height: int, expected: Optional[str]
) -> None:
    chain = core.ChainConfig(start, 0.1, None)
    config = core.NodeConfig(chain, None, "/s", "/rpc", 0.0, None, 0.0, False, 4, None, None,
                             None)
    assert core.scheduled_exit(config, height) == expected


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "ignore, ready, expected",
    [(False, False, "stop"), (False, True, "kill"), (True, True, "ignore"),
     (True, False, "ignore")],
)
def test_decide_on_signal(ignore: bool, ready: bool, expected: str) -> None:
    assert core.decide_on_signal(ignore, ready) == expected


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "text, expected",
    [
        ('[Admin.Server]\nSocketPath = "/a.sock"\nHTTPPath = "/x"\n',
         {"SocketPath": "/a.sock", "HTTPPath": "/x"}),
        ("[ Admin . Server ]  # c\n  SocketPath = '/lit\\eral'  # c\n",
         {"SocketPath": "/lit\\eral"}),
        ('[Admin]\nSocketPath = "/no"\n[Admin.Server.Deeper]\nSocketPath = "/no"\n', {}),
        ('[Admin.Server]\nSocketPath = "/a\\u0062"\n', {"SocketPath": "/ab"}),
    ],
    ids=["basic", "literal-and-spaces", "other-tables", "escapes"],
)
def test_admin_server_keys_are_read_from_their_table(text: str, expected: Dict[str, str]) -> None:
    assert core.read_admin_server_keys(text) == expected


def post(body: bytes, content_type: Optional[str] = JSON_TYPE, target: str = "/rpc",
         verb: str = "POST") -> core.HttpRequest:
    headers = (("host", "localhost"),) + ((("content-type", content_type),)
                                          if content_type is not None else ())
    return core.HttpRequest(verb, target, (1, 1), headers, body)


IDLE_STATE = core.ChainState(5, core.NO_RELEASE, False)


@pytest.mark.timeout(10)
@given(st.binary(max_size=200), st.sampled_from(["application/json", "text/plain", ""]))
def test_any_body_gets_an_answer_never_an_exception(body: bytes, content_type: str) -> None:
    reply = core.answer_admin_request(post(body, content_type), "/rpc", IDLE_STATE, None)
    assert reply.status in (200, 400, 415)
    if reply.status == 200 and reply.body:
        assert json.loads(reply.body)["result"]["ReadyToUpgrade"] is False


@pytest.mark.timeout(10)
@given(st.binary(max_size=300))
def test_any_bytes_are_a_request_or_a_refusal_never_an_exception(data: bytes) -> None:
    try:
        request = core.read_request(io.BytesIO(data))
    except core.HttpRefusal as refusal:
        assert refusal.answer.startswith(b"HTTP/1.1 %d " % refusal.status)
        return
    if request is not None:
        reply = core.answer_admin_request(request, "/rpc", IDLE_STATE, None)
        assert core.http_answer(reply, request, True, "d").startswith(b"HTTP/1.")


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "body, message",
    [
        (b'{"a":"\x01"}', "invalid character '\\x01' in string literal"),
        (b'{"a":"\\x"}', "invalid character 'x' in string escape code"),
        (b'{"a":"\\u12"}', "invalid character '\"' in \\u hexadecimal character escape"),
        (b'{"a":"\\u12', "unexpected EOF"),
        (b'{"id":1, }', "invalid character '}' looking for beginning of object key string"),
        (b'{"a":[1,]}', "invalid character ']' looking for beginning of value"),
        (b'{"a":1 "b"}', "invalid character '\"' after object key:value pair"),
        (b'{"a":[1 2]}', "invalid character '2' after array element"),
        (b'{"a":{"b":1 ]}', "invalid character ']' after object key:value pair"),
        (b"{'a':1}", "invalid character '\\'' looking for beginning of object key string"),
        (b"-Infinity", "invalid character 'I' in numeric literal"),
    ],
    ids=["control-character", "bad-escape", "bad-unicode-escape", "eof-in-escape",
         "trailing-comma-object", "trailing-comma-array", "missing-comma", "array-missing-comma",
         "nested-missing-comma", "single-quote", "minus-infinity"],
)
def test_bad_json_gets_the_go_decoder_message(body: bytes, message: str) -> None:
    """The same message whatever Python's json says (3.13 words trailing commas its own way)."""
    reply = core.answer_admin_request(post(body), "/rpc", IDLE_STATE, None)
    assert (reply.status, reply.body.decode()) == (400, message)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=8,
)


@pytest.mark.timeout(20)
@given(
    st.sampled_from(["protocolupgrade.UpgradeStatus", "x", "a.b.c", ""]) | JSON_VALUES,
    JSON_VALUES,
    JSON_VALUES,
)
def test_any_request_object_gets_200_with_its_id_or_a_plain_400(
    method: Any, params: Any, request_id: Any
) -> None:
    body = json.dumps({"method": method, "params": params, "id": request_id}).encode()
    reply = core.answer_admin_request(post(body), "/rpc", IDLE_STATE, None)
    if reply.status == 400:
        assert reply.body and reply.headers == (("Content-Type", core.PLAIN_TEXT),)
    elif request_id is None:  # a notification
        assert (reply.status, reply.body) == (200, b"")
    else:
        assert reply.status == 200 and json.loads(reply.body)["id"] == request_id


# --- version and copies ---


@pytest.mark.timeout(20)
def test_version_json_prints_exactly_one_line() -> None:
    result = run_fake("version", "--output", "json")
    assert result.returncode == 0
    hash_ = core.version_hash("v0.73.0")
    assert re.fullmatch(r"[0-9a-f]{40}", hash_)
    assert result.stdout == '{"version":"v0.73.0","hash":"%s"}\n' % hash_


@pytest.mark.timeout(20)
def test_version_human_names_the_cli() -> None:
    result = run_fake("version")
    assert result.stdout == "Vega CLI v0.73.0 (%s)\n" % core.version_hash("v0.73.0")


@pytest.mark.timeout(10)
def test_the_fake_itself_reports_its_version_line() -> None:
    assert 'VERSION = "v0.73.0"' in CORE.read_text().splitlines()
    assert os.access(str(CORE), os.X_OK)
    assert CORE.read_text().startswith("#!/usr/bin/env python3\n")


@pytest.mark.timeout(20)
def test_make_binary_writes_an_executable_binary_with_the_version(folder: Path) -> None:
    dest = folder / "home" / "v0.74.0" / "vega"
    assert core.make_binary(dest, "v0.74.0") == dest
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755
    result = subprocess.run([str(dest), "version", "--output", "json"], stdout=subprocess.PIPE,
                            universal_newlines=True, timeout=DEADLINE_SECONDS)
    assert json.loads(result.stdout) == {"version": "v0.74.0",
                                         "hash": core.version_hash("v0.74.0")}
    assert core.version_hash("v0.74.0") != core.version_hash("v0.73.0")
    assert 'VERSION = "v0.73.0"' in CORE.read_text()


@pytest.mark.timeout(20)
def test_make_binary_command_line_replaces_an_existing_copy(folder: Path) -> None:
    dest = folder / "vega"
    core.make_binary(dest, "v0.74.0")
    result = run_fake("make-binary", str(dest), "--version", "v0.75.0-preview.1")
    assert (result.returncode, result.stdout) == (0, "%s\n" % dest)
    assert 'VERSION = "v0.75.0-preview.1"' in dest.read_text().splitlines()
    assert [p.name for p in folder.iterdir()] == ["vega"]  # no staging file left


@pytest.mark.timeout(10)
@pytest.mark.parametrize("tag", ['v1"; import os', "", "v1\nx", "../v1"])
def test_make_binary_refuses_what_is_not_a_tag(folder: Path, tag: str) -> None:
    with pytest.raises(ValueError):
        core.make_binary(folder / "vega", tag)
    assert not (folder / "vega").exists()


# --- the block clock and the upgrade script ---


@pytest.mark.timeout(20)
def test_node_says_it_started_first_then_serves_null_before_the_first_block(
    launcher: Launcher,
) -> None:
    node = launcher.node("--block-interval", "60")
    assert node.lines()[0] == "fake-vega v0.73.0 node started pid=%d height=0" % node.pid
    assert upgrade_status(node.socket) == {"AcceptedReleaseInfo": None, "ReadyToUpgrade": False}


@pytest.mark.timeout(30)
def test_upgrade_script_goes_from_null_to_empty_to_accepted_to_ready(launcher: Launcher) -> None:
    node = launcher.node("--block-interval", "0.2", "--upgrade-tag", "v0.74.0",
                         "--accept-height", "2", "--upgrade-height", "4", "--ready-delay", "0.2")
    accepted = {"VegaReleaseTag": "v0.74.0", "UpgradeBlockHeight": 4}
    seen: List[Any] = []

    def note_state() -> bool:
        result = upgrade_status(node.socket)
        state = (json.dumps(result["AcceptedReleaseInfo"]), result["ReadyToUpgrade"])
        if not seen or seen[-1] != state:
            seen.append(state)
        return result["ReadyToUpgrade"]

    wait_for(note_state, "ReadyToUpgrade")
    expected = [(json.dumps(None), False), (json.dumps(EMPTY_RELEASE), False),
                (json.dumps(accepted), False), (json.dumps(accepted), True)]
    # Null lasts one block (0.2 s): a very slow machine may miss it, never reorder it.
    assert seen in (expected, expected[1:])
    assert node.wait_event("accepted")["height"] == 2
    ready = node.wait_event("ready", tag="v0.74.0", height=4)
    assert all(e["time"] >= ready["time"] for e in node.events("rpc") if e["ready"])
    assert any("upgrade accepted tag=v0.74.0 upgrade_height=4 height=2" in l for l in node.lines())
    assert any("ready to upgrade tag=v0.74.0 height=4" in l for l in node.lines())


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "extra, reason",
    [
        (["--snapshot.load-from-block-height", "5"], "the start height is at or past"),
        (["--upgrade-tag", "v0.73.0"], "the upgrade tag is this binary's version"),
    ],
    ids=["restarted-from-the-upgrade-snapshot", "tag-is-own-version"],
)
def test_upgrade_script_is_off_and_blocks_keep_coming(
    launcher: Launcher, extra: List[str], reason: str
) -> None:
    node = launcher.node("--block-interval", "0.05", "--upgrade-tag", "v0.74.0",
                         "--accept-height", "2", "--upgrade-height", "5", *extra)
    wait_for(lambda: upgrade_status(node.socket) and latest_height(node) > 6,
             "blocks past the upgrade height")
    assert upgrade_status(node.socket) == {"AcceptedReleaseInfo": EMPTY_RELEASE,
                                           "ReadyToUpgrade": False}
    start = node.events("start")[0]
    assert start["upgrade"] is None and start["upgrade_skipped"].startswith(reason)
    assert node.events("accepted") == []


@pytest.mark.timeout(20)
def test_snapshot_flag_sets_the_start_height_and_is_recorded(launcher: Launcher) -> None:
    node = launcher.node("--start-height", "3", "--snapshot.load-from-block-height", "1034000",
                         "--block-interval", "0.1")
    start = node.events("start")[0]
    assert (start["start_height"], start["snapshot_height"]) == (1034000, 1034000)
    assert node.lines()[0].endswith("height=1034000")
    wait_for(lambda: upgrade_status(node.socket)["AcceptedReleaseInfo"] == EMPTY_RELEASE,
             "the first block after the snapshot")
    assert min(e["height"] for e in node.events("rpc") if e["tag"] == "") == 1034001


# --- a slow start, as a real core loading a snapshot and replaying blocks ---


def listening_after(node: FakeProcess) -> float:
    """Seconds from the node's start to its socket listening, as its record says."""
    listening = node.wait_event("socket-listening")
    start = node.events("start")[0]
    return listening["time"] - start["time"]


@pytest.mark.timeout(20)
def test_socket_delay_makes_a_slow_start(launcher: Launcher) -> None:
    node = launcher.start("node", "--admin-socket", "{socket}", "--socket-delay", "0.3",
                          "--snapshot-socket-delay", "5")
    assert listening_after(node) >= 0.3
    assert node.events("start")[0]["socket_delay"] == 0.3


@pytest.mark.timeout(20)
def test_snapshot_socket_delay_is_the_delay_after_a_snapshot_start(launcher: Launcher) -> None:
    node = launcher.start("node", "--admin-socket", "{socket}", "--socket-delay", "5",
                          "--snapshot-socket-delay", "0.4",
                          "--snapshot.load-from-block-height", "8")
    assert 0.4 <= listening_after(node) < 5
    assert node.events("start")[0]["socket_delay"] == 0.4


@pytest.mark.timeout(20)
def test_snapshot_start_waits_socket_delay_when_no_snapshot_delay_is_given(
    launcher: Launcher,
) -> None:
    node = launcher.start("node", "--admin-socket", "{socket}", "--socket-delay", "0.3",
                          "--snapshot.load-from-block-height", "8")
    assert listening_after(node) >= 0.3


@pytest.mark.timeout(20)
def test_no_socket_file_while_loading(launcher: Launcher) -> None:
    node = launcher.start("node", "--admin-socket", "{socket}", "--socket-delay", "0.5")
    node.wait_event("start")
    assert not os.path.exists(node.socket)
    with pytest.raises(FileNotFoundError):
        call(node.socket)
    node.wait_socket()
    assert answers(node.socket)


@pytest.mark.timeout(20)
def test_blocks_start_when_the_socket_opens(launcher: Launcher) -> None:
    """No block is made while loading: the first answer is null, the first block follows
    (the load lasts longer than a block: a clock counting from the start would be past 50)."""
    node = launcher.start("node", "--admin-socket", "{socket}", "--socket-delay", "0.6",
                          "--block-interval", "0.5", "--start-height", "50")
    wait_for(lambda: answers(node.socket), "the socket")
    first = node.events("rpc")[0]
    assert (first["height"], first["tag"]) == (50, None)
    wait_for(lambda: upgrade_status(node.socket)["AcceptedReleaseInfo"], "the first block")
    assert min(e["height"] for e in node.events("rpc") if e["tag"] == "") == 51


@pytest.mark.timeout(20)
def test_restart_while_an_upgrade_is_accepted_says_null_until_its_first_block(
    launcher: Launcher,
) -> None:
    """A crash restart (snapshot below the upgrade block): null first, then the release."""
    node = launcher.start("node", "--admin-socket", "{socket}", "--block-interval", "0.5",
                          "--upgrade-tag", "v0.74.0", "--accept-height", "2",
                          "--upgrade-height", "40", "--snapshot.load-from-block-height", "5",
                          "--snapshot-socket-delay", "0.3")
    assert listening_after(node) >= 0.3
    assert upgrade_status(node.socket) == {"AcceptedReleaseInfo": None, "ReadyToUpgrade": False}
    release = wait_for(lambda: upgrade_status(node.socket)["AcceptedReleaseInfo"],
                       "the first block")
    assert release == {"VegaReleaseTag": "v0.74.0", "UpgradeBlockHeight": 40}
    assert node.wait_event("accepted")["height"] == 6


# --- signals ---


@pytest.mark.timeout(20)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_the_node_cleanly(launcher: Launcher, signum: int) -> None:
    node = launcher.node("--block-interval", "60")
    node.send_signal(signum)
    assert node.wait_exit() == 0
    assert not os.path.exists(node.socket)
    name = signal.Signals(signum).name
    assert node.lines()[-2:] == ["fake-vega v0.73.0 stopping signal=%s" % name,
                                 "fake-vega v0.73.0 stopped code=0"]
    assert node.events(name.lower())[0]["action"] == "stop"
    assert node.events("exit")[0]["code"] == 0


@pytest.mark.timeout(20)
def test_stop_delay_makes_a_slow_shutdown(launcher: Launcher) -> None:
    node = launcher.node("--block-interval", "60", "--stop-delay", "0.2")
    node.send_signal(signal.SIGTERM)
    assert node.wait_exit() == 0
    stopping = node.events("sigterm")[0]["time"]
    assert node.events("exit")[0]["time"] - stopping >= 0.2


@pytest.mark.timeout(20)
def test_sigterm_when_ready_to_upgrade_kills_itself(launcher: Launcher) -> None:
    node = launcher.node("--block-interval", "0.05", "--upgrade-tag", "v0.74.0",
                         "--upgrade-height", "2")
    wait_for(lambda: upgrade_status(node.socket)["ReadyToUpgrade"], "ReadyToUpgrade")
    node.send_signal(signal.SIGTERM)
    assert node.wait_exit() == -signal.SIGKILL
    assert node.events("sigterm")[0]["action"] == "kill"
    assert node.events("exit") == []
    assert os.path.exists(node.socket)  # left behind, as by a real core


@pytest.mark.timeout(20)
def test_ignore_sigterm_leaves_only_sigkill(launcher: Launcher) -> None:
    node = launcher.node("--block-interval", "60", "--ignore-sigterm")
    node.send_signal(signal.SIGTERM)
    node.wait_event("sigterm", action="ignore")
    node.send_signal(signal.SIGINT)
    node.wait_event("sigint", action="ignore")
    assert upgrade_status(node.socket)["ReadyToUpgrade"] is False
    assert node.popen.poll() is None
    node.send_signal(signal.SIGKILL)
    assert node.wait_exit() == -signal.SIGKILL


# --- scripted exits ---


@pytest.mark.timeout(20)
def test_crash_at_height_exits_1_and_leaves_the_socket(launcher: Launcher) -> None:
    node = launcher.start("node", "--admin-socket", "{socket}", "--block-interval", "0.05",
                          "--crash-at-height", "3")
    assert node.wait_exit() == 1
    assert node.events("crash")[0]["height"] == 3
    assert node.events("crash")[0]["code"] == 1
    assert node.events("exit")[0] == dict(node.events("exit")[0], code=1, reason="crash")
    assert os.path.exists(node.socket)


@pytest.mark.timeout(20)
def test_crash_signal_kills_the_node_by_that_signal(launcher: Launcher) -> None:
    node = launcher.start("node", "--admin-socket", "{socket}", "--block-interval", "0.05",
                          "--crash-at-height", "2", "--crash-signal", "SEGV")
    assert node.wait_exit() == -signal.SIGSEGV
    assert node.events("crash")[0]["signal"] == "SIGSEGV"
    assert not list(node.folder.glob("core*"))


@pytest.mark.timeout(20)
def test_exit_zero_at_height_removes_the_socket(launcher: Launcher) -> None:
    node = launcher.start("node", "--admin-socket", "{socket}", "--block-interval", "0.05",
                          "--exit-zero-at-height", "2")
    assert node.wait_exit() == 0
    assert node.events("exit")[0]["reason"] == "exit-zero-at-height"
    assert not os.path.exists(node.socket)


@pytest.mark.timeout(20)
def test_a_stale_socket_file_is_replaced(launcher: Launcher, folder: Path) -> None:
    first = launcher.node("--block-interval", "60")
    first.send_signal(signal.SIGKILL)
    first.wait_exit()
    assert os.path.exists(first.socket)
    launcher.node("--block-interval", "60", "--admin-socket", first.socket)
    assert upgrade_status(first.socket)["ReadyToUpgrade"] is False


# --- rpc faults ---


def start_faulty(launcher: Launcher, mode: str) -> FakeProcess:
    return launcher.node("--start-height", "10", "--block-interval", "60", "--rpc-fault", mode)


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "mode, expected",
    [
        ("error-member", {"result": None, "error": "some failure", "id": STATUS_CALL["id"]}),
        ("null-result", {"result": None, "error": None, "id": STATUS_CALL["id"]}),
        ("wrong-types", {"result": {"AcceptedReleaseInfo": "not-a-release-info",
                                    "ReadyToUpgrade": "yes"},
                         "error": None, "id": STATUS_CALL["id"]}),
    ],
)
def test_answer_faults_send_bad_json_rpc(launcher: Launcher, mode: str, expected: Any) -> None:
    node = start_faulty(launcher, mode)
    reply = call(node.socket)
    assert (reply.status, reply.json()) == (200, expected)
    assert node.wait_event("rpc")["fault"] == mode


@pytest.mark.timeout(20)
def test_http400_fault_answers_as_gorilla_does(launcher: Launcher) -> None:
    node = start_faulty(launcher, "http400")
    reply = call(node.socket)
    assert (reply.status, reply.body) == (400, b"rpc: method not found")
    assert reply.headers["content-type"] == "text/plain; charset=utf-8"


@pytest.mark.timeout(20)
def test_hang_fault_reads_and_never_answers(launcher: Launcher) -> None:
    node = start_faulty(launcher, "hang")
    with pytest.raises(socket.timeout):
        call(node.socket, timeout=0.3)
    assert node.wait_event("rpc-fault")["fault"] == "hang"
    node.send_signal(signal.SIGTERM)  # a hanging answer does not hold up the exit
    assert node.wait_exit() == 0


@pytest.mark.timeout(20)
def test_garbage_fault_answers_non_http_bytes(launcher: Launcher) -> None:
    node = start_faulty(launcher, "garbage")
    answer = raw_exchange(node.socket, status_request())
    assert answer == core.GARBAGE_REPLY and not answer.startswith(b"HTTP/")
    with pytest.raises(http.client.HTTPException):
        call(node.socket)


@pytest.mark.timeout(20)
def test_close_fault_closes_at_once(launcher: Launcher) -> None:
    node = start_faulty(launcher, "close")
    assert raw_exchange(node.socket, b"") == b""
    assert node.wait_event("rpc-fault")["fault"] == "close"


@pytest.mark.timeout(20)
def test_slow_fault_answers_correctly_late(launcher: Launcher) -> None:
    node = start_faulty(launcher, "slow:0.2")
    started = time.monotonic()
    assert upgrade_status(node.socket) == {"AcceptedReleaseInfo": None, "ReadyToUpgrade": False}
    assert time.monotonic() - started >= 0.2
    assert node.wait_event("rpc")["fault"] == "slow"


@pytest.mark.timeout(20)
def test_fault_starts_at_the_given_height(launcher: Launcher) -> None:
    node = launcher.node("--block-interval", "0.1", "--rpc-fault", "http400",
                         "--rpc-fault-after-height", "3")
    wait_for(lambda: call(node.socket).status == 400, "the fault to start")
    answered = [(e["height"] >= 3, e["status"]) for e in node.events("rpc")]
    assert set(answered) == {(False, 200), (True, 400)}


@pytest.mark.timeout(10)
@pytest.mark.parametrize("mode", ["nope", "slow", "slow:x", "hang:1"])
def test_unknown_fault_is_a_usage_error(mode: str) -> None:
    result = run_fake("node", "--admin-socket", "/tmp/unused.sock", "--rpc-fault", mode)
    assert result.returncode == 2 and "--rpc-fault" in result.stderr


@pytest.mark.timeout(10)
@pytest.mark.parametrize("name", ["STOP", "SIGCHLD", "NOPE"])
def test_crash_signal_must_be_one_that_kills(name: str) -> None:
    result = run_fake("node", "--admin-socket", "/tmp/unused.sock", "--crash-signal", name)
    assert result.returncode == 2 and "--crash-signal" in result.stderr


@pytest.mark.timeout(20)
def test_a_file_in_the_way_of_the_socket_is_an_error(launcher: Launcher, folder: Path) -> None:
    (folder / "in-the-way").write_text("not a socket")
    node = launcher.start("node", "--admin-socket", str(folder / "in-the-way"))
    assert node.wait_exit() == 1
    assert "in-the-way exists and is not a socket" in node.stderr()
    assert node.events("exit")[0]["reason"] == "error"
    assert (folder / "in-the-way").read_text() == "not a socket"


# --- the admin protocol ---


EXACT_EMPTY_ANSWER = (
    b'{"result":{"AcceptedReleaseInfo":{"VegaReleaseTag":"","UpgradeBlockHeight":0},'
    b'"ReadyToUpgrade":false},"error":null,"id":8485730894528034258}\n'
)


@pytest.mark.timeout(20)
def test_upgrade_status_answer_is_byte_exact(idle_node: FakeProcess) -> None:
    reply = call(idle_node.socket, content_type="application/json; charset=utf-8")
    assert (reply.status, reply.body) == (200, EXACT_EMPTY_ANSWER)
    assert reply.headers["content-type"] == "application/json; charset=utf-8"
    assert reply.headers["x-content-type-options"] == "nosniff"


def answer_with_id(raw_id: bytes) -> bytes:
    return EXACT_EMPTY_ANSWER.replace(b"8485730894528034258", raw_id)


def status_call(params: bytes = b"[null]", request_id: bytes = b"1",
                method: bytes = b'"protocolupgrade.UpgradeStatus"') -> bytes:
    return b'{"method":%s,"params":%s,"id":%s}' % (method, params, request_id)


ARGS_TYPE = b"admin.ReadyForUpgradeArgs"


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "request_kwargs, status, body",
    [
        # gorilla/rpc: POST only; the codec by Content-Type (before ';', lowercased)
        ({"verb": "GET", "body": b""}, 405, b"rpc: POST method required, received GET"),
        ({"verb": "PUT"}, 405, b"rpc: POST method required, received PUT"),
        ({"content_type": "application/json;charset=UTF-8"}, 200, EXACT_EMPTY_ANSWER),
        ({"content_type": "APPLICATION/JSON"}, 200, EXACT_EMPTY_ANSWER),
        ({"content_type": "application/json; charset=latin-1"}, 200, EXACT_EMPTY_ANSWER),
        ({"content_type": "application/json ; charset=utf-8"}, 415,
         b"rpc: unrecognized Content-Type: application/json "),
        ({"content_type": "Text/Plain; x=y"}, 415, b"rpc: unrecognized Content-Type: Text/Plain"),
        ({"content_type": None}, 415, b"rpc: unrecognized Content-Type: "),
        # gorilla/mux: only HTTPPath, percent-decoded
        ({"path": "/other"}, 404, b"404 page not found\n"),
        ({"path": "/rpc/"}, 404, b"404 page not found\n"),
        ({"path": "/RPC"}, 404, b"404 page not found\n"),
        ({"path": "/%72pc?x=1"}, 200, EXACT_EMPTY_ANSWER),
        # Go's JSON decoder: the first value of the body
        ({"body": b""}, 400, b"EOF"),
        ({"body": b"  \n"}, 400, b"EOF"),
        ({"body": b"{"}, 400, b"unexpected EOF"),
        ({"body": b'{"method":"protocolupgrade.Upgr'}, 400, b"unexpected EOF"),
        ({"body": b"hello"}, 400, b"invalid character 'h' looking for beginning of value"),
        ({"body": b"NaN"}, 400, b"invalid character 'N' looking for beginning of value"),
        ({"body": b'{"a" 1}'}, 400, b"invalid character '1' after object key"),
        ({"body": b'{"a":1 "b":2}'}, 400, b"invalid character '\"' after object key:value pair"),
        ({"body": b'{"a":[1 2]}'}, 400, b"invalid character '2' after array element"),
        ({"body": b"{,}"}, 400,
         b"invalid character ',' looking for beginning of object key string"),
        ({"body": b"[1]"}, 400, b"json: cannot unmarshal array into Go value of type "
                                b"json.serverRequest"),
        ({"body": b"null"}, 400, b'rpc: service/method request ill-formed: ""'),
        ({"body": status_call() + b" trailing garbage"}, 200, answer_with_id(b"1")),
        # the method: "service.Method", matched exactly; the member's name is not
        ({"body": status_call(method=b"5")}, 400,
         b"json: cannot unmarshal number into Go struct field serverRequest.method of type string"),
        ({"body": status_call(method=b'"protocolupgrade.Nope"')}, 400,
         b'rpc: can\'t find method "protocolupgrade.Nope"'),
        ({"body": status_call(method=b'"ProtocolUpgrade.UpgradeStatus"')}, 400,
         b'rpc: can\'t find service "ProtocolUpgrade.UpgradeStatus"'),
        ({"body": status_call(method=b'"x"')}, 400, b'rpc: service/method request ill-formed: "x"'),
        ({"body": status_call(method=b'"a.b.c"')}, 400,
         b'rpc: service/method request ill-formed: "a.b.c"'),
        ({"body": b'{"METHOD":"protocolupgrade.UpgradeStatus","Params":[],"Id":1}'}, 200,
         answer_with_id(b"1")),
        # params: [1]interface{}{&admin.ReadyForUpgradeArgs{}}
        ({"body": b'{"method":"protocolupgrade.UpgradeStatus","id":1}'}, 400,
         b"rpc: method request ill-formed: missing params field"),
        ({"body": status_call(params=b"null")}, 400,
         b"rpc: method request ill-formed: missing params field"),
        ({"body": status_call(params=b"[]")}, 200, answer_with_id(b"1")),
        ({"body": status_call(params=b"[{}]")}, 200, answer_with_id(b"1")),
        ({"body": status_call(params=b'[{"any":1}, 5]')}, 200, answer_with_id(b"1")),
        ({"body": status_call(params=b"[5]")}, 400,
         b"json: cannot unmarshal number into Go value of type " + ARGS_TYPE),
        ({"body": status_call(params=b'["x"]')}, 400,
         b"json: cannot unmarshal string into Go value of type " + ARGS_TYPE),
        ({"body": status_call(params=b"[true]")}, 400,
         b"json: cannot unmarshal bool into Go value of type " + ARGS_TYPE),
        ({"body": status_call(params=b"[[null]]")}, 400,
         b"json: cannot unmarshal array into Go value of type " + ARGS_TYPE),
        ({"body": status_call(params=b"{}")}, 400,
         b"json: cannot unmarshal object into Go value of type [1]interface {}"),
        ({"body": status_call(params=b"5")}, 400,
         b"json: cannot unmarshal number into Go value of type [1]interface {}"),
        # the id: echoed as sent (compacted, HTML-escaped); none or null: no answer
        ({"body": b'{"method":"protocolupgrade.UpgradeStatus","params":[null]}'}, 200, b""),
        ({"body": status_call(request_id=b"null")}, 200, b""),
        ({"body": status_call(request_id=b"1.50")}, 200, answer_with_id(b"1.50")),
        ({"body": status_call(request_id=b"18446744073709551616")}, 200,
         answer_with_id(b"18446744073709551616")),
        ({"body": status_call(request_id=b'"abc"')}, 200, answer_with_id(b'"abc"')),
        ({"body": status_call(request_id=b'[ 1 , {"a" : "b c"} ]')}, 200,
         answer_with_id(b'[1,{"a":"b c"}]')),
        ({"body": status_call(request_id=b'"<a&b>"')}, 200,
         answer_with_id(b'"\\u003ca\\u0026b\\u003e"')),
        ({"body": status_call(request_id=b'"\\u00e9"')}, 200, answer_with_id(b'"\\u00e9"')),
    ],
    ids=["GET", "PUT", "json-charset-UTF-8", "upper-case", "other-charset", "space-before-semi",
         "text-plain", "no-content-type", "wrong-path", "trailing-slash", "path-case",
         "escaped-path", "empty-body", "blank-body", "truncated", "truncated-string", "not-json",
         "NaN", "no-colon", "no-comma", "array-no-comma", "no-key", "top-level-array",
         "top-level-null", "trailing-garbage", "method-number", "unknown-method",
         "unknown-service", "ill-formed", "three-parts", "member-names-any-case", "no-params",
         "null-params", "empty-params", "object-params", "extra-params", "params-number",
         "params-string", "params-bool", "params-array", "params-object", "params-not-array",
         "notification", "null-id", "float-id", "huge-id", "string-id", "spaced-id",
         "html-id", "escaped-id"],
)
def test_every_request_is_answered_as_gorilla_answers_it(
    idle_node: FakeProcess, request_kwargs: Dict[str, Any], status: int, body: bytes
) -> None:
    reply = call(idle_node.socket, **request_kwargs)
    assert (reply.status, reply.body) == (status, body)
    if status == 200 and body:
        assert (reply.headers["content-type"], reply.headers["x-content-type-options"]) == (
            "application/json; charset=utf-8", "nosniff")
    elif status == 200:
        assert "content-type" not in reply.headers and reply.headers["content-length"] == "0"
    else:
        assert reply.headers["content-type"] == "text/plain; charset=utf-8"
        assert not body.endswith(b"\n") or status == 404


@pytest.mark.timeout(10)
@pytest.mark.parametrize("now", [0, 951782400.5, 1767225599.999, 1796270400, 4102444800],
                         ids=["epoch", "leap-day", "last-second-of-2025", "2026", "2100"])
def test_date_header_is_what_email_utils_writes(now: float) -> None:
    from email.utils import formatdate
    assert core.http_date(now) == formatdate(now, usegmt=True)


WIRE_DATE = re.compile(rb"\r\nDate: [A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT\r\n")


def undated(answer: bytes) -> bytes:
    """The answer with its Date header's value replaced by DATE (checked to be Go's form)."""
    assert len(WIRE_DATE.findall(answer)) == 1, answer
    return WIRE_DATE.sub(b"\r\nDate: DATE\r\n", answer)


def wire(request_line: bytes, *headers: bytes, body: bytes = b"") -> bytes:
    lines = [request_line] + list(headers)
    if body:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


JSON_HEADERS = (b"Host: localhost", b"Content-Type: application/json")
GOOD_CALL = status_call(request_id=b"8485730894528034258")
GO_REFUSAL = b"\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"


@pytest.mark.timeout(20)
def test_a_call_is_answered_byte_for_byte_on_the_wire(idle_node: FakeProcess) -> None:
    request = wire(b"POST /rpc HTTP/1.1", *JSON_HEADERS, b"Connection: close", body=GOOD_CALL)
    assert undated(raw_exchange(idle_node.socket, request)) == (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
        b"X-Content-Type-Options: nosniff\r\nDate: DATE\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n%s" % (len(EXACT_EMPTY_ANSWER), EXACT_EMPTY_ANSWER))


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "sent, answer",
    [
        (wire(b"POST /rpc HTTP/1.1", b"Content-Type: application/json", body=GOOD_CALL),
         b"HTTP/1.1 400 Bad Request: missing required Host header" + GO_REFUSAL
         + b"400 Bad Request: missing required Host header"),
        (wire(b"POST /rpc HTTP/1.1", b"Host: a", b"Host: b"),
         b"HTTP/1.1 400 Bad Request" + GO_REFUSAL + b"400 Bad Request"),
        (wire(b"garbage"), b"HTTP/1.1 400 Bad Request" + GO_REFUSAL + b"400 Bad Request"),
        (wire(b"GET /rpc"), b"HTTP/1.1 400 Bad Request" + GO_REFUSAL + b"400 Bad Request"),
        (wire(b"POST rpc HTTP/1.1", b"Host: x"),
         b"HTTP/1.1 400 Bad Request" + GO_REFUSAL + b"400 Bad Request"),
        (wire(b"POST /r%zzpc HTTP/1.1", b"Host: x"),
         b"HTTP/1.1 400 Bad Request" + GO_REFUSAL + b"400 Bad Request"),
        (wire(b"POST /rpc HTTP/1.1", b"Host: x", b"no colon here"),
         b"HTTP/1.1 400 Bad Request" + GO_REFUSAL + b"400 Bad Request"),
        (wire(b"POST /rpc HTTP/1.1", b"Host: x", b"Content-Length: -1"),
         b"HTTP/1.1 400 Bad Request" + GO_REFUSAL + b"400 Bad Request"),
        (wire(b"POST /rpc HTTP/2.0", b"Host: x"),
         b"HTTP/1.1 505 HTTP Version Not Supported: unsupported protocol version" + GO_REFUSAL
         + b"505 HTTP Version Not Supported: unsupported protocol version"),
        (wire(b"POST /rpc HTTP/1.1", b"Host: x", b"Transfer-Encoding: gzip"),
         b"HTTP/1.1 501 Not Implemented" + GO_REFUSAL + b"Unsupported transfer encoding"),
    ],
    ids=["no-host", "two-hosts", "no-version", "http-0.9", "relative-target", "bad-escape",
         "header-without-colon", "bad-content-length", "http-2", "unknown-coding"],
)
def test_unreadable_requests_get_net_http_raw_refusal_and_a_close(
    idle_node: FakeProcess, sent: bytes, answer: bytes
) -> None:
    assert raw_exchange(idle_node.socket, sent + GOOD_CALL) == answer


@pytest.mark.timeout(20)
def test_http_1_0_needs_no_host_and_keeps_alive_only_when_asked(idle_node: FakeProcess) -> None:
    kept = wire(b"POST /rpc HTTP/1.0", b"Content-Type: application/json",
                b"Connection: keep-alive", body=GOOD_CALL)
    closing = wire(b"POST /rpc HTTP/1.0", b"Content-Type: application/json", body=GOOD_CALL)
    answer = WIRE_DATE.sub(b"\r\nDate: DATE\r\n", raw_exchange(idle_node.socket, kept + closing))
    head = (b"HTTP/1.0 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
            b"X-Content-Type-Options: nosniff\r\nDate: DATE\r\nContent-Length: %d\r\n"
            % len(EXACT_EMPTY_ANSWER))
    assert answer == (head + b"Connection: keep-alive\r\n\r\n" + EXACT_EMPTY_ANSWER
                      + head + b"\r\n" + EXACT_EMPTY_ANSWER)  # and then the server closed


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "path, location",
    [("//rpc", "/rpc"), ("/./rpc", "/rpc"), ("/x/../rpc?a=b", "/rpc?a=b"), ("//other", "/other"),
     ("/a//b/", "/a/b/"), ("/../my%20rpc", "/my%20rpc")],
)
def test_an_unclean_path_is_redirected_to_the_clean_one(
    idle_node: FakeProcess, path: str, location: str
) -> None:
    reply = call(idle_node.socket, path=path)
    assert (reply.status, reply.headers["location"], reply.body) == (301, location, b"")
    assert "content-type" not in reply.headers and reply.headers["content-length"] == "0"


@pytest.mark.timeout(20)
def test_a_path_with_a_space_is_served_when_escaped(launcher: Launcher) -> None:
    node = launcher.node("--admin-http-path", "/my rpc", "--block-interval", "60")
    assert call(node.socket, path="/my%20rpc").status == 200
    assert call(node.socket, path="/my%2520rpc").status == 404


@pytest.mark.timeout(20)
def test_refusals_keep_the_connection_alive_as_go_does(idle_node: FakeProcess) -> None:
    connection = UnixHTTPConnection(idle_node.socket)
    try:
        statuses = [send(connection, verb="GET").status]
        sock = connection.sock
        statuses += [send(connection, path="/nope").status,
                     send(connection, content_type=None).status,
                     send(connection, body=b"{").status,
                     send(connection, path="//rpc").status,
                     send(connection).status]
        assert connection.sock is sock
    finally:
        connection.close()
    assert statuses == [405, 404, 415, 400, 301, 200]


@pytest.mark.timeout(20)
def test_keep_alive_serves_several_calls_on_one_connection(idle_node: FakeProcess) -> None:
    connection = UnixHTTPConnection(idle_node.socket)
    try:
        first = send(connection)
        sock = connection.sock
        second = send(connection, body=dict(STATUS_CALL, id=2))
        assert connection.sock is sock
    finally:
        connection.close()
    assert (first.body, second.json()["id"]) == (EXACT_EMPTY_ANSWER, 2)


@pytest.mark.timeout(20)
def test_connection_close_is_honoured(idle_node: FakeProcess) -> None:
    request = status_request().replace(b"Host:", b"Connection: close\r\nHost:")
    answer = raw_exchange(idle_node.socket, request)  # returns only once the server closes
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nConnection: close\r\n" in answer and answer.endswith(EXACT_EMPTY_ANSWER)


@pytest.mark.timeout(20)
def test_a_chunked_request_is_answered(idle_node: FakeProcess) -> None:
    body = json.dumps(STATUS_CALL).encode()
    request = (b"POST /rpc HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
               b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    assert raw_exchange(idle_node.socket, request).endswith(b"\r\n\r\n" + EXACT_EMPTY_ANSWER)


@pytest.mark.timeout(20)
def test_socket_and_http_path_come_from_the_core_config(launcher: Launcher, folder: Path) -> None:
    home = folder / "home"
    (home / "config" / "node").mkdir(parents=True)
    socket_path = str(folder / "admin.sock")
    (home / "config" / "node" / "config.toml").write_text(
        '[Admin]\n  Level = "Info"\n  [Admin.Server]\n    SocketPath = "%s"\n'
        '    HTTPPath = "/admin"  # comment\n[Other]\n  SocketPath = "/nope"\n' % socket_path
    )
    node = launcher.start("node", "--home", str(home), "--tendermint-home", "/nowhere",
                          "--block-interval", "60")
    node.wait_socket()
    assert call(socket_path, path="/admin").body == EXACT_EMPTY_ANSWER.replace(
        b'"AcceptedReleaseInfo":{"VegaReleaseTag":"","UpgradeBlockHeight":0}',
        b'"AcceptedReleaseInfo":null')
    assert call(socket_path).status == 404


@pytest.mark.timeout(20)
def test_no_admin_socket_is_a_usage_error(folder: Path) -> None:
    result = run_fake("node", "--home", str(folder))
    assert result.returncode == 2 and "no admin socket" in result.stderr


@pytest.mark.timeout(20)
def test_unknown_flags_are_ignored_with_a_warning(launcher: Launcher) -> None:
    node = launcher.node("--block-interval", "60", "--nodewallet-passphrase-file", "pw",
                         "--flag-alone")
    warning = "ignoring unknown arguments: --nodewallet-passphrase-file pw --flag-alone"
    assert warning in node.stderr()
    assert upgrade_status(node.socket)["ReadyToUpgrade"] is False


@pytest.mark.timeout(20)
def test_help_documents_every_fault_and_record_event() -> None:
    result = run_fake("--help")
    assert result.returncode == 0
    documented = core.TRANSPORT_FAULTS + core.ANSWER_FAULTS + (
        "start", "socket-listening", "accepted", "ready", "rpc", "rpc-fault", "sigterm",
        "sigint", "crash", "exit")
    assert [word for word in documented if word not in result.stdout] == []
    for command in (["node"], ["datanode"], ["datanode", "start"], ["version"],
                    ["make-binary"], ["datanode", "network-history", "latest-history-segment"]):
        assert run_fake(*command, "--help").returncode == 0


# --- the record ---


@pytest.mark.timeout(20)
def test_record_has_the_lifetime_and_the_wire_traffic(launcher: Launcher) -> None:
    node = launcher.node("--block-interval", "60", "--start-height", "7", "--extra")
    call(node.socket)
    node.send_signal(signal.SIGTERM)
    node.wait_exit()
    events = node.events()
    assert [e["event"] for e in events] == ["start", "socket-listening", "rpc", "sigterm", "exit"]
    for entry in events:
        assert (entry["pid"], entry["version"], entry["role"]) == (node.pid, "v0.73.0", "core")
        assert isinstance(entry["time"], float)
    start, _, rpc, _, _ = events
    assert start["argv"] == ["node", "--admin-socket", node.socket, "--block-interval", "60",
                             "--start-height", "7", "--extra", "--record",
                             str(node.folder / "record.jsonl")]
    assert (start["start_height"], start["snapshot_height"], start["upgrade"]) == (7, None, None)
    assert rpc == dict(rpc, http_method="POST", path="/rpc", id=STATUS_CALL["id"], status=200,
                       method="protocolupgrade.UpgradeStatus", fault=None, height=7,
                       ready=False, tag=None)


# --- the data node ---


@pytest.mark.timeout(20)
def test_datanode_runs_until_sigterm(launcher: Launcher, folder: Path) -> None:
    datanode = launcher.start("datanode", "start", "--home", str(folder), "--chain-id", "x")
    datanode.wait_event("start", role="datanode")
    assert datanode.lines()[0] == "fake-vega v0.73.0 datanode started pid=%d" % datanode.pid
    datanode.send_signal(signal.SIGTERM)
    assert datanode.wait_exit() == 0
    assert [e["event"] for e in datanode.events()] == ["start", "sigterm", "exit"]


@pytest.mark.timeout(20)
def test_datanode_crash_after_exits_1(launcher: Launcher) -> None:
    datanode = launcher.start("datanode", "start", "--crash-after", "0.2")
    assert datanode.wait_exit() == 1
    assert datanode.events("crash")[0]["code"] == 1


@pytest.mark.timeout(20)
def test_datanode_ignore_sigterm(launcher: Launcher) -> None:
    datanode = launcher.start("datanode", "start", "--ignore-sigterm")
    datanode.wait_event("start")
    datanode.send_signal(signal.SIGTERM)
    datanode.wait_event("sigterm", action="ignore")
    assert datanode.popen.poll() is None
    datanode.send_signal(signal.SIGKILL)
    assert datanode.wait_exit() == -signal.SIGKILL


@pytest.mark.timeout(20)
@pytest.mark.parametrize("height, from_height", [(1033500, 1033201), (100, 1)])
def test_latest_history_segment_reads_the_height_file(
    folder: Path, height: int, from_height: int
) -> None:
    (folder / "fake-latest-segment").write_text("%d\n" % height)
    result = run_fake("datanode", "network-history", "latest-history-segment",
                      "--home", str(folder), "--output", "json")
    assert result.returncode == 0
    segment = json.loads(result.stdout)["LatestSegment"]
    assert segment == dict(segment, from_height=from_height, to_height=height,
                           chain_id="fake-chain")
    assert re.fullmatch(r"Qm[1-9A-HJ-NP-Za-km-z]{44}", segment["history_segment_id"])


@pytest.mark.timeout(20)
def test_latest_history_segment_without_segments_exits_1(folder: Path) -> None:
    result = run_fake("datanode", "network-history", "latest-history-segment",
                      "--home", str(folder), "--output", "json")
    assert result.returncode == 1 and "no history segments found" in result.stdout


@pytest.mark.timeout(30)
def test_a_copy_named_data_node_is_an_old_standalone_data_node(folder: Path) -> None:
    """SPEC 1.7: a standalone data-node binary has no `datanode` subcommand."""
    binary = core.make_binary(folder / "bin" / "data-node", "v0.73.1")
    (folder / "fake-latest-segment").write_text("1033500\n")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(binary)] + list(args), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, universal_newlines=True,
                              timeout=DEADLINE_SECONDS)

    history = run("network-history", "latest-history-segment", "--home", str(folder),
                  "--output", "json")
    assert history.returncode == 0
    assert json.loads(history.stdout)["LatestSegment"]["to_height"] == 1033500
    refused = run("datanode", "network-history", "latest-history-segment", "--home",
                  str(folder), "--output", "json")
    assert refused.returncode == 2 and "invalid choice: 'datanode'" in refused.stderr
    assert run("node", "--admin-socket", str(folder / "s")).returncode == 2
    assert run("version", "--output", "json").stdout == (
        '{"version":"v0.73.1","hash":"%s"}\n' % core.version_hash("v0.73.1"))
    record = folder / "record.jsonl"
    with open(folder / "stdout", "wb") as out:
        started = subprocess.Popen([str(binary), "start", "--home", str(folder),
                                    "--record", str(record)], stdout=out)
    try:
        wait_for(lambda: conftest.read_records(record), "the data node's start")
        started.send_signal(signal.SIGTERM)
        assert started.wait(timeout=DEADLINE_SECONDS) == 0
    finally:
        started.kill()
        started.wait()
    assert [(e["event"], e["role"]) for e in conftest.read_records(record)] == [
        ("start", "datanode"), ("sigterm", "datanode"), ("exit", "datanode")]


@pytest.mark.timeout(20)
def test_vega_has_no_standalone_data_node_commands() -> None:
    result = run_fake("network-history", "latest-history-segment", "--home", "/x",
                      "--output", "json")
    assert result.returncode == 2 and "invalid choice: 'network-history'" in result.stderr


# --- every supported interpreter ---


def find_interpreters() -> List[str]:
    root = Path(os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))) / "versions"
    found = []
    for minor in range(8, 14):
        found += sorted(str(p) for p in root.glob("3.%d.*/bin/python3" % minor))[-1:]
    return found


@pytest.mark.timeout(60)
@pytest.mark.parametrize("python", find_interpreters() or [sys.executable],
                         ids=lambda p: Path(p).parent.parent.name)
def test_the_fake_runs_on_every_interpreter(python: str, folder: Path) -> None:
    result = run_fake("version", "--output", "json", executable=python)
    assert json.loads(result.stdout)["version"] == "v0.73.0"
    socket_path = str(folder / "s")
    popen = subprocess.Popen([python, str(CORE), "node", "--admin-socket", socket_path,
                              "--block-interval", "60"], stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: answers(socket_path), "the admin socket")
        assert call(socket_path).body.startswith(b'{"result":{"AcceptedReleaseInfo":null')
        popen.send_signal(signal.SIGTERM)
        assert popen.wait(timeout=DEADLINE_SECONDS) == 0
    finally:
        popen.kill()
        popen.wait()
