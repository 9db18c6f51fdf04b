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
import difflib
import enum
import errno
import fcntl
import http.client
import ipaddress
import json
import math
import os
import platform
import random
import re
import select
import shlex
import signal
import socket
import stat
import subprocess
import sys
import time
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
from typing import Tuple

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
# AF_UNIX paths are limited to 108 bytes including the terminating NUL on Linux.
MAX_UNIX_SOCKET_PATH = 107
# `vega version` and the data node's history query are local and quick; a minute
# means the binary hangs, not that it is busy.
BINARY_QUERY_TIMEOUT_SECONDS = 60.0
# How often a stopping child is checked when no SIGCHLD wakes us (belt and braces).
STOP_POLL_SECONDS = 0.05
# 2**64 * restartsDelaySeconds outlasts any backoff cap; beyond it floats overflow.
MAX_BACKOFF_DOUBLINGS = 64

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
# (reader and writer: see below, filled in by the TOML section)
def read_toml_text(text: str) -> dict:
    """Placeholder until the module's own reader lands: tomllib only."""
    import tomllib
    return tomllib.loads(text)


class TomlError(ValueError):
    def __init__(self, msg: str, line: int, col: int) -> None:
        super().__init__(f"{msg} (line {line}, column {col})")
        self.msg, self.line, self.col = msg, line, col

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
    if not is_plain_name(_text(value)):
        raise ValueError("expected a folder name inside HOME (no '/', not '.' or '..')")
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
    parts = urllib.parse.urlsplit(url)
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
    """Core's answer to UpgradeStatus (SPEC 1.4) as a record; AdminError when it is not one."""
    try:
        answer = json.loads(body)
    except ValueError:
        raise AdminError(f"answer is not JSON: {body[:80]!r}") from None
    if not isinstance(answer, dict):
        raise AdminError(f"answer is not a JSON-RPC object: {body[:80]!r}")
    if answer.get("error") is not None:
        raise AdminError(f"core answered with an error: {str(answer['error'])[:200]}")
    if answer.get("id") != request_id:
        raise AdminError(f"answer is for request id {answer.get('id')!r}, not {request_id}")
    return _read_status(answer.get("result"))


def _read_status(result: Any) -> UpgradeStatus:
    if not isinstance(result, dict) or not isinstance(result.get("ReadyToUpgrade"), bool):
        raise AdminError(f"result is not an UpgradeStatus: {json.dumps(result)[:200]}")
    info = result.get("AcceptedReleaseInfo")
    if info is None:
        return UpgradeStatus(result["ReadyToUpgrade"], "", 0)
    tag, height = (info.get("VegaReleaseTag"), info.get("UpgradeBlockHeight")) \
        if isinstance(info, dict) else (None, None)
    if not isinstance(tag, str) or isinstance(height, bool) or not isinstance(height, int) \
            or height < 0:
        raise AdminError(f"AcceptedReleaseInfo is not a release: {json.dumps(info)[:200]}")
    return UpgradeStatus(result["ReadyToUpgrade"], tag, height)


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
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.stream, self.fmt, self.clock = stream, fmt, clock
        self.min_rank = LOG_LEVELS.index(level)

    def emit(self, level: str, msg: str, **facts: Any) -> None:
        if LOG_LEVELS.index(level) < self.min_rank:
            return
        self.stream.write(format_log_line(self.fmt, self.clock(), level, msg, facts) + "\n")
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

