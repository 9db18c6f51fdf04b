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
import datetime
import difflib
import enum
import errno
import fcntl
import ipaddress
import json
import math
import os
import platform
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
# After SIGKILL a process is gone within milliseconds unless stuck in the kernel.
LEFTOVER_KILL_WAIT_SECONDS = 5.0

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


class InstallError(VisorError):
    """A release could not be installed; nothing was left behind for its tag."""


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
_ILLEGAL_IN_COMMENT = _ILLEGAL_IN_STRING
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
_SPECIAL_FLOATS = frozenset(("inf", "nan", "+inf", "+nan", "-inf", "-nan"))
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
        import tomllib
    except ImportError:
        return _parse_toml(text)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise _from_tomllib_error(e, text) from None
    except ValueError:  # tomllib lets int()'s digit limit through: say where it is
        return _parse_toml(text)


def _from_tomllib_error(e: ValueError, text: str) -> TomlError:
    match = _TOMLLIB_WHERE_RE.match(str(e))
    if not match:  # a message format we do not know: keep it whole
        return TomlError(str(e), getattr(e, "lineno", 1), getattr(e, "colno", 1))
    if match.group(2):
        return TomlError(match.group(1), int(match.group(2)), int(match.group(3)))
    src = text.replace("\r\n", "\n")
    return _error(src, len(src), match.group(1))


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
        if char == "\n":
            pos += 1
            continue
        if not char:
            return doc.data
        if char in _KEY_INITIAL_CHARS:
            pos = _key_value_rule(src, pos, doc, header)
        elif char == "[":
            doc.explicit.update(doc.pending)
            doc.pending.clear()
            pos, header = _header_rule(src, pos, doc)
        elif char != "#":
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
        return _skip_until(src, pos + 1, "\n", _ILLEGAL_IN_COMMENT, eof_ok=True)
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
    else:
        _declare_table(src, pos, doc, key)
    if not src.startswith(closing, pos):
        raise _error(src, pos, f"Expected {closing!r} at the end of a table declaration")
    return pos + len(closing), key


def _declare_table(src: str, pos: int, doc: _Doc, key: tuple[str, ...]) -> None:
    if key in doc.explicit or _is_frozen(doc.frozen, key):
        raise _error(src, pos, f"Cannot declare table {'.'.join(key)} twice")
    doc.explicit.add(key)
    _nest(src, pos, doc.data, key)


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
    pos, part = _parse_key_part(src, pos)
    key = (part,)
    pos = _skip(src, pos, _WS)
    while src.startswith(".", pos):
        pos, part = _parse_key_part(src, _skip(src, pos + 1, _WS))
        key += (part,)
        pos = _skip(src, pos, _WS)
    return pos, key


def _parse_key_part(src: str, pos: int) -> tuple[int, str]:
    char = src[pos:pos + 1]
    if char in _BARE_KEY_CHARS:
        end = _skip(src, pos, _BARE_KEY_CHARS)
        return end, src[pos:end]
    if char == "'":
        return _parse_literal_string(src, pos)
    if char == '"':
        return _parse_basic_string(src, pos + 1, multiline=False)
    raise _error(src, pos, "Invalid initial character for a key part")


def _parse_value(src: str, pos: int) -> tuple[int, object]:
    char = src[pos:pos + 1]
    if char == '"' or char == "'":
        return _parse_string(src, pos)
    if src.startswith("true", pos):
        return pos + 4, True
    if src.startswith("false", pos):
        return pos + 5, False
    if char == "[":
        return _parse_array(src, pos)
    if char == "{":
        return _parse_inline_table(src, pos)
    return _parse_scalar(src, pos)


def _parse_scalar(src: str, pos: int) -> tuple[int, object]:
    """Dates and times, then numbers: the number pattern also matches a date's year."""
    match = _DATETIME_RE.match(src, pos)
    if match:
        return match.end(), _to_datetime(src, pos, match)
    match = _LOCAL_TIME_RE.match(src, pos)
    if match:
        return match.end(), _to_time(match.groups())
    match = _NUMBER_RE.match(src, pos)
    if match:
        return match.end(), _to_number(src, pos, match)
    for length in (3, 4):
        if src[pos:pos + length] in _SPECIAL_FLOATS:
            return pos + length, float(src[pos:pos + length])
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


def _parse_string(src: str, pos: int) -> tuple[int, str]:
    if src.startswith('"""', pos) or src.startswith("'''", pos):
        return _parse_multiline_string(src, pos)
    if src.startswith("'", pos):
        return _parse_literal_string(src, pos)
    return _parse_basic_string(src, pos + 1, multiline=False)


def _parse_literal_string(src: str, pos: int) -> tuple[int, str]:
    end = _skip_until(src, pos + 1, "'", _ILLEGAL_IN_STRING, eof_ok=False)
    return end + 1, src[pos + 1:end]


def _parse_multiline_string(src: str, pos: int) -> tuple[int, str]:
    delim = src[pos]
    pos += 3
    if src.startswith("\n", pos):  # a newline right after the opening is trimmed
        pos += 1
    if delim == "'":
        end = _skip_until(src, pos, "'''", _ILLEGAL_IN_MULTILINE_STRING, eof_ok=False)
        pos, result = end + 3, src[pos:end]
    else:
        pos, result = _parse_basic_string(src, pos, multiline=True)
    # Up to two quotes may sit right before the closing three: '''a''''' is "a''".
    extra = 0
    while extra < 2 and src.startswith(delim, pos + extra):
        extra += 1
    return pos + extra, result + delim * extra


def _parse_basic_string(src: str, pos: int, multiline: bool) -> tuple[int, str]:
    """Read from just after the opening quote(s) to just after the closing ones."""
    illegal = _ILLEGAL_IN_MULTILINE_STRING if multiline else _ILLEGAL_IN_STRING
    closing = '"""' if multiline else '"'
    parts = []
    start = pos
    while not src.startswith(closing, pos):
        char = src[pos:pos + 1]
        if char == "\\":
            parts.append(src[start:pos])
            pos, unescaped = _parse_escape(src, pos, multiline)
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
        return _skip_line_ending_backslash(src, pos + 1), ""
    if escape == "\\u" or escape == "\\U":
        return _parse_hex_char(src, pos + 2, 4 if escape == "\\u" else 8)
    if escape not in _ESCAPES:
        raise _error(src, pos + 2, "Unescaped '\\' in a string")
    return pos + 2, _ESCAPES[escape]


def _skip_line_ending_backslash(src: str, pos: int) -> int:
    """Skip the whitespace after a line-ending backslash, which must reach a newline."""
    pos = _skip(src, pos, _WS)
    if pos < len(src) and src[pos] != "\n":
        raise _error(src, pos, "Unescaped '\\' in a string")
    return _skip(src, pos, _WS_AND_NEWLINE)


def _parse_hex_char(src: str, pos: int, length: int) -> tuple[int, str]:
    digits = src[pos:pos + length]
    if len(digits) != length or not _HEX_DIGITS.issuperset(digits):
        raise _error(src, pos, "Invalid hex value")
    code = int(digits, 16)
    if 0xD800 <= code <= 0xDFFF or code > 0x10FFFF:
        raise _error(src, pos + length, "Escaped character is not a Unicode scalar value")
    return pos + length, chr(code)


_INT64_MIN, _INT64_MAX = -(2 ** 63), 2 ** 63 - 1
_WRITER_ESCAPES = types.MappingProxyType({
    "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r", '"': '\\"', "\\": "\\\\",
})


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
    if isinstance(value, int) and _INT64_MIN <= value <= _INT64_MAX:
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
    chars = []
    for char in text:
        if char in _WRITER_ESCAPES:
            chars.append(_WRITER_ESCAPES[char])
        elif char in _ASCII_CTRL:
            chars.append(f"\\u{ord(char):04x}")
        elif "\ud800" <= char <= "\udfff":
            raise ValueError(f"cannot write the lone surrogate {char!r} as TOML")
        else:
            chars.append(char)
    return '"' + "".join(chars) + '"'


# --- configuration ---

REQUIRED = object()  # a Key default meaning "the file must set it"


class Key(NamedTuple):
    """One key of a TOML table: its name in the file, the record field, check, default."""

    name: str
    attr: str
    check: Callable[[Any], Any]
    default: Any


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("expected a whole number >= 0")
    return value


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("expected a number of seconds")
    if not math.isfinite(value) or value < 0:
        raise ValueError("expected a number of seconds >= 0")
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
    return value


def _nonempty_text(value: Any) -> str:
    if not _text(value):
        raise ValueError("must not be empty")
    return value


def _texts(value: Any) -> Tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected an array of strings")
    return tuple(value)


def _choice(*options: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in options:
            raise ValueError("expected one of " + ", ".join(json.dumps(o) for o in options))
        return value
    return check


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


def _folder_name(value: Any) -> str:
    if not is_plain_name(_text(value)) or value == CURRENT_LINK:
        raise ValueError("expected a folder name inside HOME (no '/', not '.', '..' or "
                         "'current')")
    return value


def _checksum(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"sha256:[0-9a-fA-F]{64}", value):
        raise ValueError('expected "sha256:" followed by 64 hex digits')
    return value.lower()


def _rpc_path(value: Any) -> str:
    if not _nonempty_text(value).startswith("/"):
        raise ValueError('expected an HTTP path starting with "/", e.g. "/rpc"')
    return value


def _socket_path(value: Any) -> str:
    if len(os.fsencode(_nonempty_text(value))) > MAX_UNIX_SOCKET_PATH:
        raise ValueError(f"a unix socket path is limited to {MAX_UNIX_SOCKET_PATH} bytes")
    return value


CONFIG_KEYS = (
    Key("maxNumberOfFirstConnectionRetries", "max_first_connection_retries", _count, 175000),
    Key("maxNumberOfRestartConnectionRetries", "max_restart_connection_retries", _count, 10),
    Key("maxNumberOfRestarts", "max_restarts", _count, 3),
    Key("restartsDelaySeconds", "restarts_delay", _seconds, 5),
    Key("stopDelaySeconds", "stop_delay", _seconds, 0),
    Key("stopSignalTimeoutSeconds", "stop_signal_timeout", _seconds, 15),
    Key("pollIntervalSeconds", "poll_interval", _positive_seconds, 2),
    Key("upgradePollIntervalSeconds", "upgrade_poll_interval", _positive_seconds, 0.25),
    Key("rpcTimeoutSeconds", "rpc_timeout", _positive_seconds, 5),
    Key("restartsBackoffMaxSeconds", "restarts_backoff_max", _seconds, 60),
    Key("restartsResetAfterSeconds", "restarts_reset_after", _seconds, 600),
    Key("metricsFile", "metrics_file", _text, ""),
)
AUTO_INSTALL_KEYS = (
    Key("enabled", "enabled", _flag, True),
    Key("repositoryOwner", "repository_owner", _nonempty_text, "vegaprotocol"),
    Key("repository", "repository", _nonempty_text, "vega"),
    Key("githubApiUrl", "github_api_url", _api_url, "https://api.github.com"),
    Key("prefetch", "prefetch", _flag, True),
    Key("prefetchRetryDelaySeconds", "prefetch_retry_delay", _positive_seconds, 30),
    Key("httpTimeoutSeconds", "http_timeout", _positive_seconds, 60),
    Key("requireChecksum", "require_checksum", _flag, False),
)
ASSET_KEYS = (
    Key("name", "name", _asset_template, "vega-{os}-{arch}.zip"),
    Key("binaryName", "binary_name", _folder_name, "vega"),
)
LOGGING_KEYS = (
    Key("format", "format", _choice(*LOG_FORMATS), "text"),
    Key("level", "level", _choice(*LOG_LEVELS), "info"),
)
RUN_CONFIG_KEYS = (Key("name", "name", _nonempty_text, REQUIRED),)
BINARY_KEYS = (
    Key("path", "path", _nonempty_text, REQUIRED),
    Key("args", "args", _texts, ()),
)
RPC_KEYS = (
    Key("socketPath", "socket_path", _socket_path, REQUIRED),
    Key("httpPath", "http_path", _rpc_path, REQUIRED),
)


def is_plain_name(name: str) -> bool:
    """True for a name that stays inside its folder: no separators, not . or .."""
    return bool(name) and "/" not in name and "\0" not in name and name not in (".", "..")


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (str, bool, list)) else repr(value)


def _read_keys(table: dict, keys: Sequence[Key], where: str, path: Path) -> Dict[str, Any]:
    """Check the table's keys against `keys`; fills in defaults; raises for the first bad one."""
    values = {}
    for key in keys:
        name = where + key.name
        if key.name not in table:
            if key.default is REQUIRED:
                raise ConfigError(f"{path}: {name} is missing")
            values[key.attr] = key.default
            continue
        try:
            values[key.attr] = key.check(table[key.name])
        except ValueError as e:
            raise ConfigError(f"{path}: {name}: {e}, got {_show(table[key.name])}") from None
    return values


def unknown_key_warnings(
    table: dict, known: Sequence[str], where: str, path: Path,
) -> List[str]:
    """One line per key the table has but nobody reads, with the nearest valid key."""
    warnings = []
    for name in table:
        if name in known:
            continue
        nearest = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        nearest += [k for k in known if k.lower() == name.lower()]
        hint = f" (did you mean {where}{nearest[-1]}?)" if nearest else ""
        warnings.append(f"{path}: unknown key {where}{name} is ignored{hint}")
    return warnings


