#!/usr/bin/env python3
"""A fake `vega` binary (Vega core and data node), for testing vegavisor.

    vega version [--output json]
    vega node --admin-socket PATH [--upgrade-tag T --upgrade-height U] [faults]
    vega datanode start [--record FILE]
    vega datanode network-history latest-history-segment --home DIR --output json
    vega make-binary DEST --version TAG

A binary named `data-node` (make_binary(HOME/v1/data-node, ...)) is an old standalone
data-node binary: `data-node start ...` and `data-node network-history ...`, with no
`datanode` subcommand.

The node simulates a slow start (loading a snapshot, replaying blocks), block
production and a governance-scheduled protocol upgrade, and serves
protocolupgrade.UpgradeStatus on its admin socket byte for byte as Vega core does
(gorilla/rpc v1.2.0 JSON-RPC 1.0 on a gorilla/mux router, Go's net/http, HTTP/1.1 on a
unix socket), malformed requests included. Faults (crashes, broken RPC answers,
ignored signals) are scripted by flags, and `--record FILE` appends one JSON object a
line for everything that happened. Nothing is random: the only inputs are the flags,
the clock and signals.

Tests import make_binary() to install binaries reporting another version, e.g. as
HOME/v0.74.0/vega. Standard library only; CPython 3.8 to 3.13. See `--help`.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import re
import signal
import stat
import sys
import time

# A test run starts hundreds of fakes, most of them for `version`, which a real vega
# answers in ~10 ms. So the modules only some commands use (socketserver and threading
# for a node, base64 and tempfile for make-binary, ...) are imported where they are
# used, and typing only by a type checker: the annotations are strings at run time,
# and importing typing cost every start ~4 ms (its NamedTuple ~3 ms more: see
# named_tuple).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any
    from typing import Callable
    from typing import Dict
    from typing import List
    from typing import Optional
    from typing import Sequence
    from typing import Tuple
    from typing import Union

# The version this binary reports; make_binary()'s launchers set another.
VERSION = "v0.73.0"

__all__ = ["VERSION", "FakeError", "make_binary", "main"]

# --- constants ---

# What a version tag may hold, so that it fits between the quotes of that line.
TAG_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
# Every line on stdout starts with this, then the version, so a test can grep it.
OUTPUT_PREFIX = "fake-vega"
# The one JSON-RPC method core's admin server answers here, split as gorilla/rpc
# splits "service.Method".
RPC_SERVICE = "protocolupgrade"
RPC_METHOD = "UpgradeStatus"
# Core registers gorilla's JSON codec for these two content types; the part of a
# request's Content-Type before any ';' is lowercased and looked up. (No default:
# with two codecs, a request without Content-Type is refused.)
JSON_MEDIA_TYPES = ("application/json", "application/json;charset=utf-8")
# The Go type that UpgradeStatus's params[0] is decoded into, as its errors name it.
RPC_ARGS_TYPE = "admin.ReadyForUpgradeArgs"
# Core's default [Admin.Server] HTTPPath.
DEFAULT_HTTP_PATH = "/rpc"
# Where core keeps its config, under its --home.
CORE_CONFIG_PATH = ("config", "node", "config.toml")
# The main loop wakes at least this often; signals wake it at once (self-pipe).
LOOP_TICK_SECONDS = 0.02
# How often the admin server checks for shutdown: bounds how long a stop takes.
SERVER_POLL_SECONDS = 0.05
# net/http reads at most DefaultMaxHeaderBytes + 4096 of request line and headers
# (more: 431).
MAX_HEADER_BYTES = (1 << 20) + 4096
# What net/http writes after the status of a request it refuses to read, then the
# status again as the body.
GO_ERROR_HEADERS = "\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"
# Go's http.StatusText for the statuses this server sends.
PHRASES = {200: "OK", 301: "Moved Permanently", 400: "Bad Request", 404: "Not Found",
           405: "Method Not Allowed", 415: "Unsupported Media Type",
           431: "Request Header Fields Too Large", 505: "HTTP Version Not Supported"}
# An HTTP token (a method, a header name).
HTTP_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# A request-target in absolute form (scheme:...), which url.ParseRequestURI accepts.
ABSOLUTE_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
# url.ParseRequestURI refuses control bytes and a '%' without two hex digits.
CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")
BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# What Go's URL escaping leaves alone in a path besides letters, digits and "-_.~".
GO_PATH_SAFE = "$&+,/:;=@"
# JSON's insignificant whitespace.
JSON_SPACE = " \t\r\n"
# Go's JSON encoder escapes these in every string (HTML safety, JavaScript line ends).
GO_ESCAPES = (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"),
              ("\u2028", "\\u2028"), ("\u2029", "\\u2029"))
# A dying process gets this long to die from its own signal before it exits.
SELF_KILL_GRACE_SECONDS = 1.0
# The garbage fault's answer: fixed bytes that no HTTP client can parse.
GARBAGE_REPLY = b"\xff\x00\x13garbage\x00" + hashlib.sha256(b"fake-vega").digest()
# A scripted crash exits with this code, as a Go program's fatal error does.
CRASH_EXIT_CODE = 1
# The data node's history segments span this many blocks (from = to - 299).
SEGMENT_BLOCKS = 300
# A binary of this fake with this name is an old standalone data-node binary.
STANDALONE_DATANODE = "data-node"
# The file under the data node's --home that holds the latest segment's height.
SEGMENT_FILE = "fake-latest-segment"
# Segment ids are IPFS ids (CIDv0): base58 of a sha256 multihash, "Qm" + 44 chars.
BASE58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
SHA256_MULTIHASH = b"\x12\x20"
# Faults that act on the connection, whatever the request; and faults that only
# replace the answer to a well-formed UpgradeStatus call.
TRANSPORT_FAULTS = ("hang", "garbage", "close", "slow")
ANSWER_FAULTS = ("http400", "error-member", "null-result", "wrong-types")
# Signals whose default action stops, continues or is ignored: no crash to play.
HARMLESS_SIGNALS = ("SIGSTOP", "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGCONT", "SIGCHLD",
                    "SIGURG", "SIGWINCH")
# What the signals the node handles are called in the record and on stdout.
SIGNAL_EVENTS = {signal.SIGTERM: "sigterm", signal.SIGINT: "sigint"}
PLAIN_TEXT = "text/plain; charset=utf-8"
JSON_TEXT = "application/json; charset=utf-8"
# The Date header names days and months in English, whatever the locale.
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# --- help ---

HELP_NODE = """\
start-up and block clock:
  A real core opens its admin socket only once it has loaded its snapshot and
  replayed blocks. This one opens it --socket-delay seconds after it starts, or
  --snapshot-socket-delay seconds when started with
  --snapshot.load-from-block-height N (a visor appends it after an upgrade or a
  crash restart; N is then the start height, over --start-height).
  Blocks are made from the moment the socket opens: height = start height +
  whole --block-interval periods since then (monotonic clock). Until its first
  block after every start, AcceptedReleaseInfo is null, even when an upgrade was
  accepted before a restart.
  The admin socket comes from --admin-socket, else from SocketPath (and the HTTP
  path from HTTPPath) under [Admin.Server] in HOME/config/node/config.toml.

scripted upgrade (--upgrade-tag T --upgrade-height U [--accept-height A]):
  height < A   AcceptedReleaseInfo {"VegaReleaseTag":"","UpgradeBlockHeight":0}
  height >= A  AcceptedReleaseInfo {"VegaReleaseTag":T,"UpgradeBlockHeight":U}
  Blocks stop at U (core halts at the upgrade block); --ready-delay seconds
  after reaching U, ReadyToUpgrade turns true.
  The script is off (no proposal, blocks keep coming) when T is this binary's
  own version, or when the start height is already >= U: that is the new
  version restarted from the upgrade snapshot.

chain of upgrades (--upgrade-every N, instead of --upgrade-tag/--upgrade-height):
  the same args serve every version, as a visor copies them into each release
  it installs: the next version (this one with its last number plus one, v1 ->
  v2, v0.73.0 -> v0.73.1) is accepted at --accept-height blocks after the start
  height (default 0: the first block) and the upgrade block is the first
  multiple of N above the start height.

signals:
  SIGTERM, SIGINT  print "stopping", wait --stop-delay, remove the socket file,
                   exit 0. When ReadyToUpgrade is true it SIGKILLs itself at
                   once, as core does. With --ignore-sigterm both are recorded
                   and ignored: only SIGKILL stops the node.

faults:
  --crash-at-height N      at height N exit 1,
                           or die by --crash-signal (no core file is written);
                           the socket file is left behind, as after a crash.
  --exit-zero-at-height N  at height N remove the socket file and exit 0.
                           Both fire when the node makes block N: a node that
                           starts at or past N (say, restarted from a snapshot)
                           keeps running; one restarted below N fires again.
  --rpc-fault MODE         from --rpc-fault-after-height on (default: always):
    hang          read the request, never answer (until the node stops)
    garbage       answer with fixed non-HTTP bytes, then close
    close         accept the connection and close it at once, reading nothing
    slow:SECONDS  answer correctly after SECONDS
    http400       HTTP 400 text/plain "rpc: method not found" (gorilla/rpc style)
    error-member  HTTP 200 {"result":null,"error":"some failure","id":ID}
    null-result   HTTP 200 {"result":null,"error":null,"id":ID}
    wrong-types   HTTP 200 {"result":{"AcceptedReleaseInfo":"not-a-release-info",
                  "ReadyToUpgrade":"yes"},"error":null,"id":ID}
  The first four act on every request on the socket; the last four replace
  only the answer to a well-formed UpgradeStatus call.

