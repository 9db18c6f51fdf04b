#!/usr/bin/env python3
"""vegavisor: supervise a Vega node and upgrade it when governance says so.

A drop-in replacement for Vega Visor: it reads the same HOME/config.toml and
HOME/<version>/run-config.toml, starts core (and the data node), polls core's
admin socket, and at the upgrade block stops the node, installs the release,
switches HOME/current and starts the new version.

Usage: python3 vegavisor.py run --home HOME   (see `vegavisor.py --help`)
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import enum
import errno
import fcntl
import functools
import ipaddress
import json
import math
import os
import random
import re
import select
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import types
import urllib.parse
from pathlib import Path
from typing import Any
from typing import Callable
from typing import Dict
from typing import Iterator
from typing import List
from typing import NamedTuple
from typing import Optional
from typing import Sequence
from typing import TextIO
from typing import TYPE_CHECKING
from typing import Tuple

if TYPE_CHECKING:  # loaded lazily at run time: only an install unpacks a zip
    import zipfile

__all__ = ["main", "VisorError", "ConfigError", "Config", "RunConfig", "UpgradeStatus"]

__version__ = "0.1.0"

# --- constants ---

CONFIG_FILE = "config.toml"
RUN_CONFIG_FILE = "run-config.toml"
CURRENT_LINK = "current"
GENESIS_FOLDER = "genesis"
# flock()ed by `run`; a name no release tag can have (tags never start with a dot).
LOCK_FILE = ".vegavisor.lock"

# The method core's admin server registers (SPEC 1.4).
UPGRADE_STATUS_METHOD = "protocolupgrade.UpgradeStatus"
SNAPSHOT_FLAG = "--snapshot.load-from-block-height"
NO_HISTORY_SEGMENTS = "no history segments found"

# An UpgradeStatus answer is ~150 bytes; anything near this is not core talking.
MAX_ADMIN_RESPONSE_BYTES = 64 * 1024
# Vega's tags are like v0.74.0-preview.1; a tag names a folder and a GitHub release.
MAX_TAG_LENGTH = 128
# Core's block heights are Go uint64s.
MAX_BLOCK_HEIGHT = 2 ** 64 - 1
# AF_UNIX paths are limited to 108 bytes including the terminating NUL on Linux.
MAX_UNIX_SOCKET_PATH = 107
# `vega version` and the data node's history query are local and quick; a minute
# means the binary hangs, not that it is busy.
BINARY_QUERY_TIMEOUT_SECONDS = 60.0
# How often a stopping child is checked when no SIGCHLD wakes us (belt and braces).
STOP_POLL_SECONDS = 0.05
# 2**64 * restartsDelaySeconds outlasts any backoff cap; beyond it floats overflow.
MAX_BACKOFF_DOUBLINGS = 64
# A prefetch retries for days if it must; 10 minutes apart keeps GitHub's budget.
PREFETCH_RETRY_MAX_SECONDS = 600.0
# From this many failed prefetches on, each failure is an error: the block may be near
# (UpgradeStatus says which block, not how far away it is).
PREFETCH_ERROR_AFTER_ATTEMPTS = 3
# State files in HOME, each written atomically by `run` and read by `status`:
# the prefetch, the run (phase, restarts, children) and the upgrade journal.
PREFETCH_STATE_FILE = ".prefetch.json"
RUN_STATE_FILE = ".run-state.json"
JOURNAL_FILE = ".upgrade-journal.json"
JOURNAL_STEPS = ("ready", "stopped", "installed", "switched", "started", "done")
# lastPollOk in the run state is refreshed this often, not on every 2 s poll.
RUN_STATE_POLL_WRITE_SECONDS = 60.0
# `status` holds a shared flock on the run lock for microseconds; this outlasts it.
LOCK_RETRY_SECONDS = 0.2
# prctl(2) option: the signal a child gets when its parent dies (linux/prctl.h).
PR_SET_PDEATHSIG = 1
# A cancelled install's thread ends within this (its socket is shut down); past it,
# visor goes on and the next run removes the staging folder the thread left.
INSTALL_STOP_WAIT_SECONDS = 5.0
# `status` asks current's binary its version; a binary that takes longer is reported.
STATUS_VERSION_TIMEOUT_SECONDS = 5.0
# After SIGKILL a process is gone within milliseconds unless stuck in the kernel.
LEFTOVER_KILL_WAIT_SECONDS = 5.0
# Set in each child's environment to a fresh value recorded before the fork: a visor
# killed between fork and record still lets the next one find that child.
CHILD_MARKER_VARIABLE = "VEGAVISOR_CHILD"
# The same warning (state or metrics not written, a bad answer) at most this often.
REPEAT_WARNING_SECONDS = 300.0
# While core has never answered: warn this many seconds after the start, then every
# NOT_ANSWERING_REPEAT (a mainnet core replays for minutes; a wrong socket never answers).
NOT_ANSWERING_WARNINGS = (10.0, 30.0, 60.0)
NOT_ANSWERING_REPEAT = 300.0
# A prefetch for a different tag starts at most this often: a tag flapping every poll
# costs at most 12 installs (about 40 GitHub API requests) an hour, within the
# unauthenticated budget of 60.
PREFETCH_MIN_START_SECONDS = 300.0
# GitHub's rate limit window is an hour: a reset further away is not believed.
RATE_LIMIT_WAIT_MAX_SECONDS = 3600.0
# A preUpgrade hook runs while the node is stopped at the upgrade block and the rest of
# the network waits for its validators: 5 minutes fits a backup of the node's state or a
# page to the on-call operator, and a hung hook must not keep the node down for longer.
HOOK_TIMEOUT_SECONDS = 300.0
# A hook's output goes to the log line by line: a longer line is logged in pieces, and
# past this many lines the rest is only counted (a chatty hook cannot flood the log).
HOOK_LINE_BYTES = 1024
HOOK_LOG_LINES = 1000
# After a hook exits, its last lines reach the log within this (a grandchild that keeps
# its output open does not hold the upgrade).
HOOK_OUTPUT_DRAIN_SECONDS = 1.0
# How a hook's progress is recorded in the journal (Journal.pre_upgrade, post_upgrade).
HOOK_STATES = ("pending", "running", "ok", "failed", "stopped", "skipped")

# Tags name a folder (NAME_MAX is 255 bytes) and a staging folder holds one too.
MAX_TAG_LENGTH = 128
# An API step (a release lookup with its pages, an asset listing) is a few small
# answers: this many per-read timeouts end one that trickles (SPEC 3.3.5).
API_STEP_READ_TIMEOUTS = 2
# A download may take one per-read timeout plus its size at this rate: a slow link
# passes, a server trickling a byte a second does not (SPEC 3.3.5).
MIN_DOWNLOAD_BYTES_PER_SECOND = 16 * 1024
# A download's progress reaches the log (and the caller) at most this often (SPEC 3.2.4).
PROGRESS_SECONDS = 10.0
# Written first into every staging folder: the proof that vegavisor made it (SPEC 3.3.1).
STAGING_MARKER = ".vegavisor-staging"
STAGING_NAME = re.compile(r"\.staging-.*-(\d+)-[0-9a-f]{8}")
# Temporary files of write_file_atomically and switch_current, pid in the name.
TEMPORARY_NAME = re.compile(
    r"\.(?:config\.toml|current|\.run-state\.json|\.prefetch\.json|"
    r"\.upgrade-journal\.json)\.(\d+)\.tmp")
# Release lists and asset lists are ~100 KB a page; a release object is smaller.
MAX_API_RESPONSE_BYTES = 32 * 1024 * 1024
# 100 pages of 100 releases is far beyond vega's history; past it, a server loops.
MAX_PAGES = 100
# Big enough for throughput, small enough that memory stays flat for any asset size.
DOWNLOAD_CHUNK_BYTES = 1024 * 1024
# Chunks read but not yet hashed: bounds the download's memory to a few MiB.
HASH_QUEUE_CHUNKS = 4
# A binary compresses 3-5x; 20x (and 64 MiB for a tiny asset) is a zip bomb's mark.
MAX_UNPACK_RATIO = 20
MIN_UNPACK_LIMIT_BYTES = 64 * 1024 * 1024

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

LOG_LEVELS = ("debug", "info", "warn", "error")
LOG_FORMATS = ("text", "json")


# --- errors ---

class VisorError(Exception):
    """A failure an operator must read: one sentence, no traceback."""

    exit_code = EXIT_FAILURE


class ConfigError(VisorError):
    """Invalid configuration or usage: names the file and the key."""

    exit_code = EXIT_USAGE


class AdminError(VisorError):
    """One admin-socket call failed; counted against the retry limits."""


class BadAnswer(AdminError):
    """Something answered on the socket, but not as core's admin server answers."""


class InstallError(VisorError):
    """A release could not be installed; nothing was left behind for its tag.

    retry_after: seconds until GitHub's rate limit lifts, when that is the cause.
    """

    def __init__(self, message: str, retry_after: Optional[float] = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InstallCancelled(InstallError):
    """The install was stopped (visor stops): neither a failure to retry nor a success."""


# --- typed records ---

class AssetConfig(NamedTuple):
    name: str
    binary_name: str


class AutoInstallConfig(NamedTuple):
    enabled: bool
    repository_owner: str
    repository: str
    github_api_url: str
    prefetch: bool
    prefetch_retry_delay: float
    http_timeout: float
    require_checksum: bool
    checksums: Dict[str, str]
    asset: AssetConfig


class LoggingConfig(NamedTuple):
    format: str
    level: str


class HooksConfig(NamedTuple):
    """[hooks]: commands (argv, () for none) run around an upgrade, and their time limit."""

    pre_upgrade: Tuple[str, ...] = ()
    post_upgrade: Tuple[str, ...] = ()
    timeout: float = HOOK_TIMEOUT_SECONDS


class Config(NamedTuple):
    max_first_connection_retries: int
    max_restart_connection_retries: int
    max_restarts: int
    restarts_delay: float
    stop_delay: float
    stop_signal_timeout: float
    poll_interval: float
    upgrade_poll_interval: float
    rpc_timeout: float
    restarts_backoff_max: float
    restarts_reset_after: float
    metrics_file: str
    upgrade_folders: Dict[str, str]
    auto_install: AutoInstallConfig
    logging: LoggingConfig
    hooks: HooksConfig = HooksConfig()


class Binary(NamedTuple):
    path: str
    args: Tuple[str, ...]


class RpcConfig(NamedTuple):
    socket_path: str
    http_path: str


class RunConfig(NamedTuple):
    name: str
    vega: Binary
    rpc: RpcConfig
    data_node: Optional[Binary]


class UpgradeStatus(NamedTuple):
    """What core's admin socket says; tag is "" while no upgrade is accepted."""

    ready: bool
    tag: str
    height: int


# --- TOML ---
# The reader follows tomli's _parser.py (the code behind tomllib): no parser object,
# small functions taking (src, pos) and returning the new pos and a value. On 3.11+
# read_toml_text uses tomllib itself; _parse_toml gives 3.8-3.10 the same results.

_ASCII_CTRL = frozenset(chr(i) for i in range(32)) | frozenset(chr(127))
# TOML 1.0 forbids control characters except tab in strings and comments;
# multi-line strings may also hold newlines.
_ILLEGAL_IN_STRING = _ASCII_CTRL - frozenset("\t")
_ILLEGAL_IN_MULTILINE_STRING = _ASCII_CTRL - frozenset("\t\n")
_WS = frozenset(" \t")
_WS_AND_NEWLINE = _WS | frozenset("\n")
_BARE_KEY_CHARS = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
)
_KEY_INITIAL_CHARS = _BARE_KEY_CHARS | frozenset("\"'")
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_ESCAPES = types.MappingProxyType({
    "\\b": "\b", "\\t": "\t", "\\n": "\n", "\\f": "\f",
    "\\r": "\r", '\\"': '"', "\\\\": "\\",
})
# Values spelled as words; none is a prefix of another.
_WORDS = types.MappingProxyType({
    "true": True, "false": False,
    **{word: float(word) for word in ("inf", "nan", "+inf", "+nan", "-inf", "-nan")},
})
# Underscores only between digits; no leading zeros; hex, octal and binary unsigned.
_NUMBER_RE = re.compile(
    r"0(?:x[0-9A-Fa-f](?:_?[0-9A-Fa-f])*|b[01](?:_?[01])*|o[0-7](?:_?[0-7])*)"
    r"|[+-]?(?:0|[1-9](?:_?[0-9])*)"
    r"(?P<float>(?:\.[0-9](?:_?[0-9])*)?(?:[eE][+-]?[0-9](?:_?[0-9])*)?)"
)
_TIME_RE = r"([01][0-9]|2[0-3]):([0-5][0-9]):([0-5][0-9])(?:\.([0-9]{1,6})[0-9]*)?"
_LOCAL_TIME_RE = re.compile(_TIME_RE)
_DATETIME_RE = re.compile(
    r"([0-9]{4})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"(?:[Tt ]" + _TIME_RE + r"(?:([Zz])|([+-])([01][0-9]|2[0-3]):([0-5][0-9]))?)?"
)
# tomllib's message suffix: "(at line 3, column 7)" or "(at end of document)".
_TOMLLIB_WHERE_RE = re.compile(
    r"(.*) \(at (?:line (\d+), column (\d+)|end of document)\)\Z", re.DOTALL
)


class TomlError(ValueError):
    def __init__(self, msg: str, line: int, col: int) -> None:
        super().__init__(f"{msg} (line {line}, column {col})")
        self.msg, self.line, self.col = msg, line, col


class _Doc(NamedTuple):
    """The document being read, and what TOML says may no longer change in it."""
    data: dict
    explicit: set  # keys of tables declared by a header or by a dotted key
    frozen: set  # keys of inline tables and arrays: closed along with all below them
    pending: list  # dotted-key tables, declared for good at the next header


def read_toml_text(text: str) -> dict:
    try:
        return _read_toml_text(text)
    except RecursionError:  # both readers recurse into nested arrays and inline tables
        raise _error(text, _deep_nesting_at(text), "arrays or inline tables nested too "
                     "deeply to read") from None


def _read_toml_text(text: str) -> dict:
    try:
        import tomllib
    except ImportError:
        return _parse_toml(text)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg, line, col = _TOMLLIB_WHERE_RE.match(str(e)).groups()
        if line:
            raise TomlError(msg, int(line), int(col)) from None
        src = text.replace("\r\n", "\n")
        raise _error(src, len(src), msg) from None
    except ValueError:  # tomllib lets int()'s digit limit through: say where it is
        return _parse_toml(text)


def _deep_nesting_at(text: str, limit: int = 100) -> int:
    """Where brackets first nest `limit` deep (strings not skipped: only for a message)."""
    depth = 0
    for pos, c in enumerate(text):
        depth += (c in "[{") - (c in "]}")
        if depth >= limit:
            return pos
    return 0


def _error(src: str, pos: int, msg: str) -> TomlError:
    line = src.count("\n", 0, pos) + 1
    return TomlError(msg, line, pos - src.rfind("\n", 0, pos))


def _parse_toml(text: str) -> dict:
    # TOML allows reading CRLF as LF everywhere, multi-line strings included.
    src = text.replace("\r\n", "\n")
    doc = _Doc({}, set(), set(), [])
    header: tuple[str, ...] = ()
    pos = 0
    while True:
        pos = _skip(src, pos, _WS)
        char = src[pos:pos + 1]
        if not char:
            return doc.data
        if char in _KEY_INITIAL_CHARS:
            pos = _key_value_rule(src, pos, doc, header)
        elif char == "[":
            doc.explicit.update(doc.pending)
            doc.pending.clear()
            pos, header = _header_rule(src, pos, doc)
        elif char != "#" and char != "\n":
            raise _error(src, pos, "Invalid statement")
        pos = _skip_comment(src, _skip(src, pos, _WS))
        if pos < len(src) and src[pos] != "\n":
            raise _error(src, pos, "Expected newline or end of document after a statement")
        pos += 1


def _skip(src: str, pos: int, chars: frozenset) -> int:
    while pos < len(src) and src[pos] in chars:
        pos += 1
    return pos


def _skip_until(src: str, pos: int, end: str, illegal: frozenset, eof_ok: bool) -> int:
    """Return the position of `end`, refusing illegal characters before it."""
    stop = src.find(end, pos)
    if stop < 0:
        if not eof_ok:
            raise _error(src, len(src), f"Expected {end!r}")
        stop = len(src)
    for i in range(pos, stop):
        if src[i] in illegal:
            raise _error(src, i, f"Found invalid character {src[i]!r}")
    return stop


def _skip_comment(src: str, pos: int) -> int:
    if src.startswith("#", pos):
        return _skip_until(src, pos + 1, "\n", _ILLEGAL_IN_STRING, eof_ok=True)
    return pos


def _skip_array_whitespace(src: str, pos: int) -> int:
    while True:
        before = pos
        pos = _skip_comment(src, _skip(src, pos, _WS_AND_NEWLINE))
        if pos == before:
            return pos


def _is_frozen(frozen: set, key: tuple[str, ...]) -> bool:
    return any(key[:i] in frozen for i in range(1, len(key) + 1))


def _nest(src: str, pos: int, data: dict, key: tuple[str, ...]) -> dict:
    """Return the table at `key`, creating missing ones; arrays of tables lead to their last."""
    table = data
    for part in key:
        table = table.setdefault(part, {})
        if isinstance(table, list):  # arrays of tables: arrays of values are frozen
            table = table[-1]
        if not isinstance(table, dict):
            raise _error(src, pos, "Cannot overwrite a value")
    return table


def _header_rule(src: str, pos: int, doc: _Doc) -> tuple[int, tuple[str, ...]]:
    closing = "]]" if src.startswith("[[", pos) else "]"
    pos, key = _parse_key(src, _skip(src, pos + len(closing), _WS))
    if closing == "]]":
        _append_array_table(src, pos, doc, key)
    elif key in doc.explicit or _is_frozen(doc.frozen, key):
        raise _error(src, pos, f"Cannot declare table {'.'.join(key)} twice")
    else:
        doc.explicit.add(key)
        _nest(src, pos, doc.data, key)
    if not src.startswith(closing, pos):
        raise _error(src, pos, f"Expected {closing!r} at the end of a table declaration")
    return pos + len(closing), key


def _append_array_table(src: str, pos: int, doc: _Doc, key: tuple[str, ...]) -> None:
    if _is_frozen(doc.frozen, key):
        raise _error(src, pos, f"Cannot extend the inline table or array {'.'.join(key)}")
    # A new element starts with a clean namespace: forget what the previous one declared.
    for flags in (doc.explicit, doc.frozen):
        flags.difference_update([k for k in flags if k[:len(key)] == key])
    doc.explicit.add(key)
    parent = _nest(src, pos, doc.data, key[:-1])
    array = parent.setdefault(key[-1], [])
    if not isinstance(array, list):
        raise _error(src, pos, "Cannot overwrite a value")
    array.append({})


def _key_value_rule(src: str, pos: int, doc: _Doc, header: tuple[str, ...]) -> int:
    pos, key, value = _parse_key_value(src, pos)
    for i in range(1, len(key)):
        if header + key[:i] in doc.explicit:
            raise _error(src, pos, f"Cannot redefine table {'.'.join(header + key[:i])}")
        doc.pending.append(header + key[:i])
    parent = header + key[:-1]
    if _is_frozen(doc.frozen, parent):
        raise _error(src, pos, f"Cannot extend the inline table or array {'.'.join(parent)}")
    table = _nest(src, pos, doc.data, parent)
    if key[-1] in table:
        raise _error(src, pos, "Cannot overwrite a value")
    if isinstance(value, (dict, list)):
        doc.frozen.add(header + key)
    table[key[-1]] = value
    return pos


def _parse_key_value(src: str, pos: int) -> tuple[int, tuple[str, ...], object]:
    pos, key = _parse_key(src, pos)
    if not src.startswith("=", pos):
        raise _error(src, pos, "Expected '=' after a key in a key/value pair")
    pos, value = _parse_value(src, _skip(src, pos + 1, _WS))
    return pos, key, value


def _parse_key(src: str, pos: int) -> tuple[int, tuple[str, ...]]:
    key: tuple[str, ...] = ()
    while True:
        char = src[pos:pos + 1]
        if char in _BARE_KEY_CHARS:
            end = _skip(src, pos, _BARE_KEY_CHARS)
            pos, part = end, src[pos:end]
        elif char == "'" or char == '"':
            pos, part = _parse_string(src, pos, multiline_ok=False)
        else:
            raise _error(src, pos, "Invalid initial character for a key part")
        key += (part,)
        pos = _skip(src, pos, _WS)
        if not src.startswith(".", pos):
            return pos, key
        pos = _skip(src, pos + 1, _WS)


def _parse_value(src: str, pos: int) -> tuple[int, object]:
    char = src[pos:pos + 1]
    if char == '"' or char == "'":
        return _parse_string(src, pos)
    if char == "[":
        return _parse_array(src, pos)
    if char == "{":
        return _parse_inline_table(src, pos)
    return _parse_scalar(src, pos)


def _parse_scalar(src: str, pos: int) -> tuple[int, object]:
    """Dates and times, numbers, then words: the number pattern also matches a date's year."""
    match = _DATETIME_RE.match(src, pos)
    if match:
        return match.end(), _to_datetime(src, pos, match)
    match = _LOCAL_TIME_RE.match(src, pos)
    if match:
        return match.end(), _to_time(match.groups())
    match = _NUMBER_RE.match(src, pos)
    if match:
        return match.end(), _to_number(src, pos, match)
    for length in (3, 4, 5):
        if src[pos:pos + length] in _WORDS:
            return pos + length, _WORDS[src[pos:pos + length]]
    raise _error(src, pos, "Invalid value")


def _to_number(src: str, pos: int, match: re.Match) -> object:
    if match.group("float"):
        return float(match.group())
    try:
        return int(match.group(), 0)
    except ValueError:  # more digits than sys.get_int_max_str_digits() allows
        raise _error(src, pos, "Integer has too many digits") from None


def _to_time(groups: tuple) -> datetime.time:
    hour, minute, second, fraction = groups
    micros = int(fraction.ljust(6, "0")) if fraction else 0
    return datetime.time(int(hour), int(minute), int(second), micros)


def _to_datetime(src: str, pos: int, match: re.Match) -> datetime.date:
    year, month, day = (int(g) for g in match.groups()[:3])
    try:
        date = datetime.date(year, month, day)
        if match.group(4) is None:
            return date
        moment = datetime.datetime.combine(date, _to_time(match.groups()[3:7]))
    except ValueError:  # e.g. 2023-02-30
        raise _error(src, pos, "Invalid date or datetime") from None
    zulu, sign, hours, minutes = match.groups()[7:]
    if zulu:
        return moment.replace(tzinfo=datetime.timezone.utc)
    if sign:
        offset = datetime.timedelta(hours=int(hours), minutes=int(minutes))
        return moment.replace(tzinfo=datetime.timezone(offset if sign == "+" else -offset))
    return moment


def _parse_array(src: str, pos: int) -> tuple[int, list]:
    array: list = []
    pos = _skip_array_whitespace(src, pos + 1)
    while not src.startswith("]", pos):
        pos, value = _parse_value(src, pos)
        array.append(value)
        pos = _skip_array_whitespace(src, pos)
        if src.startswith(",", pos):
            pos = _skip_array_whitespace(src, pos + 1)
        elif not src.startswith("]", pos):
            raise _error(src, pos, "Unclosed array")
    return pos + 1, array


def _parse_inline_table(src: str, pos: int) -> tuple[int, dict]:
    table: dict = {}
    frozen: set = set()
    pos = _skip(src, pos + 1, _WS)
    if src.startswith("}", pos):
        return pos + 1, table
    while True:
        pos, key, value = _parse_key_value(src, pos)
        _add_inline_entry(src, pos, table, frozen, key, value)
        pos = _skip(src, pos, _WS)
        if src.startswith("}", pos):
            return pos + 1, table
        if not src.startswith(",", pos):
            raise _error(src, pos, "Unclosed inline table")
        pos = _skip(src, pos + 1, _WS)


def _add_inline_entry(
    src: str, pos: int, table: dict, frozen: set, key: tuple[str, ...], value: object
) -> None:
    if _is_frozen(frozen, key):
        raise _error(src, pos, f"Cannot extend the inline table or array {'.'.join(key)}")
    nest = _nest(src, pos, table, key[:-1])
    if key[-1] in nest:
        raise _error(src, pos, f"Duplicate inline table key {key[-1]!r}")
    nest[key[-1]] = value
    if isinstance(value, (dict, list)):
        frozen.add(key)


def _parse_string(src: str, pos: int, multiline_ok: bool = True) -> tuple[int, str]:
    """A literal (') or basic (") string, multi-line when tripled unless it is a key."""
    delim = src[pos]
    multiline = multiline_ok and src.startswith(delim * 3, pos)
    closing = delim * 3 if multiline else delim
    illegal = _ILLEGAL_IN_MULTILINE_STRING if multiline else _ILLEGAL_IN_STRING
    pos += len(closing)
    if multiline and src.startswith("\n", pos):  # a newline right after the opening is trimmed
        pos += 1
    if delim == "'":
        end = _skip_until(src, pos, closing, illegal, eof_ok=False)
        pos, result = end + len(closing), src[pos:end]
    else:
        pos, result = _parse_basic_string(src, pos, closing, illegal)
    # Up to two quotes may sit right before the closing three: '''a''''' is "a''".
    extra = 0
    while multiline and extra < 2 and src.startswith(delim, pos + extra):
        extra += 1
    return pos + extra, result + delim * extra


def _parse_basic_string(src: str, pos: int, closing: str, illegal: frozenset) -> tuple[int, str]:
    """Read from just after the opening quote(s) to just after the closing ones."""
    parts = []
    start = pos
    while not src.startswith(closing, pos):
        char = src[pos:pos + 1]
        if char == "\\":
            parts.append(src[start:pos])
            pos, unescaped = _parse_escape(src, pos, multiline=len(closing) == 3)
            parts.append(unescaped)
            start = pos
        elif not char:
            raise _error(src, pos, "Unterminated string")
        elif char in illegal:
            raise _error(src, pos, f"Illegal character {char!r}")
        else:
            pos += 1
    parts.append(src[start:pos])
    return pos + len(closing), "".join(parts)


def _parse_escape(src: str, pos: int, multiline: bool) -> tuple[int, str]:
    escape = src[pos:pos + 2]
    if multiline and escape in ("\\ ", "\\\t", "\\\n"):
        # the whitespace after a line-ending backslash must reach a newline
        pos = _skip(src, pos + 1, _WS)
        if pos < len(src) and src[pos] != "\n":
            raise _error(src, pos, "Unescaped '\\' in a string")
        return _skip(src, pos, _WS_AND_NEWLINE), ""
    if escape == "\\u" or escape == "\\U":
        return _parse_hex_char(src, pos + 2, 4 if escape == "\\u" else 8)
    if escape not in _ESCAPES:
        raise _error(src, pos + 2, "Unescaped '\\' in a string")
    return pos + 2, _ESCAPES[escape]


def _parse_hex_char(src: str, pos: int, length: int) -> tuple[int, str]:
    digits = src[pos:pos + length]
    if len(digits) != length or not _HEX_DIGITS.issuperset(digits):
        raise _error(src, pos, "Invalid hex value")
    code = int(digits, 16)
    if 0xD800 <= code <= 0xDFFF or code > 0x10FFFF:
        raise _error(src, pos + length, "Escaped character is not a Unicode scalar value")
    return pos + length, chr(code)


# The writer escapes what the reader unescapes, and other control characters as \uXXXX.
_WRITER_ESCAPES = types.MappingProxyType({
    **{ord(char): f"\\u{ord(char):04x}" for char in _ASCII_CTRL},
    **{ord(char): escape for escape, char in _ESCAPES.items()},
})
_LONE_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def write_toml(doc: dict) -> str:
    """Write plain keys first, then one [a.b] section per table; the inverse of read_toml_text."""
    lines: list = []
    _write_table(lines, (), doc)
    return "\n".join(lines).lstrip("\n") + "\n" if lines else ""


def _write_table(lines: list, key: tuple[str, ...], table: dict) -> None:
    values = [(k, v) for k, v in table.items() if not isinstance(v, dict)]
    tables = [(k, v) for k, v in table.items() if isinstance(v, dict)]
    if key and (values or not tables):  # [a.b] alone creates a; only empty leaves need a header
        lines.extend(("", f"[{'.'.join(_format_key(k) for k in key)}]"))
    for k, v in values:
        lines.append(f"{_format_key(k)} = {_format_value(v, key + (k,))}")
    for k, v in tables:
        _write_table(lines, key + (k,), v)


def _format_key(key: object) -> str:
    if not isinstance(key, str):
        raise ValueError(f"TOML keys must be strings, not {key!r}")
    if key and _BARE_KEY_CHARS.issuperset(key):
        return key
    return _format_string(key)