def _table(doc: dict, name: str, where: str, path: Path) -> dict:
    value = doc.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {where}{name} must be a table, got {_show(value)}")
    return value


def _read_map(table: dict, check: Callable[[Any], str], where: str, path: Path) -> Dict[str, str]:
    return _read_keys(table, [Key(k, k, check, REQUIRED) for k in table], where, path)


def _reject_old_assets_format(auto_install: dict, path: Path) -> None:
    if "assets" not in auto_install:
        return
    old = auto_install["assets"]
    entry = old.get("vega", {}) if isinstance(old, dict) else {}
    entry = entry if isinstance(entry, dict) else {}
    name = entry.get("asset_name", "vega-{os}-{arch}.zip")
    binary = entry.get("binary_name", "vega")
    raise ConfigError(
        f"{path}: [autoInstall.assets] is the old format, which the original Visor ignored "
        f"until the upgrade failed; replace it with [autoInstall.asset] "
        f"name = {_show(name)} and binaryName = {_show(binary)}"
    )


def parse_config(doc: dict, path: Path) -> Tuple[Config, List[str]]:
    """Turn a parsed config.toml into a Config, plus warnings for keys nobody reads."""
    auto = _table(doc, "autoInstall", "", path)
    _reject_old_assets_format(auto, path)
    asset = _table(auto, "asset", "autoInstall.", path)
    logging_table = _table(doc, "logging", "", path)
    tables = ("upgradeFolders", "autoInstall", "logging")
    warnings = (
        unknown_key_warnings(doc, [k.name for k in CONFIG_KEYS] + list(tables), "", path)
        + unknown_key_warnings(auto, [k.name for k in AUTO_INSTALL_KEYS] + ["asset", "checksums"],
                               "autoInstall.", path)
        + unknown_key_warnings(asset, [k.name for k in ASSET_KEYS], "autoInstall.asset.", path)
        + unknown_key_warnings(logging_table, [k.name for k in LOGGING_KEYS], "logging.", path)
    )
    auto_install = AutoInstallConfig(
        **_read_keys(auto, AUTO_INSTALL_KEYS, "autoInstall.", path),
        checksums=_read_map(_table(auto, "checksums", "autoInstall.", path), _checksum,
                            "autoInstall.checksums.", path),
        asset=AssetConfig(**_read_keys(asset, ASSET_KEYS, "autoInstall.asset.", path)),
    )
    config = Config(
        **_read_keys(doc, CONFIG_KEYS, "", path),
        upgrade_folders=_read_map(_table(doc, "upgradeFolders", "", path), _folder_name,
                                  "upgradeFolders.", path),
        auto_install=auto_install,
        logging=LoggingConfig(**_read_keys(logging_table, LOGGING_KEYS, "logging.", path)),
    )
    return config, warnings


def _binary(table: dict, where: str, path: Path) -> Binary:
    binary = _table(table, "binary", where, path)
    if "binary" not in table:
        raise ConfigError(f"{path}: {where}binary is missing")
    return Binary(**_read_keys(binary, BINARY_KEYS, where + "binary.", path))


def parse_run_config(doc: dict, path: Path) -> Tuple[RunConfig, List[str]]:
    """Turn a parsed run-config.toml into a RunConfig, plus warnings for unknown keys."""
    vega = _table(doc, "vega", "", path)
    rpc = _table(vega, "rpc", "vega.", path)
    if "vega" not in doc:
        raise ConfigError(f"{path}: vega is missing: it says how to run core")
    if "rpc" not in vega:
        raise ConfigError(f"{path}: vega.rpc is missing: it names core's admin socket")
    data_node = _table(doc, "data_node", "", path)
    warnings = (
        unknown_key_warnings(doc, ["name", "vega", "data_node"], "", path)
        + unknown_key_warnings(vega, ["binary", "rpc"], "vega.", path)
        + unknown_key_warnings(rpc, [k.name for k in RPC_KEYS], "vega.rpc.", path)
        + unknown_key_warnings(data_node, ["binary"], "data_node.", path)
        + unknown_key_warnings(_table(vega, "binary", "vega.", path),
                               [k.name for k in BINARY_KEYS], "vega.binary.", path)
        + unknown_key_warnings(_table(data_node, "binary", "data_node.", path),
                               [k.name for k in BINARY_KEYS], "data_node.binary.", path)
    )
    run_config = RunConfig(
        **_read_keys(doc, RUN_CONFIG_KEYS, "", path),
        vega=_binary(vega, "vega.", path),
        rpc=RpcConfig(**_read_keys(rpc, RPC_KEYS, "vega.rpc.", path)),
        data_node=_binary(data_node, "data_node.", path) if "data_node" in doc else None,
    )
    return run_config, warnings


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


def load_config(home: Path) -> Tuple[Config, List[str]]:
    path = home / CONFIG_FILE
    if not path.exists():
        raise ConfigError(f"{path} does not exist; create it with `vegavisor init --home {home}`")
    return parse_config(read_toml_file(path), path)


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
    name = upgrade_folders.get(tag, tag)
    if not is_plain_name(name) or name == CURRENT_LINK:
        raise VisorError(f"release tag {tag!r} cannot name a folder inside {home}")
    return home / name


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
        raise AdminError("empty answer (core answers so to a request without an id)")
    if len(body) > MAX_ADMIN_RESPONSE_BYTES:
        raise AdminError(f"answer is larger than {MAX_ADMIN_RESPONSE_BYTES} bytes")
    try:
        answer = json.loads(body)
    except RecursionError:
        raise AdminError(f"answer is nested too deeply to be an UpgradeStatus: "
                         f"{body[:40]!r}") from None
    except ValueError:
        raise AdminError(f"answer is not JSON: {body[:80]!r}") from None
    if not isinstance(answer, dict):
        raise AdminError(f"answer is not a JSON-RPC object: {body[:80]!r}")
    error = answer.get("error")
    if error is not None:
        text = printable(error) if isinstance(error, str) else json_excerpt(error)
        raise AdminError(f"core answered with an error: {text}")
    if type(answer.get("id")) is not int or answer["id"] != request_id:
        raise AdminError(f"answer is for request id {json_excerpt(answer.get('id'))}, "
                         f"not {request_id}")
    return _read_status(answer.get("result"))


def _read_status(result: Any) -> UpgradeStatus:
    if not isinstance(result, dict) or not isinstance(result.get("ReadyToUpgrade"), bool):
        raise AdminError(f"result is not an UpgradeStatus: {json_excerpt(result)}")
    ready, info = result["ReadyToUpgrade"], result.get("AcceptedReleaseInfo")
    if info is None:  # before the first block: "not known yet", never "cancelled"
        info = {"VegaReleaseTag": "", "UpgradeBlockHeight": 0}
    tag, height = (info.get("VegaReleaseTag"), info.get("UpgradeBlockHeight")) \
        if isinstance(info, dict) else (None, None)
    if not isinstance(tag, str) or type(height) is not int \
            or not 0 <= height <= MAX_BLOCK_HEIGHT:
        raise AdminError(f"AcceptedReleaseInfo is not a release: {json_excerpt(info)}")
    problem = release_tag_problem(tag)
    if problem:
        raise AdminError(f"AcceptedReleaseInfo names tag {json_excerpt(tag)}, which {problem}")
    if ready and not tag:
        raise AdminError("ReadyToUpgrade is true but no release is accepted: "
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
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"
    if fmt == "json":
        record = {"ts": stamp, "level": level, "logger": "vegavisor", "msg": msg}
        record.update(facts)
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
        with self.lock:
            self.stream.write(line)
            self.stream.flush()

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
    """

    def __init__(self, rpc: RpcConfig, timeout: float,
                 connect: Callable[[str, float], socket.socket] = connect_unix,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rpc, self.timeout, self.connect, self.clock = rpc, timeout, connect, clock
        self.sock: Optional[socket.socket] = None
        self.head: Optional[bytes] = None  # the request line and headers, made once

    def upgrade_status(self, request_id: int) -> UpgradeStatus:
        deadline = self.clock() + self.timeout
        request = self.request(request_id)
        try:
            try:
                status, body, keep = self.exchange(request, deadline)
            except _ClosedWhileIdle:
                self.close()
                status, body, keep = self.exchange(request, deadline)
            answer = read_admin_reply(status, body, request_id, self.rpc.http_path)
        except BaseException:
            self.close()  # a failed poll starts the next one afresh
            raise
        if not keep:
            self.close()
        return answer

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def request(self, request_id: int) -> bytes:
        if self.head is None:
            self.head = (f"POST {admin_request_path(self.rpc.http_path)} HTTP/1.1\r\n"
                         f"Host: localhost\r\nContent-Type: application/json\r\n").encode()
        body = b'{"method":"%s","params":[null],"id":%d}' % (
            UPGRADE_STATUS_METHOD.encode(), request_id)
        return self.head + b"Content-Length: %d\r\n\r\n" % len(body) + body

    def exchange(self, request: bytes, deadline: float) -> Tuple[int, bytes, bool]:
        """Send, then read the answer: (HTTP status, body, connection reusable)."""
        reused = self.sock is not None
        if self.sock is not None and _readable(self.sock):
            raise _ClosedWhileIdle()  # EOF (or stray bytes) waiting: the server closed it
        received = b""
        try:
            if self.sock is None:
                self.sock = self.connect(self.rpc.socket_path, self.time_left(deadline))
            self.sock.settimeout(self.time_left(deadline))
            self.sock.sendall(request)
            while True:
                self.sock.settimeout(self.time_left(deadline))
                data = self.sock.recv(ADMIN_READ_BYTES)
                if not data and not received:
                    if reused:
                        raise _ClosedWhileIdle()  # it closed as we sent: try a new one
                    raise AdminError("the connection was closed without an answer")
                received += data
                answer = parse_http_answer(received, eof=not data)
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


def _readable(sock: socket.socket) -> bool:
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


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
        raise AdminError(f"answer is larger than {MAX_ADMIN_RESPONSE_BYTES} bytes")
    status_line = HTTP_STATUS_LINE.match(data)
    if status_line is None:
        if data[:7] == b"HTTP/1."[:len(data)] and b"\n" not in data and not eof:
            return None  # the status line is still arriving
        raise AdminError(f"answer is not HTTP: {data[:60]!r}")
    status = int(status_line.group(2))
    head_end = data.find(b"\r\n\r\n", status_line.end() - 2)
    headers: Dict[bytes, bytes] = {}
    for line in data[status_line.end():head_end + 2].split(b"\r\n")[:-1]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise AdminError(f"answer has a malformed header line: {line[:60]!r}")
        headers[name.lower()] = value.strip().lower()
    length = headers.get(b"content-length", b"0" if status in (204, 304) else b"")
    if head_end >= 0 and not length.isdigit():
        raise AdminError(f"answer has no valid Content-Length: {length[:40]!r}")
    if head_end >= 0 and int(length) > MAX_ADMIN_RESPONSE_BYTES:
        raise AdminError(f"answer is larger than {MAX_ADMIN_RESPONSE_BYTES} bytes "
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
    raise AdminError(f"HTTP {status}: {printable(text)}{hint}")


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
    if wanted != mode:
        os.chmod(path, stat.S_IMODE(wanted))


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


def latest_history_segment(folder: Path, data_node: Binary) -> Optional[int]:
    """The data node's newest history segment height (SPEC 1.5), None when it has none."""
    path = resolve_binary(folder, data_node)
    make_runnable(path)
    argv = [str(path), "datanode", "network-history", "latest-history-segment"]
    home = flag_value(data_node.args, "--home")
    argv += ["--home", home] if home else []
    return parse_latest_segment(query_binary(argv + ["--output", "json"]))


# --- home folder ---

def fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def switch_current(home: Path, folder: Path) -> None:
    """Point HOME/current at folder atomically: a new link renamed over the old one."""
    link = home / CURRENT_LINK
    if link.exists() and not link.is_symlink():
        raise VisorError(f"{link} is a real folder, not a link; move it aside (vegavisor "
                         f"never deletes it) and run again")
    temporary = home / f".{CURRENT_LINK}.{os.getpid()}.tmp"
    if temporary.is_symlink():
        temporary.unlink()
    os.symlink(folder.name if folder.parent == home else str(folder), temporary)
    os.replace(temporary, link)
    fsync_folder(home)


def usable_current(home: Path) -> Path:
    """The folder HOME/current points at, or genesis when the link is missing or broken."""
    link = home / CURRENT_LINK
    if link.exists() and not link.is_symlink():
        raise VisorError(f"{link} is a real folder, not a link; move it aside (vegavisor "
                         f"never deletes it) and run again")
    if (link / RUN_CONFIG_FILE).is_file():
        return Path(os.path.realpath(link))
    genesis = home / GENESIS_FOLDER
    if not (genesis / RUN_CONFIG_FILE).is_file():
        raise ConfigError(f"{genesis / RUN_CONFIG_FILE} does not exist and {link} names no "
                          f"usable folder; create it with `vegavisor init --home {home}`")
    return genesis


def current_folder(home: Path, log: Log) -> Path:
    """usable_current(), with a missing or broken link pointed back at genesis (SPEC 1.1)."""
    folder = usable_current(home)
    link = home / CURRENT_LINK
    if not (link / RUN_CONFIG_FILE).is_file():
        log.info("current points at genesis", link=str(link),
                 was=os.readlink(link) if link.is_symlink() else "missing")
        switch_current(home, folder)
    return folder


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
        self._read, self._write = os.pipe()
        for fd in (self._read, self._write):
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)
        self._previous: Dict[int, Any] = {}
        self._previous_wakeup = -1

    def install(self) -> None:
        self._previous_wakeup = signal.set_wakeup_fd(self._write)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._record_stop)
        self._previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._record_reload)
        # A Python handler is needed for SIGCHLD to reach the wakeup fd at all.
        self._previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, self._ignore)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(self._previous_wakeup)
        os.close(self._read)
        os.close(self._write)

    def wait(self, seconds: float) -> None:
        """Sleep up to `seconds`, waking early for any signal."""
        select.select([self._read], [], [], max(seconds, 0.0))
        try:
            while os.read(self._read, 512):
                pass
        except BlockingIOError:
            pass

    def _record_stop(self, signum: int, frame: Any) -> None:
        self.stop_signal = self.stop_signal or signal.Signals(signum).name

    def _record_reload(self, signum: int, frame: Any) -> None:
        self.reload_requested = True

    def _ignore(self, signum: int, frame: Any) -> None:
        pass