admin protocol (as vega v0.79: net/http, gorilla/mux, gorilla/rpc v1.2.0 JSON codec):
  POST /rpc HTTP/1.1, Host, Content-Type: application/json (the part before ';',
  lowercased, must be application/json or application/json;charset=utf-8)
  {"method":"protocolupgrade.UpgradeStatus","params":[null],"id":1}
  200, Content-Type: application/json; charset=utf-8, one line plus "\n", the id
  as sent (compacted), <, > and & escaped as \u003c, \u003e, \u0026:
  {"result":{"AcceptedReleaseInfo":{"VegaReleaseTag":"v0.74.0",
   "UpgradeBlockHeight":1034000},"ReadyToUpgrade":true},"error":null,"id":1}
  params may be [null], [], [{...}]; no id or "id":null: 200 with an empty body.
  Connections are kept alive (HTTP/1.1 unless "Connection: close").
  Refusals, text/plain as each layer writes them:
    301  Location: the clean path        (//rpc, /./rpc: gorilla/mux)
    404  404 page not found\n            (another path)
    405  rpc: POST method required, received GET
    415  rpc: unrecognized Content-Type: TYPE   (also with no Content-Type)
    400  Go's JSON decoder message (EOF, unexpected EOF, invalid character ...),
         rpc: service/method request ill-formed: "x",
         rpc: can't find service "x.y", rpc: can't find method "protocolupgrade.X",
         rpc: method request ill-formed: missing params field,
         json: cannot unmarshal number into Go value of type admin.ReadyForUpgradeArgs
    400  Bad Request: missing required Host header   (net/http: raw, then close;
         also 400 for a malformed request, 431, 501 and 505)

stdout:
  "fake-vega VERSION node started pid=P height=H" at once, then one line each
  for: the socket listening, the upgrade accepted, ready to upgrade, a signal,
  a crash, the exit. No line per block.
"""

HELP_DATANODE = """\
datanode start runs until SIGTERM or SIGINT (then exit 0), printing
"fake-vega VERSION datanode started pid=P". --crash-after S exits 1 after S
seconds; --ignore-sigterm records and ignores SIGTERM and SIGINT; --stop-delay S
waits S seconds before exiting on a signal.

datanode network-history latest-history-segment --home DIR --output json
reads the height H in DIR/fake-latest-segment and prints
{"LatestSegment":{"from_height":max(H-299,1),"to_height":H,"chain_id":"fake-chain",
"history_segment_id":"Qm..."}}; without that file it prints
"failed to get latest history segment: no history segments found" on stdout and
exits 1, as the real data node does.

A binary named data-node is an old standalone data-node binary: the same commands
without the `datanode` word (`data-node start`, `data-node network-history ...`);
`data-node datanode ...` is an unknown command (exit 2).
"""

HELP_RECORD = """\
record (--record FILE, node and datanode):
  One JSON object a line, each appended with one write (O_APPEND), so several
  processes can share a file. Every event has: event, role ("core" or
  "datanode"), pid, version, time (time.time()), then:
    start             argv (the arguments after the program), program (the path
                      it was started as); core: start_height, snapshot_height
                      (null without --snapshot.load-from-block-height), socket,
                      http_path, socket_delay (the one in force),
                      upgrade ({tag, accept_height, upgrade_height,
                      ready_delay} or null), upgrade_skipped (why the script
                      is off, or null); datanode: home
    socket-listening  socket, http_path
    accepted          tag, upgrade_height, height
    ready             tag, height
    rpc               one per HTTP answer, written just before it is sent:
                      http_method, path (the request-target as sent), method
                      (JSON-RPC, or null), id, status, fault (or null), height,
                      ready, tag (null before the first block); a request
                      net/http refuses unread has http_method and path null
    rpc-fault         a request left without an HTTP answer: fault (hang,
                      garbage, close), height
    sigterm, sigint   action: stop, kill (ready to upgrade: SIGKILLs itself),
                      or ignore (--ignore-sigterm); ready
    crash             height (datanode: after), code, signal (one is null)
    exit              code, reason (signal, exit-zero-at-height, crash, error)
  A process killed by a signal (SIGKILL, --crash-signal) has no exit event.
"""

HELP_MAIN = HELP_NODE + "\n" + HELP_DATANODE + "\n" + HELP_RECORD

# --- errors and records ---


class FakeError(Exception):
    """A failure to report in one line (bad file, socket in the way), no traceback."""


class UsageError(FakeError):
    """Flags that do not go together: exit 2 with the usage, as argparse does."""


def named_tuple(cls: type) -> Any:
    """A class of annotated fields (and methods) made a collections.namedtuple, as
    typing.NamedTuple makes it, without typing's import and its checks of every
    annotation (see the imports)."""
    made = collections.namedtuple(cls.__name__, cls.__annotations__, module=cls.__module__)
    for name, value in vars(cls).items():
        if name not in ("__dict__", "__weakref__") and not (name == "__doc__" and value is None):
            setattr(made, name, value)
    return made


@named_tuple
class ReleaseInfo:
    tag: str
    upgrade_height: int


# AcceptedReleaseInfo when no proposal is accepted.
NO_RELEASE = ReleaseInfo("", 0)


@named_tuple
class UpgradeScript:
    tag: str
    accept_height: int
    upgrade_height: int
    ready_delay: float


@named_tuple
class ChainConfig:
    start_height: int
    block_interval: float
    upgrade: Optional[UpgradeScript]  # None: no proposal is ever accepted


@named_tuple
class ChainState:
    height: int
    release: Optional[ReleaseInfo]  # None before the first block
    ready: bool


@named_tuple
class RpcFault:
    mode: str
    delay: float  # slow only
    after_height: int  # the fault starts at this height


@named_tuple
class NodeConfig:
    chain: ChainConfig
    upgrade_skipped: Optional[str]  # why a scripted upgrade is off, or None
    socket_path: str
    http_path: str
    socket_delay: float
    socket_mode: Optional[int]
    stop_delay: float
    ignore_sigterm: bool
    crash_at: Optional[int]
    crash_signal: Optional[signal.Signals]
    exit_zero_at: Optional[int]
    fault: Optional[RpcFault]


@named_tuple
class HttpReply:
    status: int
    headers: Tuple[Tuple[str, str], ...]
    body: bytes
    method: Optional[str]  # the JSON-RPC method, when the request named one
    request_id: Any  # the JSON-RPC id, when the request had one
    fault: Optional[str]  # the answer fault that shaped this reply


@named_tuple
class RpcRequest:
    method: str
    params: Optional[str]  # the raw JSON text; None when absent or null
    request_id: Optional[str]  # the raw JSON text; None (a notification) when absent or null


class RpcRequestError(Exception):
    """A request gorilla/rpc answers with a plain-text 400."""


class NonJsonConstant(ValueError):
    """NaN or Infinity: Python's JSON decoder takes them, Go's does not."""


def refuse_constant(name: str) -> Any:
    raise NonJsonConstant(name)


JSON_DECODER = json.JSONDecoder(parse_constant=refuse_constant)

# --- the block clock (pure) ---


def choose_upgrade_script(
    script: Optional[UpgradeScript], start_height: int, version: str
) -> Tuple[Optional[UpgradeScript], Optional[str]]:
    """Return the script to play, or None with the reason it is off."""
    if script is None:
        return None, None
    if script.tag == version:
        return None, "the upgrade tag is this binary's version"
    if start_height >= script.upgrade_height:
        return None, "the start height is at or past the upgrade height"
    return script, None


def next_version(version: str) -> str:
    """This version with its last number plus one: v1 -> v2, v0.73.9 -> v0.73.10."""
    match = re.search(r"(\d+)(\D*)$", version)
    if match is None:
        raise FakeError("version %r has no number to count up from" % version)
    return version[:match.start()] + str(int(match[1]) + 1) + match[2]


def chain_upgrade_script(every: int, start_height: int, accept_after: int,
                         ready_delay: float) -> UpgradeScript:
    """--upgrade-every: the next version, at the first multiple of `every` above the start."""
    upgrade_height = (start_height // every + 1) * every
    accept_height = min(start_height + accept_after, upgrade_height)
    return UpgradeScript(next_version(VERSION), accept_height, upgrade_height, ready_delay)


def count_blocks(elapsed: float, interval: float) -> int:
    return int(elapsed // interval) if elapsed > 0 else 0


def chain_state_at(chain: ChainConfig, elapsed: float) -> ChainState:
    """What the node reports `elapsed` seconds after it joined the chain (opened its socket)."""
    blocks = count_blocks(elapsed, chain.block_interval)
    if blocks == 0:  # after every start, core knows nothing until its first block
        return ChainState(chain.start_height, None, False)
    height = chain.start_height + blocks
    script = chain.upgrade
    if script is None:
        return ChainState(height, NO_RELEASE, False)
    height = min(height, script.upgrade_height)
    if height < script.accept_height:
        return ChainState(height, NO_RELEASE, False)
    release = ReleaseInfo(script.tag, script.upgrade_height)
    return ChainState(height, release, is_ready(chain, script, height, elapsed))


def is_ready(chain: ChainConfig, script: UpgradeScript, height: int, elapsed: float) -> bool:
    if height < script.upgrade_height:
        return False
    if script.ready_delay <= 0:
        return True
    halted_at = (script.upgrade_height - chain.start_height) * chain.block_interval
    return elapsed >= halted_at + script.ready_delay


def has_produced(block: Optional[int], start_height: int, height: int) -> bool:
    """Whether this run made `block`: a node resumed at or past it never does."""
    return block is not None and start_height < block <= height


def scheduled_exit(config: NodeConfig, height: int) -> Optional[str]:
    """"crash" or "exit-zero" when a scripted fault is due at this height."""
    start_height = config.chain.start_height
    if has_produced(config.crash_at, start_height, height):
        return "crash"
    if has_produced(config.exit_zero_at, start_height, height):
        return "exit-zero"
    return None


def active_fault(fault: Optional[RpcFault], height: int) -> Optional[RpcFault]:
    if fault is None or height < fault.after_height:
        return None
    return fault


def decide_on_signal(ignore_signals: bool, ready: bool) -> str:
    """"ignore", "kill" (ready to upgrade: die at once, as core) or "stop"."""
    if ignore_signals:
        return "ignore"
    return "kill" if ready else "stop"


# --- the admin protocol (pure) ---
#
# Core's admin server is Go's net/http serving a gorilla/mux router that sends
# HTTPPath to a gorilla/rpc v1.2.0 server with its JSON codec. Each layer answers the
# requests it refuses in its own way: net/http refuses malformed HTTP with raw bytes
# and closes; mux redirects unclean paths (301) and answers other paths 404; gorilla
# answers 405, 415 and 400 in plain text; a good call gets one line of JSON.


@named_tuple
class HttpRequest:
    verb: str
    target: str  # the request-target as sent, e.g. "/rpc" or "//rpc?x"
    version: Tuple[int, int]
    headers: Tuple[Tuple[str, str], ...]  # (lowercased name, value), in order
    body: bytes

    def header(self, name: str) -> Optional[str]:
        """The first value of a header, as Go's Header.Get."""
        return next((value for key, value in self.headers if key == name), None)

    def tokens(self, name: str) -> List[str]:
        """The comma-separated tokens of every value of a header, lowercased."""
        values = [value for key, value in self.headers if key == name]
        return [token.strip().lower() for value in values for token in value.split(",")]


class HttpRefusal(Exception):
    """A request net/http refuses before any handler runs: Go's raw answer, then close."""

    def __init__(self, status: int, answer: bytes) -> None:
        super().__init__(status)
        self.status = status
        self.answer = answer


def refuse(status: int, detail: str = "") -> HttpRefusal:
    """net/http's answer to a request it cannot read: no Date, no Content-Length."""
    if status == 501:
        public, body = "501 Not Implemented", "Unsupported transfer encoding"
    else:
        public = "%d %s" % (status, PHRASES[status]) + (": " + detail if detail else "")
        body = public
    return HttpRefusal(status, ("HTTP/1.1 " + public + GO_ERROR_HEADERS + body).encode())


def read_request(rfile: Any) -> Optional[HttpRequest]:
    """Read one request as net/http does; None when the client closed first."""
    budget = [MAX_HEADER_BYTES]
    line = read_line(rfile, budget)
    if line is None:
        return None
    verb, target, version = split_request_line(line)
    headers = read_headers(rfile, budget)
    request = HttpRequest(verb, target, version, headers, b"")
    body = read_body(rfile, request)  # before the host check, as Go reads the framing first
    check_host(request)
    return request._replace(body=body)


def read_line(rfile: Any, budget: List[int]) -> Optional[str]:
    """One line without its CRLF or LF; 431 past the header budget, None at EOF."""
    raw = rfile.readline(budget[0] + 1)
    budget[0] -= len(raw)
    if budget[0] < 0:
        raise refuse(431)
    if not raw:
        return None
    if not raw.endswith(b"\n"):
        raise refuse(400)  # the client closed mid-line
    return raw[:-1].rstrip(b"\r").decode("latin-1")


def split_request_line(line: str) -> Tuple[str, str, Tuple[int, int]]:
    verb, space, rest = line.partition(" ")
    target, space2, proto = rest.partition(" ")
    version = re.fullmatch(r"HTTP/([0-9])\.([0-9])", proto)
    if not (space and space2 and version and HTTP_TOKEN.fullmatch(verb)):
        raise refuse(400)
    if target != "*" and not target.startswith("/") and not ABSOLUTE_URI.match(target):
        raise refuse(400)  # url.ParseRequestURI: "invalid URI for request"
    if CONTROL_CHARACTER.search(target) or BAD_ESCAPE.search(target.partition("?")[0]):
        raise refuse(400)
    return verb, target, (int(version.group(1)), int(version.group(2)))


def read_headers(rfile: Any, budget: List[int]) -> Tuple[Tuple[str, str], ...]:
    headers: List[Tuple[str, str]] = []
    while True:
        line = read_line(rfile, budget)
        if line is None:
            raise refuse(400)
        if not line:
            return tuple(headers)
        if line[0] in " \t":  # a folded line continues the previous value
            if not headers:
                raise refuse(400)
            name, value = headers.pop()
            headers.append((name, (value + " " + line.strip(" \t")).strip(" \t")))
            continue
        name, colon, value = line.partition(":")
        if not colon or not HTTP_TOKEN.fullmatch(name):
            raise refuse(400)
        headers.append((name.lower(), value.strip(" \t")))


def read_body(rfile: Any, request: HttpRequest) -> bytes:
    codings = [value for name, value in request.headers if name == "transfer-encoding"]
    if codings and request.version >= (1, 1):
        if len(codings) > 1:
            raise refuse(400)
        if codings[0].lower() != "chunked":
            raise refuse(501)
        return read_chunked(rfile)
    lengths = {value for name, value in request.headers if name == "content-length"}
    if not lengths:
        return b""
    length = lengths.pop() if len(lengths) == 1 else ""
    if not re.fullmatch(r"[0-9]{1,18}", length):
        raise refuse(400)  # "bad Content-Length"
    return rfile.read(int(length))


def read_chunked(rfile: Any) -> bytes:
    """A chunked request body (extensions and trailers skipped)."""
    chunks, budget = [], [MAX_HEADER_BYTES]
    while True:
        size = (read_line(rfile, budget) or "").split(";", 1)[0].strip()
        if not re.fullmatch(r"[0-9a-fA-F]{1,16}", size):
            raise refuse(400)
        if int(size, 16) == 0:
            break
        chunks.append(rfile.read(int(size, 16)))
        read_line(rfile, budget)
    while read_line(rfile, budget):
        pass
    return b"".join(chunks)


def check_host(request: HttpRequest) -> None:
    """Go's server checks the protocol, then Host: HTTP/1.1 must carry exactly one."""
    if request.version[0] != 1:
        raise refuse(505, "unsupported protocol version")
    hosts = [value for name, value in request.headers if name == "host"]
    if len(hosts) > 1:
        raise refuse(400)  # "too many Host headers"
    if request.version >= (1, 1) and not hosts:
        raise refuse(400, "missing required Host header")
    if hosts and not re.fullmatch(r"[A-Za-z0-9!$%&'()*+,\-.:;=\[\]_~]*", hosts[0]):
        raise refuse(400, "malformed Host header")


def keeps_alive(request: HttpRequest) -> bool:
    """Go's keep-alive rule: HTTP/1.1 unless "close"; HTTP/1.0 only with "keep-alive"."""
    tokens = request.tokens("connection")
    if request.version >= (1, 1):
        return "close" not in tokens
    return "close" not in tokens and "keep-alive" in tokens


def split_target(target: str) -> Tuple[str, str, Optional[str]]:
    """(scheme://host of an absolute-form target, escaped path, query or None)."""
    prefix = ""
    if ABSOLUTE_URI.match(target):
        import urllib.parse  # only a node answers requests (see the imports)
        parts = urllib.parse.urlsplit(target)
        prefix, target = "%s://%s" % (parts.scheme, parts.netloc), parts.path + (
            "?" + parts.query if "?" in target else "")
    path, question, query = target.partition("?")
    return prefix, path, (query if question else None)


def clean_path(path: str) -> str:
    """gorilla/mux's cleanPath: Go's path.Clean, keeping a trailing slash."""
    parts: List[str] = []
    for part in path.split("/"):
        if part == "..":
            parts[-1:] = []
        elif part not in ("", "."):
            parts.append(part)
    cleaned = "/" + "/".join(parts)
    return cleaned + "/" if path.endswith("/") and cleaned != "/" else cleaned


def answer_admin_request(
    request: HttpRequest, http_path: str, state: ChainState, fault: Optional[str]
) -> HttpReply:
    """Answer one HTTP request as core's admin server (mux + gorilla/rpc) does."""
    import urllib.parse  # only a node answers requests (see the imports)
    prefix, raw_path, query = split_target(request.target)
    path = raw_path if raw_path == "*" else urllib.parse.unquote(raw_path, errors="replace")
    cleaned = clean_path(path)
    if cleaned != path:
        location = prefix + urllib.parse.quote(cleaned, safe=GO_PATH_SAFE)
        location += "" if query is None else "?" + query
        return HttpReply(301, (("Location", location),), b"", None, None, None)
    if path != http_path:
        return not_found_reply()
    return answer_rpc(request, state, fault)


def answer_rpc(request: HttpRequest, state: ChainState, fault: Optional[str]) -> HttpReply:
    """gorilla/rpc's ServeHTTP with the JSON codec."""
    if request.verb != "POST":
        return plain_reply(405, "rpc: POST method required, received " + request.verb)
    media_type = (request.header("content-type") or "").split(";", 1)[0]
    if media_type.lower() not in JSON_MEDIA_TYPES:  # two codecs: no default for none
        return plain_reply(415, "rpc: unrecognized Content-Type: " + media_type)
    method = None
    try:
        call = decode_rpc_request(request.body)
        method = call.method
        check_rpc_method(call.method)
        check_rpc_params(call.params)
    except RpcRequestError as exc:
        return plain_reply(400, str(exc), method)
    return answer_upgrade_status(call, state, fault if fault in ANSWER_FAULTS else None)


def decode_rpc_request(body: bytes) -> RpcRequest:
    """Decode a body as gorilla's codec does (json.Decoder: the first value, rest ignored)."""
    text = body.decode("utf-8", "replace")
    start = skip_space(text, 0)
    if start == len(text):
        raise RpcRequestError("EOF")
    try:
        value, _ = JSON_DECODER.raw_decode(text, start)
    except json.JSONDecodeError as exc:
        raise RpcRequestError(describe_json_error(text, exc)) from None
    except NonJsonConstant as exc:  # NaN, Infinity: JSON to Python, not to Go
        raise RpcRequestError(describe_constant(text, str(exc))) from None
    except RecursionError:
        raise RpcRequestError("exceeded max depth") from None  # Go's limit is 10000
    if value is None:  # null decodes into a struct as a no-op
        return RpcRequest("", None, None)
    if not isinstance(value, dict):
        raise RpcRequestError(
            "json: cannot unmarshal %s into Go value of type json.serverRequest" % go_kind(value)
        )
    members = raw_members(text, start)
    return RpcRequest(decode_method(members), last_member(members, "params"),
                      last_member(members, "id"))


def decode_method(members: List[Tuple[str, str]]) -> str:
    """The last non-null string "method" (Go's fields match keys case-insensitively)."""
    method = ""
    for key, raw in members:
        if key.casefold() != "method":
            continue
        value = json.loads(raw)
        if isinstance(value, str):
            method = value
        elif value is not None:
            raise RpcRequestError(
                "json: cannot unmarshal %s into Go struct field serverRequest.method "
                "of type string" % go_kind(value))
    return method


def last_member(members: List[Tuple[str, str]], name: str) -> Optional[str]:
    """A *json.RawMessage field: the last member's raw text; null (or none) is nil."""
    found = [raw for key, raw in members if key.casefold() == name]
    return found[-1] if found and found[-1] != "null" else None


def raw_members(text: str, start: int) -> List[Tuple[str, str]]:
    """(key, raw value text) of the valid JSON object at text[start]."""
    members: List[Tuple[str, str]] = []
    index = skip_space(text, start + 1)
    while text[index] != "}":
        key, index = json.decoder.scanstring(text, index + 1)  # type: ignore[attr-defined]
        value_start = skip_space(text, skip_space(text, index) + 1)
        _, index = JSON_DECODER.raw_decode(text, value_start)
        members.append((key, text[value_start:index]))
        index = skip_space(text, index)
        if text[index] == ",":
            index = skip_space(text, index + 1)
    return members


def skip_space(text: str, index: int) -> int:
    while index < len(text) and text[index] in JSON_SPACE:
        index += 1
    return index


def check_rpc_method(method: str) -> None:
    """Find "service.Method" as gorilla/rpc's service map does, or raise."""
    parts = method.split(".")
    if len(parts) != 2:
        raise RpcRequestError("rpc: service/method request ill-formed: %s" % go_quote(method))
    if parts[0] != RPC_SERVICE:
        raise RpcRequestError("rpc: can't find service %s" % go_quote(method))
    if parts[1] != RPC_METHOD:
        raise RpcRequestError("rpc: can't find method %s" % go_quote(method))


def check_rpc_params(raw_params: Optional[str]) -> None:
    """Params unmarshal into [1]interface{}{&admin.ReadyForUpgradeArgs{}}."""
    if raw_params is None:
        raise RpcRequestError("rpc: method request ill-formed: missing params field")
    params = json.loads(raw_params)
    if not isinstance(params, list):
        raise RpcRequestError("json: cannot unmarshal %s into Go value of type [1]interface {}"
                              % go_kind(params))
    if params and params[0] is not None and not isinstance(params[0], dict):
        raise RpcRequestError("json: cannot unmarshal %s into Go value of type %s"
                              % (go_kind(params[0]), RPC_ARGS_TYPE))


def go_kind(value: Any) -> str:
    """The JSON kind as Go's decoder names it in type errors."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def describe_json_error(text: str, error: json.JSONDecodeError) -> str:
    """Go's decoder message for invalid JSON, from Python's (the usual cases)."""
    position, message = error.pos, error.msg
    if position >= len(text) or message.startswith("Unterminated string"):
        return "unexpected EOF"
    if message.startswith("Invalid \\uXXXX"):  # position: the 'u'
        digits = text[position + 1:position + 5]
        import string  # only a node decodes requests (see the imports)
        bad = next((c for c in digits if c not in string.hexdigits), None)
        if bad is None:
            return "unexpected EOF"
        return "invalid character %s in \\u hexadecimal character escape" % go_quote_char(bad)
    if message.startswith("Invalid \\escape"):  # position: the backslash
        return "invalid character %s in string escape code" % go_quote_char(text[position + 1])
    if message.startswith("Illegal trailing comma"):  # Python 3.13; position: the comma
        position = skip_space(text, position + 1)
        if message.endswith("object"):
            message = "Expecting property name enclosed in double quotes"
        else:
            message = "Expecting value"
    where = {
        "Expecting value": "looking for beginning of value",
        "Expecting property name enclosed in double quotes":
            "looking for beginning of object key string",
        "Expecting ':' delimiter": "after object key",
    }.get(message)
    if message.startswith("Invalid control character"):
        where = "in string literal"
    if where is None:  # Expecting ',' delimiter
        inner = innermost_open_bracket(text, position)
        where = "after object key:value pair" if inner == "{" else "after array element"
    return "invalid character %s %s" % (go_quote_char(text[position]), where)


def describe_constant(text: str, constant: str) -> str:
    if constant == "-Infinity":
        return "invalid character 'I' in numeric literal"
    return "invalid character %s looking for beginning of value" % go_quote_char(constant[0])


def innermost_open_bracket(text: str, end: int) -> str:
    """"{" or "[": the innermost bracket still open at text[end] (strings skipped)."""
    stack, in_string, escaped = [], False, False
    for char in text[:end]:
        if in_string:
            in_string, escaped = (escaped or char != '"'), (not escaped and char == "\\")
        elif char == '"':
            in_string = True
        elif char in "{[":
            stack.append(char)
        elif char in "}]" and stack:
            stack.pop()
    return stack[-1] if stack else "["


def go_quote_char(char: str) -> str:
    """Go's quoteChar, as its JSON syntax errors show a character."""
    if char in ("'", '"'):
        return "'\\%s'" % char if char == "'" else "'\"'"
    escapes = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}
    if char in escapes:
        return "'%s'" % escapes[char]
    if ord(char) < 0x20 or ord(char) == 0x7F:
        return "'\\x%02x'" % ord(char)
    return "'%s'" % char