def _format_value(value: object, key: tuple[str, ...]) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and -(2 ** 63) <= value < 2 ** 63:
        return str(value)
    if isinstance(value, float):
        if value != value and math.copysign(1.0, value) < 0:
            return "-nan"  # repr() drops the sign of nan
        return repr(value)  # 1.5, 1e+16, inf, -inf and nan are all TOML
    if isinstance(value, str):
        return _format_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_format_value(v, key) for v in value) + "]"
    raise ValueError(f"cannot write {'.'.join(key)} = {value!r} as TOML")


def _format_string(text: str) -> str:
    surrogate = _LONE_SURROGATE_RE.search(text)
    if surrogate:
        raise ValueError(f"cannot write the lone surrogate {surrogate.group()!r} as TOML")
    return '"' + text.translate(_WRITER_ESCAPES) + '"'


# --- configuration ---
# Each file has one schema: a table of keys, each with its name in the file, the
# record field it fills, its check and its default. One walk of a schema collects
# every problem and every unknown key of a file: `run` stops at the first problem
# (parse_*), `validate` reports them all (check_*), so the two cannot disagree.
# A new config.toml key is one Key line in CONFIG_SCHEMA and one record field.

REQUIRED = object()  # a default meaning "the file must set it"
ABSENT = object()  # a table the file may leave out, its record then None
# Waits longer than this overflow threading's timeouts (about 9.2e9 s); no pause or
# timeout of a node supervisor is sanely longer than 31 years.
MAX_SECONDS = 1e9
# Polling core faster than this only burns CPU: a block takes about a second.
MIN_POLL_INTERVAL_SECONDS = 0.05


class Report(NamedTuple):
    """What one walk of a schema found in a file: problems, then keys nobody reads."""

    path: Path
    errors: List[str]
    warnings: List[str]


class Key(NamedTuple):
    """One key of a TOML table: its name in the file, the record field, check, default."""

    name: str
    attr: str
    check: Callable[[Any], Any]  # the value as the record holds it; ValueError says why not
    default: Any = REQUIRED

    def read(self, raw: dict, values: Dict[str, Any], where: str, report: Report) -> None:
        if self.name in raw:
            try:
                values[self.attr] = self.check(raw[self.name])
            except ValueError as e:
                report.errors.append(f"{report.path}: {where}{_key(self.name)}: {e}, got "
                                     f"{_show(raw[self.name])}")
        elif self.default is REQUIRED:
            report.errors.append(f"{report.path}: {where}{self.name} is missing")
        else:
            values[self.attr] = self.default


class Map(NamedTuple):
    """A table of names the operator chooses (tags), each value checked alike."""

    name: str
    attr: str
    check: Callable[[Any], Any]

    def read(self, raw: dict, values: Dict[str, Any], where: str, report: Report) -> None:
        table = _sub_table(raw, self.name, where, report)
        if table is not None:
            values[self.attr] = _read_fields(table, [Key(k, k, self.check) for k in table],
                                             f"{where}{self.name}.", report)


class Table(NamedTuple):
    """A sub-table read into `record` at `attr` ("": its records fill the parent's fields)."""

    name: str
    attr: str
    record: Optional[Callable[..., Any]]
    fields: Tuple[Any, ...]
    missing: Any = None  # None: read as empty (defaults); ABSENT; REQUIRED or why it is

    def read(self, raw: dict, values: Dict[str, Any], where: str, report: Report) -> None:
        if self.name not in raw and self.missing is ABSENT:
            values.update({self.attr: None} if self.attr else
                          {field.attr: None for field in self.fields})
        elif self.name not in raw and self.missing is not None:
            why = "" if self.missing is REQUIRED else f": {self.missing}"
            report.errors.append(f"{report.path}: {where}{self.name} is missing{why}")
        else:
            table = _sub_table(raw, self.name, where, report)
            if table is None:
                return
            errors = len(report.errors)
            read = _read_fields(table, self.fields, f"{where}{self.name}.", report)
            if not self.attr:
                values.update(read)
            elif len(report.errors) == errors:
                values[self.attr] = self.record(**read)


class OldAssetsFormat(NamedTuple):
    """[autoInstall.assets.vega] asset_name / binary_name, still seen in the wild (SPEC 1.2):
    refused while auto-install is on, else a warning (SPEC 3.1.3). Follows `enabled`."""

    name: str = "assets"
    attr: str = ""

    def read(self, raw: dict, values: Dict[str, Any], where: str, report: Report) -> None:
        if self.name not in raw:
            return
        entry = _lookup(raw, self.name, "vega")
        entry = entry if isinstance(entry, dict) else {}
        on = values.get("enabled") is True
        (report.errors if on else report.warnings).append(
            f"{report.path}: [autoInstall.assets] is the old format, "
            + ("which the original Visor ignored until the upgrade failed" if on else
               "ignored while auto-install is off")
            + f"; replace it with [autoInstall.asset] name = "
              f"{_show(entry.get('asset_name', 'vega-{os}-{arch}.zip'))} and binaryName = "
              f"{_show(entry.get('binary_name', 'vega'))}")


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("expected a whole number >= 0")
    return value


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("expected a number of seconds")
    if not 0 <= value <= MAX_SECONDS:  # also false for nan
        raise ValueError(f"expected a number of seconds >= 0 and <= {MAX_SECONDS:.0e}")
    return float(value)


def _poll_interval(value: Any) -> float:
    if _seconds(value) < MIN_POLL_INTERVAL_SECONDS:
        raise ValueError(f"expected a number of seconds >= {MIN_POLL_INTERVAL_SECONDS} (a "
                         f"shorter interval only burns CPU: a block takes about a second)")
    return float(value)


def _positive_seconds(value: Any) -> float:
    if _seconds(value) == 0:
        raise ValueError("expected a number of seconds > 0")
    return float(value)


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    if "\0" in value:
        raise ValueError("a NUL character cannot be passed on")
    return value


def _nonempty_text(value: Any) -> str:
    if not _text(value):
        raise ValueError("must not be empty")
    return value


def _texts(value: Any) -> Tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected an array of strings")
    return tuple(_text(v) for v in value)


def _choice(*options: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in options:
            raise ValueError("expected one of " + ", ".join(json.dumps(o) for o in options))
        return value
    return check


def _github_name(value: Any) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._-]+", _text(value)):
        raise ValueError("expected a GitHub name (letters, digits, '.', '_' and '-')")
    return value


def _api_url(value: Any) -> str:
    problem = url_problem(_text(value))
    if problem:
        raise ValueError(problem)
    return value.rstrip("/")


def _asset_template(value: Any) -> str:
    unknown = set(re.findall(r"{([^{}]*)}", _nonempty_text(value))) - {"os", "arch"}
    if unknown:
        raise ValueError("only {os} and {arch} can be filled in, not {" + sorted(unknown)[0] + "}")
    return value


def _path_inside(folder: str, reserved: str = "") -> Callable[[Any], str]:
    """A relative path that stays inside `folder` (SPEC 3.1.8); its first part not `reserved`."""
    not_reserved = f", not {reserved!r}" if reserved else ""

    def check(value: Any) -> str:
        parts = _text(value).split("/")
        if any(part in ("", ".", "..") for part in parts) or parts[0] == reserved:
            raise ValueError(f"expected a path inside {folder} (not absolute; no '..', '.' or "
                             f"empty part{not_reserved})")
        return value
    return check


def _checksum(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"sha256:[0-9a-fA-F]{64}", value):
        raise ValueError('expected "sha256:" followed by 64 hex digits')
    return value.lower()


def _hook_argv(value: Any) -> Tuple[str, ...]:
    """A hook's command: an argv whose program is an absolute path to an executable file
    (no shell, no PATH lookup: what runs at the upgrade block is what validate saw)."""
    argv = _texts(value)
    if not argv or not argv[0]:
        raise ValueError('expected a command as an array, e.g. ["/usr/local/bin/backup", '
                         '"--now"]')
    program = Path(argv[0])
    if not program.is_absolute():
        raise ValueError(f"{argv[0]} is not an absolute path; give the program's full path")
    try:
        info = program.stat()
    except FileNotFoundError:
        raise ValueError(f"{argv[0]} does not exist") from None
    except OSError as e:
        raise ValueError(f"{argv[0]} cannot be examined: {e.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{argv[0]} is not a regular file")
    if not os.access(program, os.X_OK):
        raise ValueError(f"{argv[0]} is not executable by uid {os.geteuid()}; "
                         f"chmod +x {shlex.quote(argv[0])}")
    return argv


def _http_path(value: Any) -> str:
    """Core's admin HTTP path; a missing leading slash is added as the Go Visor does."""
    return value if _nonempty_text(value).startswith("/") else "/" + value


def _socket_path(value: Any) -> str:
    if len(_nonempty_text(value).encode("utf-8", "surrogateescape")) > MAX_UNIX_SOCKET_PATH:
        raise ValueError(f"a unix socket path is limited to {MAX_UNIX_SOCKET_PATH} bytes")
    return value


CONFIG_SCHEMA = Table("", "", Config, (
    Key("maxNumberOfFirstConnectionRetries", "max_first_connection_retries", _count, 175000),
    Key("maxNumberOfRestartConnectionRetries", "max_restart_connection_retries", _count, 10),
    Key("maxNumberOfRestarts", "max_restarts", _count, 3),
    Key("restartsDelaySeconds", "restarts_delay", _seconds, 5.0),
    Key("stopDelaySeconds", "stop_delay", _seconds, 0.0),
    Key("stopSignalTimeoutSeconds", "stop_signal_timeout", _seconds, 15.0),
    Key("pollIntervalSeconds", "poll_interval", _poll_interval, 2.0),
    Key("upgradePollIntervalSeconds", "upgrade_poll_interval", _poll_interval, 0.25),
    Key("rpcTimeoutSeconds", "rpc_timeout", _positive_seconds, 5.0),
    Key("restartsBackoffMaxSeconds", "restarts_backoff_max", _seconds, 60.0),
    Key("restartsResetAfterSeconds", "restarts_reset_after", _seconds, 600.0),
    Key("metricsFile", "metrics_file", _text, ""),
    Map("upgradeFolders", "upgrade_folders", _path_inside("HOME", reserved=CURRENT_LINK)),
    Table("autoInstall", "auto_install", AutoInstallConfig, (
        # Off unless the file turns it on: Go's zero value (SPEC 3.1.2); init writes true.
        Key("enabled", "enabled", _flag, False),
        OldAssetsFormat(),
        Key("repositoryOwner", "repository_owner", _github_name, "vegaprotocol"),
        Key("repository", "repository", _github_name, "vega"),
        Key("githubApiUrl", "github_api_url", _api_url, "https://api.github.com"),
        Key("prefetch", "prefetch", _flag, True),
        Key("prefetchRetryDelaySeconds", "prefetch_retry_delay", _positive_seconds, 30.0),
        Key("httpTimeoutSeconds", "http_timeout", _positive_seconds, 60.0),
        Key("requireChecksum", "require_checksum", _flag, False),
        Map("checksums", "checksums", _checksum),
        Table("asset", "asset", AssetConfig, (
            Key("name", "name", _asset_template, "vega-{os}-{arch}.zip"),
            Key("binaryName", "binary_name", _path_inside("the release"), "vega"),
        )),
    )),
    Table("logging", "logging", LoggingConfig, (
        Key("format", "format", _choice(*LOG_FORMATS), "text"),
        Key("level", "level", _choice(*LOG_LEVELS), "info"),
    )),
    Table("hooks", "hooks", HooksConfig, (
        Key("preUpgrade", "pre_upgrade", _hook_argv, ()),
        Key("postUpgrade", "post_upgrade", _hook_argv, ()),
        Key("timeoutSeconds", "timeout", _positive_seconds, HOOK_TIMEOUT_SECONDS),
    )),
))
BINARY_FIELDS = (
    Key("path", "path", _nonempty_text),
    Key("args", "args", _texts, ()),
)
RUN_CONFIG_SCHEMA = Table("", "", RunConfig, (
    Table("vega", "", None, (
        Table("binary", "vega", Binary, BINARY_FIELDS, REQUIRED),
        Table("rpc", "rpc", RpcConfig, (
            Key("socketPath", "socket_path", _socket_path),
            Key("httpPath", "http_path", _http_path),
        ), "it names core's admin socket"),
    ), "it says how to run core"),
    Key("name", "name", _nonempty_text),
    # present means run a data node too (SPEC 1.3)
    Table("data_node", "", None, (
        Table("binary", "data_node", Binary, BINARY_FIELDS, REQUIRED),
    ), ABSENT),
))


def is_plain_name(name: str) -> bool:
    """True for a name that stays inside its folder: no separators, not . or .."""
    return bool(name) and "/" not in name and "\0" not in name and name not in (".", "..")


def _show(value: Any, limit: int = 80) -> str:
    """A value as an error message quotes it: JSON-like, cut short when long."""
    shown = (json.dumps(value, default=str) if isinstance(value, (str, bool, list, dict))
             else repr(value))
    return shown if len(shown) <= limit else shown[:limit - 3] + "..."


def _key(name: str) -> str:
    """A key as a message names it: quoted as in TOML unless it is a bare key."""
    return name if name and _BARE_KEY_CHARS.issuperset(name) else json.dumps(name)


def _lookup(doc: Any, *keys: str) -> Any:
    """doc[k1][k2]..., matching each key exactly or else case-insensitively (as Go does)."""
    for key in keys:
        if not isinstance(doc, dict):
            return None
        if key not in doc:
            key = next((k for k in doc if k.lower() == key.lower()), key)
        doc = doc.get(key)
    return doc


def _sub_table(raw: dict, name: str, where: str, report: Report) -> Optional[dict]:
    """raw[name] as a table ({} when absent); None, with a problem, when it is not one."""
    value = raw.get(name, {})
    if isinstance(value, dict):
        return value
    report.errors.append(f"{report.path}: {where}{name} must be a table, got {_show(value)}")
    return None


def _read_fields(raw: dict, fields: Sequence[Any], where: str, report: Report) -> Dict[str, Any]:
    """The values of `fields` found in `raw`; each bad key goes in the report, and each key
    nobody reads as a warning naming the nearest valid key."""
    known = [field.name for field in fields]
    for name in raw:
        if name not in known:
            import difflib  # only when a key is unknown: start-up does not pay for it
            nearest = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            nearest += [k for k in known if k.lower() == name.lower()]
            hint = f" (did you mean {where}{nearest[-1]}?)" if nearest else ""
            report.warnings.append(f"{report.path}: unknown key {where}{_key(name)} is "
                                   f"ignored{hint}")
    values: Dict[str, Any] = {}
    for field in fields:
        field.read(raw, values, where, report)
    return values


def read_schema(doc: dict, schema: Table, path: Path) -> Tuple[Any, Report]:
    """One walk of a parsed file: its record (None in each part that could not be read)
    and the report."""
    report = Report(path, [], [])
    values = _read_fields(doc, schema.fields, "", report)
    return schema.record(**{name: values.get(name) for name in schema.record._fields}), report


def _parse(doc: dict, schema: Table, path: Path) -> Tuple[Any, List[str]]:
    record, report = read_schema(doc, schema, path)
    if report.errors:
        raise ConfigError(report.errors[0])
    return record, report.warnings


def parse_config(doc: dict, path: Path) -> Tuple[Config, List[str]]:
    """A parsed config.toml as a Config, plus warnings; ConfigError for the first problem."""
    return _parse(doc, CONFIG_SCHEMA, path)


def parse_run_config(doc: dict, path: Path) -> Tuple[RunConfig, List[str]]:
    """A parsed run-config.toml as a RunConfig, plus warnings; ConfigError for the first problem."""
    return _parse(doc, RUN_CONFIG_SCHEMA, path)


def changed_keys(old: Config, new: Config, fields: Sequence[Any] = CONFIG_SCHEMA.fields,
                 where: str = "") -> List[str]:
    """The config.toml names of the keys whose values differ, e.g. "autoInstall.enabled"."""
    changed = []
    for field in fields:
        if isinstance(field, Table):
            changed += changed_keys(getattr(old, field.attr), getattr(new, field.attr),
                                    field.fields, f"{where}{field.name}.")
        elif field.attr and getattr(old, field.attr) != getattr(new, field.attr):
            changed.append(where + field.name)
    return changed


def read_toml_file(path: Path) -> dict:
    """Read and parse a TOML file; every failure is a ConfigError naming the file."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read: {e.strerror}") from None
    try:
        return read_toml_text(text)
    except TomlError as e:
        raise ConfigError(f"{path}: line {e.line}, column {e.col}: {e.msg}") from None


def not_a_home(home: Path) -> str:
    """What to do about a --home that is no folder."""
    if home.is_file():  # named the file, as other tools' --config does
        return (f"{home} is a file, not a home; --home names the folder that holds "
                f"{CONFIG_FILE} (here {home.parent})")
    return f"{home} is not a folder; create a home with `vegavisor init --home {home}`"


def read_config_toml(home: Path) -> dict:
    """HOME/config.toml parsed; a ConfigError saying how to make one when it is missing."""
    path = home / CONFIG_FILE
    if not home.is_dir():
        raise ConfigError(not_a_home(home))
    if not path.exists():
        raise ConfigError(f"{path} does not exist; create it with `vegavisor init --home {home}`")
    return read_toml_file(path)


def load_config(home: Path) -> Tuple[Config, List[str]]:
    return parse_config(read_config_toml(home), home / CONFIG_FILE)


def load_run_config(folder: Path) -> Tuple[RunConfig, List[str]]:
    return parse_run_config(read_toml_file(folder / RUN_CONFIG_FILE), folder / RUN_CONFIG_FILE)


# --- decisions (pure) ---

def url_problem(url: str) -> Optional[str]:
    """Why vegavisor will not fetch from this URL, or None when it may."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (raises for a port that is not one)
    except ValueError as e:
        return f"{redact_url(url)} is not a valid URL ({e})"
    if parts.scheme not in ("http", "https"):
        return f"{url!r} is not an https:// URL"
    if not parts.hostname:
        return f"{url!r} has no host"
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        return f"{url!r} is plain http:// to a host that is not loopback; use https://"
    return None