class Child(NamedTuple):
    role: str  # "core" or "data node"
    version: str  # the run-config's name
    path: Path
    argv: Tuple[str, ...]
    popen: "subprocess.Popen[bytes]"
    started: float  # monotonic
    start_time: Optional[int]  # /proc start time: tells the process from a reused pid


def child_argv(folder: Path, binary: Binary, args: Sequence[str]) -> Tuple[str, ...]:
    return (str(resolve_binary(folder, binary)),) + tuple(args)


def start_child(role: str, version: str, folder: Path, binary: Binary, args: Sequence[str],
                clock: Callable[[], float]) -> Child:
    """Start a binary with visor's environment, working folder and output streams."""
    path = resolve_binary(folder, binary)
    make_runnable(path)
    argv = child_argv(folder, binary, args)
    try:
        # Own session: a Ctrl-C meant for visor must not reach the node; visor stops it.
        popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True,
                                 preexec_fn=die_with_parent())
    except OSError as e:
        raise VisorError(f"{role} binary {path} cannot be started: {e.strerror}") from None
    return Child(role, version, path, argv, popen, clock(), process_start_time(popen.pid))


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


def stop_children(children: Sequence[Child], grace: float, inbox: SignalInbox, log: Log,
                  clock: Callable[[], float], tick: Callable[[], None] = lambda: None) -> None:
    """SIGTERM, up to `grace` seconds to exit, then SIGKILL to whatever is left."""
    for child in children:
        if child.popen.poll() is None:
            log.info("stopping", role=child.role, pid=child.popen.pid, version=child.version,
                     signal="SIGTERM")
            _send(child, signal.SIGTERM)
    deadline = clock() + grace
    while any(c.popen.poll() is None for c in children) and clock() < deadline:
        inbox.wait(min(STOP_POLL_SECONDS, deadline - clock()))
        tick()
    for child in children:
        if child.popen.poll() is None:
            log.warn("killing", role=child.role, pid=child.popen.pid, version=child.version,
                     signal="SIGKILL", reason=f"still running {grace:g}s after SIGTERM")
            _send(child, signal.SIGKILL, group=True)
            child.popen.wait()
    for child in children:
        log.info("stopped", role=child.role, pid=child.popen.pid, version=child.version,
                 status=describe_exit_status(child.popen.returncode))


def _send(child: Child, sig: int, group: bool = False) -> None:
    try:
        os.killpg(child.popen.pid, sig) if group else child.popen.send_signal(sig)
    except ProcessLookupError:
        pass


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


class Asset(NamedTuple):
    name: str
    size: int
    url: str  # the API URL; with Accept: application/octet-stream it redirects to the bytes
    digest: Optional[str]  # "sha256:<hex>" on assets uploaded since mid-2025


class Release(NamedTuple):
    tag: str
    id: int
    assets: Tuple[Asset, ...]


def host_platform() -> Tuple[str, str]:
    """The {os} and {arch} of Vega's asset names for this host."""
    system = {"linux": "linux", "darwin": "darwin"}.get(sys.platform, sys.platform)
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
    return system, arch.get(machine, machine)


def asset_name(template: str, host: Tuple[str, str]) -> str:
    return template.replace("{os}", host[0]).replace("{arch}", host[1])


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


def next_page_url(link_header: Optional[str]) -> Optional[str]:
    """The rel="next" URL of GitHub's Link header, None on the last page."""
    for part in (link_header or "").split(","):
        match = re.match(r'\s*<([^>]*)>\s*;\s*rel="?next"?\s*$', part)
        if match:
            return match.group(1)
    return None


def expected_checksum(tag: str, asset: Asset, pinned: Dict[str, str],
                      required: bool) -> Optional[str]:
    """The SHA-256 the download must have: pinned by the operator, else GitHub's digest."""
    digest = asset.digest.lower() if asset.digest else None
    pin = pinned.get(tag)
    if pin and digest and pin != digest:
        raise InstallError(f"[autoInstall.checksums] pins {tag} to {pin} but GitHub says "
                           f"{asset.name} has {digest}; refusing both")
    if required and not (pin or digest):
        raise InstallError(f"{asset.name} of {tag} has no known SHA-256 (no GitHub digest, "
                           f"nothing in [autoInstall.checksums]) and requireChecksum = true")
    return pin or digest


def _release_from_json(data: Any, url: str) -> Release:
    if not isinstance(data, dict) or not isinstance(data.get("tag_name"), str) \
            or isinstance(data.get("id"), bool) or not isinstance(data.get("id"), int):
        raise InstallError(f"{redact_url(url)} did not answer with a release object")
    return Release(data["tag_name"], data["id"], _assets_from_json(data.get("assets", []), url))


def _assets_from_json(data: Any, url: str) -> Tuple[Asset, ...]:
    if not isinstance(data, list):
        raise InstallError(f"{redact_url(url)} did not answer with a list of assets")
    return tuple(_asset_from_json(item, url) for item in data)


def _asset_from_json(item: Any, url: str) -> Asset:
    fields = item if isinstance(item, dict) else {}
    name, size, api_url = fields.get("name"), fields.get("size"), fields.get("url")
    digest = fields.get("digest")
    if not isinstance(name, str) or not isinstance(api_url, str) or isinstance(size, bool) \
            or not isinstance(size, int) or size < 0 or not (digest is None or (
                isinstance(digest, str) and re.fullmatch(r"sha256:[0-9a-fA-F]{64}", digest))):
        raise InstallError(f"{redact_url(url)} answered an asset that is not one: "
                           f"{json.dumps(item)[:200]}")
    return Asset(name, size, api_url, digest)


def checked_redirects() -> Any:
    """A urllib redirect handler following only URLs vegavisor would fetch directly.

    Built on demand: urllib.request (with http.client and ssl) loads only to install.
    """
    import urllib.request

    class CheckedRedirects(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any,
                             newurl: str) -> Any:
            problem = url_problem(newurl)
            if problem:
                raise InstallError(f"refused the redirect from {redact_url(req.full_url)}: "
                                   f"{problem}")
            return super().redirect_request(req, fp, code, msg, headers, newurl)
    return CheckedRedirects


class GitHub:
    """The few GitHub REST calls a release install needs (SPEC 1.6), over urllib."""

    def __init__(self, api_url: str, owner: str, repository: str, token: Optional[str],
                 timeout: float) -> None:
        self.repo_url = f"{api_url.rstrip('/')}/repos/{owner}/{repository}"
        self.slug = f"{owner}/{repository}"
        self._token = token  # sent in a header that is never logged nor redirected
        self.timeout = timeout
        import urllib.request
        self._opener = urllib.request.build_opener(checked_redirects())

    def open(self, url: str, accept: str) -> Any:
        """GET url; the response, or InstallError naming the URL and the cause."""
        import http.client
        import urllib.error
        import urllib.request
        problem = url_problem(url)
        if problem:
            raise InstallError(f"refused to fetch: {problem}")
        request = urllib.request.Request(url, headers={
            "Accept": accept, "User-Agent": f"vegavisor/{__version__}",
            "X-GitHub-Api-Version": "2022-11-28"})
        if self._token:
            # Unredirected: the token must not follow a redirect to the storage host.
            request.add_unredirected_header("Authorization", f"Bearer {self._token}")
        try:
            return self._opener.open(request, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            raise InstallError(self.describe_http_error(url, e)) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", e)
            raise InstallError(f"{redact_url(url)}: {reason}") from None

    def describe_http_error(self, url: str, error: Any) -> str:
        headers = error.headers
        if error.code in (403, 429) and headers.get("X-RateLimit-Remaining") == "0":
            reset = headers.get("X-RateLimit-Reset", "")
            when = (time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(int(reset)))
                    if reset.isdigit() else "an unknown time")
            hint = "" if self._token else "; set GITHUB_TOKEN for a higher limit"
            return (f"GitHub's API rate limit is used up ({redact_url(url)} answered "
                    f"{error.code}); it resets at {when}{hint}")
        return f"{redact_url(url)} answered HTTP {error.code} {error.reason}"

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
        except ValueError:
            raise InstallError(f"{redact_url(url)} did not answer JSON: {body[:80]!r}") from None

    def get_pages(self, url: str) -> List[Any]:
        """Every item of a paginated list, following Link rel="next"."""
        items: List[Any] = []
        next_url: Optional[str] = url
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
        try:
            return _release_from_json(self.get_json(url)[0], url)
        except InstallError as e:
            if "HTTP 404" not in str(e):
                raise
        # Not found by tag: the full list says whether it exists (a draft, say) or not.
        releases = self.get_pages(f"{self.repo_url}/releases?per_page=100")
        for data in releases:
            if isinstance(data, dict) and data.get("tag_name") == tag:
                return _release_from_json(data, url)
        tags = [str(r.get("tag_name")) for r in releases if isinstance(r, dict)]
        newest = ", ".join(tags[:10]) + (", ..." if len(tags) > 10 else "")
        raise InstallError(f"{self.slug} has no release {tag}; its {len(tags)} releases "
                           f"are: {newest or 'none'}")

    def find_asset(self, release: Release, name: str) -> Asset:
        assets = release.assets
        if not any(a.name == name for a in assets):
            url = f"{self.repo_url}/releases/{release.id}/assets?per_page=100"
            assets = _assets_from_json(self.get_pages(url), url)
        for asset in assets:
            if asset.name == name:
                return asset
        names = ", ".join(a.name for a in assets) or "no assets"
        raise InstallError(f"release {release.tag} of {self.slug} has no asset {name}; it "
                           f"has: {names}")

    def download(self, asset: Asset, target: Path, sha256: Optional[str],
                 cancel: Cancellation) -> None:
        """Stream the asset to `target` in constant memory, checking size and SHA-256.

        The zip is not fsynced: after a power loss its staging folder is thrown away.
        """
        import http.client
        hasher, received = Sha256Thread(), 0
        try:
            with self.open(asset.url, "application/octet-stream") as response, \
                    open(target, "wb") as out:
                cancel.on_cancel(lambda: shut_down(response))
                for chunk in iter(lambda: response.read(DOWNLOAD_CHUNK_BYTES), b""):
                    if cancel.is_set():
                        raise InstallError(f"download of {asset.name} was cancelled")
                    received += len(chunk)
                    if received > asset.size:
                        break
                    hasher.update(chunk)
                    out.write(chunk)
        except http.client.IncompleteRead:
            pass  # the size check below says what happened
        except (OSError, ValueError, http.client.HTTPException) as e:
            if cancel.is_set():
                raise InstallError(f"download of {asset.name} was cancelled") from None
            raise InstallError(f"download of {asset.name} ({redact_url(asset.url)}) "
                               f"failed after {received} bytes: {e}") from None
        finally:
            digest = hasher.hexdigest()
        if cancel.is_set():
            raise InstallError(f"download of {asset.name} was cancelled")
        if received != asset.size:
            raise InstallError(f"download of {asset.name} ({redact_url(asset.url)}) gave "
                               f"{received} bytes, GitHub says it has {asset.size}")
        if sha256 and "sha256:" + digest != sha256:
            raise InstallError(f"{asset.name} ({redact_url(asset.url)}) has SHA-256 "
                               f"{digest}, expected {sha256[len('sha256:'):]}; "
                               f"the download is corrupt or not the published release")


