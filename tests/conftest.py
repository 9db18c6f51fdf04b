"""Shared helpers: homes with a fake core, and a real `vegavisor.py run` to watch."""
from __future__ import annotations

import atexit
import contextlib
import io
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
from typing import Any
from typing import Callable
from typing import Dict
from typing import Iterator
from typing import List
from typing import NamedTuple
from typing import Optional
from typing import Sequence
from typing import Tuple
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parent.parent
VEGAVISOR = ROOT / "vegavisor.py"
FAKE_CORE = ROOT / "fakes" / "core.py"
sys.path.insert(0, str(ROOT))
# The fake binaries start with `#!/usr/bin/env python3`: make that the interpreter
# running the tests, not whatever PATH finds first (a pyenv shim forks bash helpers
# whose command lines look like cores to the /proc monitor, and is slow). It is the
# interpreter behind the venv, in a venv of its own without packages: a fake core must
# not start coverage (the test venv's .pth does that for every Python it runs; it took a
# third of the suite's time over its thousands of fake cores), nor run the .pth files of
# the interpreter's own site-packages (40 ms a start on a host with many packages).
FAKE_PYTHON_ROOT = tempfile.mkdtemp(prefix="vegavisor-tests-python-")
atexit.register(shutil.rmtree, FAKE_PYTHON_ROOT, True)
FAKE_PYTHON_DIR = os.path.join(FAKE_PYTHON_ROOT, "bin")
os.mkdir(FAKE_PYTHON_DIR)
os.symlink(os.path.realpath(sys.executable), os.path.join(FAKE_PYTHON_DIR, "python3"))
with open(os.path.join(FAKE_PYTHON_ROOT, "pyvenv.cfg"), "w") as cfg:
    cfg.write(f"home = {os.path.dirname(os.path.realpath(sys.executable))}\n"
              "include-system-site-packages = false\n")
os.environ["PATH"] = FAKE_PYTHON_DIR + os.pathsep + os.environ.get("PATH", "")

# `python -c VIA_CACHED_BYTECODE .../vegavisor.py ARGS` runs vegavisor.py as `python
# .../vegavisor.py ARGS` does (same argv, sys.path[0] and main), but imports it, so its
# bytecode is cached: a script is compiled at every start, 0.1 s of CPU the suite would
# spend thousands of times. Tests of the script's own start run it as a script.
VIA_CACHED_BYTECODE = ("import os, sys; del sys.argv[0]; "
                       "sys.path[0] = os.path.dirname(sys.argv[0]); "
                       "import vegavisor; sys.exit(vegavisor.main())")

# The longest tests first: pytest-xdist (--maxschedchunk 2, in scripts/test) hands tests
# out two at a time in collection order, so a rehearsal of a minute starts at once
# instead of running on alone after the rest are done.
SLOWEST_FIRST = ("test_simulation.py", "test_invariants.py", "test_migration.py",
                 "test_soak.py", "test_faults_random_kills.py")