def is_loopback_host(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def describe_exit_status(returncode: int) -> str:
    """Popen's returncode in words: "exited with status 1", "terminated by SIGSEGV"."""
    if returncode >= 0:
        return f"exited with status {returncode}"
    try:
        return f"terminated by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"terminated by signal {-returncode}"


def restart_delay(attempt: int, base: float, cap: float) -> float:
    """Seconds before crash restart number `attempt` (1-based): base, doubling, capped."""
    doublings = min(max(attempt - 1, 0), MAX_BACKOFF_DOUBLINGS)
    return min(base * 2 ** doublings, max(base, cap))


def count_restart(restarts: int, uptime: float, reset_after: float) -> int:
    """The restart count after a crash: a child that stayed up long enough starts afresh."""
    return 1 if uptime >= reset_after else restarts + 1


def folder_for_tag(home: Path, tag: str, upgrade_folders: Dict[str, str]) -> Path:
    if tag in upgrade_folders:  # checked when config.toml was read: inside HOME
        return home / upgrade_folders[tag]
    if not is_plain_name(tag) or tag == CURRENT_LINK:
        raise VisorError(f"release tag {tag!r} cannot name a folder inside {home}")
    return home / tag


def with_snapshot_flag(args: Sequence[str], height: int) -> Tuple[str, ...]:
    """Core's args to resume from the snapshot at `height`, unless they already say one."""
    if any(SNAPSHOT_FLAG in arg for arg in args):
        return tuple(args)
    return tuple(args) + (SNAPSHOT_FLAG, str(height))


def data_node_args(args: Sequence[str]) -> Tuple[str, ...]:
    """A data node run by the vega binary starts with `datanode start` (SPEC 1.6 step 3)."""
    if args and args[0] != "datanode":
        return ("datanode", "start") + tuple(args[1:])
    return tuple(args)


def flag_value(args: Sequence[str], flag: str) -> Optional[str]:
    """The value of `--flag value` or `--flag=value` in args, the last one winning."""
    found = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            found = args[i + 1]
        elif arg.startswith(flag + "="):
            found = arg[len(flag) + 1:]
    return found


def parse_upgrade_status(body: bytes, request_id: int) -> UpgradeStatus:
    """Core's answer to UpgradeStatus (SPEC 1.4) as a record; AdminError for anything else."""
    if not body.strip():
        raise BadAnswer("empty answer (core answers so to a request without an id)")
    if len(body) > MAX_ADMIN_RESPONSE_BYTES:
        raise BadAnswer(f"answer is larger than {MAX_ADMIN_RESPONSE_BYTES} bytes")
    try:
        answer = json.loads(body)
    except RecursionError:
        raise BadAnswer(f"answer is nested too deeply to be an UpgradeStatus: "
                        f"{body[:40]!r}") from None
    except ValueError:
        raise BadAnswer(f"answer is not JSON: {body[:80]!r}") from None
    if not isinstance(answer, dict):
        raise BadAnswer(f"answer is not a JSON-RPC object: {body[:80]!r}")
    error = answer.get("error")
    if error is not None:
        text = printable(error) if isinstance(error, str) else json_excerpt(error)
        raise BadAnswer(f"core answered with an error: {text}")
    if type(answer.get("id")) is not int or answer["id"] != request_id:
        raise BadAnswer(f"answer is for request id {json_excerpt(answer.get('id'))}, "
                        f"not {request_id}")
    return _read_status(answer.get("result"))


def _read_status(result: Any) -> UpgradeStatus:
    if not isinstance(result, dict) or not isinstance(result.get("ReadyToUpgrade"), bool):
        raise BadAnswer(f"result is not an UpgradeStatus: {json_excerpt(result)}")
    ready, info = result["ReadyToUpgrade"], result.get("AcceptedReleaseInfo")
    if info is None:  # before the first block: "not known yet", never "cancelled"
        info = {"VegaReleaseTag": "", "UpgradeBlockHeight": 0}
    tag, height = (info.get("VegaReleaseTag"), info.get("UpgradeBlockHeight")) \
        if isinstance(info, dict) else (None, None)
    if not isinstance(tag, str) or type(height) is not int \
            or not 0 <= height <= MAX_BLOCK_HEIGHT:
        raise BadAnswer(f"AcceptedReleaseInfo is not a release: {json_excerpt(info)}")
    problem = release_tag_problem(tag)
    if problem:
        raise BadAnswer(f"AcceptedReleaseInfo names tag {json_excerpt(tag)}, which {problem}")
    if ready and not tag:
        raise BadAnswer("ReadyToUpgrade is true but no release is accepted: "
                        f"{json_excerpt(result)}")
    return UpgradeStatus(ready, tag, height if tag else 0)


def release_tag_problem(tag: str) -> Optional[str]:
    """Why an accepted tag cannot be a release to install, or None ("" is "not known yet").

    The tag names a folder in HOME and a GitHub release, so it is a plain name;
    vegavisor's own files in HOME start with a dot, a tag never does.
    """
    if len(tag) > MAX_TAG_LENGTH:
        return f"is longer than {MAX_TAG_LENGTH} characters"
    if not all(" " < c <= "~" or (c > "\x9f" and c.isprintable()) for c in tag):
        return "holds a space, a control character or invalid text"
    if "/" in tag or "\\" in tag or ".." in tag:
        return 'holds "/", "\\" or ".."'
    if tag.startswith("."):
        return "starts with a dot"
    return None


def json_excerpt(value: Any, limit: int = 200) -> str:
    """A JSON value from outside as one line of ASCII for a message, cut at `limit`."""
    try:
        text = json.dumps(value)  # ensure_ascii: control characters and surrogates escaped
    except (ValueError, RecursionError):
        text = "(too deeply nested to show)"
    return text if len(text) <= limit else text[:limit] + "..."


def printable(text: str, limit: int = 200) -> str:
    """Text from outside as one line of ASCII for a message: the rest escaped, cut at `limit`."""
    shown = "".join(c if " " <= c <= "~" else ascii(c)[1:-1] for c in text[:limit])
    return shown + ("..." if len(text) > limit else "")


def version_in_output(output: str) -> Optional[str]:
    """The "version" of the first JSON line of `version --output json` that has one."""
    for line in output.splitlines():
        try:
            version = json.loads(line).get("version")
        except (ValueError, AttributeError):
            continue
        if isinstance(version, str):
            return version
    return None


def parse_latest_segment(output: str) -> Optional[int]:
    """to_height of the data node's newest history segment, None when it has none."""
    if NO_HISTORY_SEGMENTS in output:
        return None
    try:
        height = json.loads(output)["LatestSegment"]["to_height"]
    except (ValueError, KeyError, TypeError):
        raise VisorError(f"unexpected latest-history-segment output: {output[:200]!r}") from None
    if isinstance(height, bool) or not isinstance(height, int) or height < 0:
        raise VisorError(f"latest-history-segment to_height is not a height: {height!r}")
    return height


def format_fact(value: Any) -> str:
    """A log value that stays one greppable token: quoted when it has spaces or quotes."""
    text = value if isinstance(value, str) else json.dumps(value)
    if text == "" or re.search(r'[\s"=\\]', text):
        return json.dumps(text)
    return text


def format_log_line(fmt: str, ts: float, level: str, msg: str, facts: Dict[str, Any]) -> str:
    """Text (`ts LEVEL msg k=v`), or JSON with Vega's own keys T, L, N, M (SPEC 3.1.12)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"
    if fmt == "json":
        record = {"T": stamp, "L": level, "N": "vegavisor", "M": msg}
        record.update((k, v) for k, v in facts.items() if k not in record)
        return json.dumps(record, default=str)
    text = " ".join(f"{k}={format_fact(v)}" for k, v in facts.items())
    return f"{stamp} {level.upper():5} {msg}" + (" " + text if text else "")


# --- logging ---

class Log:
    """Writes one line per event to a stream: text (`ts LEVEL msg k=v`) or JSON."""

    def __init__(
        self, stream: TextIO, fmt: str = "text", level: str = "info",
        clock: Optional[Callable[[], float]] = None,
    ) -> None:
        self.stream, self.clock = stream, clock or time.time  # looked up now, not at import
        self.lock = threading.Lock()  # the install thread logs too: lines must not mix
        self.configure(LoggingConfig(fmt, level))

    def configure(self, settings: LoggingConfig) -> None:
        self.fmt, self.min_rank = settings.format, LOG_LEVELS.index(settings.level)

    def emit(self, level: str, msg: str, **facts: Any) -> None:
        if LOG_LEVELS.index(level) < self.min_rank:
            return
        line = format_log_line(self.fmt, self.clock(), level, msg, facts) + "\n"
        line = line.encode("utf-8", "backslashreplace").decode("utf-8")  # lone surrogates
        with self.lock:
            try:
                self.stream.write(line)
                self.stream.flush()
            except (OSError, ValueError):
                pass  # a closed stdout must not stop `run` (SPEC 3.2.2); systemd has a copy

    def debug(self, msg: str, **facts: Any) -> None:
        self.emit("debug", msg, **facts)

    def info(self, msg: str, **facts: Any) -> None:
        self.emit("info", msg, **facts)

    def warn(self, msg: str, **facts: Any) -> None:
        self.emit("warn", msg, **facts)

    def error(self, msg: str, **facts: Any) -> None:
        self.emit("error", msg, **facts)


# --- admin socket ---

# What Go's url.URL.EscapedPath keeps as it is in a path besides letters, digits and
# "-_.~" (its shouldEscape in encodePath mode); everything else is percent-encoded.
GO_PATH_SAFE = "/$&+,:;=@"
# One recv() reads a whole UpgradeStatus answer (~300 bytes).
ADMIN_READ_BYTES = 16 * 1024
# Answer heads AdminClient remembers (they differ in Content-Length, by the id's digits).
ADMIN_HEADS_KEPT = 8
# The request's body; only the id changes from call to call.
UPGRADE_STATUS_BODY = (b'{"method":"%s","params":[null],"id":%%d}'
                       % UPGRADE_STATUS_METHOD.encode())
HTTP_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: [^\r\n]*)?\r\n")
# Redirects and "404 page not found" mean the path, not core, is wrong.
HTTP_PATH_PROBLEMS = (301, 302, 307, 308, 404)


def admin_request_path(http_path: str) -> str:
    """httpPath as Go's client sends it: "/" put in front when missing, then escaped like
    url.URL.EscapedPath (space -> %20, "%" -> %25, "?" and non-ASCII encoded, "/" kept)."""
    path = http_path if http_path.startswith("/") else "/" + http_path
    try:
        return urllib.parse.quote(path, safe=GO_PATH_SAFE)
    except UnicodeEncodeError:
        raise AdminError(f"httpPath {json_excerpt(http_path)} is not valid text (it holds a "
                         f"lone surrogate); set it to core's [Admin.Server] HTTPPath") from None


def connect_unix(socket_path: str, timeout: float) -> socket.socket:
    """A stream socket connected to core's admin socket; OSError when it cannot be."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        sock.connect(socket_path)
    except BaseException:
        sock.close()
        raise
    return sock


class AdminClient:
    """protocolupgrade.UpgradeStatus calls over one HTTP/1.1 connection to core's admin
    socket, kept alive between polls as core's server does (SPEC 1.4). A kept connection
    that the server has closed meanwhile is replaced once within the same call. Each call
    has one deadline, `timeout` seconds, for connect, write and the whole answer (SPEC
    3.3.5); every failure is an AdminError and closes the connection.

        client = AdminClient(run_config.rpc, config.rpc_timeout)
        status = client.upgrade_status(request_id)  # AdminError: a failed poll
        client.close()  # when core stops, or the run-config changes

    Polls come every 0.25 s for days: the socket is non-blocking and each wait one poll(2)
    up to the deadline, and an answer like the last is not parsed again.
    """

    def __init__(self, rpc: RpcConfig, timeout: float,
                 connect: Callable[[str, float], socket.socket] = connect_unix,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rpc, self.timeout, self.connect, self.clock = rpc, timeout, connect, clock
        self.sock: Optional[socket.socket] = None
        self.readable: Any = None  # a select.poll() watching self.sock for input
        self.head: Optional[bytes] = None  # the request line and headers, made once
        # Answers' heads but for Date -> (status, Content-Length, reusable), see parse();
        # the last good body but for its id, and its status, see read().
        self.heads: Dict[bytes, Tuple[int, int, bool]] = {}
        self.last_answer: Optional[Tuple[bytes, UpgradeStatus]] = None

    def upgrade_status(self, request_id: int) -> UpgradeStatus:
        deadline = self.clock() + self.timeout
        request = self.request(request_id)
        try:
            try:
                status, body, keep = self.exchange(request, deadline)
            except _ClosedWhileIdle:
                self.close()
                status, body, keep = self.exchange(request, deadline)
            answer = self.read(status, body, request_id)
        except BaseException:
            self.close()  # a failed poll starts the next one afresh
            raise
        if not keep:
            self.close()
        return answer

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = self.readable = None

    def request(self, request_id: int) -> bytes:
        if self.head is None:
            self.head = (f"POST {admin_request_path(self.rpc.http_path)} HTTP/1.1\r\n"
                         f"Host: localhost\r\nContent-Type: application/json\r\n").encode()
        body = UPGRADE_STATUS_BODY % request_id
        return b"%sContent-Length: %d\r\n\r\n%s" % (self.head, len(body), body)

    def parse(self, data: bytes, eof: bool) -> Optional[Tuple[int, bytes, bool]]:
        """parse_http_answer(), skipped for a head parsed before but for its Date line (core
        changes it every second; nothing here reads it) and a body as long as it says."""
        head_end = data.find(b"\r\n\r\n")
        key = b"" if eof or head_end < 0 else _without_date(data[:head_end])
        known = self.heads.get(key)
        if known is not None:
            status, length, keep = known
            if head_end + 4 + length == len(data) <= MAX_ADMIN_RESPONSE_BYTES:
                return status, data[head_end + 4:], keep
        answer = parse_http_answer(data, eof)
        if key and answer is not None and head_end + 4 + len(answer[1]) == len(data):
            if len(self.heads) >= ADMIN_HEADS_KEPT:
                self.heads.clear()
            self.heads[key] = (answer[0], len(answer[1]), answer[2])
        return answer

    def read(self, status: int, body: bytes, request_id: int) -> UpgradeStatus:
        """read_admin_reply(), skipped when the body is the last good one but for its end,
        `"id":<this call's id>}` and a newline as Go writes it: then only the id differs."""
        tail = b'"id":%d}\n' % request_id
        if status == 200 and body.endswith(tail):
            start, last = body[:-len(tail)], self.last_answer
            if last is not None and start == last[0]:
                return last[1]
            answer = read_admin_reply(status, body, request_id, self.rpc.http_path)
            self.last_answer = (start, answer)
            return answer
        return read_admin_reply(status, body, request_id, self.rpc.http_path)

    def exchange(self, request: bytes, deadline: float) -> Tuple[int, bytes, bool]:
        """Send, then read the answer: (HTTP status, body, connection reusable)."""
        reused = self.sock is not None
        if self.readable is not None and self.readable.poll(0):
            raise _ClosedWhileIdle()  # EOF (or stray bytes) waiting: the server closed it
        received = b""
        try:
            if self.sock is None:
                self.open(deadline)
            self.send(request, deadline)
            while True:
                data = self.receive(deadline)
                if not data and not received:
                    if reused:
                        raise _ClosedWhileIdle()  # it closed as we sent: try a new one
                    raise AdminError("the connection was closed without an answer")
                received += data
                answer = self.parse(received, eof=not data)
                if answer is not None:
                    return answer
        except socket.timeout:
            raise AdminError(self.late(received if self.sock else None)) from None
        except (BrokenPipeError, ConnectionResetError) as e:
            if reused and not received:
                raise _ClosedWhileIdle() from None
            if not received:
                raise AdminError(f"the connection was closed without an answer "
                                 f"({e.strerror})") from None
            raise AdminError(f"the connection was closed in the middle of the answer "
                             f"({len(received)} bytes received)") from None
        except OSError as e:
            raise AdminError(_describe_socket_error(e)) from None
        except ValueError:  # a path that is no file name: a lone surrogate
            raise AdminError(f"socketPath {json_excerpt(self.rpc.socket_path)} is not a "
                             f"valid path") from None

    def open(self, deadline: float) -> None:
        sock = self.sock = self.connect(self.rpc.socket_path, self.time_left(deadline))
        sock.setblocking(False)  # from here on, every wait is a poll up to the deadline
        self.readable = select.poll()
        self.readable.register(sock, select.POLLIN)

    def send(self, request: bytes, deadline: float) -> None:
        """The whole request; at once, unless the socket's buffer is full."""
        while request:
            try:
                request = request[self.sock.send(request):]
            except BlockingIOError:
                select.select([], [self.sock], [], self.time_left(deadline))

    def receive(self, deadline: float) -> bytes:
        """The next bytes of the answer (b"" at EOF), waiting for them up to the deadline."""
        while True:
            if self.readable.poll(self.time_left(deadline) * 1000):
                try:
                    return self.sock.recv(ADMIN_READ_BYTES)
                except BlockingIOError:
                    pass  # readable, then not: wait again

    def time_left(self, deadline: float) -> float:
        """Seconds to the call's deadline; socket.timeout once it has passed."""
        left = deadline - self.clock()
        if left <= 0:
            raise socket.timeout()
        return left

    def late(self, received: Optional[bytes]) -> str:
        """The deadline passed: connecting (received None), waiting, or mid-answer."""
        if received is None:
            return f"no connection within {self.timeout:g}s"
        if received:
            return (f"no complete answer within {self.timeout:g}s "
                    f"({len(received)} bytes received)")
        return f"no answer within {self.timeout:g}s"


class _ClosedWhileIdle(Exception):
    """The kept-alive connection was closed by the server before this request was read."""


def _without_date(head: bytes) -> bytes:
    """An HTTP head without its first Date line (always a well-formed header line)."""
    start = head.find(b"\r\nDate:")
    if start < 0:
        return head
    end = head.find(b"\r\n", start + 2)
    return head[:start] + head[end:] if end >= 0 else head[:start]


def call_upgrade_status(rpc: RpcConfig, timeout: float, request_id: int) -> UpgradeStatus:
    """One protocolupgrade.UpgradeStatus call on a new connection; AdminError says why it
    failed. (A caller that polls keeps an AdminClient instead.)"""
    client = AdminClient(rpc, timeout)
    try:
        return client.upgrade_status(request_id)
    finally:
        client.close()


def parse_http_answer(data: bytes, eof: bool) -> Optional[Tuple[int, bytes, bool]]:
    """The HTTP/1.x answer in `data` (`eof`: the server closed the connection after it):
    (status, body, connection reusable), None while more bytes are due, else AdminError.

    Core's server (Go's net/http) gives every answer this small a Content-Length: it
    only chunks a body of 2 KiB or more.
    """
    if len(data) > MAX_ADMIN_RESPONSE_BYTES:
        raise BadAnswer(f"answer is larger than {MAX_ADMIN_RESPONSE_BYTES} bytes")
    status_line = HTTP_STATUS_LINE.match(data)
    if status_line is None:
        if data[:7] == b"HTTP/1."[:len(data)] and b"\n" not in data and not eof:
            return None  # the status line is still arriving
        raise BadAnswer(f"answer is not HTTP: {data[:60]!r}")
    status = int(status_line.group(2))
    head_end = data.find(b"\r\n\r\n", status_line.end() - 2)
    headers: Dict[bytes, bytes] = {}
    for line in data[status_line.end():head_end + 2].split(b"\r\n")[:-1]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise BadAnswer(f"answer has a malformed header line: {line[:60]!r}")
        headers[name.lower()] = value.strip().lower()
    length = headers.get(b"content-length", b"0" if status in (204, 304) else b"")
    if head_end >= 0 and not length.isdigit():
        raise BadAnswer(f"answer has no valid Content-Length: {length[:40]!r}")
    if head_end >= 0 and int(length) > MAX_ADMIN_RESPONSE_BYTES:
        raise BadAnswer(f"answer is larger than {MAX_ADMIN_RESPONSE_BYTES} bytes "
                        f"(Content-Length {int(length)})")
    end = head_end + 4 + int(length or 0)
    if head_end < 0 or len(data) < end:
        if eof:
            raise AdminError(f"the connection was closed in the middle of the answer "
                             f"({len(data)} bytes received)")
        return None
    keep = (status_line.group(1) == b"1" and end == len(data) and not eof
            and b"close" not in headers.get(b"connection", b""))
    return status, data[head_end + 4:end], keep


def read_admin_reply(status: int, body: bytes, request_id: int, http_path: str) -> UpgradeStatus:
    """An HTTP answer of core's admin server as an UpgradeStatus; AdminError otherwise."""
    if status == 200:
        return parse_upgrade_status(body, request_id)
    text = body.decode("utf-8", "replace").strip().split("\n", 1)[0]
    hint = (f" (is httpPath {json_excerpt(http_path)} core's [Admin.Server] HTTPPath?)"
            if status in HTTP_PATH_PROBLEMS else "")
    raise BadAnswer(f"HTTP {status}: {printable(text)}{hint}")


def _describe_socket_error(e: Exception) -> str:
    if isinstance(e, FileNotFoundError):
        return "the socket file does not exist (core still starting?)"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


# --- binaries ---

def resolve_binary(folder: Path, binary: Binary) -> Path:
    path = Path(binary.path)
    return path if path.is_absolute() else folder / path


def make_runnable(path: Path) -> None:
    """A binary must be a regular file; exec bits are added where read bits are."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise VisorError(f"binary {path} does not exist") from None
    if not stat.S_ISREG(mode):
        raise VisorError(f"binary {path} is not a regular file")
    wanted = mode | ((mode & 0o444) >> 2)
    if wanted == mode:
        return
    try:
        os.chmod(path, stat.S_IMODE(wanted))
    except OSError as e:
        raise VisorError(f"binary {path} is not executable and cannot be made so "
                         f"({e.strerror}); run `chmod +x {path}` as its owner") from None


def query_binary(argv: Sequence[str], timeout: float = BINARY_QUERY_TIMEOUT_SECONDS) -> str:
    """Run a short query command; its stdout, or VisorError naming the command."""
    shown = shlex.join(argv)
    try:
        done = subprocess.run(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise VisorError(f"`{shown}` did not finish within {timeout:g}s") from None
    except OSError as e:
        raise VisorError(f"`{shown}` cannot be run: {e.strerror}") from None
    output = done.stdout.decode("utf-8", "replace") + done.stderr.decode("utf-8", "replace")
    if done.returncode != 0 and NO_HISTORY_SEGMENTS not in output:
        last = output.strip().splitlines()[-1:] or [""]
        raise VisorError(f"`{shown}` {describe_exit_status(done.returncode)}: {last[0][:200]}")
    return output


def binary_version(path: Path) -> str:
    """What `<binary> version --output json` says its version is (SPEC 1.5)."""
    make_runnable(path)
    return query_version(path, BINARY_QUERY_TIMEOUT_SECONDS)


def query_version(path: Path, timeout: float) -> str:
    """What `<binary> version --output json` says, without make_runnable's chmod."""
    output = query_binary([str(path), "version", "--output", "json"], timeout)
    version = version_in_output(output)
    if version is None:
        raise VisorError(f"`{path} version --output json` printed no version: {output[:200]!r}")
    return version


def latest_history_segment(folder: Path, data_node: Binary,
                           query: Callable[[Sequence[str]], str]) -> Optional[int]:
    """The data node's newest history segment height (SPEC 1.5), None when it has none.
    `datanode` is added only when the data node's own args start with it: a standalone
    data-node binary has no such subcommand (SPEC 1.7)."""
    path = resolve_binary(folder, data_node)
    make_runnable(path)
    command = ["datanode"] if data_node.args[:1] == ("datanode",) else []
    argv = [str(path)] + command + ["network-history", "latest-history-segment"]
    home = flag_value(data_node.args, "--home")
    argv += ["--home", home] if home else []
    return parse_latest_segment(query(argv + ["--output", "json"]))


# --- home folder ---

def fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def switch_current(home: Path, folder: Path, log: Optional[Log] = None) -> None:
    """Point HOME/current at folder atomically: a new link renamed over the old one. A
    `current` that is a real folder is moved aside first, never deleted (SPEC 3.1.6)."""
    link = home / CURRENT_LINK
    if link.is_dir() and not link.is_symlink():
        aside = home / f".current-replaced-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        os.rename(link, aside)
        if log is not None:
            log.warn("current was a real folder; moved aside", folder=str(aside))
    temporary = home / f".{CURRENT_LINK}.{os.getpid()}.tmp"
    if temporary.is_symlink():
        temporary.unlink()
    os.symlink(folder.name if folder.parent == home else str(folder), temporary)
    os.replace(temporary, link)
    fsync_folder(home)


class CurrentLink(NamedTuple):
    """What HOME/current is: the one reader of it, for `run`, `status` and `validate`."""

    link: Path
    kind: str  # link, folder (a real folder), missing, dangling, incomplete (no run-config)
    folder: Optional[Path]  # the folder it names, resolved (None when missing)
    problem: str  # what is wrong, saying what `run` does about it; "" when usable

    @property
    def usable(self) -> bool:
        return self.kind in ("link", "folder")


def read_current(home: Path) -> CurrentLink:
    link = home / CURRENT_LINK
    genesis = home / GENESIS_FOLDER / RUN_CONFIG_FILE
    fallback = ("`vegavisor run` points it at genesis" if genesis.is_file() else
                f"{genesis} does not exist either, so `vegavisor run` cannot start")
    if not link.is_symlink() and not link.exists():
        return CurrentLink(link, "missing", None, f"{link} does not exist; {fallback}")
    if not link.is_symlink():
        if (link / RUN_CONFIG_FILE).is_file():
            return CurrentLink(link, "folder", link, "")
        return CurrentLink(link, "incomplete", link,
                           f"{link} is a folder without {RUN_CONFIG_FILE}; {fallback}")
    target = os.readlink(link)
    folder = Path(os.path.realpath(link))
    if not link.exists():
        return CurrentLink(link, "dangling", folder,
                           f"{link} is dangling: it points at {target}, which does not exist; "
                           f"{fallback} (ln -sfn FOLDER {link} to run another version)")
    if not (link / RUN_CONFIG_FILE).is_file():
        return CurrentLink(link, "incomplete", folder,
                           f"{link} points at {target}, which has no {RUN_CONFIG_FILE}; "
                           f"{fallback}")
    return CurrentLink(link, "link", folder, "")


def incomplete_folder(folder: Path, tag: str) -> VisorError:
    return VisorError(f"{folder} exists but has no {RUN_CONFIG_FILE}; finish preparing it for "
                      f"{tag} or remove it so it can be installed")


def lock_home(home: Path) -> int:
    """Take HOME's run lock (held until the process exits); VisorError names the holder."""
    path = home / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # `status` tests the lock with a brief shared flock: look again once.
            time.sleep(LOCK_RETRY_SECONDS)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise VisorError(f"another vegavisor (pid {holder}) is running on {home}; "
                             f"only one may supervise a home") from None
        raise
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def write_file_atomically(path: Path, text: str, mode: int = 0o644,
                          durable: bool = True) -> None:
    """Readers see the old file or the new one, never half of one; durable: even after
    a power loss (fsync of the file and its folder)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        if temporary.exists():
            temporary.unlink()
        raise
    if durable:
        fsync_folder(path.parent)


# --- processes ---

class SignalInbox:
    """Signal handlers only record here and wake the loop; the loop decides what to do."""

    def __init__(self) -> None:
        self.stop_signal = ""
        self.reload_requested = False
        # SIGCHLDs seen since install() (None before it and after restore()): a child of
        # ours can only have exited when this has changed since its last look.
        self.child_signals: Optional[int] = None
        self._read, self._write = os.pipe()
        for fd in (self._read, self._write):
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)
        self._woken = select.poll()
        self._woken.register(self._read, select.POLLIN)
        self._previous: Dict[int, Any] = {}
        self._previous_wakeup = -1

    def install(self) -> None:
        self._previous_wakeup = signal.set_wakeup_fd(self._write)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._record_stop)
        self._previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._record_reload)
        # A Python handler is needed for SIGCHLD to reach the wakeup fd at all.
        self.child_signals = 0
        self._previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, self._record_child)
        # A closed stdout or stderr must not end `run` (SPEC 3.2.2): writes fail, not die.
        self._previous[signal.SIGPIPE] = signal.signal(signal.SIGPIPE, signal.SIG_IGN)

    def restore(self) -> None:
        self.child_signals = None
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(self._previous_wakeup)
        os.close(self._read)
        os.close(self._write)

    def wait(self, seconds: float) -> None:
        """Sleep up to `seconds`, waking early for any signal or wake(); the pipe is read
        only when it holds bytes (one system call per quiet wait)."""
        if self._woken.poll(seconds * 1000 if seconds > 0 else 0):
            try:
                while len(os.read(self._read, 512)) == 512:
                    pass
            except BlockingIOError:
                pass

    def wake(self) -> None:
        """Called from another thread (an install that finished): the wait returns."""
        try:
            os.write(self._write, b"w")
        except OSError:
            pass  # the pipe is full: the loop wakes anyway

    def _record_stop(self, signum: int, frame: Any) -> None:
        self.stop_signal = self.stop_signal or signal.Signals(signum).name

    def _record_reload(self, signum: int, frame: Any) -> None:
        self.reload_requested = True

    def _record_child(self, signum: int, frame: Any) -> None:
        self.child_signals += 1


def process_start_time(pid: int) -> Optional[int]:
    """Field 22 of /proc/<pid>/stat: with the pid, it names one process for good.
    None when the process is gone or a zombie (it runs nothing any more)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat_line.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def is_alive(pid: int, start_time: Optional[int]) -> bool:
    """The one liveness check: pid still is the process that started at start_time."""
    return start_time is not None and process_start_time(pid) == start_time


def group_alive(pgid: int) -> bool:
    """Whether a process that still runs is left in process group pgid (a child's own
    session); a zombie nobody reaps (a container's PID 1 that does not) runs nothing."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


def spawned_with(marker: str) -> List[int]:
    """Processes whose environment holds VEGAVISOR_CHILD=marker: children an earlier visor
    forked but did not live to record. Found by environment, not argv (SPEC 3.1.5)."""
    wanted = f"{CHILD_MARKER_VARIABLE}={marker}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:
            continue
        if wanted in environ and process_start_time(int(name)) is not None:
            found.append(int(name))
    return found


class Proc:
    """A child in its own session: signals go to its whole process group, and it is gone
    only when no process of that group is left (a wrapper's grandchild included)."""

    def __init__(self, pid: int, start_time: Optional[int],
                 popen: "Optional[subprocess.Popen[bytes]]" = None,
                 inbox: Optional[SignalInbox] = None) -> None:
        self.pid, self.start_time, self.popen = pid, start_time, popen
        self.leader_gone = False
        self.inbox, self.child_signals = inbox, -1  # SIGCHLDs counted at the last look

    def returncode(self) -> Optional[int]:
        """The leader's exit status once it exited (-1: not ours to know); None while it runs."""
        if self.popen is not None:
            # Our child: it can only have exited if a SIGCHLD came since the last look, so
            # the idle loop's every turn needs no wait4().
            signals = self.inbox.child_signals if self.inbox is not None else None
            if signals is not None and signals == self.child_signals:
                return self.popen.returncode
            self.child_signals = -1 if signals is None else signals
            return self.popen.poll()
        if not self.leader_gone and not is_alive(self.pid, self.start_time):
            self.leader_gone = True
        return -1 if self.leader_gone else None

    def gone(self) -> bool:
        return self.returncode() is not None and not group_alive(self.pid)

    def signal(self, sig: int) -> None:
        if self.popen is None and self.returncode() is not None:
            return  # a leftover whose leader is gone: its pid may name someone else now
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


class HookProc(Proc):
    """A hook's process, in its own session like a child (a timeout kills its whole group).
    A thread copies its output (stdout and stderr) into the log line by line, in bounded
    memory: long lines in pieces, at most HOOK_LOG_LINES lines, then only a count."""

    def __init__(self, popen: "subprocess.Popen[bytes]", name: str, log: Log) -> None:
        super().__init__(popen.pid, process_start_time(popen.pid), popen)
        self.last_line = ""
        self.reader = threading.Thread(target=self._copy_output, args=(popen.stdout, name, log),
                                       name=f"hook-{name}", daemon=True)
        self.reader.start()

    def _copy_output(self, stream: Any, name: str, log: Log) -> None:
        lines = 0
        with stream:
            for chunk in iter(lambda: stream.readline(HOOK_LINE_BYTES), b""):
                self.last_line = printable(chunk.decode("utf-8", "replace").rstrip("\r\n"),
                                           HOOK_LINE_BYTES)
                lines += 1
                if lines <= HOOK_LOG_LINES:
                    log.info("hook output", hook=name, pid=self.pid, line=self.last_line)
        if lines > HOOK_LOG_LINES:
            log.warn("hook output not all logged", hook=name, pid=self.pid, lines=lines,
                     logged=HOOK_LOG_LINES)

    def last_output(self) -> str:
        """The hook's last line of output (for the error), once its output has ended."""
        self.reader.join(HOOK_OUTPUT_DRAIN_SECONDS)
        return self.last_line


class World:
    """Everything the supervisor does to the machine and the clock, in one place.

    Tests pass a fake with the same methods: a fake clock that `wait` advances, scripted
    admin answers, processes that exit when told. This is the real one.
    """

    def __init__(self, inbox: SignalInbox, notifier: "Notifier", log: Log,
                 token: Optional[str], clock: Callable[[], float] = time.monotonic,
                 rng: Optional[random.Random] = None) -> None:
        self.inbox, self.notifier, self.log = inbox, notifier, log
        self.token, self.now, self.rng = token, clock, rng or random.Random()
        self.admin_client: Optional[Any] = None

    @property
    def stop_signal(self) -> str:
        return self.inbox.stop_signal

    def take_reload_request(self) -> bool:
        requested, self.inbox.reload_requested = self.inbox.reload_requested, False
        return requested

    def wait(self, seconds: float) -> None:
        """The one wait: up to `seconds`, early on a signal, a child's exit or an install
        that finished; the systemd watchdog is fed all along."""
        due = self.notifier.tick()
        self.inbox.wait(seconds if seconds < due else due)
        if due != math.inf:  # else there is no watchdog to feed
            self.notifier.tick()

    def notify(self, *fields: str) -> None:
        self.notifier.send(*fields)

    def spawn(self, argv: Sequence[str], env: Dict[str, str]) -> Proc:
        """Start a binary in its own session (a Ctrl-C meant for visor must not reach the
        node), with visor's working folder and output streams; OSError when it cannot."""
        popen = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, env=env,
                                 start_new_session=True, preexec_fn=die_with_parent())
        return Proc(popen.pid, process_start_time(popen.pid), popen, self.inbox)

    def run_hook(self, name: str, argv: Sequence[str], env: Dict[str, str]) -> HookProc:
        """Start a hook ([hooks] preUpgrade or postUpgrade) in its own session, its output
        copied into the log; the caller waits, times it out and kills its group."""
        popen = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                 preexec_fn=die_with_parent())
        return HookProc(popen, name, self.log)

    def leftover(self, pid: int, start_time: Optional[int]) -> Optional[Proc]:
        """A process an earlier visor started, if that very process still runs."""
        return Proc(pid, start_time) if is_alive(pid, start_time) else None

    def spawned_with(self, marker: str) -> List[Proc]:
        return [Proc(pid, process_start_time(pid)) for pid in spawned_with(marker)]

    def query(self, argv: Sequence[str]) -> str:
        return query_binary(argv)

    def poll_admin(self, rpc: RpcConfig, timeout: float) -> UpgradeStatus:
        """One UpgradeStatus call; the connection stays open for the next poll."""
        client = self.admin_client
        if client is None or client.rpc != rpc or client.timeout != timeout:
            if client is not None:
                client.close()
            client = self.admin_client = AdminClient(rpc, timeout)
        return client.upgrade_status(self.rng.getrandbits(63))

    def install(self, home: Path, config: Config, tag: str, folder: Path,
                current: RunConfig, cancel: Cancellation,
                on_progress: Optional[Callable[[Any], None]] = None) -> None:
        install_release(home, config, tag, folder, current, self.token, self.log, cancel,
                        on_progress)

    def start_job(self, name: str, work: Callable[[Cancellation], None]) -> "InstallJob":
        return InstallJob(work, self.inbox.wake, name)

    def close(self) -> None:
        if self.admin_client is not None:
            self.admin_client.close()
        self.notifier.close()


def die_with_parent() -> Optional[Callable[[], None]]:
    """A preexec_fn asking Linux to SIGTERM the child when visor dies (even by SIGKILL).

    Built before the fork, so the child only makes one libc call. Elsewhere None: a
    restarted visor still finds and stops the leftover children it recorded.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def set_parent_death_signal() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # visor died before the call: nobody will signal us
            os.kill(os.getpid(), signal.SIGKILL)
    return set_parent_death_signal


class InstallJob:
    """An install in a thread: polling goes on meanwhile and a stop can cancel it.

    It succeeded only when the install function returned: an install still running, or
    cancelled before it finished, never counts as installed (SPEC 3.3.5)."""

    def __init__(self, install: Callable[[Cancellation], None], wake: Callable[[], None],
                 tag: str) -> None:
        self.tag, self.cancellation, self.wake = tag, Cancellation(), wake
        self.error: Optional[str] = "not finished"
        self.retry_after: Optional[float] = None
        self.finished = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(install,),
                                       name=f"install-{tag}", daemon=True)
        self.thread.start()

    def _run(self, install: Callable[[Cancellation], None]) -> None:
        try:
            install(self.cancellation)
            self.error = None
        except VisorError as e:
            self.error = str(e)
            self.retry_after = getattr(e, "retry_after", None)
        except Exception as e:  # a bug must not end the thread without a word
            self.error = f"unexpected {type(e).__name__}: {e}"
        finally:
            self.finished.set()
            self.wake()

    def done(self) -> bool:
        return self.finished.is_set()

    def cancel(self) -> None:
        self.cancellation.cancel()
        self.finished.wait(INSTALL_STOP_WAIT_SECONDS)


# --- release install ---

class Cancellation:
    """A stop request for an install: a flag checked between steps, plus hooks that
    break a read blocked on a stalled connection (so a stop never waits a timeout)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._hooks: List[Callable[[], None]] = []

    def is_set(self) -> bool:
        return self._event.is_set()

    def cancel(self) -> None:
        with self._lock:
            self._event.set()
            hooks, self._hooks = self._hooks, []
        for hook in hooks:
            hook()

    def on_cancel(self, hook: Callable[[], None]) -> None:
        with self._lock:
            if not self._event.is_set():
                self._hooks.append(hook)
                return
        hook()

    def raise_if_set(self, tag: str) -> None:
        if self.is_set():
            raise InstallCancelled(f"the install of {tag} was cancelled; nothing was installed")


class NotFound(InstallError):
    """GitHub answered 404."""


class Asset(NamedTuple):
    name: str
    size: int
    url: str  # the API URL; with Accept: application/octet-stream it redirects to the bytes
    digest: Optional[str]  # "sha256:<hex>" (lower case) on assets uploaded since mid-2025


class Release(NamedTuple):
    tag: str
    id: int
    # The asset objects as GitHub sent them: only the one chosen is checked (SPEC 3.3.7).
    assets: Tuple[Any, ...]


class Progress(NamedTuple):
    """A download under way: `done` of `total` bytes at `rate` bytes/s, `eta` s to go."""

    done: int
    total: int
    rate: float
    eta: Optional[float]  # None until a byte has arrived


def download_progress(done: int, total: int, elapsed: float) -> Progress:
    rate = done / elapsed if elapsed > 0 else 0.0
    return Progress(done, total, rate, (total - done) / rate if rate > 0 else None)


def host_platform() -> Tuple[str, str]:
    """The {os} and {arch} of Vega's asset names for this host: sys.platform ("linux",
    "darwin") names the os as Vega does, the machine's name may need translating."""
    machine = os.uname().machine.lower()
    arch = {"x86_64": "amd64", "aarch64": "arm64"}
    return sys.platform, arch.get(machine, machine)


def asset_name(template: str, host: Tuple[str, str]) -> str:
    return template.replace("{os}", host[0]).replace("{arch}", host[1])


def tag_problem(tag: str) -> Optional[str]:
    """Why `tag` cannot be installed, or None: the rule core's accepted tags are held to."""
    problem = release_tag_problem(tag) if tag else "is empty"
    return f"release tag {json_excerpt(tag, 60)} {problem}" if problem else None


def asset_name_problem(name: str) -> Optional[str]:
    """Why the asset's name cannot be a file in the staging folder, or None."""
    if not is_plain_name(name) or name in ("release", STAGING_MARKER):
        return f"[autoInstall.asset] name {name!r} must be a plain file name"
    return None


def binary_name_problem(name: str) -> Optional[str]:
    """Why binaryName would leave the release folder (SPEC 3.1.8), or None: the config
    schema's check, again for an install whose Config was not read from config.toml."""
    try:
        _path_inside("the release")(name)
    except ValueError as e:
        return f"[autoInstall.asset] binaryName {name!r}: {e}"
    return None


def redact_url(url: str) -> str:
    """A URL fit for a log line or an error: no user:password@, no query string."""
    try:
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:  # a bad port or IPv6 literal: cut what could hold a secret by hand
        return re.sub(r"//[^/@]*@", "//", re.split(r"[?#]", url, maxsplit=1)[0])
    netloc = f"[{host}]" if ":" in host else host
    netloc += f":{port}" if port else ""
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def same_origin(url: str, base: str) -> bool:
    """True when url has base's scheme, host and port: only there does the token go."""
    def origin(text: str) -> Tuple[str, str, Optional[int]]:
        parts = urllib.parse.urlsplit(text)
        default = {"http": 80, "https": 443}.get(parts.scheme.lower())
        return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port or default
    try:
        return origin(url) == origin(base)
    except ValueError:
        return False


def next_page_url(link_header: Optional[str]) -> Optional[str]:
    """The rel="next" URL of GitHub's Link header, None on the last page."""
    for part in (link_header or "").split(","):
        match = re.match(r'\s*<([^>]*)>\s*;\s*rel="?next"?\s*$', part)
        if match:
            return match.group(1)
    return None


def rate_limit_reset(code: int, headers: Any, now: float) -> Tuple[bool, Optional[float]]:
    """(is this answer GitHub's rate limit, seconds until it lifts if known)."""
    remaining = headers.get("X-RateLimit-Remaining")
    reset, retry_after = headers.get("X-RateLimit-Reset", ""), headers.get("Retry-After", "")
    if code not in (403, 429) or not (remaining == "0" or retry_after.strip().isdigit()):
        return False, None
    if remaining == "0" and reset.strip().isdigit():
        return True, max(0.0, int(reset) - now)
    return True, float(retry_after) if retry_after.strip().isdigit() else None


def expected_checksum(tag: str, asset: Asset, pinned: Dict[str, str],
                      required: bool) -> Optional[str]:
    """The SHA-256 the download must have: pinned by the operator, else GitHub's digest."""
    pin = pinned.get(tag)
    if pin and asset.digest and pin != asset.digest:
        raise InstallError(f"[autoInstall.checksums] pins {tag} to {pin} but GitHub says "
                           f"{asset.name} has {asset.digest}; refusing both")
    if required and not (pin or asset.digest):
        raise InstallError(f"{asset.name} of {tag} has no known SHA-256 (no GitHub digest, "
                           f"nothing in [autoInstall.checksums]) and requireChecksum = true")
    return pin or asset.digest


def _release_from_json(data: Any, url: str) -> Release:
    if not isinstance(data, dict) or not isinstance(data.get("tag_name"), str) \
            or isinstance(data.get("id"), bool) or not isinstance(data.get("id"), int):
        raise InstallError(f"{redact_url(url)} did not answer with a release object")
    return Release(data["tag_name"], data["id"], _assets_from_json(data.get("assets", []), url))


def _assets_from_json(data: Any, url: str) -> Tuple[Any, ...]:
    if not isinstance(data, list):
        raise InstallError(f"{redact_url(url)} did not answer with a list of assets")
    return tuple(data)


def choose_asset(items: Sequence[Any], name: str, url: str) -> Optional[Asset]:
    """The asset called `name`, checked (a size, an API URL, a SHA-256 digest or none: one
    of another algorithm counts as none); None when there is none. The others are not
    looked at: an odd unrelated asset never blocks a release (SPEC 3.3.7)."""
    item = next((i for i in items if isinstance(i, dict) and i.get("name") == name), None)
    if item is None:
        return None
    size, api_url = item.get("size"), item.get("url")
    digest = item.get("digest")
    digest = digest if isinstance(digest, str) and digest[:7].lower() == "sha256:" else None
    if not isinstance(api_url, str) or isinstance(size, bool) or not isinstance(size, int) \
            or size < 0 or not (digest is None or re.fullmatch(r"(?i)sha256:[0-9a-f]{64}", digest)):
        shown = {k: item.get(k) for k in ("name", "size", "url", "digest")}
        raise InstallError(f"{redact_url(url)} describes the asset {name} without a usable "
                           f"size, url or digest: {json.dumps(shown, default=repr)[:200]}")
    return Asset(name, size, api_url, digest.lower() if digest else None)


def build_opener(track: Callable[[socket.socket], None]) -> Any:
    """A urllib opener that hands each connection's socket to `track` (so a deadline or
    a cancel can shut it) and follows only redirects vegavisor would fetch directly.

    Built on demand: urllib.request (with http.client and ssl) loads only to install.
    """
    import urllib.request

    class Tracking:
        def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
            class Connection(http_class):  # type: ignore[misc,valid-type]
                def connect(self) -> None:
                    super().connect()
                    track(self.sock)
            return super().do_open(Connection, req, **kwargs)  # type: ignore[misc]

    class CheckedRedirects(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any,
                             newurl: str) -> Any:
            problem = url_problem(newurl)
            if problem:
                raise InstallError(f"refused the redirect from {redact_url(req.full_url)}: "
                                   f"{problem}")
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    handlers = [type("HTTPHandler", (Tracking, urllib.request.HTTPHandler), {}),
                CheckedRedirects]
    if hasattr(urllib.request, "HTTPSHandler"):
        handlers.append(type("HTTPSHandler", (Tracking, urllib.request.HTTPSHandler), {}))
    return urllib.request.build_opener(*handlers)


class NetworkStep:
    """One network step (release lookup, asset listing, download) under an overall
    deadline (SPEC 3.3.5): when it passes, or the install is cancelled, the step's
    connection is shut down, so no read waits on a server that trickles or stalls."""

    def __init__(self, what: str, seconds: float, cancel: Cancellation) -> None:
        self.what, self.seconds, self.cancel = what, seconds, cancel
        self.url, self.sock, self.expired = "", None, False
        self.timer = threading.Timer(seconds, self.expire)
        self.timer.daemon = True

    def expire(self) -> None:
        self.expired = True
        self.shut()

    def track(self, sock: socket.socket) -> None:
        self.sock = sock
        if self.expired or self.cancel.is_set():
            self.shut()

    def shut(self) -> None:
        """Break a read blocked on the socket, from another thread (TLS state untouched)."""
        if self.sock is not None:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(self.sock, socket.SHUT_RDWR)

    def check(self, tag: str) -> None:
        """Say why the step ended early: cancelled, or past its deadline."""
        self.cancel.raise_if_set(tag)
        if self.expired:
            raise InstallError(f"the {self.what} did not finish within its deadline of "
                               f"{round(self.seconds, 1):g}s ({redact_url(self.url)})")


class GitHub:
    """The few GitHub REST calls a release install needs (SPEC 1.6), over urllib.

    Each call is one network step with an overall deadline, ended early by `cancel`.
    """

    def __init__(self, api_url: str, owner: str, repository: str, token: Optional[str],
                 timeout: float, cancel: Optional[Cancellation] = None, tag: str = "") -> None:
        self.api_url = api_url
        self.repo_url = f"{api_url.rstrip('/')}/repos/{owner}/{repository}"
        self.slug = f"{owner}/{repository}"
        self._token = token  # sent only to api_url's origin, never logged nor redirected
        self.timeout = timeout
        self.cancel = cancel or Cancellation()
        self.tag = tag
        self._step: Optional[NetworkStep] = None
        self._opener = build_opener(self._track)

    def _track(self, sock: socket.socket) -> None:
        if self._step is not None:
            self._step.track(sock)

    @contextlib.contextmanager
    def step(self, what: str, seconds: float) -> Iterator[NetworkStep]:
        """One network step; when its deadline or the cancellation broke it, the error
        says so instead of the socket's "connection reset" or a short body."""
        import http.client
        self.cancel.raise_if_set(self.tag)
        step = self._step = NetworkStep(what, seconds, self.cancel)
        step.timer.start()
        self.cancel.on_cancel(step.shut)
        try:
            yield step
        except (VisorError, OSError, ValueError, http.client.HTTPException):
            step.check(self.tag)
            raise
        finally:
            step.timer.cancel()
            self._step, step.sock = None, None
        step.check(self.tag)

    def open(self, url: str, accept: str) -> Any:
        """GET url; the response, or InstallError naming the URL and the cause."""
        import http.client
        import urllib.error
        import urllib.request
        problem = url_problem(url)
        if problem:
            raise InstallError(f"refused to fetch: {problem}")
        if self._step is not None:
            self._step.url = url
        request = urllib.request.Request(url, headers={
            "Accept": accept, "User-Agent": f"vegavisor/{__version__}",
            "X-GitHub-Api-Version": "2022-11-28"})
        if self._token and same_origin(url, self.api_url):
            # Unredirected: the token must not follow a redirect to the storage host.
            request.add_unredirected_header("Authorization", f"Bearer {self._token}")
        try:
            response = self._opener.open(request, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            e.close()
            raise self.http_error(url, e) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", e)
            raise InstallError(f"{redact_url(url)}: {reason}") from None
        if self._step is not None:
            self._step.url = response.geturl()  # where a redirect led: that is what stalls
        return response

    def http_error(self, url: str, error: Any) -> InstallError:
        limited, wait = rate_limit_reset(error.code, error.headers, time.time())
        if not limited:
            kind = NotFound if error.code == 404 else InstallError
            return kind(f"{redact_url(url)} answered HTTP {error.code} {error.reason}")
        reset = error.headers.get("X-RateLimit-Reset", "")
        if reset.strip().isdigit():
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(int(reset)))
        else:
            when = "an unknown time" if wait is None else f"in {wait:g}s"
        hint = "" if self._token else "; set GITHUB_TOKEN for a higher limit"
        return InstallError(f"GitHub's API rate limit is used up ({redact_url(url)} answered "
                            f"{error.code}); it resets at {when}{hint}", retry_after=wait)

    def get_json(self, url: str) -> Tuple[Any, Optional[str]]:
        """The parsed JSON answer and the URL of its next page, if any."""
        with self.open(url, "application/vnd.github+json") as response:
            body = response.read(MAX_API_RESPONSE_BYTES + 1)
            link = response.headers.get("Link")
        if len(body) > MAX_API_RESPONSE_BYTES:
            raise InstallError(f"{redact_url(url)} answered more than "
                               f"{MAX_API_RESPONSE_BYTES} bytes")
        try:
            return json.loads(body), next_page_url(link)
        except RecursionError:
            raise InstallError(f"{redact_url(url)} answered JSON nested too deeply") from None
        except ValueError:
            raise InstallError(f"{redact_url(url)} did not answer JSON: {body[:80]!r}") from None

    def get_pages(self, url: str) -> List[Any]:
        """Every item of a paginated list, following Link rel="next"."""
        items: List[Any] = []
        for _ in range(MAX_PAGES):
            page, next_url = self.get_json(url)
            if not isinstance(page, list):
                raise InstallError(f"{redact_url(url)} did not answer a list")
            items += page
            if not next_url:
                return items
            url = next_url
        raise InstallError(f"{self.slug} has more than {MAX_PAGES} pages of results")

    def find_release(self, tag: str) -> Release:
        url = f"{self.repo_url}/releases/tags/{urllib.parse.quote(tag, safe='')}"
        with self.step("release lookup", self.timeout * API_STEP_READ_TIMEOUTS):
            try:
                release = _release_from_json(self.get_json(url)[0], url)
            except NotFound:
                # Not found by tag: the full list says whether it exists (a draft, say).
                release = self.find_listed_release(tag, url)
        if release.tag != tag:
            raise InstallError(f"{redact_url(url)} answered release {release.tag[:80]!r}")
        return release

    def find_listed_release(self, tag: str, url: str) -> Release:
        releases = self.get_pages(f"{self.repo_url}/releases?per_page=100")
        for data in releases:
            if isinstance(data, dict) and data.get("tag_name") == tag:
                return _release_from_json(data, url)
        tags = [r["tag_name"] for r in releases
                if isinstance(r, dict) and isinstance(r.get("tag_name"), str)]
        newest = ", ".join(tags[:10]) + (", ..." if len(tags) > 10 else "")
        raise InstallError(f"{self.slug} has no release {tag}; its {len(tags)} releases "
                           f"are: {newest or 'none'}")

    def find_asset(self, release: Release, name: str) -> Asset:
        items, url = release.assets, f"{self.repo_url}/releases/tags/{release.tag}"
        asset = choose_asset(items, name, url)
        if asset is None:
            url = f"{self.repo_url}/releases/{release.id}/assets?per_page=100"
            with self.step("asset listing", self.timeout * API_STEP_READ_TIMEOUTS):
                items = _assets_from_json(self.get_pages(url), url)
            asset = choose_asset(items, name, url)
        if asset is not None:
            return asset
        names = ", ".join(str(a["name"]) for a in items
                          if isinstance(a, dict) and isinstance(a.get("name"), str))
        raise InstallError(f"release {release.tag} of {self.slug} has no asset {name}; it "
                           f"has: {names or 'no assets'}")

    def download(self, asset: Asset, target: Path, sha256: Optional[str],
                 report: Callable[[Progress], None], clock: Callable[[], float]) -> None:
        """Stream the asset to `target` in constant memory, checking size and SHA-256;
        `report` hears of the progress at most every PROGRESS_SECONDS.

        The file is not fsynced: after a power loss its staging folder is thrown away.
        """
        import http.client
        deadline = self.timeout + asset.size / MIN_DOWNLOAD_BYTES_PER_SECOND
        hasher, received = Sha256Thread(), 0
        started = reported = clock()
        try:
            with self.step("download", deadline), \
                    self.open(asset.url, "application/octet-stream") as response, \
                    open(target, "wb") as out:
                for chunk in iter(lambda: response.read(DOWNLOAD_CHUNK_BYTES), b""):
                    received += len(chunk)
                    if received > asset.size:
                        break
                    hasher.update(chunk)
                    out.write(chunk)
                    if clock() - reported >= PROGRESS_SECONDS:
                        reported = clock()
                        report(download_progress(received, asset.size, reported - started))
        except http.client.IncompleteRead:
            pass  # the size check below says what happened
        except (OSError, ValueError, http.client.HTTPException) as e:
            raise InstallError(f"download of {asset.name} ({redact_url(asset.url)}) "
                               f"failed after {received} bytes: {e}") from None
        finally:
            digest = hasher.hexdigest()
        if received != asset.size:
            raise InstallError(f"download of {asset.name} ({redact_url(asset.url)}) gave "
                               f"{received} bytes, GitHub says it has {asset.size}")
        if sha256 and "sha256:" + digest != sha256.lower():
            raise InstallError(f"{asset.name} ({redact_url(asset.url)}) has SHA-256 "
                               f"{digest}, expected {sha256[len('sha256:'):]}; "
                               f"the download is corrupt or not the published release")
        report(download_progress(received, asset.size, clock() - started))


class Sha256Thread:
    """SHA-256 in a thread of its own: hashing one chunk overlaps reading the next.

    hashlib releases the GIL on large updates, as socket reads and file writes do, so
    on two cores the download runs at the speed of the slower of the two, not their sum.
    At most HASH_QUEUE_CHUNKS chunks wait: memory stays flat whatever the asset's size.
    """

    def __init__(self) -> None:
        import hashlib
        import queue
        self.digest = hashlib.sha256()
        self.chunks: Any = queue.Queue(maxsize=HASH_QUEUE_CHUNKS)
        self.thread = threading.Thread(target=self.consume, name="sha256", daemon=True)
        self.thread.start()

    def consume(self) -> None:
        for chunk in iter(self.chunks.get, None):
            self.digest.update(chunk)

    def update(self, chunk: bytes) -> None:
        self.chunks.put(chunk)

    def hexdigest(self) -> str:
        self.chunks.put(None)
        self.thread.join()
        return self.digest.hexdigest()


def place_asset(download: Path, into: Path, binary_name: str, size: int) -> None:
    """A zip is unpacked into the release folder; any other asset is the binary itself
    (SPEC 3.1.9), saved as binaryName and made executable."""
    if download.name.lower().endswith(".zip"):
        unpack_zip(download, into, max(MIN_UNPACK_LIMIT_BYTES, size * MAX_UNPACK_RATIO))
        return
    binary = into.joinpath(*binary_name.split("/"))
    binary.parent.mkdir(parents=True, exist_ok=True)
    with open(download, "rb") as f:
        os.fsync(f.fileno())  # it is the release now, not a download to throw away
    os.rename(download, binary)
    os.chmod(binary, 0o755)


def unpack_zip(archive: Path, into: Path, max_bytes: int) -> List[str]:
    """Unpack regular files and folders only, inside `into`, at most max_bytes in all."""
    import zipfile
    import zlib
    lzma_error: type = ValueError  # lzma's error (not an OSError), if this Python has lzma
    with contextlib.suppress(ImportError):
        import lzma
        lzma_error = lzma.LZMAError
    try:
        with zipfile.ZipFile(archive) as z:
            members = z.infolist()
            paths: Dict[Tuple[str, ...], zipfile.ZipInfo] = {}
            for info in members:
                path = _member_path(info, archive)
                if path in paths or not path:
                    raise InstallError(f"{archive.name} holds {info.filename!r} twice (or as "
                                       f"the folder itself); a release names each file once")
                paths[path] = info
            total = sum(info.file_size for info in members)
            if total > max_bytes:
                raise InstallError(f"{archive.name} would unpack to {total} bytes, more than "
                                   f"the {max_bytes} allowed (a zip bomb?)")
            for path, info in paths.items():
                _extract_member(z, info, into.joinpath(*path))
            return [info.filename for info in members]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as e:
        raise InstallError(f"{archive.name} is not a valid zip archive: {e}") from None
    except (zlib.error, NotImplementedError, ValueError, RuntimeError, OSError,
            lzma_error) as e:
        # corrupt data, an unsupported method, a name that is not UTF-8, a name too long
        raise InstallError(f"{archive.name} cannot be unpacked: {e}") from None


def _member_path(info: zipfile.ZipInfo, archive: Path) -> Tuple[str, ...]:
    """The member's path inside the folder: refused if it leaves it, is not a plain file
    or folder, or is encrypted."""
    name = info.filename
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:[\\/]", name) or ".." in parts \
            or "\0" in name:
        raise InstallError(f"{archive.name} holds {name!r}, a path outside its folder")
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        what = "a symlink" if kind == stat.S_IFLNK else "a device or special file"
        raise InstallError(f"{archive.name} holds {name!r}, {what}; only files and folders "
                           f"are unpacked")
    if info.flag_bits & 0x1:
        raise InstallError(f"{archive.name} holds {name!r} encrypted; a release is not")
    return tuple(p for p in name.split("/") if p not in ("", "."))


def _extract_member(z: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> None:
    if info.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    # Permission bits only: setuid, setgid and sticky bits never come from a download.
    mode = (info.external_attr >> 16) & 0o777 or 0o644
    with z.open(info) as source, open(target, "xb") as out:
        shutil.copyfileobj(source, out, DOWNLOAD_CHUNK_BYTES)
        out.flush()
        os.fsync(out.fileno())
    os.chmod(target, mode)


def release_run_config(current: RunConfig, tag: str, binary_name: str) -> RunConfig:
    """The new version's run-config, made from the current one (SPEC 1.6 step 3)."""
    data_node = None
    if current.data_node:
        data_node = Binary(binary_name, data_node_args(current.data_node.args))
    return RunConfig(tag, Binary(binary_name, current.vega.args), current.rpc, data_node)


def run_config_document(run_config: RunConfig) -> dict:
    def binary(b: Binary) -> Dict[str, Any]:
        return {"path": b.path, "args": list(b.args)}
    rpc = {"socketPath": run_config.rpc.socket_path, "httpPath": run_config.rpc.http_path}
    doc: Dict[str, Any] = {"name": run_config.name,
                           "vega": {"binary": binary(run_config.vega), "rpc": rpc}}
    if run_config.data_node:
        doc["data_node"] = {"binary": binary(run_config.data_node)}
    return doc


def install_release(home: Path, config: Config, tag: str, folder: Path, current: RunConfig,
                    token: Optional[str], log: Log, cancel: Optional[Cancellation] = None,
                    on_progress: Optional[Callable[[Progress], None]] = None,
                    clock: Callable[[], float] = time.monotonic) -> None:
    """Download, verify and unpack `tag` into `folder`, which appears only when complete.

    Raises InstallCancelled once `cancel` is set, else InstallError (with retry_after
    when GitHub's rate limit is the cause); either way nothing is left behind.
    """
    auto = config.auto_install
    wanted = asset_name(auto.asset.name, host_platform())
    problem = tag_problem(tag) or asset_name_problem(wanted) \
        or binary_name_problem(auto.asset.binary_name)
    if problem:
        raise InstallError(f"cannot install: {problem}")
    github = GitHub(auto.github_api_url, auto.repository_owner, auto.repository, token,
                    auto.http_timeout, cancel, tag)
    staging: Optional[Path] = None

    def report(progress: Progress) -> None:
        if progress.done < progress.total:
            log.info("download progress", tag=tag, done=progress.done, total=progress.total,
                     rate=round(progress.rate), eta=None if progress.eta is None
                     else round(progress.eta))
        if on_progress is not None:
            on_progress(progress)
    try:
        # 1. find the release and its asset (each step under its own deadline)
        release = github.find_release(tag)
        asset = github.find_asset(release, wanted)
        checksum = expected_checksum(tag, asset, auto.checksums, auto.require_checksum)
        # 2. download and verify it beside the target, in a staging folder marked ours
        staging = make_staging(home, tag, folder)
        started = clock()
        log.info("downloading", tag=tag, asset=asset.name, size=asset.size,
                 url=redact_url(asset.url), checksum=checksum or "unknown")
        github.download(asset, staging / asset.name, checksum, report, clock)
        log.info("downloaded", tag=tag, asset=asset.name, size=asset.size,
                 seconds=round(clock() - started, 3),
                 verified="sha256" if checksum else "size only")
        # 3. unpack (or take the asset as the binary), write the run-config, check it
        staged = staging / "release"
        place_asset(staging / asset.name, staged, auto.asset.binary_name, asset.size)
        stage_run_config(staged, release_run_config(current, tag, auto.asset.binary_name))
        log.info("version checked", tag=tag, binary=auto.asset.binary_name, version=tag)
        for path, _, _ in os.walk(staged):
            fsync_folder(Path(path))  # the files are synced; their names must be too
        # 4. move it into place, unless cancelled or the folder appeared meanwhile
        github.cancel.raise_if_set(tag)
        move_into_place(staged, folder)
        log.info("installed", tag=tag, folder=str(folder))
    except InstallCancelled:
        raise
    except VisorError as e:
        raise InstallError(f"cannot install {tag} from {github.slug}: {e}",
                           getattr(e, "retry_after", None)) from None
    except OSError as e:
        raise InstallError(f"cannot install {tag} into {folder}: {e}") from None
    except RecursionError:  # a hostile JSON answer nested beyond what json.loads unpacks
        raise InstallError(f"cannot install {tag} from {github.slug}: GitHub answered JSON "
                           f"nested too deeply") from None
    finally:
        if staging is not None:
            remove_staging(staging)


def make_staging(home: Path, tag: str, folder: Path, pid: Optional[int] = None) -> Path:
    """A new staging folder in HOME, its marker written first: the proof that vegavisor
    (process `pid`) made it, without which nothing removes it (SPEC 3.3.1)."""
    pid = os.getpid() if pid is None else pid
    staging = home / f".staging-{folder.name[:64]}-{pid}-{os.urandom(4).hex()}"
    staging.mkdir()
    marker = staging / STAGING_MARKER
    try:
        with open(marker, "x", encoding="utf-8") as f:
            f.write(json.dumps({"pid": pid, "tag": tag, "folder": folder.name}) + "\n")
        (staging / "release").mkdir()
    except BaseException:
        with contextlib.suppress(OSError):
            marker.unlink()
        with contextlib.suppress(OSError):
            staging.rmdir()  # only ever an empty folder
        raise
    return staging


def staging_owner(path: Path) -> Optional[int]:
    """The pid of the vegavisor that made this staging folder, None unless proven:
    a real folder named .staging-<folder>-<pid>-<nonce> whose marker names that pid."""
    match = STAGING_NAME.fullmatch(path.name)
    marker = path / STAGING_MARKER
    try:
        if not match or path.is_symlink() or not path.is_dir() \
                or not stat.S_ISREG(marker.lstat().st_mode):
            return None
        recorded = json.loads(marker.read_text(encoding="utf-8")).get("pid")
    except (OSError, ValueError, AttributeError, RecursionError):
        return None
    return recorded if recorded == int(match.group(1)) else None


def remove_staging(path: Path) -> None:
    """The one place install code deletes a folder: only a staging folder proven ours."""
    if staging_owner(path) is not None:
        shutil.rmtree(path, ignore_errors=True)


def stage_run_config(folder: Path, run_config: RunConfig) -> None:
    """Write the run-config beside the unpacked binary, which must run and say it is the
    release (run_config.name) before it is moved into place."""
    binary = folder.joinpath(*run_config.vega.path.split("/"))
    if not binary.is_file():
        listing = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        raise InstallError(f"the asset holds no {run_config.vega.path} (its top level holds: "
                           f"{listing}); check [autoInstall.asset] binaryName")
    write_file_atomically(folder / RUN_CONFIG_FILE, write_toml(run_config_document(run_config)))
    version = binary_version(binary)
    if version != run_config.name:
        raise InstallError(f"the asset's {binary.name} reports version {version}, "
                           f"not {run_config.name}")


def move_into_place(staged: Path, folder: Path) -> None:
    """Rename the complete release folder into place; never over a folder that appeared
    meanwhile (another installer, an operator): that is an error, not an install."""
    # [upgradeFolders] may map a tag into a subfolder ("releases/v0.74.0", SPEC 1.7) that
    # does not exist yet; config checks keep it inside HOME.
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        if os.path.lexists(folder):  # rename would replace an empty folder or a file
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(folder))
        os.rename(staged, folder)
    except OSError as e:
        if e.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
            raise
        raise InstallError(f"{folder} appeared while {folder.name} was being installed; "
                           f"it was left as it is and nothing was installed") from None
    fsync_folder(folder.parent)


def remove_stale_staging(home: Path) -> None:
    """Staging folders and temporary files left by a vegavisor that died (kill -9):
    only those it can prove it made, of a process that is gone. Called before this
    process installs anything, so its own pid (pid 1 in a container, say) is stale too."""
    for path in home.glob(".staging-*"):
        pid = staging_owner(path)
        if pid is not None and (pid == os.getpid() or not process_exists(pid)):
            remove_staging(path)
    for path in home.glob(".*.*.tmp"):  # write_file_atomically's and switch_current's
        match = TEMPORARY_NAME.fullmatch(path.name)
        if match and not process_exists(int(match.group(1))) \
                and (path.is_symlink() or path.is_file()):
            path.unlink()


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


# --- state files ---
# One record type per file, one reader (read_record) and one writer (write_record).
# `run` writes them; `status` and the next `run` read them. A file that cannot be read
# is reported by name, with what vegavisor does about it (SPEC 3.3.9).

def utc_now(when: Optional[float] = None) -> str:
    """Now (or the time.time() `when`) as the state files write it."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def _typed(data: dict, key: str, kind: Any, default: Any = None) -> Any:
    """data[key] when it has the type `kind` (a bool is no int), default when absent."""
    value = data.get(key)
    if value is None:
        return default
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        raise ValueError(f"{key} is {json.dumps(value)[:40]}")
    return value


class ChildRecord(NamedTuple):
    """A child `run` started: pid and start time name it for good (argv is for people)."""

    role: str
    pid: int
    start_time: Optional[int]
    argv: Tuple[str, ...]

    def to_json(self) -> dict:
        return {"role": self.role, "pid": self.pid, "startTime": self.start_time,
                "argv": list(self.argv)}

    @classmethod
    def from_json(cls, data: Any) -> "ChildRecord":
        if not isinstance(data, dict):
            raise ValueError("a child is not an object")
        argv = _typed(data, "argv", list, [])
        return cls(_typed(data, "role", str, "?"), _typed(data, "pid", int),
                   _typed(data, "startTime", int), tuple(str(a) for a in argv))


class RunState(NamedTuple):
    """.run-state.json: what `run` is doing, its children, and how it ended."""

    pid: int
    started: str
    phase: str
    version: str
    folder: str
    restarts: int = 0
    last_poll_ok: Optional[str] = None
    accepted_tag: str = ""
    upgrade_height: int = 0
    children: Tuple[ChildRecord, ...] = ()
    starting: Tuple[str, ...] = ()  # markers of children being forked (spawned_with)
    waiting: str = ""  # why the node is not up yet, for `status`
    download: Optional[Dict[str, Any]] = None  # progress of an install under way
    ended: str = ""  # "" while running, else how it ended
    updated: str = ""

    def to_json(self) -> dict:
        return {"pid": self.pid, "started": self.started, "phase": self.phase,
                "version": self.version, "folder": self.folder, "restarts": self.restarts,
                "lastPollOk": self.last_poll_ok, "acceptedTag": self.accepted_tag or None,
                "upgradeHeight": self.upgrade_height or None,
                "children": [c.to_json() for c in self.children],
                "starting": list(self.starting), "waiting": self.waiting or None,
                "download": self.download, "ended": self.ended or None,
                "updated": self.updated}

    @classmethod
    def from_json(cls, data: dict) -> "RunState":
        children = tuple(ChildRecord.from_json(c) for c in _typed(data, "children", list, []))
        return cls(
            _typed(data, "pid", int), _typed(data, "started", str, ""),
            _typed(data, "phase", str, ""), _typed(data, "version", str, ""),
            _typed(data, "folder", str, ""), _typed(data, "restarts", int, 0),
            _typed(data, "lastPollOk", str), _typed(data, "acceptedTag", str, "") or "",
            _typed(data, "upgradeHeight", int, 0) or 0, children,
            tuple(str(m) for m in _typed(data, "starting", list, [])),
            _typed(data, "waiting", str, "") or "", _typed(data, "download", dict),
            _typed(data, "ended", str, "") or "", _typed(data, "updated", str, ""))


class PrefetchState(NamedTuple):
    """.prefetch.json: the prefetch of the accepted release, for `status` and metrics."""

    tag: str
    folder: str
    state: str  # checking, downloading, staged, failed, cancelled
    attempts: int = 0
    last_error: str = ""
    updated: str = ""

    def to_json(self) -> dict:
        return {"tag": self.tag, "folder": self.folder, "state": self.state,
                "attempts": self.attempts, "lastError": self.last_error or None,
                "updated": self.updated}

    @classmethod
    def from_json(cls, data: dict) -> "PrefetchState":
        return cls(_typed(data, "tag", str, ""), _typed(data, "folder", str, ""),
                   _typed(data, "state", str, ""), _typed(data, "attempts", int, 0),
                   _typed(data, "lastError", str, "") or "", _typed(data, "updated", str, ""))


class HookRecord(NamedTuple):
    """A hook's progress in the journal: what a restarted visor needs to decide whether to
    run it again, and the pid of a run a killed visor may have left behind."""

    state: str  # one of HOOK_STATES
    code: Optional[int] = None  # exit status (negative: the signal); None: none yet
    seconds: float = 0.0
    error: str = ""
    pid: int = 0
    start_time: Optional[int] = None
    updated: str = ""

    @property
    def finished(self) -> bool:
        """Ran to its end (ok or failed) or was not to run: a postUpgrade hook in this
        state is not run again by a restart (a preUpgrade hook is, until it is ok)."""
        return self.state in ("ok", "failed", "skipped")

    def to_json(self) -> dict:
        return {"state": self.state, "code": self.code, "seconds": self.seconds,
                "error": self.error or None, "pid": self.pid or None,
                "startTime": self.start_time, "updated": self.updated}

    @classmethod
    def from_json(cls, data: Any) -> "Optional[HookRecord]":
        if data is None:
            return None
        if not isinstance(data, dict):
            raise ValueError("a hook is not an object")
        state = _typed(data, "state", str)
        if state not in HOOK_STATES:
            raise ValueError(f"hook state is {state!r}")
        seconds = _typed(data, "seconds", (int, float), 0.0)
        return cls(state, _typed(data, "code", int), float(seconds),
                   _typed(data, "error", str, "") or "", _typed(data, "pid", int, 0) or 0,
                   _typed(data, "startTime", int), _typed(data, "updated", str, "") or "")


class Journal(NamedTuple):
    """.upgrade-journal.json: the steps of an upgrade, so a restarted visor finishes it.
    A journal written before hooks existed has neither hook record (None)."""

    tag: str
    height: int
    from_folder: str
    to_folder: str
    step: str  # one of JOURNAL_STEPS
    started: str = ""
    updated: str = ""
    error: str = ""
    pre_upgrade: Optional[HookRecord] = None
    post_upgrade: Optional[HookRecord] = None

    def to_json(self) -> dict:
        return {"tag": self.tag, "height": self.height, "from": self.from_folder,
                "to": self.to_folder, "step": self.step, "started": self.started,
                "updated": self.updated, "error": self.error or None,
                "preUpgrade": self.pre_upgrade.to_json() if self.pre_upgrade else None,
                "postUpgrade": self.post_upgrade.to_json() if self.post_upgrade else None}

    @classmethod
    def from_json(cls, data: dict) -> "Journal":
        tag, height = _typed(data, "tag", str), _typed(data, "height", int)
        step = _typed(data, "step", str)
        if not tag or not is_plain_name(tag):
            raise ValueError(f"tag is {tag!r}")
        if height is None or height < 0:
            raise ValueError(f"height is {height!r}")
        if step not in JOURNAL_STEPS:
            raise ValueError(f"step is {step!r}")
        return cls(tag, height, _typed(data, "from", str, ""), _typed(data, "to", str, ""),
                   step, _typed(data, "started", str, ""), _typed(data, "updated", str, ""),
                   _typed(data, "error", str, "") or "",
                   HookRecord.from_json(data.get("preUpgrade")),
                   HookRecord.from_json(data.get("postUpgrade")))

    @property
    def unfinished(self) -> bool:
        return self.step != "done"

    @property
    def post_upgrade_unfinished(self) -> bool:
        """Done, but the postUpgrade hook did not run to its end: a restart runs it again."""
        return not self.unfinished and self.post_upgrade is not None \
            and not self.post_upgrade.finished

    def last_hook(self) -> Optional[Tuple[str, HookRecord]]:
        """The hook that ran last: postUpgrade once it was recorded, else preUpgrade."""
        for name, record in (("postUpgrade", self.post_upgrade),
                             ("preUpgrade", self.pre_upgrade)):
            if record is not None and record.state != "pending":
                return name, record
        return None


def read_record(path: Path, kind: Any) -> Tuple[Any, Optional[str]]:
    """(record, None); (None, None) when the file is absent; (None, why) when it cannot
    be read or is not a `kind` (truncated by a crash, edited by hand, garbage)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return kind.from_json(data), None
    except FileNotFoundError:
        return None, None
    except OSError as e:
        return None, f"{path} cannot be read: {e.strerror}"
    except (ValueError, RecursionError) as e:
        return None, f"{path} is not a valid {kind.__name__} record ({str(e)[:120]})"


def write_record(path: Path, record: Any, durable: bool = False) -> None:
    """The one writer of state files: atomic; OSError for the caller to report."""
    write_file_atomically(path, json.dumps(record.to_json()) + "\n", durable=durable)


# --- systemd and metrics ---

class Notifier:
    """sd_notify(3) over $NOTIFY_SOCKET, in plain socket code; silent without systemd."""

    def __init__(self, env: Dict[str, str], clock: Callable[[], float]) -> None:
        path = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + path[1:] if path.startswith("@") else path
        self.clock = clock
        self.watchdog = watchdog_interval(env, os.getpid())
        self.next_watchdog = clock()
        self.sock: Optional[socket.socket] = None
        if self.address:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def send(self, *fields: str) -> None:
        if self.sock is None:
            return
        try:
            self.sock.sendto("\n".join(fields).encode(), self.address)
        except OSError:
            pass  # systemd gone or restarting: supervision goes on without it

    def tick(self) -> float:
        """WATCHDOG=1 at half of WATCHDOG_USEC, as long as the loop calls this; returns the
        seconds until the next one is due (inf without a watchdog)."""
        if not self.watchdog:
            return math.inf
        if self.clock() >= self.next_watchdog:
            self.send("WATCHDOG=1")
            self.next_watchdog = self.clock() + self.watchdog
        return self.next_watchdog - self.clock()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


def watchdog_interval(env: Dict[str, str], pid: int) -> Optional[float]:
    """Half of systemd's WatchdogSec, when the watchdog is meant for this process."""
    usec, for_pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (for_pid and for_pid != str(pid)):
        return None
    return int(usec) / 2e6


def metric_labels(**labels: str) -> str:
    """Prometheus label syntax: backslash, double quote and newline escaped."""
    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in labels.items()) + "}"