def shut_down(response: Any) -> None:
    """Break a read blocked on this HTTP response's socket, from another thread."""
    sock = getattr(getattr(getattr(response, "fp", None), "raw", None), "_sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


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


def unpack_zip(archive: Path, into: Path, max_bytes: int) -> List[str]:
    """Unpack regular files and folders only, inside `into`, at most max_bytes in all."""
    import zipfile
    import zlib
    try:
        with zipfile.ZipFile(archive) as z:
            members = z.infolist()
            seen = set()
            for info in members:
                _check_member(info, archive)
                path = tuple(p for p in info.filename.split("/") if p not in ("", "."))
                if path in seen or not path:
                    raise InstallError(f"{archive.name} holds {info.filename!r} twice (or as "
                                       f"the folder itself); a release names each file once")
                seen.add(path)
            total = sum(info.file_size for info in members)
            if total > max_bytes:
                raise InstallError(f"{archive.name} would unpack to {total} bytes, more than "
                                   f"the {max_bytes} allowed (a zip bomb?)")
            for info in members:
                _extract_member(z, info, into)
            return [info.filename for info in members]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as e:
        raise InstallError(f"{archive.name} is not a valid zip archive: {e}") from None
    except (zlib.error, NotImplementedError, ValueError, OSError) as e:
        # corrupt data, an unsupported method, a name that is not UTF-8, a name too long
        raise InstallError(f"{archive.name} cannot be unpacked: {e}") from None


def _check_member(info: zipfile.ZipInfo, archive: Path) -> None:
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


def _extract_member(z: zipfile.ZipFile, info: zipfile.ZipInfo, into: Path) -> None:
    target = into.joinpath(*[p for p in info.filename.split("/") if p not in ("", ".")])
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
    doc: Dict[str, Any] = {
        "name": run_config.name,
        "vega": {
            "binary": {"path": run_config.vega.path, "args": list(run_config.vega.args)},
            "rpc": {"socketPath": run_config.rpc.socket_path,
                    "httpPath": run_config.rpc.http_path},
        },
    }
    if run_config.data_node:
        doc["data_node"] = {"binary": {"path": run_config.data_node.path,
                                       "args": list(run_config.data_node.args)}}
    return doc


def install_release(home: Path, config: Config, tag: str, folder: Path, current: RunConfig,
                    token: Optional[str], log: Log,
                    cancel: Optional[Cancellation] = None) -> None:
    """Download, verify and unpack `tag` into `folder`, which appears only when complete."""
    auto = config.auto_install
    github = GitHub(auto.github_api_url, auto.repository_owner, auto.repository, token,
                    auto.http_timeout)
    staging = home / f".staging-{folder.name}-{os.getpid()}"
    remove_tree(staging)
    try:
        # 1. find the release and its asset
        release = github.find_release(tag)
        asset = github.find_asset(release, asset_name(auto.asset.name, host_platform()))
        checksum = expected_checksum(tag, asset, auto.checksums, auto.require_checksum)
        # 2. download and verify it beside the target
        (staging / "release").mkdir(parents=True)
        started = time.monotonic()
        log.info("downloading", tag=tag, asset=asset.name, size=asset.size,
                 url=redact_url(asset.url), checksum=checksum or "unknown")
        github.download(asset, staging / asset.name, checksum, cancel or Cancellation())
        log.info("downloaded", tag=tag, asset=asset.name, size=asset.size,
                 seconds=round(time.monotonic() - started, 3),
                 verified="sha256" if checksum else "size only")
        # 3. unpack, write the run-config, check the binary, move it into place
        unpack_zip(staging / asset.name, staging / "release",
                   max(MIN_UNPACK_LIMIT_BYTES, asset.size * MAX_UNPACK_RATIO))
        stage_run_config(staging / "release", release_run_config(current, tag,
                                                                  auto.asset.binary_name))
        check_staged_version(staging / "release" / auto.asset.binary_name, tag)
        log.info("version checked", tag=tag, binary=auto.asset.binary_name, version=tag)
        for path, _, _ in os.walk(staging / "release"):
            fsync_folder(Path(path))  # the files are synced; their names must be too
        move_into_place(staging / "release", folder)
        log.info("installed", tag=tag, folder=str(folder))
    except VisorError as e:
        raise InstallError(f"cannot install {tag} from {github.slug}: {e}") from None
    except OSError as e:
        raise InstallError(f"cannot install {tag} into {folder}: {e}") from None
    finally:
        remove_tree(staging)


def stage_run_config(folder: Path, run_config: RunConfig) -> None:
    binary = folder / run_config.vega.path
    if not binary.is_file():
        listing = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        raise InstallError(f"the asset holds no {run_config.vega.path} at its root (it holds: "
                           f"{listing}); check [autoInstall.asset] binaryName")
    write_file_atomically(folder / RUN_CONFIG_FILE, write_toml(run_config_document(run_config)))


def move_into_place(staged: Path, folder: Path) -> None:
    """Rename the complete release folder into place; another installer may have won."""
    try:
        os.rename(staged, folder)
    except OSError as e:
        if e.errno not in (errno.EEXIST, errno.ENOTEMPTY) \
                or not (folder / RUN_CONFIG_FILE).is_file():
            raise
    fsync_folder(folder.parent)


def remove_stale_staging(home: Path) -> None:
    """Staging folders and temporary files left by a process that died (kill -9)."""
    for path in home.glob(".staging-*-*"):
        pid = path.name.rsplit("-", 1)[1]
        if pid.isdigit() and not process_exists(int(pid)):
            remove_tree(path)
    for path in home.glob(".*.*.tmp"):  # write_file_atomically's and switch_current's
        pid = path.name.rsplit(".", 2)[1]
        if pid.isdigit() and not process_exists(int(pid)) and not path.is_dir():
            path.unlink()


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_staged_version(binary: Path, tag: str) -> None:
    """The unpacked binary must run and say it is `tag` before it is moved into place."""
    version = binary_version(binary)
    if version != tag:
        raise InstallError(f"the asset's {binary.name} reports version {version}, not {tag}")


def remove_tree(path: Path) -> None:
    if path.is_symlink() or path.exists():
        shutil.rmtree(path, ignore_errors=True)


# --- background installs ---

class BackgroundInstall:
    """install_release in a thread: polling goes on meanwhile and a stop can cancel it."""

    def __init__(self, home: Path, config: Config, tag: str, folder: Path, current: RunConfig,
                 token: Optional[str], log: Log) -> None:
        self.tag, self.folder = tag, folder
        self.cancel = Cancellation()
        self.error: Optional[str] = None
        self.thread = threading.Thread(target=self.install, name=f"install-{tag}", daemon=True,
                                       args=(home, config, current, token, log))
        self.thread.start()

    def install(self, home: Path, config: Config, current: RunConfig, token: Optional[str],
                log: Log) -> None:
        try:
            install_release(home, config, self.tag, self.folder, current, token, log,
                            self.cancel)
        except VisorError as e:
            self.error = str(e)
        except Exception as e:  # a bug must not end the thread without a word
            self.error = f"unexpected {type(e).__name__}: {e}"

    @property
    def running(self) -> bool:
        return self.thread.is_alive()

    def wait(self, stopping: Callable[[], bool]) -> Optional[str]:
        """The outcome: None when installed, else why not (a stop cancels the install)."""
        while self.thread.is_alive() and not stopping():
            self.thread.join(STOP_POLL_SECONDS)
        if self.thread.is_alive():
            self.stop()
        return self.error

    def stop(self) -> None:
        self.cancel.cancel()
        self.thread.join(INSTALL_STOP_WAIT_SECONDS)


class Prefetch:
    """Installs an accepted release while the old version still runs (SPEC 2.4).

    Only the supervision loop calls it; the install itself runs in a BackgroundInstall.
    """

    def __init__(self, home: Path, config: Config, token: Optional[str], log: Log,
                 clock: Callable[[], float]) -> None:
        self.home, self.config, self.token, self.log, self.clock = home, config, token, log, clock
        self.tag, self.folder, self.staged = "", home, False
        self.attempts, self.next_try, self.last_error = 0, 0.0, ""
        self.job: Optional[BackgroundInstall] = None
        self.restore_state()

    @property
    def enabled(self) -> bool:
        return self.config.auto_install.enabled and self.config.auto_install.prefetch

    def update(self, tag: str, current: RunConfig, current_folder: Path) -> None:
        """After each admin answer: start, collect or retry the install of `tag`."""
        if tag != self.tag:
            self.abandon()
            self.tag = tag
        if not tag or not self.enabled:
            return
        if self.job is not None:
            if self.job.running:
                return
            self.collect()
        try:
            self.folder = folder_for_tag(self.home, tag, self.config.upgrade_folders)
        except VisorError:
            return  # the upgrade itself reports it, at the block
        if self.staged or self.folder.exists() or self.folder == current_folder:
            return
        if self.clock() >= self.next_try:
            self.start(current)

    def start(self, current: RunConfig) -> None:
        self.attempts += 1
        self.log.info("prefetching", tag=self.tag, folder=str(self.folder), attempt=self.attempts)
        self.job = BackgroundInstall(self.home, self.config, self.tag, self.folder, current,
                                     self.token, self.log)
        self.save_state("downloading")

    def collect(self) -> None:
        """The finished install's outcome: staged, or a failure to retry later."""
        job, self.job = self.job, None
        if job is not None and job.error is None:
            self.staged = True
            self.log.info("prefetched", tag=self.tag, folder=str(self.folder))
            self.save_state("staged")
            return
        self.last_error = job.error if job is not None and job.error else "cancelled"
        delay = restart_delay(self.attempts, self.config.auto_install.prefetch_retry_delay,
                              PREFETCH_RETRY_MAX_SECONDS)
        self.next_try = self.clock() + delay
        level = "error" if self.attempts >= PREFETCH_ERROR_AFTER_ATTEMPTS else "warn"
        self.log.emit(level, "prefetch failed", tag=self.tag, attempt=self.attempts,
                      retry_in=delay, error=self.last_error)
        self.save_state("failed")

    def settle(self, tag: str, stopping: Callable[[], bool]) -> bool:
        """At the upgrade block: let an install of `tag` under way finish.

        True when this prefetch installed and checked the folder, so nothing is left
        to verify; False when the upgrade must install or check it itself.
        """
        if tag != self.tag:
            self.abandon()
            return False
        if self.job is not None:
            self.log.info("waiting for the prefetch to finish", tag=tag)
            self.job.wait(stopping)
            self.collect()
        return self.staged and (self.folder / RUN_CONFIG_FILE).is_file()

    def close(self) -> None:
        """Visor stops: an install under way is cancelled (its staging folder removed)."""
        if self.job is not None:
            self.job.stop()
            self.job = None

    def abandon(self) -> None:
        """The accepted tag changed: cancel its install, remove what it staged."""
        self.close()
        current = os.path.realpath(self.home / CURRENT_LINK)
        if self.staged and self.tag and os.path.realpath(self.folder) != current:
            self.log.info("removing abandoned prefetch", tag=self.tag, folder=str(self.folder))
            remove_tree(self.folder)
            self.save_state("abandoned")
        self.tag, self.staged, self.attempts, self.next_try = "", False, 0, 0.0

    def save_state(self, state: str) -> None:
        record = {"tag": self.tag, "folder": str(self.folder), "state": state,
                  "attempts": self.attempts, "lastError": self.last_error or None,
                  "updated": utc_now()}
        try:
            write_file_atomically(self.home / PREFETCH_STATE_FILE, json.dumps(record) + "\n",
                                  durable=False)
        except OSError as e:
            self.log.warn("prefetch state not saved", error=e.strerror)

    def restore_state(self) -> None:
        """A release this visor staged before a restart needs no second check."""
        record = read_json_file(self.home / PREFETCH_STATE_FILE)
        tag, folder = record.get("tag"), record.get("folder")
        if record.get("state") != "staged" or not isinstance(tag, str) or not tag:
            return
        try:
            expected = folder_for_tag(self.home, tag, self.config.upgrade_folders)
        except VisorError:
            return
        if folder == str(expected) and (expected / RUN_CONFIG_FILE).is_file():
            self.tag, self.folder, self.staged = tag, expected, True


# --- state files ---

def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def read_state_file(path: Path) -> Tuple[Optional[dict], Optional[str]]:
    """A JSON object `run` keeps: (None, None) when absent, (None, why) when unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, None
    except OSError as e:
        return None, f"{path} cannot be read: {e.strerror}"
    except ValueError as e:
        return None, f"{path} is not JSON ({e}); `vegavisor run` rewrites it"
    if not isinstance(data, dict):
        return None, f"{path} does not hold a JSON object; `vegavisor run` rewrites it"
    return data, None


def read_json_file(path: Path) -> Dict[str, Any]:
    """A state file's object; {} when it is missing or unreadable (state is advisory)."""
    return read_state_file(path)[0] or {}


def read_journal(home: Path) -> Optional[Dict[str, Any]]:
    """An upgrade that a previous run began and did not finish, if any."""
    record = read_json_file(home / JOURNAL_FILE)
    tag, height, step = record.get("tag"), record.get("height"), record.get("step")
    if not isinstance(tag, str) or not tag or step not in JOURNAL_STEPS or step == "done" \
            or isinstance(height, bool) or not isinstance(height, int) or height < 0:
        return None
    return record


def process_start_time(pid: int) -> Optional[int]:
    """Field 22 of /proc/<pid>/stat: with the pid, it names one process for good."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat_line.rsplit(")", 1)[1].split()[19])


def process_running(pid: int) -> bool:
    """True while pid exists and is not a zombie waiting for init to reap it."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat_line.rsplit(")", 1)[1].split()[0] != "Z"


