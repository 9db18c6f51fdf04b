"""Shared helpers: homes with a fake core, and a real `vegavisor.py run` to watch."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable
from typing import Dict
from typing import List
from typing import Optional
from typing import Sequence

import pytest

ROOT = Path(__file__).resolve().parent.parent
VEGAVISOR = ROOT / "vegavisor.py"
FAKE_CORE = ROOT / "fakes" / "core.py"
sys.path.insert(0, str(ROOT))
# The fake binaries start with `#!/usr/bin/env python3`: make that the interpreter
# running the tests, not whatever PATH finds first (a pyenv shim forks bash helpers
# whose command lines look like cores to the /proc monitor, and is slow).
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")

# Intervals short enough for tests, long enough that a loaded 2-core machine keeps up.
FAST_CONFIG = {
    "pollIntervalSeconds": 0.1,
    "upgradePollIntervalSeconds": 0.05,
    "rpcTimeoutSeconds": 2,
    "restartsDelaySeconds": 0.1,
    "restartsBackoffMaxSeconds": 0.2,
    "stopSignalTimeoutSeconds": 2,
    "maxNumberOfFirstConnectionRetries": 100,
    "maxNumberOfRestartConnectionRetries": 100,
}


def wait_for(condition: Callable[[], object], timeout: float,
             what: "str | Callable[[], str]") -> object:
    """Poll `condition` until it is truthy; fail naming `what` (a callable: described
    at the deadline) then."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            described = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout}s waiting for {described}")
        time.sleep(0.02)


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def read_records(path: Path) -> List[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Home:
    """A vegavisor home made by `vegavisor.py init`, running fake cores."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / "home"
        self.socket = str(root / "admin.sock")
        self.record = root / "record.jsonl"
        self.dn_home = root / "dn"

    def init(self, with_data_node: bool = False) -> None:
        args = ["init", "--home", str(self.path)] + (["--with-data-node"] if with_data_node else [])
        done = run_vegavisor(args)
        assert done.returncode == 0, done.stderr

    def set_config(self, **keys: object) -> None:
        """Rewrite top-level keys of config.toml (the rest of init's file stays)."""
        path = self.path / "config.toml"
        text = path.read_text()
        for key, value in keys.items():
            line = f"{key} = {toml_value(value)}"
            text, n = re.subn(rf"(?m)^{key} = .*$", line, text)
            if not n:
                text = line + "\n" + text
        path.write_text(text)

    def install_version(self, folder: str, version: str, core_args: Sequence[str] = (),
                        data_node: bool = False, data_node_args: Sequence[str] = ()) -> Path:
        """A version folder with a fake core binary reporting `version` and its run-config."""
        from fakes.core import make_binary
        target = self.path / folder
        target.mkdir(parents=True, exist_ok=True)
        make_binary(target / "vega", version)
        lines = [
            f"name = {json.dumps(version)}",
            "[vega.binary]",
            'path = "vega"',
            f"args = {toml_value(self.core_args(core_args))}",
            "[vega.rpc]",
            f"socketPath = {json.dumps(self.socket)}",
            'httpPath = "/rpc"',
        ]
        if data_node:
            args = ["datanode", "start", "--home", str(self.dn_home), "--record", str(self.record)]
            lines += ["[data_node.binary]", 'path = "vega"',
                      f"args = {toml_value(args + list(data_node_args))}"]
        (target / "run-config.toml").write_text("\n".join(lines) + "\n")
        return target

    def core_args(self, extra: Sequence[str]) -> List[str]:
        return ["node", "--admin-socket", self.socket, "--record", str(self.record)] + list(extra)

    def records(self, event: Optional[str] = None, role: Optional[str] = None) -> List[dict]:
        return [r for r in read_records(self.record)
                if (event is None or r.get("event") == event)
                and (role is None or r.get("role") == role)]

    def kill_leftovers(self) -> None:
        """Children run in their own sessions: kill any process still running from here."""
        marker = str(self.root).encode()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                if marker in (proc / "cmdline").read_bytes():
                    os.kill(int(proc.name), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                continue


class Visor:
    """A real `vegavisor.py run` subprocess, its output in a file."""

    def __init__(self, home: Home, python: str = sys.executable,
                 env: Optional[Dict[str, str]] = None, prefix: Sequence[str] = (),
                 launcher: Sequence[str] = (),
                 preexec_fn: Optional[Callable[[], None]] = None,
                 split_stderr: bool = False) -> None:
        """prefix: a command that runs python (e.g. setpriv ...); launcher: python args
        before vegavisor.py (e.g. -c CODE ARG); preexec_fn: e.g. setrlimit; split_stderr:
        stderr to its own file (self.errors) instead of the log, as `run > visor.log`."""
        self.home = home
        stamp = time.monotonic_ns()
        self.output = home.root / f"visor-{stamp}.log"
        self.errors = home.root / f"visor-{stamp}.stderr" if split_stderr else self.output
        self._file = open(self.output, "wb")
        self._errors = open(self.errors, "wb") if split_stderr else None
        self.proc = subprocess.Popen(
            list(prefix) + [python] + list(launcher) + [str(VEGAVISOR), "run", "--home",
                                                        str(home.path)],
            stdout=self._file, stderr=self._errors or subprocess.STDOUT, env=env,
            cwd=str(home.root), preexec_fn=preexec_fn)

    def log(self) -> str:
        return self.output.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 15) -> re.Match:
        return wait_for(lambda: re.search(pattern, self.log()), timeout,
                        lambda: f"log line {pattern!r}; log so far:\n{self.log()}")

    def wait_exit(self, timeout: float = 20) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"visor still running after {timeout}s; log:\n{self.log()}")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._file.close()
        if self._errors is not None:
            self._errors.close()


def run_vegavisor(args: Sequence[str], python: str = sys.executable, timeout: float = 30,
                  env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    return subprocess.run([python, str(VEGAVISOR)] + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=timeout, env=env)


@pytest.fixture
def short_tmp() -> Path:
    """A short temporary folder: unix socket paths must stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="vv-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def home(short_tmp: Path) -> Home:
    home = Home(short_tmp)
    home.init()
    home.set_config(**FAST_CONFIG)
    yield home
    home.kill_leftovers()


@pytest.fixture
def start_visor(home: Home) -> Callable[..., Visor]:
    started: List[Visor] = []

    def start(**kwargs: object) -> Visor:
        visor = Visor(home, **kwargs)
        started.append(visor)
        return visor
    yield start
    for visor in started:
        visor.close()
    home.kill_leftovers()


def make_release_zip(dest: Path, version: str, binary_name: str = "vega") -> Path:
    """A release asset as Vega publishes it: one zip, the binary at its root."""
    import zipfile
    from fakes.core import make_binary
    binary = make_binary(dest.parent / f".{dest.name}.binary", version)
    info = zipfile.ZipInfo(binary_name, date_time=(2026, 1, 1, 0, 0, 0))
    info.external_attr = (0o100755 << 16)
    info.compress_type = zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(dest, "w") as z:
        z.writestr(info, binary.read_bytes())
    binary.unlink()
    return dest


def host_asset_name() -> str:
    import vegavisor
    return vegavisor.asset_name("vega-{os}-{arch}.zip", vegavisor.host_platform())


def set_table(home: Home, table: str, **keys: object) -> None:
    """Set keys of a [table] of init's config.toml (its key names are unique in the file)."""
    path = home.path / "config.toml"
    text = path.read_text()
    header = f"[{table}]\n"
    assert header in text, f"no {header!r} in config.toml"
    for key, value in keys.items():
        line = f"{json.dumps(key)} = {toml_value(value)}"
        text, n = re.subn(rf'(?m)^"?{re.escape(key)}"? = .*$', line, text)
        if not n:
            text = text.replace(header, header + line + "\n", 1)
    path.write_text(text)


# --- shared fixtures of the upgrade and fault tests ---

MONITOR_PERIOD_SECONDS = 0.005


class CoreMonitor:
    """Scans /proc every ~5 ms for this test's cores and data nodes (their argv holds
    the test's temporary folder); keeps the largest number of each seen alive at once."""

    def __init__(self, root: Path) -> None:
        self.marker = str(root).encode()
        self.max_cores, self.max_data_nodes = 0, 0
        self.worst: Dict[str, List[str]] = {"core": [], "data node": []}
        self.scans = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="core-monitor", daemon=True)

    def start(self) -> "CoreMonitor":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(MONITOR_PERIOD_SECONDS):
            self.scan()

    def scan(self) -> None:
        cores: Dict[int, str] = {}
        data_nodes: Dict[int, str] = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            if self.marker not in cmdline:
                continue  # not ours; a zombie's cmdline is empty: it is dead
            argv = cmdline.split(b"\0")
            shown = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
            if b"node" in argv:
                cores[int(name)] = shown
            elif b"datanode" in argv and b"start" in argv:
                data_nodes[int(name)] = shown
        self.scans += 1
        if len(cores) > self.max_cores:
            self.max_cores, self.worst["core"] = len(cores), sorted(
                f"{pid}: {shown}" for pid, shown in cores.items())
        if len(data_nodes) > self.max_data_nodes:
            self.max_data_nodes, self.worst["data node"] = len(data_nodes), sorted(
                f"{pid}: {shown}" for pid, shown in data_nodes.items())

    def assert_never_two(self, log: str = "") -> None:
        assert self.scans > 10, "the /proc monitor did not run"
        assert self.max_cores <= 1, ("two cores alive at once:\n" + "\n".join(self.worst["core"])
                                     + f"\nlog:\n{log}")
        assert self.max_data_nodes <= 1, ("two data nodes alive at once:\n"
                                          + "\n".join(self.worst["data node"]) + f"\nlog:\n{log}")


@pytest.fixture
def monitor(home):
    watching = CoreMonitor(home.root).start()
    yield watching
    watching.stop()


@pytest.fixture
def github():
    """A fake GitHub on 127.0.0.1 (budget raised: fault tests make many API calls)."""
    from fakes.github import FakeGitHub
    with FakeGitHub(unauthenticated_limit=10000) as gh:
        yield gh