def format_metrics(facts: Dict[str, Any]) -> str:
    """The node_exporter textfile-collector exposition of what visor knows."""
    download = facts.get("download") or {}
    metrics = [
        ("vegavisor_info", "gauge", "vegavisor and the node version it runs.",
         metric_labels(vegavisor=__version__, version=facts["version"],
                       phase=facts["phase"]), 1),
        ("vegavisor_upgrades_completed_total", "counter",
         "Upgrades completed since vegavisor started.", "", facts["upgrades"]),
        ("vegavisor_restarts_total", "counter",
         "Crash restarts since vegavisor started.", "", facts["restarts"]),
        ("vegavisor_last_admin_poll_success_timestamp_seconds", "gauge",
         "When core's admin socket last answered (Unix time).", "", facts["lastPoll"]),
        ("vegavisor_accepted_upgrade_height", "gauge",
         "Upgrade block of the accepted release (0: none).",
         metric_labels(tag=facts["acceptedTag"]), facts["upgradeHeight"]),
        ("vegavisor_prefetch_state", "gauge", "1 for the prefetch's state of the tag.",
         metric_labels(tag=facts["prefetchTag"], state=facts["prefetchState"]), 1),
        ("vegavisor_download_bytes", "gauge", "Bytes of the release download under way.",
         metric_labels(tag=download.get("tag") or ""), download.get("done") or 0),
        ("vegavisor_download_size_bytes", "gauge", "Size of the release download under way.",
         metric_labels(tag=download.get("tag") or ""), download.get("total") or 0),
    ]
    lines = []
    for name, kind, text, labels, value in metrics:
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name}{labels} {value}"]
    return "\n".join(lines) + "\n"