def processes_running(argv: Sequence[str]) -> List[int]:
    """Every live process whose command line ends with argv (script binaries show their
    interpreter first)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")[:-1]
        except OSError:
            continue
        shown = [os.fsdecode(a) for a in cmdline]
        if argv and shown[-len(argv):] == list(argv) and process_running(int(entry.name)):
            found.append(int(entry.name))
    return found


def is_same_process(pid: int, argv: Sequence[str], start_time: Optional[int]) -> bool:
    """True when pid is still the process that was started as argv at start_time.

    A script binary shows its interpreter first (`python3 /path/vega node ...`), so
    the recorded argv must end the command line, not necessarily be all of it.
    """
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
    except OSError:
        return False
    shown = [os.fsdecode(a) for a in cmdline]
    return bool(argv) and shown[-len(argv):] == list(argv) \
        and process_start_time(pid) == start_time


def stop_leftover(pid: int, grace: float, log: Log, clock: Callable[[], float]) -> None:
    """Stop a process visor did not start in this life: SIGTERM, grace, SIGKILL."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, LEFTOVER_KILL_WAIT_SECONDS)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = clock() + wait
        while process_running(pid) and clock() < deadline:
            time.sleep(STOP_POLL_SECONDS)
        if not process_running(pid):
            return
    raise VisorError(f"process {pid} left by an earlier vegavisor survives SIGKILL; "
                     f"stop it by hand before starting vegavisor again")


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

    def tick(self) -> None:
        """WATCHDOG=1 at half of WATCHDOG_USEC, as long as the loop calls this."""
        if self.watchdog and self.clock() >= self.next_watchdog:
            self.send("WATCHDOG=1")
            self.next_watchdog = self.clock() + self.watchdog

    def seconds_to_tick(self) -> float:
        return self.next_watchdog - self.clock() if self.watchdog else math.inf


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
    ]
    lines = []
    for name, kind, text, labels, value in metrics:
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name}{labels} {value}"]
    return "\n".join(lines) + "\n"


# --- supervisor ---