def go_quote(text: str) -> str:
    """Go's %q for the plain strings seen here."""
    return json.dumps(text, ensure_ascii=False)


def go_compact(raw: str) -> str:
    """json.Compact: the raw id as Go re-encodes a json.RawMessage (no insignificant space)."""
    out, in_string, escaped = [], False, False
    for char in raw:
        if in_string:
            in_string, escaped = (escaped or char != '"'), (not escaped and char == "\\")
        elif char == '"':
            in_string = True
        elif char in JSON_SPACE:
            continue
        out.append(char)
    return "".join(out)


def go_html_escape(text: str) -> str:
    """Go's encoder escapes <, > and & (and U+2028, U+2029) in every string."""
    for char, escape in GO_ESCAPES:
        text = text.replace(char, escape)
    return text


def describe_release(release: Optional[ReleaseInfo]) -> Optional[Dict[str, Any]]:
    if release is None:
        return None
    return {"VegaReleaseTag": release.tag, "UpgradeBlockHeight": release.upgrade_height}


def upgrade_status_result(state: ChainState) -> Dict[str, Any]:
    return {
        "AcceptedReleaseInfo": describe_release(state.release),
        "ReadyToUpgrade": state.ready,
    }


def rpc_body(result: Any, error: Any, raw_id: str) -> bytes:
    """One line as Go's json.Encoder writes a serverResponse."""
    result_text = json.dumps(result, separators=(",", ":"), ensure_ascii=False)
    error_text = json.dumps(error, ensure_ascii=False)
    line = '{"result":%s,"error":%s,"id":%s}\n' % (result_text, error_text, go_compact(raw_id))
    return go_html_escape(line).encode()