# --- supervisor: reporting ---

class Reporter:
    """What others see of `run`: the run state file (for `status` and the next run), the
    metrics file, systemd's STATUS, and warnings that repeat (logged the first time, then
    at most every REPEAT_WARNING_SECONDS with a count, SPEC 3.2.5)."""

    def __init__(self, home: Path, config: Config, log: Log, world: Any) -> None:
        self.home, self.config, self.log, self.world = home, config, log, world
        self.state = RunState(os.getpid(), utc_now(), "starting", "", "")
        self.prefetch: Optional[PrefetchState] = None
        self.upgrades, self.last_poll_time = 0, 0.0
        self.last_write = -math.inf
        self.repeats: Dict[str, Tuple[float, int]] = {}
        self.download: Optional[Dict[str, Any]] = None  # set by an install's thread

    def update(self, save: bool = True, **changes: Any) -> None:
        """Change the run state and write it at once (children, phase, how it ended), or
        with the next good poll's write (save=False)."""
        self.state = self.state._replace(**changes)
        if save:
            self.save()

    def note_poll(self) -> None:
        """A good poll: written at most every RUN_STATE_POLL_WRITE_SECONDS (the first at once);
        save() formats its time as lastPollOk."""
        self.last_poll_time = time.time()
        if self.state.last_poll_ok is None \
                or self.world.now() - self.last_write >= RUN_STATE_POLL_WRITE_SECONDS:
            self.save()
        else:
            self.write_metrics()

    def progress_of(self, tag: str) -> Callable[[Any], None]:
        """A download's progress callback: called from the install's thread, it only
        records; the loop's next write of the run state and metrics shows it."""
        def seen(progress: Any) -> None:
            self.download = {"tag": tag, "done": progress.done, "total": progress.total,
                             "rate": round(progress.rate), "eta": progress.eta}
        return seen

    def save(self) -> None:
        self.last_write = self.world.now()
        download, self.download = self.download, None
        if download is not None:
            self.state = self.state._replace(download=download)
        polled = {"last_poll_ok": utc_now(self.last_poll_time)} if self.last_poll_time else {}
        self.state = self.state._replace(updated=utc_now(), **polled)
        path = self.home / RUN_STATE_FILE
        try:
            # Not synced: it matters after a kill, which keeps the page cache, and after
            # a power loss no child is left to stop.
            write_record(path, self.state)
        except OSError as e:
            self.warn_repeated("run-state", "run state not saved", file=str(path),
                               error=e.strerror or str(e))
        self.write_metrics()

    def save_prefetch(self, record: PrefetchState) -> None:
        self.prefetch = record._replace(updated=utc_now())
        path = self.home / PREFETCH_STATE_FILE
        try:
            write_record(path, self.prefetch)
        except OSError as e:
            self.warn_repeated("prefetch-state", "prefetch state not saved", file=str(path),
                               error=e.strerror or str(e))
        self.write_metrics()

    def upgraded(self, tag: str) -> None:
        """The upgrade to `tag` is complete: a prefetch record of it (this run's, or one an
        earlier run left, e.g. "not installed" before an operator installed it) is over."""
        self.upgrades += 1
        path = self.home / PREFETCH_STATE_FILE
        record = self.prefetch or read_record(path, PrefetchState)[0]
        if record is not None and record.tag == tag:
            self.prefetch = None
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as e:
                self.warn_repeated("prefetch-state", "prefetch state not removed",
                                   file=str(path), error=e.strerror or str(e))
        self.write_metrics()

    def write_metrics(self) -> None:
        if not self.config.metrics_file:
            return
        state, prefetch = self.state, self.prefetch
        text = format_metrics(dict(
            version=state.version, phase=state.phase, upgrades=self.upgrades,
            restarts=state.restarts, lastPoll=round(self.last_poll_time, 3),
            acceptedTag=state.accepted_tag, upgradeHeight=state.upgrade_height,
            prefetchTag=prefetch.tag if prefetch else "",
            prefetchState=prefetch.state if prefetch else "idle",
            download=state.download or {}))
        path = Path(self.config.metrics_file)
        try:
            write_file_atomically(path, text, durable=False)
        except OSError as e:
            self.warn_repeated("metrics", "metrics file not written", file=str(path),
                               error=e.strerror or str(e))
        except ValueError as e:  # a value no file can hold (a surrogate in a tag)
            self.warn_repeated("metrics", "metrics file not written", file=str(path),
                               error=str(e)[:200])

    def warn_repeated(self, key: str, msg: str, **facts: Any) -> None:
        now = self.world.now()
        last, count = self.repeats.get(key, (-math.inf, 0))
        if now - last >= REPEAT_WARNING_SECONDS:
            more = {"repeated": count} if count else {}
            self.log.warn(msg, **facts, **more)
            self.repeats[key] = (now, 0)
        else:
            self.repeats[key] = (last, count + 1)

    def status(self, text: str) -> None:
        self.world.notify(f"STATUS={text}")


# --- supervisor: the node's processes ---

class Child(NamedTuple):
    role: str  # "core" or "data node"
    version: str  # the run-config's name
    argv: Tuple[str, ...]
    proc: Any  # Proc, or a test's fake
    started: float  # the world's clock


class Node:
    """Core and the data node of one version: started together, stopped together (SIGTERM
    to each child's process group, grace, SIGKILL to the group), and recorded in the run
    state from before the fork until they are gone (SPEC 3.3.2)."""

    def __init__(self, home: Path, config: Config, log: Log, world: Any,
                 reporter: Reporter, env: Dict[str, str]) -> None:
        self.home, self.config, self.log, self.world = home, config, log, world
        self.reporter = reporter
        # Children do not inherit the GitHub token (SPEC 3.2.6).
        self.env = {k: v for k, v in env.items() if k != "GITHUB_TOKEN"}
        self.children: List[Child] = []
        self.spawned = 0

    def start(self, run_config: RunConfig, core_args: Sequence[str], attempt: int) -> None:
        binaries = [("core", run_config.vega, core_args)]
        if run_config.data_node:
            binaries.append(("data node", run_config.data_node, run_config.data_node.args))
        for role, binary, args in binaries:
            path = resolve_binary(self.home / CURRENT_LINK, binary)
            make_runnable(path)
            argv = (str(path),) + tuple(args)
            # Recorded before the fork: a visor killed right after it still leaves the
            # next one a way to find this child (its environment holds the marker).
            self.spawned += 1
            marker = f"{os.getpid()}.{self.spawned}.{self.world.now():.6f}"
            self.reporter.update(starting=(marker,))
            try:
                proc = self.world.spawn(argv, dict(self.env, **{CHILD_MARKER_VARIABLE: marker}))
            except OSError as e:
                raise VisorError(f"{role} binary {path} cannot be started: "
                                 f"{e.strerror or e}") from None
            self.children.append(Child(role, run_config.name, argv, proc, self.world.now()))
            self.record(starting=())
            self.log.info("started", role=role, pid=proc.pid, version=run_config.name,
                          attempt=attempt, command=shlex.join(argv))

    def record(self, **changes: Any) -> None:
        children = tuple(ChildRecord(c.role, c.proc.pid, c.proc.start_time, c.argv)
                         for c in self.children)
        self.reporter.update(children=children, **changes)

    def exited(self) -> Optional[Child]:
        """A child whose process exited (any status: it should be running)."""
        for child in self.children:
            if child.proc.returncode() is not None:
                return child
        return None

    def stop(self) -> None:
        """Stop every child's process group; the run state names them until they are gone."""
        if self.children:
            stop_processes([(c.role, c.version, c.proc) for c in self.children],
                           self.config.stop_signal_timeout, self.log, self.world)
        self.children = []
        self.record()

    def stop_leftovers(self, previous: Optional[RunState]) -> None:
        """Children of an earlier visor that still run (it was killed) are stopped first:
        the ones it recorded (pid and start time must match) and any it was forking."""
        if previous is None:
            return
        found = [("recorded " + c.role, "?", self.world.leftover(c.pid, c.start_time))
                 for c in previous.children]
        for marker in previous.starting:
            found += [("being started", "?", proc) for proc in self.world.spawned_with(marker)]
        procs = [(role, version, proc) for role, version, proc in found if proc is not None]
        for role, _, proc in procs:
            self.log.warn("stopping a child left by an earlier vegavisor", role=role,
                          pid=proc.pid, earlier_pid=previous.pid)
        if procs:
            self.reporter.update(children=tuple(
                ChildRecord(role, proc.pid, proc.start_time, ()) for role, _, proc in procs))
            stop_processes(procs, self.config.stop_signal_timeout, self.log, self.world)
            self.reporter.update(children=())


def stop_processes(procs: Sequence[Tuple[str, str, Any]], grace: float, log: Log,
                   world: Any) -> None:
    """SIGTERM to each process group, up to `grace` seconds, then SIGKILL to what is left.
    VisorError when something survives SIGKILL (it stays recorded)."""
    for role, version, proc in procs:
        if not proc.gone():
            log.info("stopping", role=role, pid=proc.pid, version=version, signal="SIGTERM")
            proc.signal(signal.SIGTERM)
    for sig, seconds in ((signal.SIGKILL, grace), (None, LEFTOVER_KILL_WAIT_SECONDS)):
        deadline = world.now() + seconds
        while not all(proc.gone() for _, _, proc in procs) and world.now() < deadline:
            world.wait(min(STOP_POLL_SECONDS, deadline - world.now()))
        left = [(role, version, proc) for role, version, proc in procs if not proc.gone()]
        if not left:
            break
        if sig is None:
            raise VisorError("still running after SIGKILL: " + ", ".join(
                f"{role} pid {proc.pid}" for role, _, proc in left) + "; stop them by hand "
                "before starting vegavisor again")
        for role, version, proc in left:
            log.warn("killing", role=role, pid=proc.pid, version=version, signal="SIGKILL",
                     reason=f"still running {grace:g}s after SIGTERM")
            proc.signal(signal.SIGKILL)
    for role, version, proc in procs:
        code = proc.returncode()
        log.info("stopped", role=role, pid=proc.pid, version=version,
                 status=describe_exit_status(code) if code is not None and code != -1
                 else "gone")


# --- supervisor: prefetch ---

class Prefetch:
    """Makes sure an accepted release is ready long before its block (SPEC 2.4): installs it
    while the old version runs, or checks the folder an operator prepared.

    It never deletes anything: a withdrawn or replaced tag's folder stays (SPEC 3.3.1), and
    a null or empty tag means "not known yet". Installs start at most every
    PREFETCH_MIN_START_SECONDS, so a flapping tag cannot exhaust GitHub's budget."""

    def __init__(self, home: Path, config: Config, log: Log, world: Any,
                 reporter: Reporter) -> None:
        self.home, self.config, self.log, self.world = home, config, log, world
        self.reporter = reporter
        self.tag, self.folder, self.state = "", home, ""
        self.job: Optional[Any] = None
        self.attempts, self.next_try, self.last_start = 0, -math.inf, -math.inf
        self.last_error, self.last_tag = "", ""
        self.attempts_by_tag: Dict[str, int] = {}  # a flapping tag keeps its backoff

    def update(self, tag: str, current: RunConfig, current_folder: Path) -> None:
        """After each admin answer: start, collect or retry the prefetch of `tag`."""
        if not tag:
            return
        if tag != self.tag:
            self.close()
            self.attempts_by_tag[self.tag] = self.attempts
            self.tag, self.state = tag, ""
            self.attempts = self.attempts_by_tag.get(tag, 0)
        self.collect()
        if self.job is not None or self.state in ("staged", "checked"):
            return
        now = self.world.now()
        if now < self.next_try or (tag != self.last_tag
                                   and now - self.last_start < PREFETCH_MIN_START_SECONDS):
            return
        try:
            self.folder = folder_for_tag(self.home, tag, self.config.upgrade_folders)
        except VisorError as e:
            self.reporter.warn_repeated("prefetch-tag", "accepted release has no usable folder",
                                        tag=tag, error=str(e))
            return
        if os.path.realpath(self.folder) == os.path.realpath(current_folder):
            return
        self.attempts += 1
        self.last_start, self.last_tag = now, tag
        if self.folder.exists():
            self.start("checking", lambda cancel: check_release_folder(
                self.folder, tag, self.world.query))
        elif self.config.auto_install.enabled and self.config.auto_install.prefetch:
            self.start("downloading", lambda cancel: self.world.install(
                self.home, self.config, tag, self.folder, current, cancel,
                self.reporter.progress_of(tag)))
        else:  # nothing to start until an operator installs it: look again, not every poll
            self.next_try = now + self.config.poll_interval
            if not self.config.auto_install.enabled and self.state != "missing":
                self.state = "missing"
                self.log.error("accepted release is not installed and auto-install is off",
                               tag=tag, folder=str(self.folder),
                               todo=f"install it in {self.folder} before the upgrade block")
                self.reporter.save_prefetch(PrefetchState(tag, str(self.folder), "missing"))

    def start(self, state: str, work: Callable[[Cancellation], None]) -> None:
        self.state = state
        self.log.info("prefetching" if state == "downloading" else "checking prepared release",
                      tag=self.tag, folder=str(self.folder), attempt=self.attempts)
        self.job = self.world.start_job(self.tag, work)
        self.reporter.save_prefetch(PrefetchState(self.tag, str(self.folder), state,
                                                  self.attempts))

    def collect(self) -> None:
        """A finished job's outcome: ready, or a failure retried later."""
        job = self.job
        if job is None or not job.done():
            return
        self.job = None
        if job.error is None:
            self.state = "staged" if self.state == "downloading" else "checked"
            self.log.info("prefetched" if self.state == "staged" else "prepared release checked",
                          tag=self.tag, folder=str(self.folder))
            self.reporter.save_prefetch(PrefetchState(self.tag, str(self.folder), self.state,
                                                      self.attempts))
            return
        self.last_error, self.state = job.error, "failed"
        delay = max(restart_delay(self.attempts, self.config.auto_install.prefetch_retry_delay,
                                  PREFETCH_RETRY_MAX_SECONDS), rate_limit_wait(job.retry_after))
        self.next_try = self.world.now() + delay
        level = "error" if self.attempts >= PREFETCH_ERROR_AFTER_ATTEMPTS else "warn"
        self.log.emit(level, "prefetch failed", tag=self.tag, attempt=self.attempts,
                      retry_in=round(delay, 3), error=job.error)
        self.reporter.save_prefetch(PrefetchState(self.tag, str(self.folder), "failed",
                                                  self.attempts, job.error))

    def settle(self, tag: str) -> None:
        """At the upgrade block: let a prefetch of `tag` under way finish (or a stop end it)."""
        if tag != self.tag:
            self.close()
            return
        if self.job is not None:
            self.log.info("waiting for the prefetch to finish", tag=tag)
            while not self.job.done() and not self.world.stop_signal:
                self.world.wait(STOP_POLL_SECONDS * 10)
            self.collect()

    def close(self) -> None:
        """Visor stops or the tag changed: an install under way is cancelled (the install
        removes its own staging folder)."""
        if self.job is not None:
            self.job.cancel()
            self.job = None
            self.state = "cancelled"
            self.reporter.save_prefetch(PrefetchState(self.tag, str(self.folder), "cancelled",
                                                      self.attempts))


def check_release_folder(folder: Path, tag: str, query: Callable[[Sequence[str]], str]) -> None:
    """A prepared folder must hold a run-config and binaries that report `tag`."""
    if not (folder / RUN_CONFIG_FILE).is_file():
        raise incomplete_folder(folder, tag)
    run_config, _ = load_run_config(folder)
    check_versions(folder, run_config, tag, query)


def check_versions(folder: Path, run_config: RunConfig, tag: str,
                   query: Callable[[Sequence[str]], str]) -> List[Tuple[str, Path]]:
    """Every binary of the version must say it is `tag` before it may run (SPEC 3.3.3)."""
    checked = []
    for role, binary in (("core", run_config.vega), ("data node", run_config.data_node)):
        if binary is None:
            continue
        path = resolve_binary(folder, binary)
        make_runnable(path)
        output = query([str(path), "version", "--output", "json"])
        version = version_in_output(output)
        if version != tag:
            said = f"reports version {version}" if version else \
                f"printed no version ({output.strip()[:80]!r})"
            raise VisorError(f"{role} binary {path} {said}, not {tag}; "
                             f"{os.path.realpath(folder)} holds the wrong release")
        checked.append((role, path))
    return checked


# --- supervisor: the upgrade ---

# A hook's name in config.toml's [hooks] and the Journal field that records its progress.
HOOK_FIELDS = {"preUpgrade": "pre_upgrade", "postUpgrade": "post_upgrade"}


class HookRun(NamedTuple):
    """A hook under way: its process and the world's clock when it started and must end."""

    name: str  # preUpgrade or postUpgrade
    argv: Tuple[str, ...]
    job: Any  # HookProc, or a test's fake
    started: float
    deadline: float