class Phase(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    UPGRADING = "upgrading"
    STOPPING = "stopping"


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

    What it is doing is kept in HOME's state files: the children it started (so a
    visor restarted after kill -9 stops them first) and the upgrade journal (so it
    finishes an upgrade that was under way instead of running the old version past
    the upgrade block).
    """

    def __init__(self, home: Path, config: Config, log: Log, inbox: SignalInbox,
                 env: Dict[str, str], clock: Callable[[], float] = time.monotonic,
                 rng: Optional[random.Random] = None) -> None:
        self.home, self.config, self.log, self.inbox, self.clock = home, config, log, inbox, clock
        token = env.get("GITHUB_TOKEN") or None
        self.token = token
        self.notifier = Notifier(env, clock)
        self.upgrades, self.told_ready = 0, False
        self.rng = rng or random.Random()
        self.prefetch = Prefetch(home, config, token, log, clock)
        self.phase = Phase.STARTING
        self.started = utc_now()
        self.folder, self.version, self.children = home, "", []  # type: Path, str, List[Child]
        self.restarts_total, self.accepted, self.last_poll_ok = 0, UpgradeStatus(False, "", 0), ""
        self.last_poll_time = 0.0
        self.last_state_write = -math.inf
        self.journal: Dict[str, Any] = {}
        self.starting: List[List[str]] = []  # argv of a child about to be started

    def enter(self, phase: Phase, **facts: Any) -> None:
        self.log.debug("phase", was=self.phase.value, now=phase.value, **facts)
        self.phase = phase
        self.notifier.send(f"STATUS={self.version or 'no version yet'}: {phase.value}")
        self.save_state()

    def tick(self) -> None:
        """Called by every waiting loop: the watchdog sees a live supervision loop."""
        self.notifier.tick()

    def run(self) -> int:
        """Supervise until stopped (0) or until there is no way on (VisorError)."""
        try:
            return self.supervise()
        finally:
            self.prefetch.close()
            self.children = []
            self.save_state()
            if self.notifier.sock is not None:
                self.notifier.sock.close()

    def supervise(self) -> int:
        # 1. clear what an earlier visor killed with -9 may have left: children, staging
        self.stop_leftovers()
        remove_stale_staging(self.home)
        folder = current_folder(self.home, self.log)
        run_config = self.read_run_config(folder)
        core_args = run_config.vega.args
        # 2. an upgrade under way when that visor died is finished before anything runs
        journal = read_journal(self.home)
        if journal:
            self.log.warn("resuming upgrade", tag=journal["tag"], height=journal["height"],
                          step=journal["step"])
            self.journal = journal
            status = UpgradeStatus(True, journal["tag"], journal["height"])
            upgraded = self.finish_upgrade(status, run_config, verified=False)
            if upgraded is None:
                return self.stopped()
            folder, run_config = upgraded
            core_args = with_snapshot_flag(run_config.vega.args, status.height)
        retry_limit = self.config.max_first_connection_retries
        restarts = 0
        while not self.inbox.stop_signal:
            # 3. start every binary of the current version
            self.folder, self.version = folder, run_config.name
            self.enter(Phase.STARTING, version=run_config.name)
            self.children = self.start(folder, run_config, core_args, restarts)
            if self.journal:
                self.write_journal("started")
            # 4. watch them and poll core's admin socket until something happens
            self.enter(Phase.RUNNING, version=run_config.name)
            outcome = self.watch(self.children, folder, run_config, retry_limit)
            if isinstance(outcome, Ready):
                # 5. upgrade: stop, install or find the folder, switch current
                upgraded = self.upgrade(self.children, outcome.status, run_config)
                if upgraded is None:
                    break
                folder, run_config = upgraded
                core_args = with_snapshot_flag(run_config.vega.args, outcome.status.height)
                retry_limit, restarts = self.config.max_first_connection_retries, 0
                continue
            self.stop(self.children)
            if isinstance(outcome, Stopped):
                break
            if isinstance(outcome, Unreachable):
                raise VisorError(self.describe_unreachable(run_config.rpc, outcome, retry_limit))
            # 6. a crash: restart after a backoff, from the data node's history when there is one
            restarts = self.count_crash(outcome, restarts)
            delay = restart_delay(restarts, self.config.restarts_delay,
                                  self.config.restarts_backoff_max)
            self.log.info("restarting", delay=delay, restart=restarts,
                          limit=self.config.max_restarts)
            self.pause(delay)
            core_args = self.restart_args(folder, run_config)
            retry_limit = self.config.max_restart_connection_retries
        return self.stopped()

    def stopped(self) -> int:
        self.log.info("vegavisor stopped", signal=self.inbox.stop_signal)
        return EXIT_OK

    def stopping(self) -> bool:
        self.tick()
        return bool(self.inbox.stop_signal)

    def stop_leftovers(self) -> None:
        """Children of an earlier visor that still run (it was killed) are stopped first:
        the ones it recorded (pid, command line and start time must all match) and any
        running the command it was about to start when it died."""
        state = read_json_file(self.home / RUN_STATE_FILE)
        leftovers = []
        for child in state.get("children") or []:
            try:
                pid, argv, start_time = child["pid"], child["argv"], child["startTime"]
            except (KeyError, TypeError):
                continue
            if isinstance(pid, int) and is_same_process(pid, argv, start_time):
                leftovers.append((pid, child.get("role")))
        for argv in state.get("starting") or []:
            if isinstance(argv, list) and all(isinstance(a, str) for a in argv):
                leftovers += [(pid, "being started") for pid in processes_running(argv)]
        for pid, role in leftovers:
            self.log.warn("stopping a child left by an earlier vegavisor", role=role, pid=pid)
            stop_leftover(pid, self.config.stop_signal_timeout, self.log, self.clock)

    def save_state(self, poll_only: bool = False) -> None:
        """What `status` reads, and what a restarted visor needs to stop leftovers."""
        now = self.clock()
        self.write_metrics()
        if poll_only and now - self.last_state_write < RUN_STATE_POLL_WRITE_SECONDS:
            return
        self.last_state_write = now
        children = [{"role": c.role, "pid": c.popen.pid, "argv": list(c.argv),
                     "startTime": c.start_time} for c in self.children
                    if c.popen.returncode is None]
        record = {"pid": os.getpid(), "started": self.started, "phase": self.phase.value,
                  "version": self.version, "folder": str(self.folder),
                  "restarts": self.restarts_total, "lastPollOk": self.last_poll_ok or None,
                  "acceptedTag": self.accepted.tag, "upgradeHeight": self.accepted.height,
                  "children": children, "starting": self.starting}
        try:
            # Not synced: it matters after a kill, which keeps the page cache, and
            # after a power loss no child is left to stop.
            write_file_atomically(self.home / RUN_STATE_FILE, json.dumps(record) + "\n",
                                  durable=False)
        except OSError as e:
            self.log.warn("run state not saved", file=str(self.home / RUN_STATE_FILE),
                          error=e.strerror)

    def write_metrics(self) -> None:
        if not self.config.metrics_file:
            return
        prefetch = self.prefetch
        state = ("downloading" if prefetch.job is not None else "staged" if prefetch.staged
                 else "failed" if prefetch.last_error else "idle") if prefetch.tag else "idle"
        text = format_metrics(dict(
            version=self.version, phase=self.phase.value, upgrades=self.upgrades,
            restarts=self.restarts_total, lastPoll=round(self.last_poll_time, 3),
            acceptedTag=self.accepted.tag, upgradeHeight=self.accepted.height,
            prefetchTag=prefetch.tag, prefetchState=state))
        path = Path(self.config.metrics_file)
        try:
            write_file_atomically(path, text, durable=False)
        except OSError as e:
            self.log.warn("metrics file not written", file=str(path), error=e.strerror)

    def reload(self) -> None:
        """SIGHUP: a valid config.toml takes effect whole; an invalid one changes nothing."""
        self.inbox.reload_requested = False
        try:
            config, warnings = load_config(self.home)
        except VisorError as e:
            self.log.error("config reload failed; keeping the old settings", error=str(e))
            return
        for warning in warnings:
            self.log.warn("config warning", problem=warning)
        changed = [f for f in Config._fields if getattr(config, f) != getattr(self.config, f)]
        self.config = self.prefetch.config = config
        self.log.configure(config.logging)
        self.log.info("config reloaded", changed=",".join(changed) or "nothing")
        self.save_state()

    def write_journal(self, step: str) -> None:
        """Record an upgrade step. Only "installed", written just before `current` is
        switched (durably), is synced: a power loss that loses another step leaves the
        old version at the block, which upgrades again, or a journal that makes the
        next run switch again and start the new version with the snapshot flag."""
        self.journal = dict(self.journal, step=step, updated=utc_now())
        write_file_atomically(self.home / JOURNAL_FILE, json.dumps(self.journal) + "\n",
                              durable=step == "installed")
        self.log.debug("journal", step=step, tag=self.journal.get("tag"))
        if step == "done":
            self.journal = {}

    def read_run_config(self, folder: Path) -> RunConfig:
        run_config, warnings = load_run_config(folder)
        for warning in warnings:
            self.log.warn("run-config warning", problem=warning)
        return run_config

    def start(self, folder: Path, run_config: RunConfig, core_args: Sequence[str],
              restarts: int) -> List[Child]:
        binaries = [("core", run_config.vega, core_args)]
        if run_config.data_node:
            binaries.append(("data node", run_config.data_node, run_config.data_node.args))
        children: List[Child] = []
        try:
            for role, binary, args in binaries:
                # Recorded before the fork: a visor killed right after it still leaves
                # the restarted one enough to find this child (by its command line).
                self.starting = [list(child_argv(folder, binary, args))]
                self.save_state()
                child = start_child(role, run_config.name, folder, binary, args, self.clock)
                children.append(child)
                self.children, self.starting = children, []
                self.save_state()
                self.log.info("started", role=role, pid=child.popen.pid, version=run_config.name,
                              attempt=restarts + 1, command=shlex.join(child.argv))
        except VisorError:
            self.stop(children)
            raise
        return children

    def watch(self, children: Sequence[Child], folder: Path, run_config: RunConfig,
              retry_limit: int) -> Any:
        """Poll the admin socket and watch the children until one of the outcomes happens."""
        rpc = run_config.rpc
        failures, answered = 0, False
        next_poll = self.clock() + self.config.poll_interval
        while not self.inbox.stop_signal:
            self.tick()
            if self.inbox.reload_requested:
                self.reload()
            for child in children:
                if child.popen.poll() is not None:
                    return Exited(child, self.clock() - child.started)
            if self.clock() >= next_poll:
                try:
                    status = call_upgrade_status(rpc, self.config.rpc_timeout,
                                                 self.rng.getrandbits(63))
                except AdminError as e:
                    failures += 1
                    self.log_poll_failure(rpc, e, failures, retry_limit, answered)
                    if failures > retry_limit:
                        return Unreachable(failures, str(e))
                else:
                    if not answered or failures:
                        self.log.info("admin socket answering", socket=rpc.socket_path)
                    failures, answered = 0, True
                    if status.ready:
                        return Ready(status)
                    self.note_answer(status)
                    self.prefetch.update(status.tag, run_config, folder)
                interval = (self.config.upgrade_poll_interval if self.accepted.tag
                            else self.config.poll_interval)
                next_poll = self.clock() + interval
            self.inbox.wait(min(next_poll - self.clock(), self.notifier.seconds_to_tick()))
        return Stopped(self.inbox.stop_signal)

    def note_answer(self, status: UpgradeStatus) -> None:
        """A good admin answer: the upgrade journal is done, the state file current."""
        self.last_poll_ok, self.last_poll_time = utc_now(), time.time()
        if not self.told_ready:
            self.notifier.send("READY=1", f"STATUS={self.version}: running")
            self.told_ready = True
        if self.journal.get("step") == "started":
            self.write_journal("done")
            self.upgrades += 1
            self.log.info("upgrade complete", tag=self.version)
        if status.tag != self.accepted.tag:
            self.log_accepted(status, self.accepted.tag)
            self.accepted = status
            self.save_state()
        self.save_state(poll_only=True)

    def log_poll_failure(self, rpc: RpcConfig, error: AdminError, failures: int, limit: int,
                         answered: bool) -> None:
        facts = dict(socket=rpc.socket_path, attempt=failures, limit=limit, error=str(error))
        if answered and failures == 1:
            self.log.warn("admin socket stopped answering", **facts)
        elif failures == 1:
            self.log.info("waiting for admin socket", **facts)
        else:
            self.log.debug("admin poll failed", **facts)

    def log_accepted(self, status: UpgradeStatus, previous: str) -> None:
        if status.tag:
            self.log.info("upgrade accepted", tag=status.tag, height=status.height)
        elif previous and previous != self.version:  # not the upgrade just completed
            self.log.info("upgrade withdrawn", tag=previous)

    def describe_unreachable(self, rpc: RpcConfig, outcome: Unreachable, limit: int) -> str:
        key = ("maxNumberOfFirstConnectionRetries"
               if limit == self.config.max_first_connection_retries
               else "maxNumberOfRestartConnectionRetries")
        return (f"core's admin socket {rpc.socket_path} failed {outcome.failures} polls in a "
                f"row ({key} = {limit}); last error: {outcome.error}")

    def stop(self, children: Sequence[Child]) -> None:
        if self.inbox.stop_signal:
            self.notifier.send("STOPPING=1")
        self.enter(Phase.STOPPING)
        stop_children(children, self.config.stop_signal_timeout, self.inbox, self.log,
                      self.clock, self.tick)
        self.save_state()

    def pause(self, seconds: float) -> None:
        """Wait, unless visor is asked to stop meanwhile."""
        deadline = self.clock() + seconds
        while not self.inbox.stop_signal and self.clock() < deadline:
            self.tick()
            self.inbox.wait(min(deadline - self.clock(), self.notifier.seconds_to_tick()))

    def count_crash(self, outcome: Exited, restarts: int) -> int:
        child = outcome.child
        status = describe_exit_status(child.popen.returncode)
        restarts = count_restart(restarts, outcome.uptime, self.config.restarts_reset_after)
        limit = self.config.max_restarts
        self.log.error("child exited", role=child.role, pid=child.popen.pid, status=status,
                       uptime=round(outcome.uptime, 3), restart=restarts, limit=limit)
        if restarts > limit:
            raise VisorError(f"{child.role} {child.path} {status}; it was restarted {limit} "
                             f"times already (maxNumberOfRestarts = {limit}), giving up")
        self.restarts_total += 1
        self.enter(Phase.RESTARTING, restart=restarts)
        return restarts

    def restart_args(self, folder: Path, run_config: RunConfig) -> Tuple[str, ...]:
        """Core's args for a crash restart: resume from the data node's newest segment."""
        args = run_config.vega.args
        if run_config.data_node is None:
            return args
        try:
            height = latest_history_segment(folder, run_config.data_node)
        except VisorError as e:
            self.log.warn("latest history segment unknown", error=str(e))
            return args
        if height is None:
            self.log.info("data node has no history segments; core restarts as configured")
            return args
        self.log.info("core resumes from the data node's history", height=height)
        return with_snapshot_flag(args, height)

    def upgrade(self, children: Sequence[Child], status: UpgradeStatus,
                current: RunConfig) -> Optional[Tuple[Path, RunConfig]]:
        """Stop the node at the upgrade block and make the new version current.

        None when visor was asked to stop meanwhile: the journal makes the next run
        finish the upgrade before it starts anything.
        """
        self.enter(Phase.UPGRADING, tag=status.tag)
        self.log.info("ready to upgrade", tag=status.tag, height=status.height)
        target = folder_for_tag(self.home, status.tag, self.config.upgrade_folders)
        self.journal = {"tag": status.tag, "height": status.height, "from": self.folder.name,
                        "to": target.name, "started": utc_now()}
        self.write_journal("ready")
        verified = self.prefetch.settle(status.tag, self.stopping)
        self.pause(self.config.stop_delay)
        self.stop(children)
        self.write_journal("stopped")
        if self.inbox.stop_signal:
            return None
        return self.finish_upgrade(status, current, verified)

    def finish_upgrade(self, status: UpgradeStatus, current: RunConfig,
                       verified: bool) -> Optional[Tuple[Path, RunConfig]]:
        """With the node stopped: find or install the release, check it, switch current."""
        self.enter(Phase.UPGRADING, tag=status.tag)
        folder = folder_for_tag(self.home, status.tag, self.config.upgrade_folders)
        if not folder.exists():
            if not self.install_at_block(status.tag, folder, current):
                return None
            verified = True
        self.write_journal("installed")
        if not (folder / RUN_CONFIG_FILE).is_file():
            raise incomplete_folder(folder, status.tag)
        run_config = self.read_run_config(folder)
        if not verified:
            self.check_versions(folder, run_config, status.tag)
        switch_current(self.home, folder)
        self.write_journal("switched")
        self.log.info("switched", current=str(folder), tag=status.tag)
        return folder, run_config

    def install_at_block(self, tag: str, folder: Path, current: RunConfig) -> bool:
        """Install now, retrying as crash restarts do; False when visor is asked to stop."""
        if not self.config.auto_install.enabled:
            raise VisorError(
                f"release {tag} is not installed: {folder} does not exist and [autoInstall] "
                f"enabled = false; create it with the release's binaries and a "
                f"{RUN_CONFIG_FILE}, or run `vegavisor prepare-upgrade --home {self.home} "
                f"{tag}` with autoInstall on, then restart vegavisor")
        attempt = 0
        while True:
            attempt += 1
            job = BackgroundInstall(self.home, self.config, tag, folder, current, self.token,
                                    self.log)
            error = job.wait(self.stopping)
            if error is None or self.stopping():
                return error is None
            limit = self.config.max_restarts
            if attempt > limit:
                raise InstallError(error)
            delay = restart_delay(attempt, self.config.restarts_delay,
                                  self.config.restarts_backoff_max)
            self.log.error("install failed", tag=tag, attempt=attempt, limit=limit,
                           retry_in=delay, error=error)
            self.pause(delay)

    def check_versions(self, folder: Path, run_config: RunConfig, tag: str) -> None:
        """Every binary of the new version must say it is `tag` before it may run."""
        binaries = [("core", run_config.vega), ("data node", run_config.data_node)]
        for role, binary in binaries:
            if binary is None:
                continue
            path = resolve_binary(folder, binary)
            version = binary_version(path)
            if version != tag:
                raise VisorError(f"{role} binary {path} reports version {version}, not {tag}; "
                                 f"{folder} holds the wrong release")
            self.log.info("version checked", role=role, binary=str(path), version=version)


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


class Finding(NamedTuple):
    """One line of `validate`: a problem makes it fail, a note does not."""

    level: str  # "problem" or "note"
    text: str  # names the file and the key, and says what to do


def _problem(text: str) -> Finding:
    return Finding("problem", text)


def _note(text: str) -> Finding:
    return Finding("note", text)


def _attempt(found: List[Finding], default: Any, read: Callable[..., Any], *args: Any) -> Any:
    """read(*args); a VisorError it raises becomes a problem, and `default` is returned."""
    try:
        return read(*args)
    except VisorError as e:
        found.append(_problem(str(e)))
        return default


def _check_keys(found: List[Finding], table: dict, keys: Sequence[Key], where: str,
                path: Path) -> Optional[Dict[str, Any]]:
    """_read_keys one key at a time, so every bad key is reported; None when one is bad."""
    values: Dict[str, Any] = {}
    for key in keys:
        values.update(_attempt(found, {}, _read_keys, table, [key], where, path))
    return values if len(values) == len(keys) else None


def _check_map(found: List[Finding], table: dict, check: Callable[[Any], str], where: str,
               path: Path) -> Dict[str, str]:
    """The good entries of a name -> value table; each bad one is a problem."""
    values: Dict[str, str] = {}
    for name, value in table.items():
        values.update(_attempt(found, {}, _read_map, {name: value}, check, where, path))
    return values


def _unknown_keys(found: List[Finding], tables: Sequence[Tuple[dict, List[str], str]],
                  path: Path) -> None:
    for table, known, where in tables:
        found.extend(_problem(w) for w in unknown_key_warnings(table, known, where, path))


def _cross_check(found: List[Finding], parse: Callable[[dict, Path], Tuple[Any, List[str]]],
                 doc: dict, path: Path) -> None:
    """Add what the real parser says and the key-by-key walk missed (a key added since)."""
    seen = {finding.text for finding in found}
    try:
        _, warnings = parse(doc, path)
    except ConfigError as e:
        warnings = [str(e)]
    found.extend(_problem(w) for w in warnings if w not in seen)


def check_config(doc: dict, path: Path) -> List[Finding]:
    """Every bad or unknown key of a parsed config.toml (parse_config stops at the first)."""
    found: List[Finding] = []
    auto = _attempt(found, {}, _table, doc, "autoInstall", "", path)
    _attempt(found, None, _reject_old_assets_format, auto, path)
    asset = _attempt(found, {}, _table, auto, "asset", "autoInstall.", path)
    checksums = _attempt(found, {}, _table, auto, "checksums", "autoInstall.", path)
    logging_table = _attempt(found, {}, _table, doc, "logging", "", path)
    folders = _attempt(found, {}, _table, doc, "upgradeFolders", "", path)
    _unknown_keys(found, [
        (doc, [k.name for k in CONFIG_KEYS] + ["upgradeFolders", "autoInstall", "logging"], ""),
        # "assets" has its own problem above: the old format, with its replacement
        (auto, [k.name for k in AUTO_INSTALL_KEYS] + ["asset", "checksums", "assets"],
         "autoInstall."),
        (asset, [k.name for k in ASSET_KEYS], "autoInstall.asset."),
        (logging_table, [k.name for k in LOGGING_KEYS], "logging."),
    ], path)
    _check_keys(found, doc, CONFIG_KEYS, "", path)
    _check_keys(found, auto, AUTO_INSTALL_KEYS, "autoInstall.", path)
    _check_keys(found, asset, ASSET_KEYS, "autoInstall.asset.", path)
    _check_keys(found, logging_table, LOGGING_KEYS, "logging.", path)
    _check_map(found, checksums, _checksum, "autoInstall.checksums.", path)
    for tag, name in _check_map(found, folders, _folder_name, "upgradeFolders.", path).items():
        if name == CURRENT_LINK:
            found.append(_problem(f"{path}: upgradeFolders.{tag}: {CURRENT_LINK!r} is the link to "
                                  f"the version in use, not a release folder; choose another name"))
    _cross_check(found, parse_config, doc, path)
    return found


class RunConfigParts(NamedTuple):
    """What could be read of a run-config.toml: None where its keys are bad or missing."""

    name: Optional[str]
    vega: Optional[Binary]
    rpc: Optional[RpcConfig]
    data_node: Optional[Binary]


def check_run_config(doc: dict, path: Path) -> Tuple[RunConfigParts, List[Finding]]:
    """Every bad or unknown key of a parsed run-config.toml, and the parts that are good."""
    found: List[Finding] = []
    name = (_check_keys(found, doc, RUN_CONFIG_KEYS, "", path) or {}).get("name")
    vega = _attempt(found, {}, _table, doc, "vega", "", path)
    rpc_table = _attempt(found, {}, _table, vega, "rpc", "vega.", path)
    data_node = _attempt(found, {}, _table, doc, "data_node", "", path)
    if "vega" not in doc:
        found.append(_problem(f"{path}: vega is missing: it says how to run core"))
    elif isinstance(doc["vega"], dict) and "rpc" not in vega:
        found.append(_problem(f"{path}: vega.rpc is missing: it names core's admin socket"))
    _unknown_keys(found, [
        (doc, ["name", "vega", "data_node"], ""),
        (vega, ["binary", "rpc"], "vega."),
        (rpc_table, [k.name for k in RPC_KEYS], "vega.rpc."),
        (data_node, ["binary"], "data_node."),
    ], path)
    rpc = (_check_keys(found, rpc_table, RPC_KEYS, "vega.rpc.", path)
           if isinstance(vega.get("rpc"), dict) else None)
    parts = RunConfigParts(
        name,
        _check_binary_keys(found, vega, "vega.", path) if isinstance(doc.get("vega"), dict)
        else None,
        RpcConfig(**rpc) if rpc else None,
        _check_binary_keys(found, data_node, "data_node.", path) if "data_node" in doc
        else None,
    )
    _cross_check(found, parse_run_config, doc, path)
    return parts, found


def _check_binary_keys(found: List[Finding], parent: dict, where: str,
                       path: Path) -> Optional[Binary]:
    if "binary" not in parent:
        found.append(_problem(f"{path}: {where}binary is missing"))
        return None
    table = _attempt(found, None, _table, parent, "binary", where, path)
    if table is None:
        return None
    _unknown_keys(found, [(table, [k.name for k in BINARY_KEYS], where + "binary.")], path)
    values = _check_keys(found, table, BINARY_KEYS, where + "binary.", path)
    return Binary(**values) if values else None


def check_binary(where: str, path: Path, timeout: float) -> Tuple[Optional[str], List[Finding]]:
    """The version a binary reports, and what keeps it from running; changes nothing."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None, [_problem(f"{where}: {path} does not exist; put the release's binary "
                               f"there or fix the path")]
    except OSError as e:
        return None, [_problem(f"{where}: {path} cannot be examined: {e.strerror}")]
    if not stat.S_ISREG(mode):
        return None, [_problem(f"{where}: {path} is not a regular file; vegavisor only starts "
                               f"regular files")]
    if not os.access(path, os.R_OK):
        return None, [_problem(f"{where}: {path} is not readable; vegavisor cannot add its exec "
                               f"bits: chmod a+r {shlex.quote(str(path))}")]
    if not os.access(path, os.X_OK):
        return None, [_note(f"{where}: {path} is not executable: vegavisor adds the exec bits "
                            f"when it starts it; its version was not checked")]
    try:
        return query_version(path, timeout), []
    except VisorError as e:
        return None, [_problem(f"{where}: {e}")]


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