def plain_reply(status: int, text: str, method: Optional[str] = None) -> HttpReply:
    return HttpReply(status, (("Content-Type", PLAIN_TEXT),), text.encode(), method, None, None)


def not_found_reply() -> HttpReply:
    headers = (("Content-Type", PLAIN_TEXT), ("X-Content-Type-Options", "nosniff"))
    return HttpReply(404, headers, b"404 page not found\n", None, None, None)


def answer_upgrade_status(
    call: RpcRequest, state: ChainState, fault: Optional[str]
) -> HttpReply:
    """The answer to a well-formed UpgradeStatus call, as shaped by an answer fault."""
    method, raw_id = call.method, call.request_id
    request_id = None if raw_id is None else json.loads(raw_id)
    if fault == "http400":
        return HttpReply(400, (("Content-Type", PLAIN_TEXT),), b"rpc: method not found",
                         method, request_id, fault)
    headers: Tuple[Tuple[str, str], ...] = (("X-Content-Type-Options", "nosniff"),)
    if raw_id is None:  # a notification: gorilla writes nothing
        return HttpReply(200, headers, b"", method, None, fault)
    result, error = upgrade_status_result(state), None
    if fault == "error-member":
        result, error = None, "some failure"
    elif fault == "null-result":
        result = None
    elif fault == "wrong-types":
        result = {"AcceptedReleaseInfo": "not-a-release-info", "ReadyToUpgrade": "yes"}
    headers = (("Content-Type", JSON_TEXT),) + headers
    return HttpReply(200, headers, rpc_body(result, error, raw_id), method, request_id, fault)