class Upgrade:
    """At the upgrade block: find or install the release, check it, run the preUpgrade hook,
    switch current; once the new core answers, run the postUpgrade hook. Each step is
    journaled, so a visor killed meanwhile finishes the upgrade (SPEC 2.4)."""

    def __init__(self, home: Path, config: Config, log: Log, world: Any,
                 reporter: Reporter, env: Optional[Dict[str, str]] = None) -> None:
        self.home, self.config, self.log, self.world = home, config, log, world
        self.reporter = reporter
        self.env = {k: v for k, v in (env or {}).items() if k != "GITHUB_TOKEN"}
        self.journal: Optional[Journal] = None
        self.checked = False  # this process checked the versions of the journal's folder
        self.post: Optional[HookRun] = None  # the postUpgrade hook, while it runs

    def write(self, step: str, error: str = "", **hooks: Optional[HookRecord]) -> None:
        """Record a step (and hook records). Only "installed", written just before `current`
        is switched, is synced (with the preUpgrade hook's outcome): a power loss that loses
        another step leaves the old version at the block, which upgrades again, or a
        journal that makes the next run switch again."""
        assert self.journal is not None
        self.journal = self.journal._replace(step=step, updated=utc_now(), error=error, **hooks)
        path = self.home / JOURNAL_FILE
        try:
            write_record(path, self.journal, durable=step == "installed")
        except OSError as e:
            raise VisorError(f"the upgrade journal {path} cannot be written "
                             f"({e.strerror or e}); free space or fix permissions in "
                             f"{self.home}, then start vegavisor again: it resumes") from None
        self.log.debug("journal", step=step, tag=self.journal.tag)

    def write_hook(self, name: str, record: HookRecord, error: str = "") -> None:
        """Record a hook's progress; the step stays."""
        assert self.journal is not None
        self.write(self.journal.step, error or self.journal.error,
                   **{HOOK_FIELDS[name]: record._replace(updated=utc_now())})

    def begin(self, tag: str, height: int, current: Path, target: Path) -> None:
        self.close()  # a postUpgrade hook of the last upgrade still running: stopped
        self.journal = Journal(tag, height, folder_name(self.home, current),
                               folder_name(self.home, target), "ready", utc_now())
        self.checked = False
        self.write("ready")

    @property
    def unfinished(self) -> bool:
        return self.journal is not None and self.journal.unfinished

    def install(self, current: RunConfig) -> bool:
        """Find or install the release of the journal's tag, check it, run the preUpgrade
        hook, switch current. False when visor was asked to stop meanwhile (the journal
        resumes it)."""
        assert self.journal is not None
        tag = self.journal.tag
        folder = folder_for_tag(self.home, tag, self.config.upgrade_folders)
        if not folder.exists() and not self.install_at_block(tag, folder, current):
            return False
        if not (folder / RUN_CONFIG_FILE).is_file():
            raise incomplete_folder(folder, tag)
        self.write("installed")
        self.check(folder)
        if not self.pre_upgrade(folder):
            return False
        switch_current(self.home, folder, self.log)
        self.write("switched")
        self.log.info("switched", current=str(folder), tag=tag)
        return True

    def install_at_block(self, tag: str, folder: Path, current: RunConfig) -> bool:
        """Install now, retrying up to maxNumberOfRestarts times; False when asked to stop."""
        if not self.config.auto_install.enabled:
            raise VisorError(
                f"release {tag} is not installed: {folder} does not exist and auto-install is "
                f"off ([autoInstall] enabled); create it with the release's binaries and a "
                f"{RUN_CONFIG_FILE}, or run `vegavisor prepare-upgrade --home {self.home} "
                f"{tag}` with auto-install on, then start vegavisor again")
        attempt, limit = 0, self.config.max_restarts
        while True:
            attempt += 1
            self.log.info("installing", tag=tag, folder=str(folder), attempt=attempt)
            job = self.world.start_job(tag, lambda cancel: self.world.install(
                self.home, self.config, tag, folder, current, cancel,
                self.reporter.progress_of(tag)))
            while not job.done() and not self.world.stop_signal:
                self.world.wait(1.0)
                if self.reporter.download is not None:
                    self.reporter.save()
            self.reporter.update(download=None)
            if self.world.stop_signal:
                job.cancel()
                if job.error is not None:
                    self.log.info("install cancelled", tag=tag, signal=self.world.stop_signal)
                    return False
            if job.error is None:
                return True
            if attempt > limit:
                raise InstallError(f"{job.error} (gave up after {attempt} attempts: "
                                   f"maxNumberOfRestarts = {limit})")
            delay = max(restart_delay(attempt, self.config.restarts_delay,
                                      self.config.restarts_backoff_max),
                        rate_limit_wait(job.retry_after))
            self.log.error("install failed", tag=tag, attempt=attempt, limit=limit,
                           retry_in=round(delay, 3), error=job.error)
            if not pause(self.world, delay):
                return False

    def check(self, folder: Path) -> None:
        """The binaries about to start report the journal's tag (SPEC 3.3.3): checked on
        the folder being switched to, and again on HOME/current when a restart resumes."""
        assert self.journal is not None
        run_config, _ = load_run_config(folder)
        for role, path in check_versions(folder, run_config, self.journal.tag,
                                         self.world.query):
            self.log.info("version checked", role=role, binary=str(path),
                          version=self.journal.tag)
        self.checked = True

    def pre_upgrade(self, folder: Path) -> bool:
        """[hooks] preUpgrade, with the node stopped and `current` not yet switched. It runs
        until it has once succeeded, and never once `current` names the new folder (a visor
        killed right after the switch). False when visor was asked to stop meanwhile;
        VisorError, `current` untouched, when it fails: a restart runs it again."""
        assert self.journal is not None
        argv, record = self.config.hooks.pre_upgrade, self.journal.pre_upgrade
        current = Path(os.path.realpath(self.home / CURRENT_LINK))
        if not argv or (record is not None and record.state == "ok") \
                or current == Path(os.path.realpath(folder)):
            return True
        self.reporter.status(f"upgrade to {self.journal.tag}: running the preUpgrade hook")
        run = self.start_hook("preUpgrade", argv, current, folder)
        if run is not None:
            while run.job.returncode() is None and not self.world.stop_signal \
                    and self.world.now() < run.deadline:
                self.world.wait(min(run.deadline - self.world.now(), 1.0))
            if self.settle_hook(run) is None:
                return False
        record = self.journal.pre_upgrade
        if record is not None and record.state == "ok":
            return True
        why = record.error if record is not None else "did not run"
        message = (f"the preUpgrade hook {shlex.join(argv)} {why} ([hooks] preUpgrade); the "
                   f"upgrade to {self.journal.tag} stopped before {self.home / CURRENT_LINK} "
                   f"was switched, the node is stopped: fix the hook, then start vegavisor "
                   f"again: it runs the hook again")
        self.write(self.journal.step, error=message)
        raise VisorError(message)

    def answered(self) -> None:
        """The new core answered its admin socket: the upgrade is done, and the postUpgrade
        hook starts; collect() sees it end, so supervision goes on meanwhile."""
        journal = self.journal
        if journal is None or self.post is not None or journal.step not in ("started", "done"):
            return
        if journal.step == "started":
            self.write("done", post_upgrade=HookRecord("pending")
                       if self.config.hooks.post_upgrade else None)
            self.reporter.upgraded(journal.tag)
            self.log.info("upgrade complete", tag=journal.tag)
        if self.journal.post_upgrade_unfinished:
            self.post_upgrade()
        if self.post is None:
            self.journal = None

    def resume_post_upgrade(self, journal: Journal) -> None:
        """A visor that died before the postUpgrade hook ended: it runs again once core
        answers (hooks must be idempotent)."""
        if journal.post_upgrade_unfinished:
            self.log.warn("postUpgrade hook did not finish; it runs again once core answers",
                          tag=journal.tag, was=journal.post_upgrade.state
                          if journal.post_upgrade else None)
            self.journal = journal

    def post_upgrade(self) -> None:
        assert self.journal is not None
        argv = self.config.hooks.post_upgrade
        if not argv:
            self.log.info("postUpgrade hook not configured any more; not run",
                          tag=self.journal.tag)
            self.write_hook("postUpgrade", HookRecord("skipped"))
            return
        self.post = self.start_hook("postUpgrade", argv, self.home / self.journal.from_folder,
                                    Path(os.path.realpath(self.home / CURRENT_LINK)))

    def collect(self) -> None:
        """Called by the watch loop: a postUpgrade hook that ended or ran out of time is
        logged and recorded (a failure is a warning: the node keeps running)."""
        run = self.post
        if run is None or (run.job.returncode() is None and self.world.now() < run.deadline
                           and not self.world.stop_signal):
            return
        self.post = None
        self.settle_hook(run)
        if self.journal is not None and not self.journal.unfinished:
            self.journal = None

    def close(self) -> None:
        """Visor stops (or the next upgrade begins): a postUpgrade hook still running is
        stopped and recorded so, and the next run starts it again."""
        run, self.post = self.post, None
        if run is None:
            return
        try:
            self.settle_hook(run, stopping=True)
        except VisorError as e:  # the exit path goes on: the node must still be stopped
            self.log.error("postUpgrade hook not stopped cleanly", reason=str(e))

    def start_hook(self, name: str, argv: Tuple[str, ...], old: Path, new: Path
                   ) -> Optional[HookRun]:
        """Start a hook with the children's environment and the upgrade's facts; None when
        it cannot be started (recorded as failed). A run of it an earlier visor left (killed
        with -9) is stopped first."""
        assert self.journal is not None
        self.stop_left_hook(name)
        env = dict(self.env, VEGAVISOR_HOOK=name, VEGAVISOR_HOME=str(self.home),
                   VEGAVISOR_UPGRADE_TAG=self.journal.tag,
                   VEGAVISOR_UPGRADE_HEIGHT=str(self.journal.height),
                   VEGAVISOR_OLD_FOLDER=str(old), VEGAVISOR_NEW_FOLDER=str(new))
        now = self.world.now()
        try:
            job = self.world.run_hook(name, argv, env)
        except OSError as e:
            self.end_hook(HookRun(name, argv, None, now, now),
                          f"cannot be started: {e.strerror or e}")
            return None
        self.log.info("hook started", hook=name, argv=shlex.join(argv), pid=job.pid,
                      tag=self.journal.tag, timeout=self.config.hooks.timeout)
        # the error of an earlier failed run is cleared: this one is under way
        self.write(self.journal.step, **{HOOK_FIELDS[name]: HookRecord(
            "running", pid=job.pid, start_time=job.start_time, updated=utc_now())})
        return HookRun(name, argv, job, now, now + self.config.hooks.timeout)

    def settle_hook(self, run: HookRun, stopping: bool = False) -> Optional[HookRecord]:
        """How a hook's wait ended: it exited, it ran out of time (its group is killed), or
        visor stops (its group is killed, recorded "stopped": None)."""
        if run.job.returncode() is not None:
            return self.end_hook(run)
        stop_processes([(f"{run.name} hook", self.journal.tag if self.journal else "?",
                         run.job)], self.config.stop_signal_timeout, self.log, self.world)
        if stopping or self.world.stop_signal:
            seconds = round(self.world.now() - run.started, 3)
            self.log.info("hook stopped", hook=run.name, argv=shlex.join(run.argv),
                          code=run.job.returncode(), seconds=seconds,
                          signal=self.world.stop_signal or None)
            self.write_hook(run.name, HookRecord("stopped", run.job.returncode(), seconds,
                                                 "stopped when vegavisor stopped"))
            return None
        return self.end_hook(run, f"did not finish within {self.config.hooks.timeout:g}s "
                                  f"([hooks] timeoutSeconds); its process group was killed")

    def end_hook(self, run: HookRun, why: str = "") -> HookRecord:
        """Log and record a hook's end: ok (exit status 0), or failed and why."""
        code = run.job.returncode() if run.job is not None else None
        last = run.job.last_output() if run.job is not None else ""  # its output logged first
        if not why and code != 0:
            why = describe_exit_status(code) + (f" (last output: {last})" if last else "")
        seconds = round(self.world.now() - run.started, 3)
        facts = dict(hook=run.name, argv=shlex.join(run.argv), code=code, seconds=seconds)
        if why:
            self.log.emit("error" if run.name == "preUpgrade" else "warn", "hook failed",
                          **facts, error=why)
            record = HookRecord("failed", code, seconds, why)
        else:
            self.log.info("hook finished", **facts)
            record = HookRecord("ok", code, seconds)
        if self.journal is not None:
            self.write_hook(run.name, record)
        return record

    def stop_left_hook(self, name: str) -> None:
        """A hook an earlier visor recorded as running, and that still runs, is stopped."""
        assert self.journal is not None
        record = getattr(self.journal, HOOK_FIELDS[name])
        if record is None or record.state != "running" or not record.pid:
            return
        proc = self.world.leftover(record.pid, record.start_time)
        if proc is not None:
            self.log.warn("stopping a hook left by an earlier vegavisor", hook=name,
                          pid=record.pid)
            stop_processes([(f"{name} hook", self.journal.tag, proc)],
                           self.config.stop_signal_timeout, self.log, self.world)


def rate_limit_wait(retry_after: Optional[float]) -> float:
    """Seconds until GitHub's rate limit resets, at most an hour (its window): a bogus
    reset time or a skewed clock must not stop retries for days."""
    return min(max(retry_after or 0.0, 0.0), RATE_LIMIT_WAIT_MAX_SECONDS)


def pause(world: Any, seconds: float) -> bool:
    """Wait `seconds` unless visor is asked to stop meanwhile; False when it is."""
    deadline = world.now() + seconds
    while not world.stop_signal and world.now() < deadline:
        world.wait(deadline - world.now())
    return not world.stop_signal


# --- supervisor ---