def _lookup(doc: Any, *keys: str) -> Any:
    """doc[k1][k2]..., matching each key exactly or else case-insensitively (as Go does)."""
    for key in keys:
        if not isinstance(doc, dict):
            return None
        if key not in doc:
            key = next((k for k in doc if k.lower() == key.lower()), key)
        doc = doc.get(key)
    return doc


def _read_node_config(path: Path, what: str) -> Tuple[Optional[dict], List[Finding]]:
    """A config file of core or the data node; a note when it cannot be read."""
    try:
        return read_toml_file(path), []
    except ConfigError as e:
        return None, [_note(f"{what} not checked: {e}")]


def check_core_admin_config(path: Path, args: Sequence[str], rpc: RpcConfig) -> List[Finding]:
    """vega.rpc must name the socket core serves: [Admin.Server] of core's own config."""
    core_home = flag_value(args, "--home")
    if not core_home:
        return []
    config_path = Path(core_home).joinpath(*CORE_CONFIG_PATH)
    doc, found = _read_node_config(config_path, f"{path}: vega.rpc against core's config")
    if doc is None:
        return found
    for ours, key, theirs_key in ((rpc.socket_path, "socketPath", "SocketPath"),
                                  (rpc.http_path, "httpPath", "HTTPPath")):
        theirs = _lookup(doc, "Admin", "Server", theirs_key)
        if theirs is None:
            found.append(_note(f"{config_path}: [Admin.Server] {theirs_key} is not set; "
                               f"{path}: vega.rpc.{key} not checked"))
        elif theirs != ours:
            found.append(_problem(
                f"{path}: vega.rpc.{key} = {json.dumps(ours)}, but core's {config_path} has "
                f"[Admin.Server] {theirs_key} = {json.dumps(theirs)}: vegavisor would never "
                f"reach core; make them the same"))
    return found


def check_data_node_store(path: Path, args: Sequence[str]) -> List[Finding]:
    """Embedded Postgres does not survive an upgrade under Visor (SPEC 1.6)."""
    data_node_home = flag_value(args, "--home")
    if not data_node_home:
        return []
    config_path = Path(data_node_home).joinpath(*DATA_NODE_CONFIG_PATH)
    doc, found = _read_node_config(config_path, f"{path}: data_node's SQLStore.UseEmbedded")
    if doc is not None and _lookup(doc, "SQLStore", "UseEmbedded") is True:
        found.append(_problem(
            f"{config_path}: [SQLStore] UseEmbedded = true: embedded Postgres is not supported "
            f"under Visor: the upgrade fails; run Postgres yourself and set UseEmbedded = false"))
    return found


def check_folder(folder: Path, tag: Optional[str], timeout: float) -> List[Finding]:
    """One version folder: its run-config, its binaries, and core's and the data node's config."""
    path = folder / RUN_CONFIG_FILE
    found: List[Finding] = []
    doc = _attempt(found, None, read_toml_file, path)
    if doc is None:
        return found
    parts, found = check_run_config(doc, path)
    queried: Dict[Path, Optional[str]] = {}
    for key, binary in (("vega.binary.path", parts.vega), ("data_node.binary.path",
                                                          parts.data_node)):
        if binary is None:
            continue
        binary_path = resolve_binary(folder, binary)
        if binary_path in queried:  # core and data node are usually the same binary
            continue
        where = f"{path}: {key}"
        version, problems = check_binary(where, binary_path, timeout)
        queried[binary_path] = version
        found += problems
        if version is not None:
            found += check_release_version(where, path, version, parts.name, tag)
    if parts.vega is not None and parts.rpc is not None:
        found += check_core_admin_config(path, parts.vega.args, parts.rpc)
    if parts.data_node is not None:
        found += check_data_node_store(path, parts.data_node.args)
    return found


def current_problem(home: Path) -> Optional[str]:
    """What is wrong with HOME/current, saying what `run` will do about it; None if nothing."""
    link = home / CURRENT_LINK
    genesis = home / GENESIS_FOLDER / RUN_CONFIG_FILE
    fallback = ("`vegavisor run` will point it at genesis" if genesis.is_file() else
                f"{genesis} does not exist either, so `vegavisor run` cannot start")
    if link.is_symlink():
        target = os.readlink(link)
        if not link.exists():
            return (f"{link} is dangling: it points at {target}, which does not exist; "
                    f"{fallback} (ln -sfn FOLDER {link} to run another version)")
        if not (link / RUN_CONFIG_FILE).is_file():
            return f"{link} points at {target}, which has no {RUN_CONFIG_FILE}; {fallback}"
        return None
    if link.exists():
        return (f"{link} is a real folder, not a link: `vegavisor run` refuses to start; move it "
                f"aside and link {link} to the version to run")
    return f"{link} does not exist; {fallback}"


def home_folders(home: Path) -> List[Path]:
    """HOME's folders by name, but not `current` nor hidden ones (lock, state, staging)."""
    try:
        entries = sorted(home.iterdir())
    except OSError:
        return []
    return [p for p in entries
            if p.is_dir() and p.name != CURRENT_LINK and not p.name.startswith(".")]


def folder_tag(name: str, upgrade_folders: Dict[str, str]) -> Optional[str]:
    """The release whose upgrade uses folder `name` (SPEC 1.2); None for genesis and others."""
    mapped = sorted(tag for tag, folder in upgrade_folders.items() if folder == name)
    if mapped:
        return mapped[0]
    if name == GENESIS_FOLDER or name in upgrade_folders or not TAG_FOLDER_RE.fullmatch(name):
        return None
    return name


def _upgrade_folders(doc: dict) -> Dict[str, str]:
    """The usable entries of [upgradeFolders], whatever else is wrong with the file."""
    table = doc.get("upgradeFolders")
    if not isinstance(table, dict):
        return {}
    return {tag: name for tag, name in table.items()
            if isinstance(name, str) and is_plain_name(name) and name != CURRENT_LINK}


def validate_home(home: Path, timeout: float) -> Tuple[List[Finding], int]:
    """Every problem of a home in one pass, and how many version folders were checked."""
    if not home.is_dir():
        return [_problem(f"{home} is not a folder; create a home with "
                         f"`vegavisor init --home {home}`")], 0
    found: List[Finding] = []
    # 1. vegavisor's own config.toml
    path = home / CONFIG_FILE
    doc: Optional[dict] = None
    if path.exists():
        doc = _attempt(found, None, read_toml_file, path)
        found += check_config(doc, path) if doc is not None else []
    else:
        found.append(_problem(f"{path} does not exist; create it with "
                              f"`vegavisor init --home {home}`"))
    upgrade_folders = _upgrade_folders(doc or {})
    # 2. the current link
    problem = current_problem(home)
    found += [_problem(problem)] if problem else []
    # 3. every version folder: run-config, binaries, and core's and the data node's config
    checked = 0
    for folder in home_folders(home):
        tag = folder_tag(folder.name, upgrade_folders)
        if (folder / RUN_CONFIG_FILE).is_file():
            found += check_folder(folder, tag, timeout)
            checked += 1
        elif tag is not None:
            found.append(_problem(f"{folder} holds no {RUN_CONFIG_FILE}: an upgrade to {tag} "
                                  f"stops there; finish preparing it or remove it"))
    return found, checked


def summarize_findings(findings: Sequence[Finding], home: Path, folders: int) -> str:
    problems = sum(1 for f in findings if f.level == "problem")
    notes = len(findings) - problems
    noted = f"{notes} note{'s' * (notes != 1)}, " if notes else ""
    checked = f"{folders} version folder{'s' * (folders != 1)} checked"
    if not problems:
        return f"no problems in {home} ({noted}{checked})"
    return f"{problems} problem{'s' * (problems != 1)} in {home} ({noted}{checked})"