def http_answer(reply: HttpReply, request: HttpRequest, keep_alive: bool, date: str) -> bytes:
    """The reply as net/http writes it: handler headers (sorted), Date, Content-Length."""
    version = "HTTP/1.1" if request.version >= (1, 1) else "HTTP/1.0"
    lines = ["%s %d %s" % (version, reply.status, PHRASES[reply.status])]
    lines += ["%s: %s" % header for header in reply.headers]
    lines += ["Date: " + date, "Content-Length: %d" % len(reply.body)]
    if not keep_alive and request.version >= (1, 1):
        lines.append("Connection: close")
    elif keep_alive and request.version < (1, 1):
        lines.append("Connection: keep-alive")
    body = b"" if request.verb == "HEAD" else reply.body
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# --- formatting (pure) ---


def version_hash(version: str) -> str:
    """A git-sha-like 40-hex hash, fixed for a version and distinct between them."""
    return hashlib.sha1(("fake-vega " + version).encode()).hexdigest()


def format_version(version: str, output: str) -> str:
    if output == "json":
        return json.dumps({"version": version, "hash": version_hash(version)},
                          separators=(",", ":"))
    return "Vega CLI %s (%s)" % (version, version_hash(version))


def format_line(version: str, message: str, facts: Dict[str, Any]) -> str:
    words = ["%s=%s" % (key, value) for key, value in facts.items()]
    return " ".join([OUTPUT_PREFIX, version, message] + words)


def http_date(now: float) -> str:
    """The Date header's value at `now` (Unix time), as Go's http.TimeFormat writes it.
    (email.utils.formatdate writes the same, but importing it cost a node ~15 ms.)"""
    t = time.gmtime(now)
    return "%s, %02d %s %04d %02d:%02d:%02d GMT" % (
        WEEKDAYS[t.tm_wday], t.tm_mday, MONTHS[t.tm_mon - 1], t.tm_year,
        t.tm_hour, t.tm_min, t.tm_sec)


def base58(data: bytes) -> str:
    number, digits = int.from_bytes(data, "big"), []
    while number:
        number, digit = divmod(number, 58)
        digits.append(BASE58_ALPHABET[digit])
    return "".join(reversed(digits))


def describe_segment(to_height: int) -> Dict[str, Any]:
    digest = hashlib.sha256(b"fake-segment-%d" % to_height).digest()
    return {
        "from_height": max(to_height - (SEGMENT_BLOCKS - 1), 1),
        "to_height": to_height,
        "chain_id": "fake-chain",
        "history_segment_id": base58(SHA256_MULTIHASH + digest),
    }


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def parse_signal(text: str) -> signal.Signals:
    """"SEGV", "SIGSEGV", "segv" or "11" -> signal.SIGSEGV (only signals that kill)."""
    name = text.strip().upper()
    try:
        if name.isdigit():
            signum = signal.Signals(int(name))
        else:
            signum = signal.Signals[name if name.startswith("SIG") else "SIG" + name]
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError("unknown signal %r" % text) from None
    if signum.name in HARMLESS_SIGNALS:
        raise argparse.ArgumentTypeError("%s does not kill a process" % signum.name)
    return signum


def parse_rpc_fault(text: str) -> RpcFault:
    """"hang", ... or "slow:SECONDS" (after_height is filled in later)."""
    mode, _, argument = text.partition(":")
    if mode == "slow":
        return RpcFault(mode, parse_seconds(argument), 0)
    if mode not in TRANSPORT_FAULTS + ANSWER_FAULTS or argument:
        choices = ", ".join(TRANSPORT_FAULTS[:-1] + ("slow:SECONDS",) + ANSWER_FAULTS)
        raise argparse.ArgumentTypeError("unknown fault %r (one of: %s)" % (text, choices))
    return RpcFault(mode, 0.0, 0)


def parse_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a number of seconds: %r" % text) from None
    if not seconds >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError("seconds must be >= 0: %r" % text)
    return seconds