class Phase(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    UPGRADING = "upgrading"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


class Stopped(NamedTuple):
    """Visor was asked to stop (SIGTERM or SIGINT)."""

    signal: str


class Exited(NamedTuple):
    """A child exited while it should have been running."""

    child: Child
    uptime: float


class Unreachable(NamedTuple):
    """Core's admin socket failed more polls in a row than the limit allows."""

    failures: int
    error: str


class Ready(NamedTuple):
    """Core reached the upgrade block and waits to be stopped."""

    status: UpgradeStatus


class Supervisor:
    """Runs the version HOME/current names, restarts it on crashes, upgrades it when ready.

    Its parts: Node (the processes), Prefetch (the release, before the block), Upgrade (the
    switch, journaled), Reporter (state, metrics, systemd). The world (clock, signals,
    processes, admin socket, installs) is passed in: tests drive it with a fake one.
    """

    def __init__(self, home: Path, config: Config, log: Log, world: Any,
                 env: Dict[str, str]) -> None:
        self.home, self.config, self.log, self.world = home, config, log, world
        self.reporter = Reporter(home, config, log, world)
        self.node = Node(home, config, log, world, self.reporter, env)
        self.prefetch = Prefetch(home, config, log, world, self.reporter)
        self.upgrade = Upgrade(home, config, log, world, self.reporter, self.node.env)
        self.config_file = os.path.join(home, CONFIG_FILE)  # a str: stat()ed every 2 s
        self.config_stamp = config_stamp(self.config_file)
        self.told_ready = False
        self.tag_changed = -math.inf  # when core last named another accepted release

    def enter(self, phase: Phase, **facts: Any) -> None:
        self.log.debug("phase", was=self.reporter.state.phase, now=phase.value, **facts)
        self.reporter.update(phase=phase.value)
        self.reporter.status(f"{self.reporter.state.version or 'no version yet'}: {phase.value}")

    def run(self) -> int:
        """Supervise until stopped (0) or until there is no way on (1, 2). The one exit
        path: whatever happened, the prefetch is cancelled and the children are stopped
        and recorded as gone before this returns (SPEC 3.3.2)."""
        code, ended, last_words = EXIT_FAILURE, "died", ""
        try:
            code = self.supervise()
            ended = f"stopped by {self.world.stop_signal}"
        except VisorError as e:
            code, ended, last_words = e.exit_code, f"gave up: {e}", str(e)
        except Exception as e:  # a bug must not leave a node running unrecorded
            ended = f"failed: unexpected {type(e).__name__}"
            last_words = f"unexpected {type(e).__name__}: {str(e)[:300]} at {_where(e)}"
        try:
            self.prefetch.close()
            self.upgrade.close()
            if self.reporter.state.phase != Phase.STOPPING.value:
                self.enter(Phase.STOPPING)
            self.world.notify("STOPPING=1")
            self.node.stop()
        except VisorError as e:
            self.log.error("children not stopped", reason=str(e))
            code = EXIT_FAILURE
        phase = Phase.STOPPED if code == EXIT_OK else Phase.FAILED
        self.reporter.update(phase=phase.value, ended=ended, download=None)
        if last_words:  # the last line says why, after the node is stopped
            self.log.error("giving up", reason=last_words)
        else:
            self.log.info("vegavisor stopped", signal=self.world.stop_signal)
        return code

    def supervise(self) -> int:
        # 1. clear what an earlier visor killed with -9 may have left: children, staging
        previous, problem = read_record(self.home / RUN_STATE_FILE, RunState)
        if problem:
            self.log.warn("run state unreadable; no leftover children can be recognised",
                          problem=problem)
        self.node.stop_leftovers(previous)
        remove_stale_staging(self.home)
        folder, run_config = self.open_current()
        self.check_start_up(folder, run_config)
        core_args = run_config.vega.args
        # 2. an upgrade under way when that visor died is finished before anything runs
        journal, problem = read_record(self.home / JOURNAL_FILE, Journal)
        if problem:
            self.log.warn("upgrade journal unreadable; no upgrade is resumed from it "
                          "(a node at its upgrade block upgrades again)", problem=problem)
        if journal is not None and journal.unfinished:
            self.log.warn("resuming upgrade", tag=journal.tag, height=journal.height,
                          step=journal.step)
            self.upgrade.journal = journal
            self.enter(Phase.UPGRADING, tag=journal.tag)
            if not self.upgrade.install(run_config):
                return EXIT_OK
            folder, run_config = self.open_current()
            core_args = with_snapshot_flag(run_config.vega.args, journal.height)
        elif journal is not None:
            self.upgrade.resume_post_upgrade(journal)
        limit_key, restarts = "maxNumberOfFirstConnectionRetries", 0
        while not self.world.stop_signal:
            # 3. start every binary of the current version (checked first after an upgrade)
            self.reporter.update(version=run_config.name, folder=str(folder))
            self.enter(Phase.STARTING, version=run_config.name)
            if self.upgrade.unfinished and not self.upgrade.checked:
                self.upgrade.check(self.home / CURRENT_LINK)
            self.node.start(run_config, core_args, restarts + 1)
            if self.upgrade.unfinished:
                self.upgrade.write("started")
            self.notify_ready(run_config)
            # 4. watch them and poll core's admin socket until something happens
            self.enter(Phase.RUNNING, version=run_config.name)
            outcome = self.watch(run_config, folder, limit_key)
            if isinstance(outcome, Ready):
                # 5. upgrade: stop, install or find the folder, switch current
                if not self.upgrade_at_block(outcome.status, folder, run_config):
                    break
                folder, run_config = self.open_current()
                core_args = with_snapshot_flag(run_config.vega.args, outcome.status.height)
                limit_key, restarts = "maxNumberOfFirstConnectionRetries", 0
                self.tag_changed = -math.inf  # the next release accepted is news, not a flip
                continue
            self.enter(Phase.STOPPING)
            self.node.stop()
            if isinstance(outcome, Stopped):
                break
            if isinstance(outcome, Unreachable):
                raise VisorError(self.describe_unreachable(run_config.rpc, outcome, limit_key))
            # 6. a crash: restart after a backoff, from the data node's history when there is one
            restarts = self.count_crash(outcome, restarts)
            delay = restart_delay(restarts, self.config.restarts_delay,
                                  self.config.restarts_backoff_max)
            self.log.info("restarting", delay=delay, restart=restarts,
                          limit=self.config.max_restarts)
            if not pause(self.world, delay):
                break
            core_args = self.restart_args(folder, run_config)
            # a core that loads the upgrade's snapshot again takes as long as the first time
            limit_key = "maxNumberOfFirstConnectionRetries" if self.upgrade.unfinished \
                else "maxNumberOfRestartConnectionRetries"
        return EXIT_OK

    def open_current(self) -> Tuple[Path, RunConfig]:
        """The folder HOME/current names and its run-config; a missing or broken link is
        pointed at genesis (SPEC 1.1), with a warning when it named a missing folder."""
        current = read_current(self.home)
        if current.usable:
            folder = current.folder
        else:
            genesis = self.home / GENESIS_FOLDER
            if not (genesis / RUN_CONFIG_FILE).is_file():
                raise ConfigError(f"{current.problem}; and {genesis / RUN_CONFIG_FILE} does not "
                                  f"exist either: create it (see `vegavisor init`)")
            level = "info" if current.kind == "missing" else "warn"
            self.log.emit(level, "current points at genesis now", link=str(current.link),
                          was=current.problem)
            switch_current(self.home, genesis, self.log)
            folder = genesis
        run_config, warnings = load_run_config(folder)
        for warning in warnings:
            self.log.warn("run-config warning", problem=warning)
        return folder, run_config

    def check_start_up(self, folder: Path, run_config: RunConfig) -> None:
        """What validate checks cheaply, said in the log at once (SPEC 3.2.1)."""
        auto = self.config.auto_install
        if auto.enabled:
            self.log.info("auto-install is on", repository=f"{auto.repository_owner}/"
                          f"{auto.repository}", api=auto.github_api_url,
                          asset=asset_name(auto.asset.name, host_platform()),
                          prefetch=auto.prefetch)
        else:
            self.log.info("auto-install is off: releases must be installed in their folders "
                          "before the upgrade block")
        for finding in quick_checks(self.home, self.config, folder, run_config):
            self.log.emit("error" if finding.level == "problem" else "info",
                          "start-up check", finding=finding.text)

    def notify_ready(self, run_config: RunConfig) -> None:
        """READY=1 once the node is started: a core replaying its chain for hours must not
        keep `systemctl start` waiting (STATUS says what visor waits for)."""
        if not self.told_ready:
            self.world.notify("READY=1", f"STATUS={run_config.name}: started, waiting for "
                              f"core's admin socket {run_config.rpc.socket_path}")
            self.told_ready = True

    def watch(self, run_config: RunConfig, folder: Path, limit_key: str) -> Any:
        """Poll the admin socket and watch the children until one of the outcomes happens.

        Retry limits are time, as in Go (SPEC 3.1.1): a poll that gets no answer is
        retried after pollIntervalSeconds; the fast upgrade interval applies only while
        core answers."""
        world, rpc, limit = self.world, run_config.rpc, self.limit(limit_key)
        failures, answered, started = 0, False, world.now()
        last_error: Optional[AdminError] = None
        next_poll = started + self.config.poll_interval
        next_config_check = started + self.config.poll_interval
        warnings = iter(NOT_ANSWERING_WARNINGS)
        next_warning = started + next(warnings)
        while not world.stop_signal:
            now = turn_end = world.now()
            polling = now >= next_poll
            # config.toml is checked every pollIntervalSeconds, by a turn that polls when it
            # falls due within upgradePollIntervalSeconds: the loop need not wake for it.
            checking = world.take_reload_request() or now >= next_config_check or (
                polling and next_config_check - now < self.config.upgrade_poll_interval)
            if checking:
                self.reload_if_changed()
                limit = self.limit(limit_key)
            child = self.node.exited()
            if child is not None:
                return Exited(child, now - child.started)
            if polling:
                try:
                    status = world.poll_admin(rpc, self.config.rpc_timeout)
                except AdminError as e:
                    failures, last_error = failures + 1, e
                    self.log_poll_failure(rpc, e, failures, limit, answered)
                    if failures > limit:
                        return Unreachable(failures, str(e))
                    turn_end = world.now()
                    next_poll = turn_end + self.config.poll_interval
                else:
                    if not answered or failures:
                        self.log.info("admin socket answering", socket=rpc.socket_path)
                        self.reporter.update(waiting="")
                    failures, answered = 0, True
                    if self.is_ready(status, run_config, folder):
                        return Ready(status)
                    self.note_answer(status, run_config, folder)
                    interval = (self.config.upgrade_poll_interval
                                if self.reporter.state.accepted_tag
                                else self.config.poll_interval)
                    turn_end = world.now()
                    next_poll = turn_end + interval
            if checking:  # counted from the turn's end, as polls are
                next_config_check = turn_end + self.config.poll_interval
            self.prefetch.collect()
            self.upgrade.collect()
            if not answered and now >= next_warning:
                self.warn_not_answering(rpc, now - started, failures, last_error)
                next_warning = started + next(warnings, now - started + NOT_ANSWERING_REPEAT)
            left = (next_poll if next_poll < next_config_check else next_config_check) \
                - world.now()
            world.wait(left if left > 0 else 0.0)
        return Stopped(world.stop_signal)

    def limit(self, key: str) -> int:
        return self.config.max_first_connection_retries \
            if key == "maxNumberOfFirstConnectionRetries" \
            else self.config.max_restart_connection_retries

    def is_ready(self, status: UpgradeStatus, run_config: RunConfig, folder: Path) -> bool:
        """ReadyToUpgrade to a release other than the one running; anything else is ignored
        with one line (SPEC 3.3.4): no tag, or the version already running."""
        if not status.ready:
            return False
        if not status.tag:
            self.reporter.warn_repeated("ready-no-tag", "core says ready to upgrade but names "
                                        "no release; ignored", socket=run_config.rpc.socket_path)
            return False
        running = status.tag == run_config.name
        try:
            target = folder_for_tag(self.home, status.tag, self.config.upgrade_folders)
        except VisorError as e:
            self.reporter.warn_repeated("ready-bad-tag", "core says ready to upgrade to a tag "
                                        "that names no folder; ignored", error=str(e))
            return False
        if running or os.path.realpath(target) == os.path.realpath(folder):
            self.reporter.warn_repeated("ready-same", "core says ready to upgrade to the "
                                        "version already running; ignored", tag=status.tag,
                                        folder=str(folder))
            return False
        return True

    def note_answer(self, status: UpgradeStatus, run_config: RunConfig, folder: Path) -> None:
        """A good admin answer: the upgrade journal is done, the state file current."""
        self.upgrade.answered()
        previous = self.reporter.state.accepted_tag
        if status.tag and status.tag != previous:
            now = self.world.now()
            flapping = now - self.tag_changed < REPEAT_WARNING_SECONDS
            if flapping:  # a tag that flips: one line, and the state file written as polls are
                self.reporter.warn_repeated("accepted-tag", "the accepted release keeps "
                                            "changing", tag=status.tag, height=status.height,
                                            was=previous)
            else:
                self.log.info("upgrade accepted", tag=status.tag, height=status.height)
            self.tag_changed = now
            self.reporter.update(accepted_tag=status.tag, upgrade_height=status.height,
                                 save=not flapping)
        self.reporter.note_poll()
        self.prefetch.update(status.tag, run_config, folder)

    def log_poll_failure(self, rpc: RpcConfig, error: AdminError, failures: int, limit: int,
                         answered: bool) -> None:
        facts = dict(socket=rpc.socket_path, attempt=failures, limit=limit, error=str(error))
        if answered and failures == 1:
            self.log.warn("admin socket stopped answering", **facts)
        elif failures == 1:
            self.log.info("waiting for admin socket", **facts)
        else:
            self.log.debug("admin poll failed", **facts)

    def warn_not_answering(self, rpc: RpcConfig, waited: float, failures: int,
                           last_error: Optional[AdminError]) -> None:
        """While core has never answered: at 10 s, 30 s, 1 min, then every 5 min (SPEC 3.2.1)."""
        text = (f"core's admin socket {rpc.socket_path} has not answered for {waited:.0f}s "
                f"({failures} failed polls)")
        if isinstance(last_error, BadAnswer):
            likely = ("something answers on socketPath, but not as core's admin server does: "
                      "check socketPath/httpPath against core's [Admin.Server] SocketPath/"
                      "HTTPPath, and that core is a Vega version vegavisor knows")
        else:
            likely = ("core still loading its snapshot or replaying blocks; or socketPath/"
                      "httpPath differ from core's [Admin.Server] SocketPath/HTTPPath; or "
                      "core exits at once (see its output)")
        self.log.warn("core has not answered yet", socket=rpc.socket_path,
                      waited=round(waited), failures=failures,
                      **({"last_error": str(last_error)} if last_error else {}),
                      likely=likely)
        self.reporter.update(waiting=text)
        self.reporter.status(text)

    def describe_unreachable(self, rpc: RpcConfig, outcome: Unreachable, key: str) -> str:
        return (f"core's admin socket {rpc.socket_path} failed {outcome.failures} polls in a "
                f"row, {self.config.poll_interval:g}s apart ({key} = {self.limit(key)}); "
                f"last error: {outcome.error}")

    def reload_if_changed(self) -> None:
        """config.toml saved (or SIGHUP): a valid file takes effect whole; an invalid one
        changes nothing (SPEC 3.1.4)."""
        stamp = config_stamp(self.config_file)
        if stamp == self.config_stamp:
            return
        self.config_stamp = stamp
        try:
            config, warnings = load_config(self.home)
        except VisorError as e:
            self.log.error("config reload failed; keeping the old settings", error=str(e))
            return
        for warning in warnings:
            self.log.warn("config warning", problem=warning)
        changed = changed_keys(self.config, config)
        if not changed:
            return
        for part in (self, self.node, self.prefetch, self.upgrade, self.reporter):
            part.config = config
        self.log.configure(config.logging)
        self.log.info("config reloaded", changed=",".join(changed))

    def count_crash(self, outcome: Exited, restarts: int) -> int:
        child = outcome.child
        code = child.proc.returncode()
        status = describe_exit_status(code)
        restarts = count_restart(restarts, outcome.uptime, self.config.restarts_reset_after)
        limit = self.config.max_restarts
        self.log.error("child exited", role=child.role, pid=child.proc.pid, status=status,
                       uptime=round(outcome.uptime, 3), restart=restarts, limit=limit)
        if restarts > limit:
            raise VisorError(f"{child.role} {child.argv[0]} {status}; it was restarted {limit} "
                             f"times already (maxNumberOfRestarts = {limit}), giving up")
        self.reporter.update(restarts=self.reporter.state.restarts + 1)
        self.enter(Phase.RESTARTING, restart=restarts)
        return restarts

    def restart_args(self, folder: Path, run_config: RunConfig) -> Tuple[str, ...]:
        """Core's args for a crash restart: before the upgraded core answered, the upgrade's
        snapshot again (SPEC 3.1.10); else from the data node's newest history segment."""
        args = run_config.vega.args
        if self.upgrade.unfinished and self.upgrade.journal is not None:
            return with_snapshot_flag(args, self.upgrade.journal.height)
        if run_config.data_node is None:
            return args
        try:
            height = latest_history_segment(self.home / CURRENT_LINK, run_config.data_node,
                                            self.world.query)
        except VisorError as e:
            self.log.warn("latest history segment unknown", error=str(e))
            return args
        if height is None:
            self.log.info("data node has no history segments; core restarts as configured")
            return args
        self.log.info("core resumes from the data node's history", height=height)
        return with_snapshot_flag(args, height)

    def upgrade_at_block(self, status: UpgradeStatus, folder: Path,
                         run_config: RunConfig) -> bool:
        """Stop the node at the upgrade block and make the new version current. False when
        visor was asked to stop meanwhile: the journal makes the next run finish it."""
        self.enter(Phase.UPGRADING, tag=status.tag)
        self.log.info("ready to upgrade", tag=status.tag, height=status.height)
        target = folder_for_tag(self.home, status.tag, self.config.upgrade_folders)
        self.upgrade.begin(status.tag, status.height, folder, target)
        self.prefetch.settle(status.tag)
        pause(self.world, self.config.stop_delay)
        self.node.stop()
        self.upgrade.write("stopped")
        if self.world.stop_signal:
            return False
        return self.upgrade.install(run_config)


def _where(e: BaseException) -> str:
    """file:line of the innermost frame of an unexpected exception, for the bug report."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f"{Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno}" if tb else "?"


def config_stamp(path: str) -> Tuple[float, int, int]:
    """What changes when config.toml is saved: mtime, size, inode (an editor's rename)."""
    try:
        st = os.stat(path)
    except OSError:
        return (0.0, -1, -1)
    return (st.st_mtime, st.st_size, st.st_ino)


# --- status and validate ---
# Both commands only read. No file in HOME is written, `current` is never switched
# (SPEC 1.1 leaves that to `run`), no binary is chmod-ed, and the run lock is only
# tested: a shared non-blocking flock on a read-only descriptor, released at once.

# Core's and the data node's own config files, under the --home of their args.
CORE_CONFIG_PATH = ("config", "node", "config.toml")
DATA_NODE_CONFIG_PATH = ("config", "data-node", "config.toml")
# A folder named like a release tag (v0.74.0, v0.74.0-preview.2) is where an upgrade
# to that tag looks (SPEC 1.2), so it must hold exactly that release.
TAG_FOLDER_RE = re.compile(r"v[0-9][0-9A-Za-z.+_-]*")
# The records `run` keeps in HOME, in the order `status` reports their problems.
STATE_RECORDS = ((RUN_STATE_FILE, RunState), (PREFETCH_STATE_FILE, PrefetchState),
                 (JOURNAL_FILE, Journal))


class Finding(NamedTuple):
    """One line of `validate`: a problem makes it fail, a note does not."""

    level: str  # "problem" or "note"
    text: str  # names the file and the key, and says what to do


_problem = functools.partial(Finding, "problem")
_note = functools.partial(Finding, "note")


def _check(schema: Table, doc: dict, path: Path) -> Tuple[Any, List[Finding]]:
    """Every problem and unknown key of a parsed file (the first problem is what _parse
    raises), and its record with None in each part that could not be read."""
    record, report = read_schema(doc, schema, path)
    return record, [_problem(text) for text in report.errors + report.warnings]


# check_config(doc, path) -> (Config, findings), and the same for a run-config
check_config = functools.partial(_check, CONFIG_SCHEMA)
check_run_config = functools.partial(_check, RUN_CONFIG_SCHEMA)


def check_runnable(where: str, path: Path) -> List[Finding]:
    """What keeps `run` from starting the binary at `path` (SPEC 1.3); changes nothing."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return [_problem(f"{where}: {path} does not exist; put the release's binary there or "
                         f"fix the path")]
    except OSError as e:
        return [_problem(f"{where}: {path} cannot be examined: {e.strerror}")]
    if not stat.S_ISREG(info.st_mode):
        return [_problem(f"{where}: {path} is not a regular file; vegavisor only starts "
                         f"regular files")]
    if not os.access(path, os.R_OK):
        return [_problem(f"{where}: {path} is not readable; vegavisor cannot add its exec "
                         f"bits: chmod a+r {shlex.quote(str(path))}")]
    if os.access(path, os.X_OK):
        return []
    if os.geteuid() not in (0, info.st_uid):
        return [_problem(f"{where}: {path} is not executable, and vegavisor (uid "
                         f"{os.geteuid()}) cannot add its exec bits: it belongs to uid "
                         f"{info.st_uid}; run chmod +x {shlex.quote(str(path))} as its owner")]
    return [_note(f"{where}: {path} is not executable: vegavisor adds the exec bits when it "
                  f"starts it")]


def check_release_version(where: str, path: Path, version: str, name: Optional[str],
                          tag: Optional[str]) -> List[Finding]:
    """A folder for release `tag` holds that release, and its run-config's name says so."""
    if tag is None:
        return []
    if version != tag:
        return [_problem(f"{where}: the binary reports version {version}, but this folder is "
                         f"for release {tag}: an upgrade to {tag} refuses it; put the {tag} "
                         f"binary there")]
    if name is not None and name != version:
        return [_problem(f"{path}: name = {json.dumps(name)}, but the binary reports {version}; "
                         f"set name = {json.dumps(version)}")]
    return []


def _node_config(args: Sequence[str], parts: Sequence[str], what: str
                 ) -> Tuple[Path, Optional[dict], List[Finding]]:
    """The config file of core or the data node under the --home of its args; no document
    when the args name no home, and a note as well when the file cannot be read."""
    node_home = flag_value(args, "--home")
    path = Path(node_home or ".").joinpath(*parts)
    try:
        return path, read_toml_file(path) if node_home else None, []
    except ConfigError as e:
        return path, None, [_note(f"{what} not checked: {e}")]


def check_core_admin_config(path: Path, args: Sequence[str], rpc: RpcConfig) -> List[Finding]:
    """vega.rpc must name the socket core serves: [Admin.Server] of core's own config."""
    config_path, doc, found = _node_config(args, CORE_CONFIG_PATH,
                                           f"{path}: vega.rpc against core's config")
    if doc is None:
        return found
    for ours, key, theirs_key in ((rpc.socket_path, "socketPath", "SocketPath"),
                                  (rpc.http_path, "httpPath", "HTTPPath")):
        theirs = _lookup(doc, "Admin", "Server", theirs_key)
        if theirs is None:
            found.append(_note(f"{config_path}: [Admin.Server] {theirs_key} is not set; "
                               f"{path}: vega.rpc.{key} not checked"))
        elif theirs != ours:  # a path shown whole, as ours is: the two are to be compared
            found.append(_problem(
                f"{path}: vega.rpc.{key} = {json.dumps(ours)}, but core's {config_path} has "
                f"[Admin.Server] {theirs_key} = {_show(theirs, 200)}: vegavisor would never "
                f"reach core; make them the same"))
    return found


def check_data_node_store(path: Path, args: Sequence[str]) -> List[Finding]:
    """Embedded Postgres does not survive an upgrade under Visor (SPEC 1.6)."""
    config_path, doc, found = _node_config(args, DATA_NODE_CONFIG_PATH,
                                           f"{path}: data_node's SQLStore.UseEmbedded")
    if _lookup(doc, "SQLStore", "UseEmbedded") is True:
        found.append(_problem(
            f"{config_path}: [SQLStore] UseEmbedded = true: embedded Postgres is not supported "
            f"under Visor: the upgrade fails; run Postgres yourself and set UseEmbedded = false"))
    return found


def check_home_writable(home: Path) -> List[Finding]:
    """`run` keeps its lock, state files and `current` in HOME, so it must write there."""
    lock = home / LOCK_FILE
    if not os.access(home, os.W_OK | os.X_OK):
        return [_problem(f"{home} is not writable by uid {os.geteuid()}: `vegavisor run` keeps "
                         f"its lock, state files and the current link there; give the home to "
                         f"the user that runs vegavisor (chown -R)")]
    if lock.exists() and not os.access(lock, os.R_OK | os.W_OK):
        return [_problem(f"{lock} is not writable by uid {os.geteuid()}: `vegavisor run` locks "
                         f"it; remove it or give it to the user that runs vegavisor")]
    return []


def check_metrics_file(path: Path, metrics_file: str) -> List[Finding]:
    """The folder of metricsFile must exist and take new files (it is replaced atomically)."""
    folder = Path(metrics_file).parent
    if not metrics_file:
        return []
    if not folder.is_dir():
        return [_problem(f"{path}: metricsFile = {json.dumps(metrics_file)}: {folder} is not a "
                         f"folder; create it or change metricsFile")]
    if not os.access(folder, os.W_OK | os.X_OK):
        return [_problem(f"{path}: metricsFile = {json.dumps(metrics_file)}: {folder} is not "
                         f"writable by uid {os.geteuid()}; give it to the user that runs "
                         f"vegavisor or change metricsFile")]
    return []


def _binaries(folder: Path, run_config: RunConfig) -> List[Tuple[str, Path]]:
    """Each binary a run-config starts, with its key; core and data node are often one."""
    binaries: Dict[Path, str] = {}
    for key, binary in (("vega.binary.path", run_config.vega),
                        ("data_node.binary.path", run_config.data_node)):
        if binary is not None:
            binaries.setdefault(resolve_binary(folder, binary), key)
    return [(key, path) for path, key in binaries.items()]


def quick_checks(home: Path, config: Config, folder: Path, run_config: RunConfig
                 ) -> List[Finding]:
    """What `validate` checks that `run` can afford at start-up (SPEC 3.2.1): no binary
    is run, nothing goes over the network, nothing is changed."""
    path = folder / RUN_CONFIG_FILE
    found = check_home_writable(home) + check_metrics_file(home / CONFIG_FILE,
                                                           config.metrics_file)
    for key, binary in _binaries(folder, run_config):
        found += check_runnable(f"{path}: {key}", binary)
    return found + check_core_admin_config(path, run_config.vega.args, run_config.rpc)


def check_folder(folder: Path, tag: Optional[str], timeout: float) -> List[Finding]:
    """One version folder: its run-config, what its binaries report, and core's and the
    data node's config."""
    path = folder / RUN_CONFIG_FILE
    try:
        run_config, found = check_run_config(read_toml_file(path), path)
    except ConfigError as e:
        return [_problem(str(e))]
    for key, binary in _binaries(folder, run_config):
        where = f"{path}: {key}"
        problems = check_runnable(where, binary)
        if not problems:
            try:
                version = query_version(binary, timeout)
            except VisorError as e:
                problems = [_problem(f"{where}: {e}")]
            else:
                problems = check_release_version(where, path, version, run_config.name, tag)
        found += problems
    if run_config.vega is not None and run_config.rpc is not None:
        found += check_core_admin_config(path, run_config.vega.args, run_config.rpc)
    if run_config.data_node is not None:
        found += check_data_node_store(path, run_config.data_node.args)
    return found


def home_folders(home: Path) -> List[Path]:
    """HOME's folders by name, but not `current` nor hidden ones (lock, state, staging)."""
    try:
        entries = sorted(home.iterdir())
    except OSError:
        return []
    return [p for p in entries
            if p.is_dir() and p.name != CURRENT_LINK and not p.name.startswith(".")]


def version_folders(home: Path, upgrade_folders: Dict[str, str]) -> List[Path]:
    """HOME's version folders, each once: its own, the subfolders upgradeFolders maps tags
    to, and the folder `current` runs when it is neither (e.g. releases/v1, /opt/vega/v1)."""
    mapped = {home / name for name in upgrade_folders.values() if "/" in name}
    folders = home_folders(home) + sorted(p for p in mapped if p.is_dir())
    current = read_current(home)
    if current.usable and current.folder is not None and os.path.realpath(current.folder) \
            not in {os.path.realpath(p) for p in folders}:
        folders.append(current.folder)
    return folders


def folder_name(home: Path, folder: Path) -> str:
    """A version folder as upgradeFolders and the journal name it: relative to HOME (a
    subfolder such as releases/v2 keeps its path), else absolute; HOME / it is the folder."""
    try:
        return str(folder.relative_to(home))
    except ValueError:
        return str(folder)


def folder_tag(name: str, upgrade_folders: Dict[str, str]) -> Optional[str]:
    """The release whose upgrade uses folder `name` (SPEC 1.2); None for genesis and others."""
    mapped = sorted(tag for tag, folder in upgrade_folders.items() if folder == name)
    if mapped:
        return mapped[0]
    if name == GENESIS_FOLDER or name in upgrade_folders or not TAG_FOLDER_RE.fullmatch(name):
        return None
    return name


def validate_home(home: Path, timeout: float) -> Tuple[List[Finding], int]:
    """Every problem of a home in one pass, and how many version folders were checked."""
    if not home.is_dir():
        return [_problem(not_a_home(home))], 0
    found = check_home_writable(home)
    # 1. vegavisor's own config.toml, and the folder of its metricsFile
    path = home / CONFIG_FILE
    upgrade_folders: Dict[str, str] = {}
    try:
        config, problems = check_config(read_config_toml(home), path)
        found += problems + check_metrics_file(path, config.metrics_file or "")
        upgrade_folders = config.upgrade_folders or {}
    except ConfigError as e:
        found.append(_problem(str(e)))
    # 2. the current link; missing is how the Go Visor's init leaves a home (SPEC 3.1.11)
    current = read_current(home)
    usable = current.kind == "missing" and (home / GENESIS_FOLDER / RUN_CONFIG_FILE).is_file()
    found += [(_note if usable else _problem)(current.problem)] if current.problem else []
    # 3. every version folder: run-config, binaries, and core's and the data node's config
    checked = 0
    for folder in version_folders(home, upgrade_folders):
        tag = folder_tag(folder_name(home, folder), upgrade_folders)
        if tag is not None and not TAG_FOLDER_RE.fullmatch(tag):
            found.append(_note(f"{folder} is for {tag!r}, which is not a release tag (the Go "
                               f"Visor's init writes such an example): not checked"))
        elif (folder / RUN_CONFIG_FILE).is_file():
            found += check_folder(folder, tag, timeout)
            checked += 1
        elif tag is not None:
            found.append(_problem(f"{folder} holds no {RUN_CONFIG_FILE}: an upgrade to {tag} "
                                  f"stops there; finish preparing it or remove it"))
    return found, checked


def run_lock_holder(home: Path) -> Optional[int]:
    """The pid of the `run` holding HOME's lock (0: not written yet), None when none does.
    The file is opened read-only and never created; the shared lock that tests it is
    released at once."""
    try:
        fd = os.open(home / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise VisorError(f"{home / LOCK_FILE} cannot be read: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except BlockingIOError:
        text = os.read(fd, 64).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else 0
    finally:
        os.close(fd)


def read_state_records(home: Path) -> Tuple[List[Any], List[str]]:
    """The records of STATE_RECORDS (None: absent or unreadable), and the problems."""
    records, problems = [], []
    for name, kind in STATE_RECORDS:
        record, problem = read_record(home / name, kind)
        records.append(record)
        problems += [f"{problem}; `vegavisor run` rewrites it"] if problem else []
    return records, problems


def children_json(children: Sequence[ChildRecord]) -> List[Dict[str, Any]]:
    return [{"role": c.role, "pid": c.pid, "argv": list(c.argv), "startTime": c.start_time,
             "alive": is_alive(c.pid, c.start_time)} for c in children]


def run_json(holder: Optional[int], state: Optional[RunState]) -> Dict[str, Any]:
    """The `run` section. The state is fresh when the `run` holding the lock wrote it; a
    stale one is how the last `run` ended, in its words or "died" when it could not say,
    and its children may be left running."""
    running = holder is not None
    fresh = running and state is not None and holder in (0, state.pid)
    gone = state if state is not None and not running else None
    stale = state if state is not None and not fresh else None
    shown = state.to_json() if state is not None and (fresh or state.ended) else {}
    return {
        "running": running,
        "pid": (holder or (state.pid if fresh else None)) if running else None,
        **{key: shown.get(key) for key in ("phase", "started", "version", "folder",
                                           "restarts", "lastPollOk")},
        "acceptedReleaseTag": shown.get("acceptedTag"),
        "upgradeBlockHeight": shown.get("upgradeHeight"),
        "waiting": shown.get("waiting") if fresh else None,
        "download": shown.get("download") if fresh else None,
        "ended": gone and (gone.ended or f"died without a word (kill -9, OOM or power "
                                         f"loss?); pid {gone.pid}"),
        "endedAt": gone and (gone.updated or None),
        "children": children_json(state.children) if fresh and state else [],
        "stale": stale is not None,
        "stalePid": stale and stale.pid,
        # children a vegavisor that died (kill -9) may have left running
        "leftoverChildren": children_json(stale.children) if stale else [],
    }


def journal_json(journal: Optional[Journal]) -> Dict[str, Optional[dict]]:
    """lastUpgrade and upgradeInProgress from the upgrade journal: step "done" is finished."""
    if journal is None:
        return {"lastUpgrade": None, "upgradeInProgress": None}
    facts = {"tag": journal.tag, "height": journal.height, "from": journal.from_folder,
             "to": journal.to_folder}
    if not journal.unfinished:
        return {"lastUpgrade": dict(facts, finished=journal.updated), "upgradeInProgress": None}
    return {"lastUpgrade": None, "upgradeInProgress": dict(
        facts, step=journal.step, started=journal.started, updated=journal.updated,
        error=journal.error or None)}


def hooks_json(hooks: HooksConfig, journal: Optional[Journal]) -> Dict[str, Any]:
    """The hooks configured, and how the last one recorded in the journal went."""
    last = journal.last_hook() if journal is not None else None
    return {
        "preUpgrade": list(hooks.pre_upgrade) or None,
        "postUpgrade": list(hooks.post_upgrade) or None,
        "timeoutSeconds": hooks.timeout,
        "last": None if last is None else {
            "hook": last[0], "tag": journal.tag, "state": last[1].state, "code": last[1].code,
            "seconds": last[1].seconds, "error": last[1].error or None,
            "updated": last[1].updated or None},
    }


def ask_node(rpc: Optional[RpcConfig], timeout: float, request_id: int) -> Dict[str, Any]:
    """The `node` section: one UpgradeStatus call; no accepted release gives null tag and height."""
    node: Dict[str, Any] = {"reachable": False, "answered": False, "readyToUpgrade": None,
                            "acceptedReleaseTag": None, "upgradeBlockHeight": None,
                            "error": None, "socket": rpc.socket_path if rpc else None}
    if rpc is None:
        return dict(node, error="no run-config names core's admin socket")
    try:
        status = call_upgrade_status(rpc, timeout, request_id)
    except BadAnswer as e:  # something listens there, but not core's admin server as it should
        return dict(node, answered=True, error=str(e))
    except AdminError as e:
        return dict(node, error=str(e))
    return dict(node, reachable=True, answered=True, readyToUpgrade=status.ready,
                acceptedReleaseTag=status.tag or None,
                upgradeBlockHeight=status.height if status.tag else None)


def current_json(current: CurrentLink, run_config: Optional[RunConfig], problems: List[str]
                 ) -> Optional[Dict[str, Any]]:
    """The `current` section: the folder it names, and the version its core binary reports
    (why not, in `problems`)."""
    if current.kind == "missing":
        return None
    version = None
    if current.usable and run_config is not None:
        try:
            version = query_version(resolve_binary(current.link, run_config.vega),
                                    STATUS_VERSION_TIMEOUT_SECONDS)
        except VisorError as e:
            problems.append(f"current: {e}")
    return {"folder": str(current.folder), "name": run_config.name if current.usable
            and run_config else None, "version": version, "error": current.problem or None}


def describe_installed(home: Path, upgrade_folders: Dict[str, str]) -> List[Dict[str, Any]]:
    """Every version folder holding a run-config: its folder and name."""
    installed = []
    for folder in version_folders(home, upgrade_folders):
        if not (folder / RUN_CONFIG_FILE).is_file():
            continue
        try:
            installed.append({"folder": str(folder), "name": load_run_config(folder)[0].name})
        except VisorError as e:
            installed.append({"folder": str(folder), "name": None, "error": str(e)})
    return installed


def collect_status(home: Path, request_id: int) -> Dict[str, Any]:
    """What `status` shows (its JSON form), read without changing a file; each thing that
    cannot be read is a problem, not the end of the report (SPEC 3.2.3)."""
    problems: List[str] = []
    # 1. the config (a broken one is reported; defaults stand in)
    try:
        config, warnings = load_config(home)
        problems += [f"config: {w}" for w in warnings]
    except VisorError as e:
        config = parse_config({}, home / CONFIG_FILE)[0]
        problems.append(f"config: {e}")
    # 2. which version is current, and its run-config
    current = read_current(home)
    problems += [f"current: {current.problem}"] if current.problem else []
    folder = current.folder if current.usable else home / GENESIS_FOLDER
    run_config = None
    if (folder / RUN_CONFIG_FILE).is_file():
        with contextlib.suppress(VisorError):
            run_config = load_run_config(folder)[0]
    # 3. whether a `run` holds the home, and what the records say
    try:
        holder = run_lock_holder(home)
    except VisorError as e:
        holder = None
        problems.append(f"run: {e}")
    (state, prefetch, journal), record_problems = read_state_records(home)
    problems += record_problems
    # 4. what core says, and what current's core binary says it is
    node = ask_node(run_config.rpc if run_config else None, config.rpc_timeout, request_id)
    report = {
        "home": str(home),
        "current": current_json(current, run_config, problems),
        "installed": describe_installed(home, config.upgrade_folders),
        "node": node,
        "run": run_json(holder, state),
        "prefetch": prefetch.to_json() if prefetch else None,
        **journal_json(journal),
        "hooks": hooks_json(config.hooks, journal),
        "problems": problems,
    }
    report["problems"] += status_problems(report, config)
    return report


def status_problems(report: Dict[str, Any], config: Config) -> List[str]:
    """Each thing in the report an operator must act on, with what to do next."""
    home, run, node = report["home"], report["run"], report["node"]
    problems = [f"installed: {entry['error']}" for entry in report["installed"]
                if entry.get("error")]
    leftovers = [f"{c['role']} pid {c['pid']}" for c in run["leftoverChildren"] if c["alive"]]
    if leftovers:
        problems.append(f"run: {', '.join(leftovers)}, started by vegavisor pid "
                        f"{run['stalePid']} which is gone, still run; the next "
                        f"`vegavisor run --home {home}` stops them first")
    upgrading = run["running"] and run["phase"] in ("upgrading", "stopping", "restarting")
    if node["answered"] and not node["reachable"]:
        problems.append(f"node: {node['socket']} answers, but not as core's admin server "
                        f"does: {node['error']}; check that socketPath and httpPath name "
                        f"core's [Admin.Server] SocketPath and HTTPPath")
    elif not node["reachable"] and not upgrading:
        hint = (f"vegavisor run (pid {run['pid']}) is running: "
                + (run["waiting"] or "core may still be starting; see its log")
                if run["running"] else f"is `vegavisor run --home {home}` running?")
        where = f" at {node['socket']}" if node["socket"] else ""
        problems.append(f"node: not reachable{where}: {node['error']}; {hint}")
    prefetch = report["prefetch"]
    # ("missing", auto-install off: the accepted release's own problem below says it)
    if prefetch and prefetch["state"] == "failed" \
            and prefetch["tag"] == node["acceptedReleaseTag"]:
        problems.append(f"prefetch: {prefetch['tag']}: {prefetch['lastError'] or 'failed'} "
                        f"(attempt {prefetch['attempts']}); fix the cause before the upgrade "
                        f"block")
    problems += _accepted_release_problems(report, config)
    hook, step = report["hooks"]["last"], report["upgradeInProgress"]
    if hook and hook["state"] == "failed":
        todo = (f"fix it, then start `vegavisor run --home {home}`: it runs the hook again"
                if hook["hook"] == "preUpgrade" else "the node runs on; do by hand what it did not")
        problems.append(f"hooks: the {hook['hook']} hook failed for the upgrade to {hook['tag']} "
                        f"({hook['error'] or ''}, {hook['updated'] or ''}); {todo}")
    if step and not run["running"]:
        problems.append(f"upgrade: the upgrade to {step['tag']} stopped at step "
                        f"{step['step']} ({step['updated']}) and no vegavisor is running; "
                        f"read its last log lines, then start `vegavisor run --home {home}`: "
                        f"it finishes the upgrade")
    return problems


def _accepted_release_problems(report: Dict[str, Any], config: Config) -> List[str]:
    tag, height = report["node"]["acceptedReleaseTag"], report["node"]["upgradeBlockHeight"]
    if not tag or config.auto_install.enabled:
        return []
    try:
        folder = folder_for_tag(Path(report["home"]), tag, config.upgrade_folders)
    except VisorError as e:
        return [f"upgrade: {e}"]
    if any(entry["folder"] == str(folder) for entry in report["installed"]):
        return []
    return [f"upgrade: {tag} is accepted for block {height}, but {folder} holds no "
            f"{RUN_CONFIG_FILE} and auto-install is off: install it before the block"]


def format_status(report: Dict[str, Any]) -> str:
    """The human form of the report: aligned label/value lines, then the problems."""
    run, hooks = report["run"], report["hooks"]
    step, last = report["upgradeInProgress"], report["lastUpgrade"]
    rows = [("home", report["home"]),
            ("current", _current_words(report["current"])),
            ("installed", _installed_words(report["installed"], report["current"])),
            ("vegavisor", _run_words(run)),
            ("node", _node_words(report["node"])),
            ("download", run["download"] and _download_words(run["download"])),
            ("prefetch", report["prefetch"] and _prefetch_words(report["prefetch"])),
            ("upgrading", step and f"{_upgrade_words(step)}: step {step['step']} since "
                                   f"{step['updated']}"),
            ("last upgrade", last and f"{_upgrade_words(last)}, finished {last['finished']}"),
            ("hooks", _hooks_words(hooks)),
            ("last hook", hooks["last"] and _last_hook_words(hooks["last"]))]
    rows = [(label, text) for label, text in rows if text]
    width = max(len(label) for label, _ in rows) + 2
    lines = [label.ljust(width) + text for label, text in rows]
    if not report["problems"]:
        return "\n".join(lines + ["no problems"])
    return "\n".join(lines + ["problems:"] + [f"  - {p}" for p in report["problems"]])


def _current_words(current: Optional[Dict[str, Any]]) -> str:
    if current is None:
        return "missing (see problems)"
    if current["error"]:
        return f"{current['folder']} (broken: see problems)"
    said = current["version"] or "version unknown"
    return f"{current['folder']}: {current['name']}" + (
        f" (its binary says {said})" if said != current["name"] else "")


def _installed_words(installed: List[Dict[str, Any]], current: Optional[Dict[str, Any]]) -> str:
    in_use = os.path.realpath(current["folder"]) if current and not current["error"] else None
    words = []
    for entry in installed:
        name = Path(entry["folder"]).name
        facts = [] if entry["name"] == name else [entry["name"] or "unreadable run-config"]
        facts += ["current"] if os.path.realpath(entry["folder"]) == in_use else []
        words.append(name + (f" ({', '.join(facts)})" if facts else ""))
    return ", ".join(words) or "nothing"


def _run_words(run: Dict[str, Any]) -> str:
    if not run["running"]:
        since = f" since {run['endedAt']}" if run["endedAt"] else ""
        ended = f"{since}: {run['ended']}" if run["ended"] else ""
        return "not running" + ended
    pid = f"pid {run['pid']}" if run["pid"] else "starting"
    words = [f"running ({pid})" + (f", node {run['phase']}" if run["phase"] else "")]
    words += [f"{run['restarts']} crash restarts"] if run["restarts"] is not None else []
    words += [f"last good poll {run['lastPollOk']}"] if run["lastPollOk"] else []
    gone = [f"{c['role']} pid {c['pid']}" for c in run["children"] if c["alive"] is False]
    words += [f"gone: {', '.join(gone)}"] if gone else []
    return ", ".join(words)


def _node_words(node: Dict[str, Any]) -> str:
    if node["answered"] and not node["reachable"]:
        return f"answers at {node['socket']}, but not as core does"
    if not node["reachable"]:
        return f"not reachable at {node['socket']}" if node["socket"] else "not reachable"
    if not node["acceptedReleaseTag"]:
        return "reachable; no upgrade accepted"
    ready = "ready to upgrade" if node["readyToUpgrade"] else "not ready yet"
    return (f"reachable; upgrade to {node['acceptedReleaseTag']} accepted for block "
            f"{node['upgradeBlockHeight']}, {ready}")


def _download_words(download: Dict[str, Any]) -> str:
    done, total = download.get("done"), download.get("total")
    words = [f"{download.get('tag')}: {done} of {total or '?'} bytes"]
    words += [f"{download['rate']:.0f} B/s"] if download.get("rate") else []
    words += [f"ETA {download['eta']:.0f}s"] if download.get("eta") is not None else []
    return ", ".join(words)


def _upgrade_words(upgrade: Dict[str, Any]) -> str:
    return (f"{upgrade['from']} -> {upgrade['to']} ({upgrade['tag']} at block "
            f"{upgrade['height']})")


def _hooks_words(hooks: Dict[str, Any]) -> str:
    words = [f"{name} {shlex.join(hooks[name])}" for name in HOOK_FIELDS if hooks[name]]
    return "; ".join(words + [f"timeout {hooks['timeoutSeconds']:g}s"]) if words else "none"


def _last_hook_words(last: Dict[str, Any]) -> str:
    why = f" ({last['error']})" if last["error"] else ""
    return (f"{last['hook']} of {last['tag']} {last['state']}{why} after {last['seconds']:g}s"
            + (f", {last['updated']}" if last["updated"] else ""))


def _prefetch_words(prefetch: dict) -> str:
    tag, state, attempts = prefetch.get("tag"), prefetch.get("state"), prefetch.get("attempts")
    what = {"staged": f"{tag} staged in {prefetch.get('folder')}",
            "checked": f"{tag} prepared in {prefetch.get('folder')}, versions checked",
            "checking": f"checking {tag} in {prefetch.get('folder')}",
            "downloading": f"downloading {tag} (attempt {attempts})",
            "missing": f"{tag} not installed in {prefetch.get('folder')}, auto-install off",
            "failed": f"{tag} failed (attempt {attempts}): {prefetch.get('lastError')}",
            "cancelled": f"{tag} cancelled"}
    return what.get(state, f"{tag}: {state}") + f", updated {prefetch.get('updated')}"


def cmd_status(args: argparse.Namespace) -> int:
    report = collect_status(resolve_home(args), random.Random().getrandbits(63))
    print(json.dumps(report, indent=2) if args.output == "json" else format_status(report))
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    home = resolve_home(args)
    findings, folders = validate_home(home, BINARY_QUERY_TIMEOUT_SECONDS)
    for finding in findings:
        print(f"{finding.level}: {finding.text}")
    problems = sum(1 for f in findings if f.level == "problem")
    notes = len(findings) - problems
    found = f"{problems} problem{'s' * (problems != 1)}" if problems else "no problems"
    noted = f"{notes} note{'s' * (notes != 1)}, " if notes else ""
    print(f"{found} in {home} ({noted}{folders} version folder{'s' * (folders != 1)} checked)")
    return EXIT_FAILURE if problems else EXIT_OK


# --- init templates ---

CONFIG_TEMPLATE = """\
# vegavisor configuration: the original Vega Visor's config.toml, plus vegavisor's
# own keys (all optional). Durations are in seconds; fractions are allowed.

# Consecutive failed admin polls allowed on a first start or right after an upgrade
# before vegavisor gives up (about 4 days at 2 s).
maxNumberOfFirstConnectionRetries = 175000
# The same limit after a crash restart.
maxNumberOfRestartConnectionRetries = 10
# Crash restarts before vegavisor exits with an error.
maxNumberOfRestarts = 3
# Pause before a crash restart; doubles on each restart up to restartsBackoffMaxSeconds.
restartsDelaySeconds = 5
restartsBackoffMaxSeconds = 60
# A node that stayed up this long starts its restart count afresh.
restartsResetAfterSeconds = 600
# Pause between core saying ReadyToUpgrade and SIGTERM.
stopDelaySeconds = 0
# Grace after SIGTERM before SIGKILL.
stopSignalTimeoutSeconds = 15
# Admin socket poll period, and the faster one once an upgrade is accepted.
pollIntervalSeconds = 2
upgradePollIntervalSeconds = 0.25
# Timeout of one admin call (connect and read).
rpcTimeoutSeconds = 5
# A node_exporter textfile-collector file kept current; "" is off.
metricsFile = ""

# The folder of a release is HOME/<tag> unless mapped here: tag = "folder name".
[upgradeFolders]
# "v0.74.0" = "v0.74.0-custom"

[autoInstall]
# Download the release when its folder does not exist. Without this key (or this
# table) auto-install is off, as in the original Visor.
enabled = true
repositoryOwner = "vegaprotocol"
repository = "vega"
githubApiUrl = "https://api.github.com"
# Download, verify and stage an accepted release long before the upgrade block;
# a failed attempt is retried after this delay, doubling up to 10 minutes.
prefetch = true
prefetchRetryDelaySeconds = 30
# A GitHub request or download that sends nothing for this long has failed.
httpTimeoutSeconds = 60
# Refuse an asset whose SHA-256 is not known (GitHub digest or [autoInstall.checksums]).
requireChecksum = false

# SHA-256 of a release's asset, pinned by the operator: tag = "sha256:<hex>".
[autoInstall.checksums]
# "v0.74.0" = "sha256:..."

[autoInstall.asset]
# {os} and {arch} are filled in from this host (linux/darwin, amd64/arm64).
name = "vega-{os}-{arch}.zip"
binaryName = "vega"

[logging]
# "text" or "json" (one object a line); level: "debug", "info", "warn" or "error".
format = "text"
level = "info"

# Programs run around an upgrade (absolute paths; they must be safe to run twice).
# preUpgrade: after the node stopped at the block, before current is switched; if it
# fails or times out the upgrade stops there. postUpgrade: once the new core answers;
# a failure is a warning. Environment: VEGAVISOR_UPGRADE_TAG, VEGAVISOR_UPGRADE_HEIGHT,
# VEGAVISOR_OLD_FOLDER, VEGAVISOR_NEW_FOLDER, VEGAVISOR_HOME. Uncomment to use.
# [hooks]
# preUpgrade = ["/usr/local/bin/backup-vega-state", "--quick"]
# postUpgrade = ["/usr/local/bin/notify", "upgraded"]
# timeoutSeconds = 300
"""

RUN_CONFIG_TEMPLATE = """\
# How vegavisor runs this version (the original Visor's run-config.toml).
name = "genesis"

[vega]
  [vega.binary]
    # A relative path is relative to this folder: put the vega binary here.
    path = "vega"
    args = ["node", "--home", "/home/vega/.vega", "--tendermint-home", "/home/vega/.tendermint"]
  [vega.rpc]
    # Must match [Admin.Server] SocketPath and HTTPPath in core's config.toml.
    socketPath = "/tmp/vega.sock"
    httpPath = "/rpc"
"""

DATA_NODE_TEMPLATE = """
[data_node]
  [data_node.binary]
    path = "vega"
    args = ["datanode", "start", "--home", "/home/vega/.vega"]
"""


# --- config ---
# `vegavisor config` shows every setting in effect and where it comes from. It walks
# the same schemas that `run` and `validate` read (CONFIG_SCHEMA, RUN_CONFIG_SCHEMA):
# a key added there is listed here with no change. Like `status`, it only reads.

class EnvVariable(NamedTuple):
    """An environment variable vegavisor (or Python's urllib and ssl for it) reads."""

    name: str
    use: str  # what it does; {api} is githubApiUrl
    secret: bool = False  # never shown: only whether it is set
    url: bool = False  # shown without user:password@ and query (redact_url)


ENVIRONMENT = (
    EnvVariable("GITHUB_TOKEN", "sent only to {api} (Authorization: Bearer), never logged, "
                "not passed to the node", secret=True),
    EnvVariable("VEGAVISOR_HOME", "the home when --home is not given"),
    EnvVariable("https_proxy", "proxy for https requests to GitHub (Python's urllib)", url=True),
    EnvVariable("http_proxy", "proxy for http requests to a loopback mirror", url=True),
    EnvVariable("no_proxy", "hosts reached without the proxy"),
    EnvVariable("SSL_CERT_FILE", "CA certificates trusted for https (OpenSSL)"),
    EnvVariable("SSL_CERT_DIR", "folder of CA certificates trusted for https (OpenSSL)"),
    EnvVariable("NOTIFY_SOCKET", "systemd Type=notify: `run` reports READY and STATUS there"),
    EnvVariable("WATCHDOG_USEC", "systemd WatchdogSec: `run` pings the watchdog twice as often"),
    EnvVariable("WATCHDOG_PID", "the process systemd's watchdog is meant for"),
)


def settings_in_effect(raw: dict, fields: Sequence[Any], where: str = "") -> List[Dict[str, Any]]:
    """Every key of a schema in schema order, tables dotted ("autoInstall.asset.name"): its
    value in effect (None: a table the file may leave out), its source ("file", or
    "default" when the file does not set it) and its default (None: the file must set it).
    `raw` has been read with the same schema already, so every check here passes."""
    settings: List[Dict[str, Any]] = []
    for field in fields:
        if isinstance(field, Table) and (field.name in raw or field.missing is not ABSENT):
            inner = f"{where}{field.name}." if field.name else where
            settings += settings_in_effect(raw.get(field.name, {}) if field.name else raw,
                                           field.fields, inner)
            continue
        if isinstance(field, Map):
            value = {name: field.check(v) for name, v in raw.get(field.name, {}).items()}
            default = {}
        elif isinstance(field, Table):  # a table the file may leave out, left out
            value = default = None
        elif field.attr and hasattr(field, "check"):  # a Key, or a new kind of key
            default = getattr(field, "default", REQUIRED)
            default = None if default is REQUIRED else default
            value = field.check(raw[field.name]) if field.name in raw else default
        else:
            continue
        settings.append({"key": where + field.name, "value": value,
                         "source": "file" if field.name in raw else "default",
                         "default": default})
    return settings


def environment_json(env: Dict[str, str], api_url: str) -> List[Dict[str, Any]]:
    """Each variable of ENVIRONMENT: whether it is set and, unless secret, its value. The
    token's use names only scheme://host[:port] of the API URL."""
    api = urllib.parse.urlsplit(redact_url(api_url))
    found = []
    for variable in ENVIRONMENT:
        value = env.get(variable.name, env.get(variable.name.upper()))
        shown = None if value is None or (variable.secret and value) else (
            redact_url(value) if variable.url else printable(value))
        found.append({"name": variable.name, "set": value is not None, "value": shown,
                      "use": variable.use.format(api=f"{api.scheme}://{api.netloc}")})
    return found


def auto_install_json(auto: AutoInstallConfig, host: Tuple[str, str]) -> Dict[str, Any]:
    return {"enabled": auto.enabled, "asset": asset_name(auto.asset.name, host),
            "assetTemplate": auto.asset.name, "os": host[0], "arch": host[1],
            "binaryName": auto.asset.binary_name,
            "repository": f"{auto.repository_owner}/{auto.repository}",
            "apiUrl": auto.github_api_url,
            "releaseUrl": f"{auto.github_api_url}/repos/{auto.repository_owner}/"
                          f"{auto.repository}/releases/tags/{{tag}}"}


def tags_json(home: Path, config: Config, current_name: str, in_use: Path
              ) -> Tuple[List[Dict[str, Any]], List[str]]:
    """Every tag this home knows (upgradeFolders, its folders, `current`, the state files),
    the folder an upgrade to it uses, whether that is there and whether it is the folder
    `current` runs (in_use); and the problems of the state files read on the way."""
    (state, prefetch, journal), problems = read_state_records(home)
    known = [(tag, "upgradeFolders") for tag in config.upgrade_folders]
    known += [(folder_tag(folder_name(home, folder), config.upgrade_folders), "folder")
              for folder in version_folders(home, config.upgrade_folders)]
    known += [(current_name if current_name != GENESIS_FOLDER else None, "current"),
              (state and state.accepted_tag, "accepted"), (prefetch and prefetch.tag, "prefetch"),
              (journal and journal.tag, "journal")]
    rows = []
    for tag in sorted({tag for tag, _ in known if tag}):
        row = {"tag": tag, "folder": None, "exists": False, "runConfig": False, "current": False,
               "knownFrom": [why for known_tag, why in known if known_tag == tag], "error": None}
        try:
            folder = folder_for_tag(home, tag, config.upgrade_folders)
        except VisorError as e:
            rows.append(dict(row, error=str(e)))
            continue
        rows.append(dict(row, folder=str(folder), exists=folder.is_dir(),
                         runConfig=(folder / RUN_CONFIG_FILE).is_file(),
                         current=os.path.realpath(folder) == os.path.realpath(in_use)))
    return rows, problems


def collect_config(home: Path, home_source: str, env: Dict[str, str],
                   host: Tuple[str, str]) -> Dict[str, Any]:
    """What `config` shows (its JSON form); ConfigError as `run` gives it for a bad file."""
    # 1. config.toml, read strictly as `run` reads it (a HOME that is no folder: ConfigError)
    doc = read_config_toml(home)
    config, warnings = parse_config(doc, home / CONFIG_FILE)
    # 2. the run-config `run` would start: current's, or genesis's when current is unusable
    current = read_current(home)
    if not current.usable and not (home / GENESIS_FOLDER / RUN_CONFIG_FILE).is_file():
        raise ConfigError(current.problem)
    warnings += [current.problem] if current.problem else []
    folder = current.folder if current.usable else home / GENESIS_FOLDER
    run_doc = read_toml_file(folder / RUN_CONFIG_FILE)
    run_config, run_warnings = parse_run_config(run_doc, folder / RUN_CONFIG_FILE)
    link = home / CURRENT_LINK  # what `run` starts: HOME/current/<path> (SPEC 1.7)
    binaries = {"core": str(resolve_binary(link, run_config.vega))}
    if run_config.data_node is not None:
        binaries["dataNode"] = str(resolve_binary(link, run_config.data_node))
    # 3. the tags this home knows and their folders
    tags, tag_problems = tags_json(home, config, run_config.name, folder)
    return {
        "home": str(home),
        "homeSource": home_source,
        "config": {"file": str(home / CONFIG_FILE),
                   "settings": settings_in_effect(doc, CONFIG_SCHEMA.fields)},
        "environment": environment_json(env, config.auto_install.github_api_url),
        "runConfig": {"file": str(folder / RUN_CONFIG_FILE), "folder": str(folder),
                      "current": current.kind, "binaries": binaries,
                      "settings": settings_in_effect(run_doc, RUN_CONFIG_SCHEMA.fields)},
        "autoInstall": auto_install_json(config.auto_install, host),
        "tags": tags,
        "warnings": warnings + run_warnings + tag_problems,
    }


def format_config(report: Dict[str, Any]) -> str:
    """The human form: one setting a line (key, source, value), grouped by file."""
    config, run, auto = report["config"], report["runConfig"], report["autoInstall"]
    config_rows, run_rows = _setting_rows(config["settings"]), _setting_rows(run["settings"])
    env = [(e["name"], "environment" if e["set"] else "unset", _env_words(e))
           for e in report["environment"]]
    width = max(len(key) for key, _, _ in config_rows + run_rows + env) + 2
    via = {"link": f"via {CURRENT_LINK}", "folder": f"{CURRENT_LINK} is a folder"}.get(
        run["current"], f"{CURRENT_LINK} is {run['current']}: `vegavisor run` points it at "
                        f"{GENESIS_FOLDER}")
    lines = [f"home: {report['home']} (from {report['homeSource']})", "",
             f"{CONFIG_FILE}: {config['file']}"]
    lines += _aligned(config_rows, width)
    lines += ["", "environment:"] + _aligned(env, width)
    lines += ["", f"{RUN_CONFIG_FILE}: {run['file']} ({via})"]
    lines += _aligned(run_rows, width)
    lines += [f"  {role} starts as {path}" for role, path in run["binaries"].items()]
    lines += [""] + _auto_install_lines(auto)
    lines += ["", "tags (the folder an upgrade to each tag uses):"] + _tag_lines(
        report["tags"], auto["enabled"], os.path.dirname(run["file"]))
    if report["warnings"]:
        lines += ["", "warnings:"] + [f"  - {w}" for w in report["warnings"]]
    return "\n".join(lines)


def _setting_rows(settings: Sequence[Dict[str, Any]]) -> List[Tuple[str, str, str]]:
    """(key, source, value) lines; a table of names (upgradeFolders) one entry a line."""
    rows = []
    for s in settings:
        if isinstance(s["value"], dict) and s["value"]:
            rows += [(f"{s['key']}.{_key(name)}", s["source"], _value_words(value))
                     for name, value in s["value"].items()]
        else:
            rows.append((s["key"], s["source"], _value_words(s["value"])))
    return rows


def _aligned(rows: Sequence[Tuple[str, str, str]], width: int) -> List[str]:
    return [f"  {key.ljust(width)}{source.ljust(13)}{value}".rstrip()
            for key, source, value in rows]


def _value_words(value: Any) -> str:
    """A value as TOML writes it; a float that is whole without its ".0"."""
    if value is None:
        return "absent"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return json.dumps(value, ensure_ascii=True, default=str)


def _env_words(variable: Dict[str, Any]) -> str:
    if variable["value"] == "":
        return f"set but empty, so not used: {variable['use']}"
    if variable["set"] and variable["value"] is None:
        return f"set, value not shown: {variable['use']}"
    if variable["set"]:
        return f"{json.dumps(variable['value'])}: {variable['use']}"
    return variable["use"]


def _auto_install_lines(auto: Dict[str, Any]) -> List[str]:
    if not auto["enabled"]:
        return ["auto-install: off (a release must be installed in its folder before its "
                "block)"]
    rows = [("asset", f"{auto['asset']} (from {json.dumps(auto['assetTemplate'])} on "
                      f"{auto['os']}/{auto['arch']})"),
            ("binary", f"{auto['binaryName']} (inside the asset)"),
            ("repository", auto["repository"]),
            ("release API", auto["releaseUrl"])]
    return ["auto-install: on"] + [f"  {label.ljust(13)}{text}" for label, text in rows]


def _tag_lines(tags: Sequence[Dict[str, Any]], auto_install: bool, in_use: str) -> List[str]:
    rows = [(t["tag"], _tag_state(t, auto_install, in_use), t["folder"] or t["error"],
             ", ".join(t["knownFrom"])) for t in tags]
    if not rows:
        return ["  none"]
    widths = [max(len(row[column]) for row in rows) + 2 for column in range(3)]
    return ["  " + "".join(text.ljust(w) for text, w in zip(row, widths)) + f"from {row[3]}"
            for row in rows]


def _tag_state(tag: Dict[str, Any], auto_install: bool, in_use: str) -> str:
    if tag["error"]:
        return "no folder"
    if tag["current"]:
        return "installed, current"
    if "current" in tag["knownFrom"]:
        return f"current, runs from {in_use}"
    if tag["runConfig"]:
        return "installed"
    if tag["exists"]:
        return f"exists, no {RUN_CONFIG_FILE}"
    return "missing, auto-install downloads it" if auto_install else "missing, auto-install off"


def cmd_config(args: argparse.Namespace) -> int:
    report = collect_config(resolve_home(args), "--home" if args.home else "VEGAVISOR_HOME",
                            dict(os.environ), host_platform())
    print(json.dumps(report, indent=2, default=str) if args.output == "json"
          else format_config(report))
    return EXIT_OK


# --- commands ---

def resolve_home(args: argparse.Namespace) -> Path:
    """--home or $VEGAVISOR_HOME, absolute; `~` is expanded (the shell leaves --home=~/x)."""
    home = args.home or os.environ.get("VEGAVISOR_HOME")
    if not home:
        raise ConfigError(f"{args.command_name}: --home is required (or set VEGAVISOR_HOME)")
    return Path(os.path.abspath(os.path.expanduser(home)))


def cmd_init(args: argparse.Namespace) -> int:
    """A new home as the Go Visor's init makes it, without `current`: `run` links it to
    genesis (SPEC 3.1.11), and the operator docs' `ln -s` keeps working.
    A folder init cannot write is the operator's choice of --home: exit 2, like a
    non-empty one (SPEC 2.2), not a failure at run time."""
    home = resolve_home(args)
    genesis = home / GENESIS_FOLDER
    try:
        if home.exists() and (not home.is_dir() or any(home.iterdir())):
            raise ConfigError(f"{home} is not an empty folder; init only creates a new home")
        genesis.mkdir(parents=True)
        write_file_atomically(home / CONFIG_FILE, CONFIG_TEMPLATE)
        run_config = RUN_CONFIG_TEMPLATE + (DATA_NODE_TEMPLATE if args.with_data_node else "")
        write_file_atomically(genesis / RUN_CONFIG_FILE, run_config)
    except OSError as e:
        raise ConfigError(f"{e.filename or home}: cannot create the home: {e.strerror}; choose "
                          f"a folder this user (uid {os.geteuid()}) can write") from None
    print(f"created {home}: {CONFIG_FILE}, {GENESIS_FOLDER}/{RUN_CONFIG_FILE}")
    print(f"next: put the vega binary in {genesis}, edit {genesis / RUN_CONFIG_FILE}, then "
          f"run `vegavisor run --home {home}` (it links {CURRENT_LINK} to {GENESIS_FOLDER})")
    return EXIT_OK


def open_home(args: argparse.Namespace, stream: TextIO) -> Tuple[Path, Config, Log]:
    home = resolve_home(args)
    config, warnings = load_config(home)
    log = Log(stream, config.logging.format, config.logging.level)
    for warning in warnings:
        log.warn("config warning", problem=warning)
    return home, config, log


PYTHON_VERSION = ".".join(str(n) for n in sys.version_info[:3])  # for the start-up line


def cmd_run(args: argparse.Namespace) -> int:
    # run's log goes to standard output, as the Go Visor's does (SPEC 3.1.12)
    home, config, log = open_home(args, sys.stdout)
    if not os.access(home, os.W_OK | os.X_OK):
        raise ConfigError(f"{home} is not writable by user {_user_name()} (uid {os.getuid()}); "
                          f"vegavisor keeps its lock, state and staging folders there: "
                          f"`chown -R {_user_name()} {home}` or run as its owner")
    lock = lock_home(home)
    inbox = SignalInbox()
    inbox.install()
    env = dict(os.environ)
    world = World(inbox, Notifier(env, time.monotonic), log, env.get("GITHUB_TOKEN") or None)
    log.info("vegavisor starting", version=__version__, home=str(home), pid=os.getpid(),
             python=PYTHON_VERSION)
    try:
        return Supervisor(home, config, log, world, env).run()
    finally:
        world.close()
        inbox.restore()
        os.close(lock)


def _user_name() -> str:
    import pwd
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def cmd_prepare_upgrade(args: argparse.Namespace) -> int:
    home, config, log = open_home(args, sys.stderr)
    problem = tag_problem(args.tag)
    if problem:
        raise ConfigError(f"prepare-upgrade: {problem}")
    folder = folder_for_tag(home, args.tag, config.upgrade_folders)
    try:
        if (folder / RUN_CONFIG_FILE).is_file():
            print(f"{args.tag} is already installed in {folder}")
            return EXIT_OK
        if os.path.lexists(folder):
            raise incomplete_folder(folder, args.tag)
        current = read_current(home)
        current_config, _ = load_run_config(current.folder if current.usable
                                            else home / GENESIS_FOLDER)
    except OSError as e:
        raise VisorError(f"cannot prepare {args.tag} in {folder}: {e}") from None
    previous = signal.signal(signal.SIGTERM, stop_preparing)
    try:
        install_release(home, config, args.tag, folder, current_config,
                        os.environ.get("GITHUB_TOKEN"), log)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(f"installed {args.tag} in {folder}")
    return EXIT_OK


def stop_preparing(signum: int, frame: Optional[types.FrameType]) -> None:
    """SIGTERM ends prepare-upgrade's install where it is; its staging folder goes."""
    raise InstallCancelled("stopped by SIGTERM; nothing was installed")


def cmd_version(args: argparse.Namespace) -> int:
    print(json.dumps({"version": __version__, "python": PYTHON_VERSION})
          if args.output == "json" else f"vegavisor {__version__}")
    return EXIT_OK


class Command(NamedTuple):
    run: Callable[[argparse.Namespace], int]
    arguments: Tuple[str, ...]  # names in ARGUMENTS, in the order --help lists them
    help: str


# Every option a command may take, with add_argument's keywords.
ARGUMENTS: Dict[str, Dict[str, Any]] = {
    "--home": {"help": "vegavisor's home folder (default: $VEGAVISOR_HOME)"},
    "--with-data-node": {"action": "store_true",
                         "help": "the genesis run-config also starts a data node"},
    "tag": {"metavar": "TAG", "help": "release tag, e.g. v0.74.0"},
    "--output": {"choices": ("human", "json"), "default": "human"},
}
# Every command, in the order `--help` lists them: a new command plugs in here.
COMMANDS = {
    "init": Command(cmd_init, ("--home", "--with-data-node"),
                    "create a new home with a commented config"),
    "run": Command(cmd_run, ("--home",), "supervise the node and upgrade it when it is time"),
    "status": Command(cmd_status, ("--home", "--output"),
                      "show what is installed, what runs and what the node says"),
    "prepare-upgrade": Command(cmd_prepare_upgrade, ("--home", "tag"),
                               "install a release into its folder now, without a node"),
    "validate": Command(cmd_validate, ("--home",),
                        "check config.toml, every run-config, binaries and the admin socket"),
    "config": Command(cmd_config, ("--home", "--output"),
                      "show every setting in effect and where it comes from"),
    "version": Command(cmd_version, ("--output",), "print vegavisor's version"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vegavisor", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"vegavisor {__version__}")
    commands = parser.add_subparsers(dest="command_name", metavar="COMMAND")
    commands.required = True
    for name, command in COMMANDS.items():
        sub = commands.add_parser(name, help=command.help, description=command.help)
        for argument in command.arguments:
            sub.add_argument(argument, **ARGUMENTS[argument])
        sub.set_defaults(command=command)
    return parser


def describe_os_error(e: OSError) -> str:
    """An OSError as one line naming the path and what the system said (SPEC 3.2.2)."""
    where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    hint = {errno.EACCES: "check the owner and mode of the path (is this the right user?)",
            errno.EPERM: "check the owner and mode of the path (is this the right user?)",
            errno.EROFS: "the file system is read-only", errno.ENOSPC: "free some space",
            errno.ENAMETOOLONG: "use a shorter name"}.get(e.errno or 0, "")
    text = f"{where}: {e.strerror or e}" if where else str(e.strerror or e)
    return text + (f"; {hint}" if hint else "")


def main(argv: Optional[Sequence[str]] = None) -> int:
    reopen_closed_standard_streams()
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    try:
        return args.command.run(args)
    except VisorError as e:
        _say(f"vegavisor: error: {e}")
        return e.exit_code
    except BrokenPipeError:  # `config | head`: the reader has all it wanted
        return EXIT_FAILURE
    except OSError as e:
        _say(f"vegavisor: error: {describe_os_error(e)}")
        return EXIT_FAILURE
    except RecursionError:
        _say("vegavisor: error: input nested too deeply to read")
        return EXIT_FAILURE
    except KeyboardInterrupt:
        _say("vegavisor: interrupted")
        return EXIT_INTERRUPTED
    finally:
        _flush_quietly()


def _say(line: str) -> None:
    try:
        print(line, file=sys.stderr)
    except (OSError, ValueError):
        pass


def reopen_closed_standard_streams() -> None:
    """Started with stdin, stdout or stderr closed (`run >&- 2>&-`, some init systems),
    the first file opened would take fd 1 or 2: log lines would land in the lock file and
    children would inherit it. Each closed one is opened on /dev/null instead, and Python's
    stream for it, None then, is rebuilt."""
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
        except OSError:
            try:
                opened = os.open(os.devnull, os.O_RDWR)
            except OSError:
                continue
            if opened != fd:
                os.dup2(opened, fd)
                os.close(opened)
            if getattr(sys, name) is None:
                setattr(sys, name, open(fd, mode, closefd=False,
                                        errors="backslashreplace"))


def _flush_quietly() -> None:
    """A closed stdout (`status | head`) must not turn a result into a traceback at exit."""
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass


if __name__ == "__main__":
    raise SystemExit(main())