class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a unix socket, as core's admin server speaks it."""

    def __init__(self, socket_path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def call_upgrade_status(rpc: RpcConfig, timeout: float, request_id: int) -> UpgradeStatus:
    """One protocolupgrade.UpgradeStatus call; AdminError says why it failed."""
    body = json.dumps({"method": UPGRADE_STATUS_METHOD, "params": [None], "id": request_id})
    conn = UnixHTTPConnection(rpc.socket_path, timeout)
    try:
        conn.request("POST", rpc.http_path, body=body.encode(),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        answer = response.read(MAX_ADMIN_RESPONSE_BYTES + 1)
    except socket.timeout:
        raise AdminError(f"no answer within {timeout:g}s") from None
    except (OSError, http.client.HTTPException) as e:
        raise AdminError(_describe_socket_error(e)) from None
    finally:
        conn.close()
    if len(answer) > MAX_ADMIN_RESPONSE_BYTES:
        raise AdminError(f"answer is larger than {MAX_ADMIN_RESPONSE_BYTES} bytes")
    if response.status != 200:
        first_line = answer.decode("utf-8", "replace").strip().splitlines()[:1]
        raise AdminError(f"HTTP {response.status}: {''.join(first_line)[:200]}")
    return parse_upgrade_status(answer, request_id)


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
    output = query_binary([str(path), "version", "--output", "json"])
    for line in output.splitlines():
        try:
            version = json.loads(line).get("version")
        except (ValueError, AttributeError):
            continue
        if isinstance(version, str):
            return version
    raise VisorError(f"`{path} version --output json` printed no version: {output[:200]!r}")


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


def current_folder(home: Path, log: Log) -> Path:
    """The folder HOME/current points at; a missing or broken link points at genesis."""
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
    log.info("current points at genesis", link=str(link), was=os.readlink(link)
             if link.is_symlink() else "missing")
    switch_current(home, genesis)
    return genesis


def lock_home(home: Path) -> int:
    """Take HOME's run lock (held until the process exits); VisorError names the holder."""
    path = home / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
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


def write_file_atomically(path: Path, text: str, mode: int = 0o644) -> None:
    """Readers see the old file or the new one, never half of one, even after a crash."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        if temporary.exists():
            temporary.unlink()
        raise
    fsync_folder(path.parent)


# --- processes ---

class SignalInbox:
    """Signal handlers only record here and wake the loop; the loop decides what to do."""

    def __init__(self) -> None:
        self.stop_signal = ""
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

    def _ignore(self, signum: int, frame: Any) -> None:
        pass


class Child(NamedTuple):
    role: str  # "core" or "data node"
    path: Path
    argv: Tuple[str, ...]
    popen: "subprocess.Popen[bytes]"
    started: float  # monotonic


def start_child(role: str, folder: Path, binary: Binary, args: Sequence[str],
                clock: Callable[[], float]) -> Child:
    """Start a binary with visor's environment, working folder and output streams."""
    path = resolve_binary(folder, binary)
    make_runnable(path)
    argv = (str(path),) + tuple(args)
    try:
        # Own session: a Ctrl-C meant for visor must not reach the node; visor stops it.
        popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)
    except OSError as e:
        raise VisorError(f"{role} binary {path} cannot be started: {e.strerror}") from None
    return Child(role, path, argv, popen, clock())


def stop_children(children: Sequence[Child], grace: float, inbox: SignalInbox, log: Log,
                  clock: Callable[[], float]) -> None:
    """SIGTERM, up to `grace` seconds to exit, then SIGKILL to whatever is left."""
    for child in children:
        if child.popen.poll() is None:
            log.info("stopping", role=child.role, pid=child.popen.pid, signal="SIGTERM")
            _send(child, signal.SIGTERM)
    deadline = clock() + grace
    while any(c.popen.poll() is None for c in children) and clock() < deadline:
        inbox.wait(min(STOP_POLL_SECONDS, deadline - clock()))
    for child in children:
        if child.popen.poll() is None:
            log.warn("killing", role=child.role, pid=child.popen.pid, signal="SIGKILL",
                     reason=f"still running {grace:g}s after SIGTERM")
            _send(child, signal.SIGKILL, group=True)
            child.popen.wait()
    for child in children:
        log.info("stopped", role=child.role, pid=child.popen.pid,
                 status=describe_exit_status(child.popen.returncode))


def _send(child: Child, sig: int, group: bool = False) -> None:
    try:
        os.killpg(child.popen.pid, sig) if group else child.popen.send_signal(sig)
    except ProcessLookupError:
        pass


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
    """Runs the version HOME/current names, restarts it on crashes, upgrades it when ready."""

    def __init__(self, home: Path, config: Config, log: Log, inbox: SignalInbox,
                 clock: Callable[[], float] = time.monotonic,
                 rng: Optional[random.Random] = None) -> None:
        self.home, self.config, self.log, self.inbox, self.clock = home, config, log, inbox, clock
        self.rng = rng or random.Random()
        self.phase = Phase.STARTING

    def enter(self, phase: Phase, **facts: Any) -> None:
        self.log.debug("phase", was=self.phase.value, now=phase.value, **facts)
        self.phase = phase

    def run(self) -> int:
        """Supervise until stopped (0) or until there is no way on (VisorError)."""
        folder = current_folder(self.home, self.log)
        run_config = self.read_run_config(folder)
        core_args = run_config.vega.args
        retry_limit = self.config.max_first_connection_retries
        restarts = 0
        while not self.inbox.stop_signal:
            # 1. start every binary of the current version
            self.enter(Phase.STARTING, version=run_config.name)
            children = self.start(folder, run_config, core_args, restarts)
            # 2. watch them and poll core's admin socket until something happens
            self.enter(Phase.RUNNING, version=run_config.name)
            outcome = self.watch(children, run_config.rpc, retry_limit)
            if isinstance(outcome, Ready):
                # 3. upgrade: stop, install or find the folder, switch current
                upgraded = self.upgrade(children, outcome.status)
                if upgraded is None:
                    break
                folder, run_config = upgraded
                core_args = with_snapshot_flag(run_config.vega.args, outcome.status.height)
                retry_limit, restarts = self.config.max_first_connection_retries, 0
                continue
            self.stop(children)
            if isinstance(outcome, Stopped):
                break
            if isinstance(outcome, Unreachable):
                raise VisorError(self.describe_unreachable(run_config.rpc, outcome, retry_limit))
            # 4. a crash: restart after a backoff, from the data node's history when there is one
            restarts = self.count_crash(outcome, restarts)
            self.pause(restart_delay(restarts, self.config.restarts_delay,
                                     self.config.restarts_backoff_max))
            core_args = self.restart_args(folder, run_config)
            retry_limit = self.config.max_restart_connection_retries
        self.log.info("vegavisor stopped", signal=self.inbox.stop_signal)
        return EXIT_OK

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
                child = start_child(role, folder, binary, args, self.clock)
                children.append(child)
                self.log.info("started", role=role, pid=child.popen.pid, version=run_config.name,
                              attempt=restarts + 1, command=shlex.join(child.argv))
        except VisorError:
            self.stop(children)
            raise
        return children

    def watch(self, children: Sequence[Child], rpc: RpcConfig, retry_limit: int) -> Any:
        """Poll the admin socket and watch the children until one of the outcomes happens."""
        failures, tag, answered = 0, "", False
        next_poll = self.clock() + self.config.poll_interval
        while not self.inbox.stop_signal:
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
                    if status.tag != tag:
                        self.log_accepted(status, tag)
                        tag = status.tag
                interval = self.config.upgrade_poll_interval if tag else self.config.poll_interval
                next_poll = self.clock() + interval
            self.inbox.wait(next_poll - self.clock())
        return Stopped(self.inbox.stop_signal)

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
        else:
            self.log.info("upgrade withdrawn", tag=previous)

    def describe_unreachable(self, rpc: RpcConfig, outcome: Unreachable, limit: int) -> str:
        key = ("maxNumberOfFirstConnectionRetries"
               if limit == self.config.max_first_connection_retries
               else "maxNumberOfRestartConnectionRetries")
        return (f"core's admin socket {rpc.socket_path} failed {outcome.failures} polls in a "
                f"row ({key} = {limit}); last error: {outcome.error}")

    def stop(self, children: Sequence[Child]) -> None:
        self.enter(Phase.STOPPING)
        stop_children(children, self.config.stop_signal_timeout, self.inbox, self.log,
                      self.clock)

    def pause(self, seconds: float) -> None:
        """Wait, unless visor is asked to stop meanwhile."""
        deadline = self.clock() + seconds
        while not self.inbox.stop_signal and self.clock() < deadline:
            self.inbox.wait(deadline - self.clock())

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

    def upgrade(self, children: Sequence[Child],
                status: UpgradeStatus) -> Optional[Tuple[Path, RunConfig]]:
        """Stop the node at the upgrade block and make the new version current.

        None when visor was asked to stop meanwhile: the next run finds the node at
        the upgrade block again and upgrades then.
        """
        self.enter(Phase.UPGRADING, tag=status.tag)
        self.log.info("ready to upgrade", tag=status.tag, height=status.height)
        self.pause(self.config.stop_delay)
        self.stop(children)
        if self.inbox.stop_signal:
            return None
        folder = folder_for_tag(self.home, status.tag, self.config.upgrade_folders)
        if not folder.exists():
            self.install_release(status.tag, folder)
        if not (folder / RUN_CONFIG_FILE).is_file():
            raise VisorError(f"{folder} exists but has no {RUN_CONFIG_FILE}; finish preparing "
                             f"it for {status.tag} or remove it so it can be installed")
        run_config = self.read_run_config(folder)
        self.check_versions(folder, run_config, status.tag)
        switch_current(self.home, folder)
        self.log.info("switched", current=str(folder), tag=status.tag)
        return folder, run_config

    def install_release(self, tag: str, folder: Path) -> None:
        if not self.config.auto_install.enabled:
            raise VisorError(
                f"release {tag} is not installed: {folder} does not exist and [autoInstall] "
                f"enabled = false; create it with the release's binaries and a "
                f"{RUN_CONFIG_FILE}, then restart vegavisor")
        raise VisorError(f"release {tag} is not installed in {folder}: downloads are not "
                         f"implemented yet")

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
# Download, verify and stage an accepted release long before the upgrade block.
prefetch = true
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


def cmd_run(args: argparse.Namespace) -> int:
    home = resolve_home(args)
    config, warnings = load_config(home)
    log = Log(sys.stderr, config.logging.format, config.logging.level)
    for warning in warnings:
        log.warn("config warning", problem=warning)
    lock = lock_home(home)
    inbox = SignalInbox()
    inbox.install()
    log.info("vegavisor starting", version=__version__, home=str(home), pid=os.getpid(),
             python=platform.python_version())
    try:
        return Supervisor(home, config, log, inbox).run()
    except VisorError as e:
        log.error("giving up", reason=str(e))
        return e.exit_code
    finally:
        inbox.restore()
        os.close(lock)


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