def parse_mode(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError("not an octal file mode: %r" % text) from None
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError("file mode out of range: %r" % text)
    return mode


def parse_interval(text: str) -> float:
    seconds = parse_seconds(text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError("the block interval must be > 0: %r" % text)
    return seconds


def parse_height(text: str) -> int:
    try:
        height = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a block height: %r" % text) from None
    if height < 0:
        raise argparse.ArgumentTypeError("a block height must be >= 0: %r" % text)
    return height


def parse_block(text: str) -> int:
    """A block a node can make: height 1 or more (height 0 is before the first)."""
    height = parse_height(text)
    if height < 1:
        raise argparse.ArgumentTypeError("a block height must be >= 1: %r" % text)
    return height


def parse_toml_string(text: str) -> Optional[str]:
    """The value of a TOML basic or literal string, or None for anything else."""
    text = text.strip()
    match = re.match(r'^"((?:[^"\\]|\\.)*)"\s*(#.*)?$', text)
    if match:
        try:
            return json.loads('"%s"' % match.group(1))  # TOML's escapes are JSON's, mostly
        except ValueError:
            return None
    match = re.match(r"^'([^']*)'\s*(#.*)?$", text)
    return match.group(1) if match else None


def read_admin_server_keys(text: str) -> Dict[str, str]:
    """SocketPath and HTTPPath under [Admin.Server] in core's config.toml."""
    table, found = "", {}
    for line in text.splitlines():
        header = re.match(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$", line)
        if header:
            table = re.sub(r"\s*\.\s*", ".", header.group(1))
            continue
        pair = re.match(r"^\s*(SocketPath|HTTPPath)\s*=(.*)$", line)
        if table == "Admin.Server" and pair:
            value = parse_toml_string(pair.group(2))
            if value is not None:
                found[pair.group(1)] = value
    return found


# --- reporting ---


class Reporter:
    """Prints life lines on stdout and appends events to the --record file."""

    def __init__(self, version: str, role: str, record_path: Optional[str]) -> None:
        self.version = version
        self.role = role
        import threading  # only a node and a data node run threads (see the imports)
        self._lock = threading.Lock()
        self._record_fd: Optional[int] = None
        if record_path:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
            try:
                self._record_fd = os.open(record_path, flags, 0o644)
            except OSError as exc:
                raise FakeError("cannot open --record file %s: %s" % (record_path, exc)) from None

    def say(self, message: str, **facts: Any) -> None:
        line = format_line(self.version, message, facts)
        with self._lock:
            try:
                print(line, flush=True)
            except OSError:  # nobody reads stdout any more: keep running
                pass

    def record(self, event: str, **fields: Any) -> None:
        if self._record_fd is None:
            return
        entry = {"event": event, "role": self.role, "pid": os.getpid(),
                 "version": self.version, "time": time.time()}
        entry.update(fields)
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        os.write(self._record_fd, line.encode())  # one write: atomic with O_APPEND


def warn(message: str) -> None:
    print("%s %s warning: %s" % (OUTPUT_PREFIX, VERSION, message), file=sys.stderr, flush=True)


# --- signals ---


class SignalInbox:
    """Signal handlers only note the signal and poke a pipe; the main loop acts."""

    def __init__(self, signums: Sequence[int]) -> None:
        self._pending: List[int] = []
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        for signum in signums:
            signal.signal(signum, self._note)

    def _note(self, signum: int, frame: object) -> None:
        self._pending.append(signum)
        try:
            os.write(self._write_fd, b"!")
        except OSError:  # pipe full: the loop wakes anyway
            pass

    def wait(self, timeout: float) -> None:
        """Sleep until a signal arrives or `timeout` seconds pass."""
        import select  # only a node and a data node wait (see the imports)
        readable, _, _ = select.select([self._read_fd], [], [], timeout)
        if readable:
            try:
                os.read(self._read_fd, 4096)
            except BlockingIOError:
                pass

    def take(self) -> List[int]:
        taken = self._pending[:]
        del self._pending[: len(taken)]  # a signal noted meanwhile stays
        return taken


def die_by_signal(signum: int) -> None:
    """Kill this process with `signum` (no core file); never returns."""
    import resource  # only a node and a data node die by a signal (see the imports)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if signum != signal.SIGKILL:
        signal.signal(signum, signal.SIG_DFL)
    sys.stdout.flush()
    os.kill(os.getpid(), signum)
    time.sleep(SELF_KILL_GRACE_SECONDS)  # blocked somehow: leave as a shell would report it
    os._exit(128 + signum)


def note_signal(reporter: Reporter, signum: int, ignore_signals: bool, ready: bool) -> str:
    """Decide what a signal does, and say and record it; return the action."""
    action = decide_on_signal(ignore_signals, ready)
    event, name = SIGNAL_EVENTS[signal.Signals(signum)], signal_name(signum)
    reporter.record(event, action=action, ready=ready)
    messages = {"ignore": "ignoring signal", "kill": "ready to upgrade: killing itself",
                "stop": "stopping"}
    reporter.say(messages[action], signal=name)
    return action


# --- the node's shared state ---


class Node:
    """The simulated chain, as the main loop and the admin threads both see it.

    observe() reads the clock and reports the upgrade's transitions (accepted,
    ready) once, under a lock, so the record shows them before any RPC answer
    that reveals them.
    """

    def __init__(self, config: NodeConfig, reporter: Reporter, clock: Callable[[], float]) -> None:
        self.config = config
        self.reporter = reporter
        self._clock = clock
        self._joined_at: Optional[float] = None  # None while loading and replaying
        import threading  # only a node runs threads (see the imports)
        self._lock = threading.Lock()
        self._accepted_reported = False
        self._ready_reported = False

    def join_chain(self) -> None:
        """Start making blocks: the snapshot is loaded and the socket open."""
        with self._lock:
            self._joined_at = self._clock()

    def observe(self) -> ChainState:
        with self._lock:
            if self._joined_at is None:
                return ChainState(self.config.chain.start_height, None, False)
            state = chain_state_at(self.config.chain, self._clock() - self._joined_at)
            self._report_transitions(state)
            return state

    def _report_transitions(self, state: ChainState) -> None:
        release = state.release
        if release and release.tag and not self._accepted_reported:
            self._accepted_reported = True
            facts = {"tag": release.tag, "upgrade_height": release.upgrade_height,
                     "height": state.height}
            self.reporter.say("upgrade accepted", **facts)
            self.reporter.record("accepted", **facts)
        if state.ready and not self._ready_reported and release is not None:
            self._ready_reported = True
            self.reporter.say("ready to upgrade", tag=release.tag, height=state.height)
            self.reporter.record("ready", tag=release.tag, height=state.height)


# --- the admin socket ---


# AdminServer and AdminHandler are mixed into socketserver's classes by
# open_admin_socket, so that only a node imports socketserver (see the imports).


class AdminServer:
    """Core's admin server: one thread per connection, none waited for at exit."""

    daemon_threads = True

    def __init__(self, path: str, node: Node, mode: Optional[int], handler: type) -> None:
        self.node = node
        self.mode = mode
        import threading  # only a node serves a socket (see the imports)
        self.stopping = threading.Event()  # wakes hanging and slow answers at exit
        super().__init__(path, handler)  # type: ignore[call-arg]

    def server_bind(self) -> None:
        super().server_bind()  # type: ignore[misc]
        if self.mode is not None:  # before listen(): no client can connect in between
            os.chmod(self.server_address, self.mode)

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):  # a client gone away is no news
            warn("admin connection failed: %r" % (error,))


class AdminHandler:
    """One connection: requests answered in turn while the client keeps it alive."""

    server: AdminServer
    rfile: Any
    wfile: Any

    def handle(self) -> None:
        while self.serve_one_request():
            pass

    def serve_one_request(self) -> bool:
        """Read and answer one request; whether to read another on this connection."""
        node = self.server.node
        fault = active_fault(node.config.fault, node.observe().height)
        if fault is not None and fault.mode == "close":
            return self.drop_request("close")
        try:
            request = read_request(self.rfile)
        except HttpRefusal as refusal:
            self.record_answer(None, refusal.status, None, None, node.observe())
            self.wfile.write(refusal.answer)
            return False
        if request is None:
            return False
        fault = active_fault(node.config.fault, node.observe().height)
        mode = fault.mode if fault is not None else None
        if mode in ("hang", "garbage"):
            return self.drop_request(mode)
        if fault is not None and mode == "slow":
            self.server.stopping.wait(fault.delay)
        state = node.observe()
        reply = answer_admin_request(request, node.config.http_path, state, mode)
        keep_alive = keeps_alive(request)
        # Recorded before it is sent: whoever holds the answer finds it in the record.
        self.record_answer(request, reply.status, reply,
                           mode if mode == "slow" else reply.fault, state)
        self.wfile.write(http_answer(reply, request, keep_alive, http_date(time.time())))
        return keep_alive

    def record_answer(self, request: Optional[HttpRequest], status: int,
                      reply: Optional[HttpReply], fault: Optional[str], state: ChainState) -> None:
        self.server.node.reporter.record(
            "rpc", http_method=request.verb if request else None,
            path=request.target if request else None,
            method=reply.method if reply else None, id=reply.request_id if reply else None,
            status=status, fault=fault, height=state.height, ready=state.ready,
            tag=state.release.tag if state.release else None,
        )

    def drop_request(self, mode: str) -> bool:
        """Leave the request without an HTTP answer, as the fault says; close."""
        node = self.server.node
        node.reporter.record("rpc-fault", fault=mode, height=node.observe().height)
        if mode == "hang":
            self.server.stopping.wait()
        elif mode == "garbage":
            self.wfile.write(GARBAGE_REPLY)
        return False


def remove_stale_socket(path: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FakeError("%s exists and is not a socket; remove it or choose another "
                        "--admin-socket" % path)
    os.unlink(path)


def open_admin_socket(path: str, node: Node,
                      mode: Optional[int] = None) -> Tuple[AdminServer, Tuple[int, int]]:
    """Bind the socket (a stale one is removed) and serve it in a thread."""
    import socketserver  # only a node serves a socket (see the imports)
    import threading

    class Server(AdminServer, socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        """AdminServer on socketserver's threading unix stream server."""

    class Handler(AdminHandler, socketserver.StreamRequestHandler):
        """AdminHandler on socketserver's stream handler."""

    remove_stale_socket(path)
    try:
        server = Server(path, node, mode, Handler)
    except OSError as exc:
        raise FakeError("cannot listen on admin socket %s: %s" % (path, exc)) from None
    identity = socket_identity(path)
    thread = threading.Thread(target=server.serve_forever, args=(SERVER_POLL_SECONDS,),
                              name="admin-socket", daemon=True)
    thread.start()
    return server, identity


def socket_identity(path: str) -> Tuple[int, int]:
    info = os.stat(path)
    return info.st_dev, info.st_ino


def close_admin_socket(server: AdminServer, path: str, identity: Tuple[int, int]) -> None:
    """Stop serving and remove the socket file, unless another process owns it now."""
    server.stopping.set()
    server.shutdown()
    server.server_close()
    try:
        if socket_identity(path) == identity:
            os.unlink(path)
    except FileNotFoundError:
        pass


# --- the node ---


class NodeRun:
    """One run of `node`: the main loop, which alone acts on signals and faults."""

    def __init__(self, config: NodeConfig, reporter: Reporter, clock: Callable[[], float]) -> None:
        self.config = config
        self.reporter = reporter
        self.clock = clock
        self.node = Node(config, reporter, clock)
        self.server: Optional[AdminServer] = None
        self.identity = (0, 0)

    def run(self, inbox: SignalInbox) -> int:
        socket_due = self.clock() + self.config.socket_delay
        while True:
            # 1. Open the admin socket once its delay is over.
            if self.server is None and self.clock() >= socket_due:
                self.listen()
            # 2. Advance the chain (accepted and ready are reported once).
            state = self.node.observe()
            # 3. Act on signals noted since the last turn.
            for signum in inbox.take():
                code = self.act_on_signal(signum)
                if code is not None:
                    return code
            # 4. Play the scripted exits.
            due = scheduled_exit(self.config, state.height)
            if due == "crash":
                return self.crash(self.config.crash_at)
            if due == "exit-zero":
                return self.exit_zero(self.config.exit_zero_at)
            inbox.wait(LOOP_TICK_SECONDS)

    def listen(self) -> None:
        config = self.config
        self.server, self.identity = open_admin_socket(config.socket_path, self.node,
                                                       config.socket_mode)
        self.node.join_chain()
        self.reporter.say("admin socket listening", path=config.socket_path,
                          http_path=config.http_path)
        self.reporter.record("socket-listening", socket=config.socket_path,
                             http_path=config.http_path)

    def act_on_signal(self, signum: int) -> Optional[int]:
        ready = self.node.observe().ready  # fresh: an RPC may have just said ready
        action = note_signal(self.reporter, signum, self.config.ignore_sigterm, ready)
        if action == "ignore":
            return None
        if action == "kill":
            die_by_signal(signal.SIGKILL)
        time.sleep(self.config.stop_delay)  # a slow shutdown; signals wait meanwhile
        return self.leave(0, "signal")

    def crash(self, height: int) -> int:
        """Die as a crashed core does, at the scripted height (a late tick notwithstanding)."""
        crash_signal = self.config.crash_signal
        if crash_signal is not None:
            self.reporter.say("crashing", height=height, signal=crash_signal.name)
            self.reporter.record("crash", height=height, code=None, signal=crash_signal.name)
            die_by_signal(crash_signal)
        code = CRASH_EXIT_CODE
        self.reporter.say("crashing", height=height, code=code)
        self.reporter.record("crash", height=height, code=code, signal=None)
        self.reporter.record("exit", code=code, reason="crash")
        return code  # the socket file stays behind, as after a real crash

    def exit_zero(self, height: int) -> int:
        self.reporter.say("exiting unexpectedly", height=height, code=0)
        return self.leave(0, "exit-zero-at-height")

    def leave(self, code: int, reason: str) -> int:
        """A clean exit: stop serving, remove the socket file, record it."""
        if self.server is not None:
            close_admin_socket(self.server, self.config.socket_path, self.identity)
        self.reporter.say("stopped", code=code)
        self.reporter.record("exit", code=code, reason=reason)
        return code


# --- the data node ---


@named_tuple
class DatanodeConfig:
    crash_after: Optional[float]
    stop_delay: float
    ignore_sigterm: bool


def run_datanode(
    config: DatanodeConfig, reporter: Reporter, inbox: SignalInbox, clock: Callable[[], float]
) -> int:
    """Run until a signal stops it (exit 0) or --crash-after is over (exit 1)."""
    started_at = clock()
    while True:
        for signum in inbox.take():
            if note_signal(reporter, signum, config.ignore_sigterm, ready=False) == "stop":
                time.sleep(config.stop_delay)
                return leave_datanode(reporter, 0, "signal")
        crash_after = config.crash_after
        if crash_after is not None and clock() - started_at >= crash_after:
            reporter.say("crashing", code=1)
            reporter.record("crash", after=crash_after, code=1, signal=None)
            return leave_datanode(reporter, 1, "crash")
        inbox.wait(LOOP_TICK_SECONDS)


def leave_datanode(reporter: Reporter, code: int, reason: str) -> int:
    reporter.say("stopped", code=code)
    reporter.record("exit", code=code, reason=reason)
    return code


def read_latest_segment(home: str) -> Optional[int]:
    """The height in HOME/fake-latest-segment, or None when there is no such file."""
    path = os.path.join(home, SEGMENT_FILE)
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise FakeError("cannot read %s: %s" % (path, exc)) from None
    if not text.isdigit() or int(text) < 1:
        raise FakeError("%s must hold a block height (an integer >= 1), not %r" % (path, text))
    return int(text)


# --- copies with another version ---


# What make_binary writes: a launcher of this file that reports another version. It
# imports this file rather than copying it, so that a start reads the cached bytecode
# instead of compiling 1,800 lines (a test suite starts thousands of fake cores). Its
# bulk, comment lines of random base64, keeps a release zip of it as large as a zip of
# this whole file (~23 KB), so that downloads that trickle or stall take their time.
LAUNCHER = """#!/usr/bin/env python3
# A fake vega reporting the version below, written by make_binary() of %(source)s
# (the fake itself: see its --help).
import sys
VERSION = "%(version)s"
sys.path.insert(0, %(folder)r)
import core
core.VERSION = VERSION
raise SystemExit(core.main())
# bulk:
%(bulk)s
"""
LAUNCHER_BULK_BYTES = 23000


def launcher_bulk(version: str) -> str:
    """Comment lines of base64 random bytes, the same for the same version."""
    import base64  # only make-binary needs these (see the imports)
    import random
    data = random.Random(version).getrandbits(8 * LAUNCHER_BULK_BYTES)
    text = base64.b64encode(data.to_bytes(LAUNCHER_BULK_BYTES, "little")).decode()
    return "\n".join("# " + text[i:i + 76] for i in range(0, len(text), 76))


def make_binary(dest: Union[str, os.PathLike], version: str) -> Path:
    """Write a fake binary that reports `version` (a launcher of this file, which must stay
    where it is), mode 0o755; return its path.

    The binary replaces the file at `dest` atomically (parent folders are created),
    so it can be installed over a binary that is running.
    """
    if not TAG_PATTERN.fullmatch(version):
        raise ValueError("not a version tag: %r (letters, digits, '.', '_', '+', '-')" % version)
    from pathlib import Path  # only make-binary needs it (see the imports)
    source = Path(__file__).resolve()
    text = LAUNCHER % {"source": source, "version": version, "folder": str(source.parent),
                       "bulk": launcher_bulk(version)}
    path = Path(dest)
    if path.is_dir():
        raise FakeError("%s is a folder: give the path of the binary to write" % path)
    path.parent.mkdir(parents=True, exist_ok=True)
    import tempfile  # only make-binary needs it (see the imports)
    handle, staging = tempfile.mkstemp(prefix=".fake-vega-", dir=str(path.parent))
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(staging, 0o755)
        os.replace(staging, str(path))
    except BaseException:
        os.unlink(staging)
        raise
    return path


# --- commands ---


def cmd_version(args: argparse.Namespace, argv: Sequence[str]) -> int:
    print(format_version(VERSION, args.output))
    return 0


def cmd_make_binary(args: argparse.Namespace, argv: Sequence[str]) -> int:
    try:
        print(make_binary(args.dest, args.version))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return 0


def cmd_node(args: argparse.Namespace, argv: Sequence[str]) -> int:
    config = build_node_config(args)
    inbox = SignalInbox(tuple(SIGNAL_EVENTS))  # before the first line: a signal may follow it
    reporter = Reporter(VERSION, "core", args.record)
    start_height = config.chain.start_height
    reporter.say("node started", pid=os.getpid(), height=start_height)
    script = config.chain.upgrade
    reporter.record(
        "start", argv=list(argv), program=sys.argv[0], start_height=start_height,
        snapshot_height=args.snapshot_height, socket=config.socket_path,
        http_path=config.http_path, socket_delay=config.socket_delay,
        upgrade=script._asdict() if script else None,
        upgrade_skipped=config.upgrade_skipped,
    )
    if config.upgrade_skipped:
        reporter.say("upgrade script off", reason=json.dumps(config.upgrade_skipped))
    try:
        return NodeRun(config, reporter, time.monotonic).run(inbox)
    except FakeError:
        reporter.record("exit", code=1, reason="error")
        raise


def cmd_datanode_start(args: argparse.Namespace, argv: Sequence[str]) -> int:
    inbox = SignalInbox(tuple(SIGNAL_EVENTS))  # before the first line: a signal may follow it
    reporter = Reporter(VERSION, "datanode", args.record)
    reporter.say("datanode started", pid=os.getpid())
    reporter.record("start", argv=list(argv), program=sys.argv[0], home=args.home)
    config = DatanodeConfig(args.crash_after, args.stop_delay, args.ignore_sigterm)
    return run_datanode(config, reporter, inbox, time.monotonic)


def cmd_latest_segment(args: argparse.Namespace, argv: Sequence[str]) -> int:
    height = read_latest_segment(args.home)
    if height is None:
        print("failed to get latest history segment: no history segments found", flush=True)
        return 1
    print(json.dumps({"LatestSegment": describe_segment(height)}, separators=(",", ":")))
    return 0


def build_node_config(args: argparse.Namespace) -> NodeConfig:
    """Check the node's flags together and turn them into a NodeConfig."""
    socket_path, http_path = find_admin_socket(args)
    start_height, socket_delay = args.start_height, args.socket_delay
    if args.snapshot_height is not None:
        start_height = args.snapshot_height
        if args.snapshot_socket_delay is not None:
            socket_delay = args.snapshot_socket_delay
    if args.upgrade_every is None:
        script = read_upgrade_script(args)
    elif args.upgrade_tag is not None or args.upgrade_height is not None:
        raise UsageError("--upgrade-every plays a chain: no --upgrade-tag or --upgrade-height")
    else:
        script = chain_upgrade_script(args.upgrade_every, start_height, args.accept_height,
                                      args.ready_delay)
    script, skipped = choose_upgrade_script(script, start_height, VERSION)
    fault = args.rpc_fault
    if fault is not None:
        fault = fault._replace(after_height=args.rpc_fault_after_height)
    return NodeConfig(
        chain=ChainConfig(start_height, args.block_interval, script),
        upgrade_skipped=skipped,
        socket_path=socket_path,
        http_path=http_path,
        socket_delay=socket_delay,
        socket_mode=args.socket_mode,
        stop_delay=args.stop_delay,
        ignore_sigterm=args.ignore_sigterm,
        crash_at=args.crash_at_height,
        crash_signal=args.crash_signal,
        exit_zero_at=args.exit_zero_at_height,
        fault=fault,
    )


def read_upgrade_script(args: argparse.Namespace) -> Optional[UpgradeScript]:
    tag, upgrade_height = args.upgrade_tag, args.upgrade_height
    if tag is None and upgrade_height is None:
        return None
    if tag is None or upgrade_height is None:
        raise UsageError("--upgrade-tag and --upgrade-height go together")
    if args.accept_height > upgrade_height:
        raise UsageError("--accept-height must not be above --upgrade-height")
    return UpgradeScript(tag, args.accept_height, upgrade_height, args.ready_delay)


def find_admin_socket(args: argparse.Namespace) -> Tuple[str, str]:
    """--admin-socket and --admin-http-path, else [Admin.Server] of core's config."""
    keys: Dict[str, str] = {}
    if args.home is not None and (args.admin_socket is None or args.admin_http_path is None):
        keys = read_core_config(os.path.join(args.home, *CORE_CONFIG_PATH))
    socket_path = args.admin_socket or keys.get("SocketPath")
    if not socket_path:
        raise UsageError("no admin socket: pass --admin-socket, or --home with SocketPath "
                         "under [Admin.Server] in HOME/%s" % "/".join(CORE_CONFIG_PATH))
    return socket_path, args.admin_http_path or keys.get("HTTPPath") or DEFAULT_HTTP_PATH


def read_core_config(path: str) -> Dict[str, str]:
    try:
        with open(path, encoding="utf-8") as file:
            return read_admin_server_keys(file.read())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise FakeError("cannot read %s: %s" % (path, exc)) from None


# --- command line ---


def build_parser(standalone_datanode: bool) -> argparse.ArgumentParser:
    """vega's commands, or those of an old standalone data-node binary (no `datanode`)."""
    parser = argparse.ArgumentParser(
        description=__doc__, epilog=HELP_MAIN, allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    add_version_command(commands)
    if standalone_datanode:
        add_datanode_actions(commands)
        return parser
    add_node_command(commands)
    datanode = commands.add_parser(
        "datanode", allow_abbrev=False, help="run or query the fake data node",
        description="The fake data node.", epilog=HELP_DATANODE + "\n" + HELP_RECORD,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = datanode.add_subparsers(dest="datanode_command", metavar="COMMAND")
    actions.required = True
    add_datanode_actions(actions)
    add_make_binary_command(commands)
    return parser


def add_version_command(commands: Any) -> None:
    version = commands.add_parser(
        "version", allow_abbrev=False, help="print the version",
        description='Print "Vega CLI VERSION (HASH)", or with --output json one line '
                    '{"version": VERSION, "hash": HASH} (HASH: 40 hex digits).',
    )
    version.add_argument("--output", choices=("human", "json"), default="human",
                         help="output format (default: human)")
    version.set_defaults(handler=cmd_version)


def add_node_command(commands: Any) -> None:
    node = commands.add_parser(
        "node", allow_abbrev=False, help="run the fake core node",
        description="Run a fake Vega core: a block clock, a scripted upgrade and faults,\n"
                    "with the admin socket served as core serves it. Unknown flags are\n"
                    "ignored with a warning.",
        epilog=HELP_NODE + "\n" + HELP_RECORD,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = node.add_argument_group("where")
    where.add_argument("--home", metavar="DIR", help="core home: the admin socket is read "
                       "from DIR/config/node/config.toml unless --admin-socket is given")
    where.add_argument("--tendermint-home", metavar="DIR", help="accepted and ignored")
    where.add_argument("--admin-socket", metavar="PATH", help="unix socket to serve")
    where.add_argument("--admin-http-path", metavar="PATH",
                       help="HTTP path of the admin RPC (default: HTTPPath from the "
                            "config, else %s)" % DEFAULT_HTTP_PATH)
    where.add_argument("--record", metavar="FILE", help="append events as JSON lines")
    chain = node.add_argument_group("block clock")
    chain.add_argument("--start-height", type=parse_height, default=0, metavar="N",
                       help="height at start (default: 0)")
    chain.add_argument("--snapshot.load-from-block-height", dest="snapshot_height",
                       type=parse_height, metavar="N",
                       help="core's flag: restart from the snapshot at N (start height N)")
    chain.add_argument("--block-interval", type=parse_interval, default=0.1, metavar="SECONDS",
                       help="seconds per block (default: 0.1)")
    upgrade = node.add_argument_group("scripted upgrade")
    upgrade.add_argument("--upgrade-tag", metavar="TAG", help="tag of the accepted release")
    upgrade.add_argument("--accept-height", type=parse_height, default=0, metavar="A",
                         help="height at which the proposal is accepted (default: 0, "
                              "at the first block)")
    upgrade.add_argument("--upgrade-height", type=parse_height, metavar="U",
                         help="the upgrade block: blocks stop there")
    upgrade.add_argument("--upgrade-every", type=parse_block, metavar="N",
                         help="a chain of upgrades: to the next version at every multiple "
                              "of N (see below)")
    upgrade.add_argument("--ready-delay", type=parse_seconds, default=0.0, metavar="SECONDS",
                         help="ReadyToUpgrade turns true this long after reaching U (default: 0)")
    stop = node.add_argument_group("stopping")
    stop.add_argument("--stop-delay", type=parse_seconds, default=0.0, metavar="SECONDS",
                      help="a slow shutdown: wait this long after SIGTERM (default: 0)")
    stop.add_argument("--ignore-sigterm", action="store_true",
                      help="record SIGTERM and SIGINT and ignore them")
    faults = node.add_argument_group("faults")
    faults.add_argument("--crash-at-height", type=parse_block, metavar="N",
                        help="crash when the height reaches N")
    faults.add_argument("--crash-signal", type=parse_signal, metavar="NAME",
                        help="crash by this signal instead, e.g. SEGV")
    faults.add_argument("--exit-zero-at-height", type=parse_block, metavar="N",
                        help="exit 0 when the height reaches N")
    start = node.add_argument_group("a slow start (a real core loads a snapshot and replays "
                                    "blocks before it listens: seconds to minutes)")
    start.add_argument("--socket-delay", type=parse_seconds, default=0.0, metavar="SECONDS",
                       help="open the admin socket this long after starting (default: 0)")
    start.add_argument("--snapshot-socket-delay", type=parse_seconds, metavar="SECONDS",
                       help="the same when started with --snapshot.load-from-block-height "
                            "(default: --socket-delay)")
    faults.add_argument("--socket-mode", type=parse_mode, metavar="OCTAL",
                        help="chmod the admin socket to this mode before it listens, "
                             "e.g. 000 (a socket only another user may open)")
    faults.add_argument("--rpc-fault", type=parse_rpc_fault, metavar="MODE",
                        help="hang, garbage, close, slow:SECONDS, http400, error-member, "
                             "null-result or wrong-types (see below)")
    faults.add_argument("--rpc-fault-after-height", type=parse_height, default=0, metavar="N",
                        help="the fault starts at height N (default: from the start)")
    node.set_defaults(handler=cmd_node)


def add_datanode_actions(actions: Any) -> None:
    start = actions.add_parser(
        "start", allow_abbrev=False, help="run until SIGTERM or SIGINT",
        description="Run the fake data node until SIGTERM or SIGINT (exit 0). Other\n"
                    "arguments are ignored with a warning.",
        epilog=HELP_RECORD, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    start.add_argument("--home", metavar="DIR", help="data node home (recorded only)")
    start.add_argument("--record", metavar="FILE", help="append events as JSON lines")
    start.add_argument("--crash-after", type=parse_seconds, metavar="SECONDS",
                       help="exit 1 after this long")
    start.add_argument("--stop-delay", type=parse_seconds, default=0.0, metavar="SECONDS",
                       help="a slow shutdown: wait this long after SIGTERM (default: 0)")
    start.add_argument("--ignore-sigterm", action="store_true",
                       help="record SIGTERM and SIGINT and ignore them")
    start.set_defaults(handler=cmd_datanode_start)
    history = actions.add_parser("network-history", allow_abbrev=False,
                                 help="network history commands")
    history_actions = history.add_subparsers(dest="history_command", metavar="COMMAND")
    history_actions.required = True
    latest = history_actions.add_parser(
        "latest-history-segment", allow_abbrev=False,
        help="print the latest history segment",
        description="Print the segment ending at the height in HOME/%s, or exit 1 with "
                    "\"no history segments found\" when that file is absent." % SEGMENT_FILE,
    )
    latest.add_argument("--home", metavar="DIR", required=True, help="data node home")
    latest.add_argument("--output", choices=("json",), required=True,
                        help="output format (only json, as vegavisor asks)")
    latest.set_defaults(handler=cmd_latest_segment)


def add_make_binary_command(commands: Any) -> None:
    make = commands.add_parser(
        "make-binary", allow_abbrev=False, help="write a binary reporting another version",
        description="Write a fake binary at DEST (mode 0755, replaced atomically) "
                    "whose version is TAG, and print its path.",
    )
    make.add_argument("dest", metavar="DEST", help="path of the binary, e.g. HOME/v0.74.0/vega")
    make.add_argument("--version", required=True, metavar="TAG", help="version it reports")
    make.set_defaults(handler=cmd_make_binary)


def main(argv: Optional[Sequence[str]] = None, program: Optional[str] = None) -> int:
    """Run as `vega`, or as a standalone data node when the program is named data-node."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    program = os.path.basename(sys.argv[0] if program is None else program)
    parser = build_parser(program == STANDALONE_DATANODE)
    args, unknown = parser.parse_known_args(arguments)
    if unknown:
        warn("ignoring unknown arguments: %s" % " ".join(unknown))
    try:
        return args.handler(args, arguments)
    except UsageError as exc:
        parser.error(str(exc))  # exits 2
    except FakeError as exc:
        print("%s %s error: %s" % (OUTPUT_PREFIX, VERSION, exc), file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