def run_lock_holder(home: Path) -> Optional[int]:
    """The pid of the `run` holding HOME's lock (0: not written yet), None when none does.

    The file is opened read-only and never created; the shared lock that tests it is
    released at once.
    """
    try:
        fd = os.open(home / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise VisorError(f"{home / LOCK_FILE} cannot be read: {e.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 64).decode("ascii", "replace").strip()
            return int(text) if text.isdigit() else 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def child_alive(child: Dict[str, Any]) -> Optional[bool]:
    """Whether a child named in the run state still runs; None where there is no /proc."""
    if not Path("/proc/self/stat").exists():
        return None
    # pid and start time name one process for good; argv is not compared: the kernel
    # shows a script's interpreter first ("python3 /path/vega ...").
    return child["pid"] is not None and child["startTime"] is not None \
        and process_start_time(child["pid"]) == child["startTime"]


def _field(record: Any, key: str, kind: type) -> Any:
    """record[key] when it has the type `kind` (a bool is no int here), else None."""
    value = record.get(key) if isinstance(record, dict) else None
    if isinstance(value, bool) and kind is not bool:
        return None
    return value if isinstance(value, kind) else None


def describe_run(holder: Optional[int], state: Optional[dict]) -> Dict[str, Any]:
    """The `run` section: the lock says whether a run holds HOME, the run-state file the rest.

    A run-state file not written by the lock's holder is stale: shown as such, not used.
    """
    running = holder is not None
    state_pid = _field(state, "pid", int)
    fresh = running and state is not None and holder in (0, state_pid)
    record = state if fresh else {}
    return {
        "running": running,
        "pid": holder or (state_pid if fresh else None),
        "phase": _field(record, "phase", str),
        "started": _field(record, "started", str),
        "version": _field(record, "version", str),
        "folder": _field(record, "folder", str),
        "restarts": _field(record, "restarts", int),
        "lastPollOk": _field(record, "lastPollOk", str),
        "acceptedTag": _field(record, "acceptedTag", str),
        "upgradeHeight": _field(record, "upgradeHeight", int),
        "children": _children(record),
        "stale": state is not None and not fresh,
        "stalePid": state_pid if state is not None and not fresh else None,
        # children a vegavisor that died (kill -9) may have left running
        "leftoverChildren": _children(state) if state is not None and not fresh else [],
    }


def _children(record: Any) -> List[Dict[str, Any]]:
    children = _field(record, "children", list) or []
    return [{"role": _field(c, "role", str), "pid": _field(c, "pid", int),
             "argv": _field(c, "argv", list) or [], "startTime": _field(c, "startTime", int)}
            for c in children]


def describe_journal(journal: Optional[dict]) -> Tuple[Optional[dict], Optional[dict]]:
    """(lastUpgrade, upgradeInProgress) from the upgrade journal: step "done" is finished."""
    if journal is None:
        return None, None
    facts = {"tag": _field(journal, "tag", str), "height": _field(journal, "height", int),
             "from": _field(journal, "from", str), "to": _field(journal, "to", str)}
    if journal.get("step") == "done":
        return dict(facts, finished=_field(journal, "updated", str)), None
    return None, dict(facts, step=_field(journal, "step", str),
                      started=_field(journal, "started", str),
                      updated=_field(journal, "updated", str))


def ask_node(rpc: Optional[RpcConfig], timeout: float, request_id: int) -> Dict[str, Any]:
    """The `node` section: one UpgradeStatus call; no accepted release gives null tag and height."""
    node: Dict[str, Any] = {"reachable": False, "readyToUpgrade": None,
                            "acceptedReleaseTag": None, "upgradeBlockHeight": None,
                            "error": None, "socket": rpc.socket_path if rpc else None}
    if rpc is None:
        return dict(node, error="no run-config names core's admin socket")
    try:
        status = call_upgrade_status(rpc, timeout, request_id)
    except AdminError as e:
        return dict(node, error=str(e))
    return dict(node, reachable=True, readyToUpgrade=status.ready,
                acceptedReleaseTag=status.tag or None,
                upgradeBlockHeight=status.height if status.tag else None)


def read_current(home: Path) -> Tuple[Optional[Dict[str, Any]], Optional[RunConfig]]:
    """`current` as status shows it, and the run-config naming the socket `run` would poll.

    A missing or dangling link is reported, not repaired (SPEC 1.1 leaves that to `run`);
    the socket is then genesis's, as `run` would start genesis.
    """
    link = home / CURRENT_LINK
    error = current_problem(home)
    if link.is_symlink() and error is None:
        run_config = load_run_config(link)[0]
        return {"folder": os.path.realpath(link), "name": run_config.name, "error": None}, \
            run_config
    if link.is_symlink():
        target = os.path.normpath(os.path.join(home, os.readlink(link)))
        genesis = _run_config_in(home / GENESIS_FOLDER)
        return {"folder": target, "name": None, "error": error}, genesis
    if link.exists():
        run_config = _run_config_in(link)
        name = run_config.name if run_config else None
        return {"folder": str(link), "name": name, "error": error}, run_config
    return None, _run_config_in(home / GENESIS_FOLDER)


def _run_config_in(folder: Path) -> Optional[RunConfig]:
    return load_run_config(folder)[0] if (folder / RUN_CONFIG_FILE).is_file() else None


def describe_installed(home: Path) -> List[Dict[str, Any]]:
    """Every folder holding a run-config (not via `current`): its folder and name."""
    installed = []
    for folder in home_folders(home):
        if not (folder / RUN_CONFIG_FILE).is_file():
            continue
        try:
            installed.append({"folder": str(folder), "name": load_run_config(folder)[0].name})
        except ConfigError as e:
            installed.append({"folder": str(folder), "name": None, "error": str(e)})
    return installed


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
    if not node["reachable"]:
        hint = (f"vegavisor run (pid {run['pid']}) is running: core may still be starting; "
                f"see its log" if run["running"] else
                f"is `vegavisor run --home {home}` running?")
        where = f" at {node['socket']}" if node["socket"] else ""
        problems.append(f"node: not reachable{where}: {node['error']}; {hint}")
    problems += _prefetch_problems(report["prefetch"])
    problems += _accepted_release_problems(report, config)
    in_progress = report["upgradeInProgress"]
    if in_progress and not run["running"]:
        problems.append(f"upgrade: the upgrade to {in_progress['tag']} stopped at step "
                        f"{in_progress['step']} ({in_progress['updated']}) and no vegavisor is "
                        f"running; read its last log lines, then start "
                        f"`vegavisor run --home {home}`: it finishes the upgrade")
    return problems


def _prefetch_problems(prefetch: Optional[dict]) -> List[str]:
    if not prefetch or prefetch.get("state") != "failed":
        return []
    return [f"prefetch: installing {prefetch.get('tag')} failed {prefetch.get('attempts')} "
            f"time(s), last: {prefetch.get('lastError')}; vegavisor retries, but fix the "
            f"cause before the upgrade block"]


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
            f"{RUN_CONFIG_FILE} and [autoInstall] enabled = false: install it before the block"]


def collect_status(home: Path, config: Config, warnings: List[str],
                   request_id: int) -> Dict[str, Any]:
    """Everything `status` reports (SPEC 2.5), read without changing a file."""
    problems = list(warnings)
    # 1. which version is current and what is installed
    current, run_config = read_current(home)
    problem = current_problem(home)
    problems += [f"current: {problem}"] if problem else []
    # 2. whether a `run` holds the home, and what it last wrote about itself
    state, error = read_state_file(home / RUN_STATE_FILE)
    problems += [error] if error else []
    try:
        run = describe_run(run_lock_holder(home), state)
    except VisorError as e:
        run = dict(describe_run(None, None), running=None)
        problems.append(f"run: {e}")
    for child in run["children"] + run["leftoverChildren"]:
        child["alive"] = child_alive(child)
    # 3. what core says, the prefetch, the upgrade journal
    prefetch, error = read_state_file(home / PREFETCH_STATE_FILE)
    problems += [error] if error else []
    journal, error = read_state_file(home / JOURNAL_FILE)
    problems += [error] if error else []
    last_upgrade, in_progress = describe_journal(journal)
    report = {
        "home": str(home),
        "current": current,
        "installed": describe_installed(home),
        "node": ask_node(run_config.rpc if run_config else None, config.rpc_timeout,
                         request_id),
        "run": run,
        "prefetch": prefetch,
        "lastUpgrade": last_upgrade,
        "upgradeInProgress": in_progress,
    }
    report["problems"] = problems + status_problems(report, config)
    return report


def format_status(report: Dict[str, Any]) -> str:
    """The human form of the report: aligned label/value lines, then the problems."""
    rows = [("home", report["home"]),
            ("current", _current_words(report["current"])),
            ("installed", _installed_words(report["installed"], report["current"])),
            ("vegavisor", _run_words(report["run"])),
            ("node", _node_words(report["node"]))]
    if report["prefetch"]:
        rows.append(("prefetch", _prefetch_words(report["prefetch"])))
    if report["upgradeInProgress"]:
        step = report["upgradeInProgress"]
        rows.append(("upgrading", f"{step['from']} -> {step['to']} ({step['tag']} at block "
                                  f"{step['height']}): step {step['step']} since "
                                  f"{step['updated']}"))
    if report["lastUpgrade"]:
        last = report["lastUpgrade"]
        rows.append(("last upgrade", f"{last['from']} -> {last['to']} ({last['tag']} at block "
                                     f"{last['height']}), finished {last['finished']}"))
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
    return f"{current['name']} in {current['folder']}"


def _installed_words(installed: List[Dict[str, Any]], current: Optional[Dict[str, Any]]) -> str:
    in_use = os.path.realpath(current["folder"]) if current and not current["error"] else None
    words = []
    for entry in installed:
        facts = [entry["name"] or "unreadable run-config"]
        facts += ["current"] if os.path.realpath(entry["folder"]) == in_use else []
        words.append(f"{Path(entry['folder']).name} ({', '.join(facts)})")
    return ", ".join(words) or "nothing"


def _run_words(run: Dict[str, Any]) -> str:
    if run["running"] is None:
        return "unknown (see problems)"
    if not run["running"]:
        stale = f" (stale run state left by pid {run['stalePid']})" if run["stale"] else ""
        return "not running" + stale
    words = [f"running, pid {run['pid']}"]
    words += [f"{run['phase']}"] if run["phase"] else []
    words += [f"{run['restarts']} crash restarts"] if run["restarts"] is not None else []
    words += [f"last good poll {run['lastPollOk']}"] if run["lastPollOk"] else []
    gone = [f"{c['role']} pid {c['pid']}" for c in run["children"] if c["alive"] is False]
    words += [f"gone: {', '.join(gone)}"] if gone else []
    return ", ".join(words)


def _node_words(node: Dict[str, Any]) -> str:
    if not node["reachable"]:
        return f"not reachable at {node['socket']}" if node["socket"] else "not reachable"
    if not node["acceptedReleaseTag"]:
        return "reachable; no upgrade accepted"
    ready = "ready to upgrade" if node["readyToUpgrade"] else "not ready yet"
    return (f"reachable; upgrade to {node['acceptedReleaseTag']} accepted for block "
            f"{node['upgradeBlockHeight']}, {ready}")


def _prefetch_words(prefetch: dict) -> str:
    tag, state, attempts = prefetch.get("tag"), prefetch.get("state"), prefetch.get("attempts")
    what = {"staged": f"{tag} staged in {prefetch.get('folder')}",
            "downloading": f"downloading {tag} (attempt {attempts})",
            "failed": f"{tag} failed (attempt {attempts}): {prefetch.get('lastError')}",
            "abandoned": f"{tag} abandoned (the accepted release changed)"}
    return what.get(state, f"{tag}: {state}") + f", updated {prefetch.get('updated')}"


def cmd_status(args: argparse.Namespace) -> int:
    home = resolve_home(args)
    config, warnings = load_config(home)
    report = collect_status(home, config, warnings, random.Random().getrandbits(63))
    print(json.dumps(report, indent=2) if args.output == "json" else format_status(report))
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    home = resolve_home(args)
    findings, folders = validate_home(home, BINARY_QUERY_TIMEOUT_SECONDS)
    for finding in findings:
        print(f"{finding.level}: {finding.text}")
    print(summarize_findings(findings, home, folders))
    return EXIT_FAILURE if any(f.level == "problem" for f in findings) else EXIT_OK


def _add_status_args(parser: argparse.ArgumentParser) -> None:
    _add_home(parser)
    _add_output(parser)


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
# Download the release when its folder does not exist.
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


# --- commands ---

def resolve_home(args: argparse.Namespace) -> Path:
    home = args.home or os.environ.get("VEGAVISOR_HOME")
    if not home:
        raise ConfigError(f"{args.command_name}: --home is required (or set VEGAVISOR_HOME)")
    return Path(os.path.abspath(home))


def cmd_init(args: argparse.Namespace) -> int:
    home = resolve_home(args)
    if home.exists() and (not home.is_dir() or any(home.iterdir())):
        raise ConfigError(f"{home} is not an empty folder; init only creates a new home")
    genesis = home / GENESIS_FOLDER
    genesis.mkdir(parents=True)
    write_file_atomically(home / CONFIG_FILE, CONFIG_TEMPLATE)
    run_config = RUN_CONFIG_TEMPLATE + (DATA_NODE_TEMPLATE if args.with_data_node else "")
    write_file_atomically(genesis / RUN_CONFIG_FILE, run_config)
    switch_current(home, genesis)
    print(f"created {home}: {CONFIG_FILE}, {GENESIS_FOLDER}/{RUN_CONFIG_FILE}, "
          f"{CURRENT_LINK} -> {GENESIS_FOLDER}")
    print(f"next: put the vega binary in {genesis}, edit {genesis / RUN_CONFIG_FILE}, then "
          f"run `vegavisor run --home {home}`")
    return EXIT_OK


def open_home(args: argparse.Namespace) -> Tuple[Path, Config, Log]:
    """The home, its config, and a log set up as the config says (warnings logged)."""
    home = resolve_home(args)
    config, warnings = load_config(home)
    log = Log(sys.stderr, config.logging.format, config.logging.level)
    for warning in warnings:
        log.warn("config warning", problem=warning)
    return home, config, log


def cmd_run(args: argparse.Namespace) -> int:
    home, config, log = open_home(args)
    lock = lock_home(home)
    inbox = SignalInbox()
    inbox.install()
    log.info("vegavisor starting", version=__version__, home=str(home), pid=os.getpid(),
             python=platform.python_version())
    try:
        return Supervisor(home, config, log, inbox, dict(os.environ)).run()
    except VisorError as e:
        log.error("giving up", reason=str(e))
        return e.exit_code
    finally:
        inbox.restore()
        os.close(lock)


def cmd_prepare_upgrade(args: argparse.Namespace) -> int:
    home, config, log = open_home(args)
    folder = folder_for_tag(home, args.tag, config.upgrade_folders)
    if (folder / RUN_CONFIG_FILE).is_file():
        print(f"{args.tag} is already installed in {folder}")
        return EXIT_OK
    if folder.exists():
        raise incomplete_folder(folder, args.tag)
    current, _ = load_run_config(usable_current(home))
    install_release(home, config, args.tag, folder, current, os.environ.get("GITHUB_TOKEN"),
                    log)
    print(f"installed {args.tag} in {folder}")
    return EXIT_OK


def cmd_version(args: argparse.Namespace) -> int:
    if args.output == "json":
        print(json.dumps({"version": __version__, "python": platform.python_version()}))
    else:
        print(f"vegavisor {__version__}")
    return EXIT_OK


def _add_home(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--home", help="vegavisor's home folder (default: $VEGAVISOR_HOME)")


def _add_init_args(parser: argparse.ArgumentParser) -> None:
    _add_home(parser)
    parser.add_argument("--with-data-node", action="store_true",
                        help="the genesis run-config also starts a data node")


def _add_prepare_args(parser: argparse.ArgumentParser) -> None:
    _add_home(parser)
    parser.add_argument("tag", metavar="TAG", help="release tag, e.g. v0.74.0")


def _add_output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", choices=("human", "json"), default="human")


class Command(NamedTuple):
    run: Callable[[argparse.Namespace], int]
    add_arguments: Callable[[argparse.ArgumentParser], None]
    help: str


# Every command, in the order `--help` lists them: a new command plugs in here.
COMMANDS = {
    "init": Command(cmd_init, _add_init_args, "create a new home with a commented config"),
    "run": Command(cmd_run, _add_home, "supervise the node and upgrade it when it is time"),
    "status": Command(cmd_status, _add_status_args,
                      "show what is installed, what runs and what the node says"),
    "prepare-upgrade": Command(cmd_prepare_upgrade, _add_prepare_args,
                               "install a release into its folder now, without a node"),
    "validate": Command(cmd_validate, _add_home,
                        "check config.toml, every run-config, binaries and the admin socket"),
    "version": Command(cmd_version, _add_output, "print vegavisor's version"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vegavisor", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command_name", metavar="COMMAND")
    commands.required = True
    for name, command in COMMANDS.items():
        sub = commands.add_parser(name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(command=command)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    try:
        return args.command.run(args)
    except VisorError as e:
        print(f"vegavisor: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("vegavisor: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