def pytest_collection_modifyitems(items: List[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # a stable sort


# Coverage measures every Python process a test starts (setup.cfg: patch = subprocess),
# except in these modules: the fault matrices and the rehearsals run vegavisor as the
# real world does to check what a user sees, through decisions the in-process tests
# cover line by line. Coverage starts in each process it measures (0.16 s of CPU), and
# measuring their 330 runs took a minute of the suite's CPU for 30 lines that small
# tests of their own now reach. What such a test starts runs as under CI, only
# unmeasured: coverage passes itself on in these variables, which are left out of the
# environment while the test runs.
CHILDREN_UNMEASURED = ("test_faults_admin.py", "test_faults_children.py",
                       "test_faults_crash.py", "test_faults_download.py",
                       "test_faults_random_kills.py", "test_faults_signals.py",
                       "test_migration.py", "test_simulation.py", "test_soak.py")
COVERAGE_HANDOVER = ("COVERAGE_PROCESS_CONFIG", "COVERAGE_PROCESS_START")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    if item.path.name not in CHILDREN_UNMEASURED:
        yield
        return
    kept = {name: os.environ.pop(name) for name in COVERAGE_HANDOVER if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(kept)


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


# config.toml exactly as the Go Visor's `init` writes it (SPEC 1.2).
GO_VISOR_CONFIG = """\
maxNumberOfFirstConnectionRetries = 175000
maxNumberOfRestartConnectionRetries = 10
maxNumberOfRestarts = 3
restartsDelaySeconds = 5
stopDelaySeconds = 0
stopSignalTimeoutSeconds = 15

[upgradeFolders]
  "vX.X.X" = "vX.X.X"

[autoInstall]
  enabled = true
  repositoryOwner = "vegaprotocol"
  repository = "vega"
  [autoInstall.asset]
    name = "vega-linux-amd64.zip"
    binaryName = "vega"
"""

# The example run-config.toml the Go Visor's `init` writes in genesis/ and vX.X.X/
# (its ExampleRunConfig: no socket yet, placeholder args, no binary beside it).
GO_VISOR_EXAMPLE_RUN_CONFIG = """\
name = "{name}"

[vega]
  [vega.binary]
    path = "vega"
    args = ["arg1", "arg2", "..."]
  [vega.rpc]
    socketPath = ""
    httpPath = ""
"""


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


def lines(log: str, text: str) -> List[str]:
    """The lines of a log that hold `text`."""
    return [line for line in log.splitlines() if text in line]


def snapshot(root: Path) -> dict:
    """Every entry under root (and root): a link's target, a file's bytes, mode and mtime."""
    import stat
    entries = {}
    for path in [root] + sorted(root.rglob("*")):
        info = os.lstat(path)
        key = str(path.relative_to(root))
        if stat.S_ISLNK(info.st_mode):
            entries[key] = ("link", os.readlink(path))
        elif stat.S_ISDIR(info.st_mode):
            entries[key] = ("folder", info.st_mode, info.st_mtime_ns)
        else:
            entries[key] = ("file", path.read_bytes(), info.st_mode, info.st_mtime_ns)
    return entries


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
        """`vegavisor.py init` through run_main: the home is what a test starts from, not
        what it checks (test_init runs the command itself), so no Python start for it."""
        args = ["init", "--home", str(self.path)] + (["--with-data-node"] if with_data_node else [])
        done = run_main(args)
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
        kill_processes_under(self.root)


class Visor:
    """A real `vegavisor.py run` subprocess, its output in a file."""

    def __init__(self, home: Home, python: str = sys.executable,
                 env: Optional[Dict[str, str]] = None, prefix: Sequence[str] = (),
                 launcher: Sequence[str] = (),
                 preexec_fn: Optional[Callable[[], None]] = None,
                 split_stderr: bool = False) -> None:
        """prefix: a command that runs python (e.g. setpriv ...); launcher: python args
        before vegavisor.py (default: -c VIA_CACHED_BYTECODE; e.g. -c CODE ARG); preexec_fn:
        e.g. setrlimit; split_stderr: stderr to its own file (self.errors) instead of the
        log, as `run > visor.log`."""
        self.home = home
        stamp = time.monotonic_ns()
        self.output = home.root / f"visor-{stamp}.log"
        self.errors = home.root / f"visor-{stamp}.stderr" if split_stderr else self.output
        self._file = open(self.output, "wb")
        self._errors = open(self.errors, "wb") if split_stderr else None
        self.proc = subprocess.Popen(
            list(prefix) + [python] + list(launcher or ["-c", VIA_CACHED_BYTECODE])
            + [str(VEGAVISOR), "run", "--home", str(home.path)],
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
    return subprocess.run([python, "-c", VIA_CACHED_BYTECODE, str(VEGAVISOR)] + list(args),
                          stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=timeout, env=env)


def run_main(args: Sequence[str], env: Optional[Dict[str, str]] = None
             ) -> subprocess.CompletedProcess:
    """`vegavisor.py ARGS` as run_vegavisor gives it (exit code, stdout, stderr), but through
    vegavisor.main in this process: the same command without a Python start and a compile
    of the module (~0.2 s of CPU each). For the commands that make a home or read and
    report (init, validate, status, config, version); `run` and anything about signals or
    the script's own start go through run_vegavisor."""
    import vegavisor
    out, err = io.StringIO(), io.StringIO()
    with contextlib.ExitStack() as stack:
        if env is not None:
            stack.enter_context(mock.patch.dict(os.environ, env, clear=True))
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(err))
        code = vegavisor.main(list(args))
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


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
# A command line is read this far: a core's holds the test's folder in its first words.
CMDLINE_READ_BYTES = 65536


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
            try:  # os.read, not open(): half the CPU of a scan, 200 scans a second
                fd = os.open(f"/proc/{name}/cmdline", os.O_RDONLY)
            except OSError:
                continue
            try:
                cmdline = os.read(fd, CMDLINE_READ_BYTES)
            except OSError:
                continue
            finally:
                os.close(fd)
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


# --- the in-process world: the supervisor without processes, sockets or a real clock ---

FAKE_BINARY_PREFIX = "fake vega "


def write_fake_binary(path: Path, version: str) -> Path:
    """A file the in-process world reads as a binary reporting `version` (never run)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(FAKE_BINARY_PREFIX + version + "\n")
    path.chmod(0o755)
    return path


def write_run_config(folder: Path, name: str, socket: str = "/tmp/fake.sock",
                     args: Sequence[str] = ("node",), data_node: bool = False) -> Path:
    lines = [f"name = {json.dumps(name)}", "[vega.binary]", 'path = "vega"',
             f"args = {toml_value(list(args))}", "[vega.rpc]",
             f"socketPath = {json.dumps(socket)}", 'httpPath = "/rpc"']
    if data_node:
        lines += ["[data_node.binary]", 'path = "vega"', 'args = ["datanode", "start"]']
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run-config.toml").write_text("\n".join(lines) + "\n")
    return folder


def make_fake_home(root: Path, config: str = "", data_node: bool = False) -> Path:
    """A home with genesis running a fake v1 (the in-process world reads its binaries)."""
    home = root / "home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(config)
    genesis = write_run_config(home / "genesis", "v1", data_node=data_node)
    write_fake_binary(genesis / "vega", "v1")
    return home


class FakeProc:
    """A child in the in-process world: exits when the world or a signal says so."""

    def __init__(self, world: "FakeWorld", pid: int, argv: Sequence[str], env: Dict[str, str],
                 version: str) -> None:
        self.world, self.pid, self.start_time = world, pid, pid * 7
        self.argv, self.env, self.version = tuple(argv), env, version
        self.role = "data node" if "datanode" in argv else "core"
        self.started = world.clock
        self.code: Optional[int] = None
        self.lingering = 0.0  # a grandchild that outlives the leader by this long
        self.ignores_sigterm = False
        self.signals: List[int] = []

    def returncode(self) -> Optional[int]:
        return self.code

    def gone(self) -> bool:
        return self.code is not None and self.world.clock >= self.lingering

    def exit(self, code: int) -> None:
        if self.code is None:
            self.code = code
            self.world.events.append((self.world.clock, "exit", self.role, self.pid, code))

    def signal(self, sig: int) -> None:
        self.signals.append(sig)
        if sig == signal.SIGKILL:
            self.exit(-signal.SIGKILL)
            self.lingering = 0.0
        elif not self.ignores_sigterm:
            self.exit(-sig)


class FakeHook:
    """A hook in the in-process world: exits with `code` `seconds` after it started (None:
    only when signalled; SIGTERM ignored when `ignores_sigterm`)."""

    def __init__(self, world: "FakeWorld", pid: int, name: str, argv: Sequence[str],
                 env: Dict[str, str], seconds: Optional[float], code: int,
                 output: str = "", ignores_sigterm: bool = False) -> None:
        self.world, self.pid, self.start_time = world, pid, pid * 7
        self.name, self.role, self.argv, self.env = name, f"{name} hook", tuple(argv), env
        self.started, self.seconds, self.exit_code = world.clock, seconds, code
        self.output, self.ignores_sigterm = output, ignores_sigterm
        self.code: Optional[int] = None
        self.signals: List[int] = []

    def returncode(self) -> Optional[int]:
        if self.code is None and self.seconds is not None \
                and self.world.clock >= self.started + self.seconds:
            self.code = self.exit_code
        return self.code

    def gone(self) -> bool:
        return self.returncode() is not None

    def signal(self, sig: int) -> None:
        self.signals.append(sig)
        if self.returncode() is None and (sig == signal.SIGKILL or not self.ignores_sigterm):
            self.code = -sig

    def last_output(self) -> str:
        return self.output


class FakeJob:
    """An install or check run at once (the in-process world has no threads)."""

    def __init__(self, work: Callable[[object], None]) -> None:
        import vegavisor
        self.error: Optional[str] = None
        self.retry_after: Optional[float] = None
        try:
            work(vegavisor.Cancellation())
        except vegavisor.VisorError as e:
            self.error = str(e)
            self.retry_after = getattr(e, "retry_after", None)

    def done(self) -> bool:
        return True

    def cancel(self) -> None:
        pass


class FakeChain:
    """What core answers, as a real one does (SPEC 1.4): nothing until it listens (its
    start-up delay), a null AcceptedReleaseInfo before the first block, then the accepted
    release, and ReadyToUpgrade at the upgrade block (for a core older than the tag)."""

    def __init__(self, tag: str = "", accept_height: int = 2, upgrade_height: int = 10**9,
                 block_seconds: float = 1.0, listen_after: float = 0.0,
                 snapshot_listen_after: Optional[float] = None) -> None:
        self.tag, self.accept_height, self.upgrade_height = tag, accept_height, upgrade_height
        self.block_seconds, self.listen_after = block_seconds, listen_after
        self.snapshot_listen_after = listen_after if snapshot_listen_after is None \
            else snapshot_listen_after

    def answer(self, world: "FakeWorld") -> object:
        import vegavisor
        core = world.live("core")
        if core is None:
            raise vegavisor.AdminError("the socket file does not exist (core still starting?)")
        from_snapshot = "--snapshot.load-from-block-height" in core.argv
        delay = self.snapshot_listen_after if from_snapshot else self.listen_after
        up = world.clock - core.started - delay
        if up < 0:
            raise vegavisor.AdminError("the socket file does not exist (core still starting?)")
        height = int(up / self.block_seconds)
        if from_snapshot:
            height += self.upgrade_height
        if height < 1:
            return vegavisor.UpgradeStatus(False, "", 0)
        if not self.tag or height < self.accept_height or core.version == self.tag:
            return vegavisor.UpgradeStatus(False, "", 0)
        return vegavisor.UpgradeStatus(height >= self.upgrade_height, self.tag,
                                       self.upgrade_height)


class FakeWorld:
    """The clock, signals, processes, admin socket and installs the supervisor sees,
    in-process: `wait` advances a fake clock; nothing runs and nothing sleeps.

    `answer(world)` gives core's admin answer (an UpgradeStatus, or raises AdminError);
    `releases` maps a tag to the version its install writes (None: the install fails);
    `timeline` is a list of (time, action(world)) fired as the clock passes them;
    `on_step(world)` runs after every wait (invariant checks)."""

    def __init__(self, home: Path, answer: Optional[Callable[["FakeWorld"], object]] = None,
                 max_seconds: float = 3600.0) -> None:
        self.home, self.clock, self.max_seconds = home, 0.0, max_seconds
        self.answer = answer or FakeChain().answer
        self.stop_signal, self.reload_requested = "", False
        self.procs: List[FakeProc] = []
        self.leftovers: List[FakeProc] = []
        self.events: List[tuple] = []
        self.notes: List[Tuple[float, str]] = []
        self.polls: List[float] = []
        self.installs: List[Tuple[float, str]] = []
        self.releases: Dict[str, Optional[str]] = {}
        self.install_error = "GitHub is down"
        self.timeline: List[Tuple[float, Callable[["FakeWorld"], None]]] = []
        self.on_step: Optional[Callable[["FakeWorld"], None]] = None
        self.next_pid = 1000
        # hook name -> FakeHook's keyword arguments (seconds, code, ...), or an OSError
        self.hooks: Dict[str, object] = {}
        self.hook_runs: List[FakeHook] = []

    # the supervisor's side
    def now(self) -> float:
        return self.clock

    def take_reload_request(self) -> bool:
        requested, self.reload_requested = self.reload_requested, False
        return requested

    def wait(self, seconds: float) -> None:
        due = [t for t, _ in self.timeline if t > self.clock]
        target = self.clock + max(seconds, 0.0)
        if due:
            target = min(target, min(due))
        self.clock = max(self.clock, target)
        for entry in [e for e in self.timeline if e[0] <= self.clock]:
            self.timeline.remove(entry)
            entry[1](self)
        if self.on_step is not None:
            self.on_step(self)
        if self.clock > self.max_seconds:
            raise AssertionError(f"the supervisor still runs after {self.max_seconds}s "
                                 f"of fake time")

    def notify(self, *fields: str) -> None:
        self.notes += [(self.clock, f) for f in fields]

    def spawn(self, argv: Sequence[str], env: Dict[str, str]) -> FakeProc:
        real = Path(os.path.realpath(argv[0]))
        text = real.read_text()  # FileNotFoundError -> OSError, like exec
        version = text[len(FAKE_BINARY_PREFIX):].strip() \
            if text.startswith(FAKE_BINARY_PREFIX) else "?"
        self.next_pid += 1
        proc = FakeProc(self, self.next_pid, argv, env, version)
        self.procs.append(proc)
        self.events.append((self.clock, "spawn", proc.role, proc.pid, version, str(real),
                            tuple(argv)))
        return proc

    def run_hook(self, name: str, argv: Sequence[str], env: Dict[str, str]) -> FakeHook:
        behaviour = self.hooks.get(name, {})
        if isinstance(behaviour, OSError):
            raise behaviour
        self.next_pid += 1
        hook = FakeHook(self, self.next_pid, name, argv, env,
                        **dict({"seconds": 1.0, "code": 0}, **behaviour))
        self.hook_runs.append(hook)
        self.events.append((self.clock, "hook", name, hook.pid))
        return hook

    def leftover(self, pid: int, start_time: Optional[int]) -> Optional[FakeProc]:
        return next((p for p in self.leftovers if p.pid == pid and p.start_time == start_time
                     and p.code is None), None)

    def spawned_with(self, marker: str) -> List[FakeProc]:
        return [p for p in self.leftovers if p.env.get("VEGAVISOR_CHILD") == marker
                and p.code is None]

    def query(self, argv: Sequence[str]) -> str:
        import vegavisor
        text = Path(os.path.realpath(argv[0])).read_text()
        if not text.startswith(FAKE_BINARY_PREFIX):
            raise vegavisor.VisorError(f"`{argv[0]} version` cannot be run: Exec format error")
        if "latest-history-segment" in argv:
            return "no history segments found"
        return json.dumps({"version": text[len(FAKE_BINARY_PREFIX):].strip(), "hash": "0"})

    def poll_admin(self, rpc: object, timeout: float) -> object:
        """The answer as core's admin server sends it, read by vegavisor's own parser:
        an UpgradeStatus the parser would refuse never reaches the supervisor."""
        import vegavisor
        self.polls.append(self.clock)
        status = self.answer(self)
        info = {"VegaReleaseTag": status.tag, "UpgradeBlockHeight": status.height} \
            if status.tag or status.height else None
        body = json.dumps({"result": {"AcceptedReleaseInfo": info,
                                      "ReadyToUpgrade": status.ready},
                           "error": None, "id": len(self.polls)}).encode()
        return vegavisor.parse_upgrade_status(body, len(self.polls))

    def install(self, home: Path, config: object, tag: str, folder: Path, current: object,
                cancel: object, on_progress: Optional[Callable[[object], None]] = None) -> None:
        import vegavisor
        self.installs.append((self.clock, tag))
        version = self.releases.get(tag)
        if version is None:
            raise vegavisor.InstallError(self.install_error)
        write_run_config(folder, tag)
        write_fake_binary(folder / "vega", version)

    def start_job(self, name: str, work: Callable[[object], None]) -> FakeJob:
        return FakeJob(work)

    # the test's side
    def live(self, role: str) -> Optional[FakeProc]:
        alive = [p for p in self.procs + self.leftovers if p.role == role and p.code is None]
        assert len(alive) <= 1, f"two {role}s alive at once: {[p.argv for p in alive]}"
        return alive[0] if alive else None

    def at(self, when: float, action: Callable[["FakeWorld"], None]) -> None:
        self.timeline.append((when, action))

    def stop_at(self, when: float) -> None:
        """SIGTERM reaches the supervisor at fake time `when`."""
        self.at(when, lambda w: setattr(w, "stop_signal", "SIGTERM"))

    def started(self, role: str = "core") -> List[FakeProc]:
        return [p for p in self.procs if p.role == role]


def run_in_process(home: Path, world: FakeWorld, env: Optional[Dict[str, str]] = None,
                   stream: Optional[io.StringIO] = None) -> Tuple[int, str]:
    """`vegavisor run` in-process against `world`: (exit code, log text)."""
    import vegavisor
    config, warnings = vegavisor.load_config(home)
    out = stream or io.StringIO()
    log = vegavisor.Log(out, config.logging.format, config.logging.level,
                        clock=lambda: 1_800_000_000 + world.clock)
    code = vegavisor.Supervisor(home, config, log, world, env or {}).run()
    return code, out.getvalue()


# --- the fault matrices: every row is a parametrized test case and a FAULTS.md line ---
# Each tests/test_faults_*.py module defines a module-level list FAULTS of Row and
# parametrizes its matrix test with `rows(FAULTS)`, so a row cannot exist in FAULTS.md
# without a test that checks it. tests/test_faults_md.py renders FAULTS.md from the
# rows and fails when the file differs; `python3 tests/test_faults_md.py` rewrites it.

class Row(NamedTuple):
    area: str       # "crash points", "downloads", "admin socket", "children", "signals"
    id: str         # the pytest id of the case, e.g. "tag-404"
    fault: str      # what is injected, in words
    expected: str   # what the operator sees: exit code, log line, what is on disk
    case: Tuple[Any, ...] = ()  # the test's own parameters (not rendered)


def rows(table: List[Row]) -> List[Any]:
    """pytest.param per row, id = row.id, values = (row,) + row.case."""
    return [pytest.param(row, *row.case, id=row.id) for row in table]


# --- the upgrade fault matrices (test_faults_*.py): a v1 -> v2 chain, its end state ---
# The /proc checks below and CoreMonitor are shared by the crash, signal, children and
# random-kill matrices.

SNAPSHOT_FLAG = "--snapshot.load-from-block-height"
BLOCKS = ["--block-interval", "0.05"]
# v1 accepts v2 at height 2 and is ready to upgrade at height 8 (0.4 s after it starts).
HEIGHT = 8
UPGRADE = BLOCKS + ["--upgrade-tag", "v2", "--accept-height", "2", "--upgrade-height",
                    str(HEIGHT)]
# The upgrade block 1.5 s after v1 starts: time to kill visor before it, or to prefetch.
LATE_HEIGHT = 30
LATE_UPGRADE = BLOCKS + ["--upgrade-tag", "v2", "--accept-height", "2", "--upgrade-height",
                         str(LATE_HEIGHT)]
# A v2 core sees its own tag in the script, which is then off: blocks keep coming.
V2_ARGS = UPGRADE
# ~17 KB zip in 1 KB pieces 0.2 s apart: a download that lasts about 3.5 s.
SLOW = dict(delay_per_chunk=0.2, chunk_size=1024, times=1)


def serve_v2(gh: Any, tmp: Path) -> bytes:
    data = make_release_zip(tmp / "v2.zip", "v2").read_bytes()
    gh.add_release("v2", {host_asset_name(): data})
    return data


def use_github(home, gh: Any, **keys: object) -> None:
    set_table(home, "autoInstall", githubApiUrl=gh.url, **keys)


def read_json(path: Path) -> Dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def journal(home: "Home | Path") -> Dict[str, Any]:
    """HOME/.upgrade-journal.json of a Home or a home folder; {} while there is none."""
    return read_json(Path(getattr(home, "path", home)) / ".upgrade-journal.json")


def write_journal(home, step: str, height: int = HEIGHT) -> None:
    """The journal as a visor killed after writing `step` leaves it."""
    record = {"tag": "v2", "height": height, "from": "genesis", "to": "v2",
              "started": "2026-01-01T00:00:00Z", "step": step, "updated": "2026-01-01T00:00:01Z"}
    (home.path / ".upgrade-journal.json").write_text(json.dumps(record) + "\n")


def install_elf_version(home, folder: str, version: str, core_args: List[str]) -> Path:
    """A version folder whose run-config starts core through the python ELF binary, so
    /proc/<pid>/cmdline is exactly the argv visor started (as for a real, compiled vega;
    a #! script's cmdline starts with its interpreter instead)."""
    target = home.install_version(folder, version, core_args)
    python = os.path.join(FAKE_PYTHON_DIR, "python3")  # the packageless venv, as for #!
    args = [str(target / "vega")] + home.core_args(core_args)
    (target / "run-config.toml").write_text("\n".join([
        f"name = {json.dumps(version)}", "[vega.binary]", f"path = {json.dumps(python)}",
        f"args = {json.dumps(args)}", "[vega.rpc]", f"socketPath = {json.dumps(home.socket)}",
        'httpPath = "/rpc"']) + "\n")
    return target


def point_current(home, folder: str) -> None:
    link = home.path / "current"
    if os.path.lexists(link):  # init makes none; a run before this test may have
        os.remove(link)
    os.symlink(folder, link)


def staging(home) -> List[str]:
    return sorted(p.name for p in home.path.iterdir() if p.name.startswith(".staging"))


def children_running_vegavisor(parent: int) -> List[str]:
    """The command lines of `vegavisor.py run` processes whose parent is `parent`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and int((proc / "stat").read_text().rsplit(")", 1)[1]
                                           .split()[1]) == parent:
                argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
                if "vegavisor.py" in " ".join(argv) and "run" in argv:
                    found.append(" ".join(argv))
        except (OSError, IndexError, ValueError):
            continue
    return found


class Stopped(NamedTuple):
    """A script stopped by a signal mid-run (stop_mid_run)."""
    code: int
    out: str
    err: str
    folder: Path  # the script's work folder
    left: List[str]  # processes still naming it once the script had ended
    kept: bool  # the folder still there then


def stop_mid_run(script: subprocess.Popen, sig: int, levels: int, processes: int) -> Stopped:
    """Once `script` runs vegavisor and `processes` processes name its work folder (the
    folder `levels` up from vegavisor's --home), send `sig` and wait for the script's end.
    What a failing script leaves there is killed and removed after, not left to later
    tests."""
    folder = None
    try:
        [run, *_] = wait_for(lambda: children_running_vegavisor(script.pid), 30,
                             "vegavisor started by the script")
        folder = Path(run.split("--home ", 1)[1].split()[0]).parents[levels - 1]
        wait_for(lambda: len(live_processes(folder)) >= processes, 30,
                 f"{processes} processes under the work folder")
        script.send_signal(sig)
        out, err = script.communicate(timeout=30)
        return Stopped(script.returncode, out, err, folder, live_processes(folder),
                       folder.exists())
    finally:
        if script.poll() is None:
            script.kill()
            script.communicate()
        if folder is not None:
            kill_processes_under(folder)
            shutil.rmtree(folder, ignore_errors=True)


def kill_processes_under(root: Path) -> None:
    """SIGKILL every process whose command line names `root` (a test's folder)."""
    marker = str(root).encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if marker in (proc / "cmdline").read_bytes():
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


def dead_pid() -> int:
    """A pid that was a process a moment ago and is not one now (as a killed visor's)."""
    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid


def alive(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"


def live_processes(root: Path) -> List[str]:
    """Processes (not zombies) whose command line names the test's folder."""
    marker, found = str(root).encode(), []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if marker in cmdline and alive(int(proc.name)):
            shown = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{proc.name}: {shown}")
    return found


def core_starts(home, version: Optional[str] = None, role: str = "core") -> List[dict]:
    return [r for r in home.records("start", role=role)
            if version is None or r["version"] == version]


def kill_visor(visor) -> None:
    """SIGKILL, then reap it: its pid is dead, as a killed visor's is after a reboot."""
    assert visor.proc.poll() is None, f"visor exited before it was killed:\n{visor.log()}"
    visor.close()


def assert_complete_folder(folder: Path, version: str) -> None:
    assert (folder / "run-config.toml").is_file(), f"{folder} has no run-config.toml"
    assert f'name = "{version}"' in (folder / "run-config.toml").read_text()
    binary = folder / "vega"
    assert binary.is_file() and os.access(binary, os.X_OK), f"{binary} is not runnable"
    out = subprocess.run([str(binary), "version", "--output", "json"], stdout=subprocess.PIPE,
                         timeout=30, check=True).stdout
    assert json.loads(out)["version"] == version


def assert_v2_end_state(home, visor, monitor: CoreMonitor, height: int = HEIGHT,
                        data_node: bool = False, every_start_resumes: bool = True,
                        timeout: float = 30) -> None:
    """v2 runs from the upgrade snapshot, current -> v2, complete folder, journal done."""
    started = visor.wait_log(r"INFO  started role=core pid=(\d+) version=v2 ", timeout)
    wait_for(lambda: "admin socket answering" in visor.log()[started.end():]
             or visor.proc.poll() is not None, timeout, f"v2's answer; log:\n{visor.log()}")
    wait_for(lambda: journal(home).get("step") == "done" or visor.proc.poll() is not None,
             timeout, f"the journal's step 'done'; log:\n{visor.log()}")
    assert visor.proc.poll() is None, f"visor exited:\n{visor.log()}"
    assert journal(home)["tag"] == "v2" and journal(home)["height"] == height
    assert os.readlink(home.path / "current") == "v2"
    assert_complete_folder(home.path / "v2", "v2")
    assert staging(home) == []
    starts = core_starts(home, "v2")
    assert starts, "no v2 core started"
    resumed = starts if every_start_resumes else starts[:1]
    assert all(s["argv"][-2:] == [SNAPSHOT_FLAG, str(height)] for s in resumed), \
        [s["argv"] for s in starts]
    pid = int(started.group(1))
    assert starts[-1]["pid"] == pid and alive(pid), "the v2 core this visor started runs"
    assert not [s for s in core_starts(home) if s["version"] not in ("v1", "v2")]
    if data_node:
        dn = visor.wait_log(r"INFO  started role=\"?data node\"? pid=(\d+) version=v2 ")
        assert alive(int(dn.group(1))), "the v2 data node runs"
    monitor.assert_never_two(visor.log())


def stop_visor(visor, timeout: float = 15) -> None:
    """SIGTERM: exit 0 and nothing of the test's left running."""
    visor.signal(signal.SIGTERM)
    assert visor.wait_exit(timeout) == 0, visor.log()
    wait_for(lambda: not live_processes(visor.home.root), 10,
             f"no process left; still: {live_processes(visor.home.root)}")


# --- the crash points ---

class Ctx:
    """What a row's first life arranges and what its check after the restart needs."""

    def __init__(self, home, start_visor, github, tmp, monitor) -> None:
        self.home, self.start_visor, self.github, self.tmp = home, start_visor, github, tmp
        self.monitor = monitor
        self.height, self.data_node = HEIGHT, False
        self.facts: Dict[str, Any] = {}
        self.own: List[subprocess.Popen] = []  # processes the test started itself
