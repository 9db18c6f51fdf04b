#!/usr/bin/env python3
"""Benchmarks of vegavisor, with the fakes: no Vega, no internet. Writes BENCHMARKS.md.

    python3 scripts/bench.py [--quick] [--only switchover|idle|download|startup|polls]

a. switchover  fake core's "ready" record -> new core's "start" record, 100 MiB release:
               prefetch on, prefetch off, and the floor (SIGTERM + start, no visor)
b. idle        CPU and peak RSS of `vegavisor.py run` in every phase (no upgrade
               accepted: 2 s polls; upgrade accepted: 0.25 s polls), against an idle
               `python3 -c "import time; time.sleep(N)"`
c. download    peak RSS and throughput of `vegavisor.py prepare-upgrade` for 10 MiB,
               100 MiB and 1 GiB assets, against curl on the same URL
d. startup     wall time of `vegavisor.py version` against `python3 -c pass`, and where
               the difference goes (compile, imports)
e. polls       CPU of one UpgradeStatus call: http.client (as before), AdminClient on a
               new connection, AdminClient kept alive

Each benchmark is a measure_NAME(quick) that returns numbers and a report_NAME(section,
numbers) that writes them; only the measurements start processes, and they drive
`vegavisor.py` as a command (the admin-poll benchmark alone calls its admin client).
With --only, the other sections of an existing BENCHMARKS.md are kept as they are.
--quick runs fewer repetitions and a 20 s idle window, and says so in the output.
Standard library only (plus curl for the download baseline).
"""
from __future__ import annotations

import argparse
import ast
import calendar
import datetime
import http.client
import json
import os
import platform
import random
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "vegavisor.py"  # what is measured (--subject): copied to VEGAVISOR at start
VEGAVISOR = SOURCE
OUTPUT = ROOT / "BENCHMARKS.md"
sys.path.insert(0, str(ROOT))

import vegavisor  # noqa: E402  (only for the host's asset name)
from fakes.core import make_binary  # noqa: E402
from fakes.github import FakeGitHub  # noqa: E402

PYTHON = sys.executable
MiB = 1024 * 1024
GiB = 1024 * MiB
CLK_TCK = os.sysconf("SC_CLK_TCK")
BENCHMARKS = ("switchover", "idle", "download", "startup", "polls")

# Switchover: fake chain timing. The visor's first admin poll is 2 s (pollIntervalSeconds)
# after it starts core, so the release is accepted at that poll; the upgrade block comes
# later, late enough with prefetch on that the 100 MiB install is done by then.
BLOCK_SECONDS = 0.1
ACCEPT_HEIGHT = 5
UPGRADE_HEIGHT_PREFETCH = 60  # 6 s: prefetch (about 1-2 s here) finished well before
UPGRADE_HEIGHT_OTHER = 30  # 3 s: after the first poll, so the 0.25 s polling is in use
POLL_INTERVAL = 2.0  # vegavisor's defaults, mimicked by the floor driver
UPGRADE_POLL_INTERVAL = 0.25
SWITCH_ASSET_BYTES = 100 * MiB
OLD, NEW = "v1", "v2"


class BenchError(Exception):
    pass


# --- small helpers ---

def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def wait_for(condition: Callable[[], Any], timeout: float, what: str,
             interval: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def wait_exit(proc: subprocess.Popen, timeout: float) -> int:
    """Wait for a process, SIGKILLing it (by its pid) past the deadline."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        raise BenchError(f"pid {proc.pid} ({Path(str(proc.args[0])).name}) still running "
                         f"after {timeout:g}s; killed")


def wait_exit_exact(proc: subprocess.Popen, timeout: float) -> None:
    """Wait for exit without Popen.wait's sleep-polling (it adds up to 50 ms): a pidfd."""
    if hasattr(os, "pidfd_open"):
        fd = os.pidfd_open(proc.pid)
        try:
            ready, _, _ = select.select([fd], [], [], timeout)
        finally:
            os.close(fd)
        if not ready:
            raise BenchError(f"pid {proc.pid} still running after {timeout:g}s")
        proc.wait(1)
        return
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            raise BenchError(f"pid {proc.pid} still running after {timeout:g}s")
        time.sleep(0.001)


def read_records(path: Path) -> List[dict]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a line being appended right now
    return records


def first_record(path: Path, event: str, version: str, role: str = "core",
                 **match: Any) -> Optional[dict]:
    for r in read_records(path):
        if r.get("event") == event and r.get("version") == version and r.get("role") == role \
                and all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def proc_stat_cpu(pid: int) -> float:
    """utime + stime of the process itself (children excluded), in seconds."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_schedstat_cpu(pid: int) -> float:
    """Nanosecond-precise CPU time of every live thread of the process, in seconds."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


def proc_status_kb(pid: int, key: str) -> Optional[int]:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def log_events(text: str) -> List[Tuple[float, str]]:
    """(epoch seconds, rest of the line) for every vegavisor log line."""
    events = []
    for line in text.splitlines():
        m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.(\d{3})Z \S+\s+(.*)", line)
        if m:
            t = calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S"))
            events.append((t + int(m.group(2)) / 1000, m.group(3)))
    return events


def log_time(events: List[Tuple[float, str]], pattern: str, after: float = 0.0) -> Optional[float]:
    for t, text in events:
        if t >= after and re.match(pattern, text):
            return t
    return None


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def fmt_list(values: Sequence[float], scale: float = 1.0, digits: int = 0) -> str:
    return ", ".join(f"{v * scale:.{digits}f}" for v in values)


def ratio(a: float, b: float) -> str:
    if not b:
        return "n/a (baseline 0)"
    return f"{a / b:.2f}x"


class Workspace:
    """A temporary folder under /tmp (short: unix socket paths) and every process in it."""

    def __init__(self, name: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"vvb-{name}-", dir="/tmp"))
        self.procs: List[subprocess.Popen] = []
        self.files: List[Any] = []

    def popen(self, argv: Sequence[Any], log: Optional[Path] = None, **kwargs: Any) -> subprocess.Popen:
        if log is not None:
            out = open(log, "ab")
            self.files.append(out)
            kwargs.setdefault("stdout", out)
            kwargs.setdefault("stderr", subprocess.STDOUT)
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen([str(a) for a in argv], **kwargs)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.kill_leftovers()
        for f in self.files:
            f.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def kill_leftovers(self) -> None:
        """Nodes started by a visor that died: processes whose command line names our folder."""
        marker = str(self.dir).encode()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                if marker in (proc / "cmdline").read_bytes():
                    os.kill(int(proc.name), signal.SIGKILL)
            except OSError:
                continue

    def __enter__(self) -> "Workspace":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def host_asset_name() -> str:
    return vegavisor.asset_name("vega-{os}-{arch}.zip", vegavisor.host_platform())


def build_release_zip(dest: Path, version: str, padding: int) -> Path:
    """A release asset: `vega` (fake core reporting `version`) and random, stored padding."""
    binary = make_binary(dest.parent / f".vega-{version}-{dest.stem}", version)
    stamp = (2026, 1, 1, 0, 0, 0)
    with zipfile.ZipFile(dest, "w") as z:
        info = zipfile.ZipInfo("vega", date_time=stamp)
        info.external_attr = 0o100755 << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        z.writestr(info, binary.read_bytes())
        if padding:
            pad = zipfile.ZipInfo("padding.bin", date_time=stamp)
            pad.external_attr = 0o100644 << 16
            pad.compress_type = zipfile.ZIP_STORED
            pad.file_size = padding
            with z.open(pad, "w") as out:
                left = padding
                while left:
                    chunk = os.urandom(min(4 * MiB, left))
                    out.write(chunk)
                    left -= len(chunk)
    binary.unlink()
    return dest


def toml_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(json.dumps(str(v)) for v in values) + "]"


def make_home(root: Path, core_args: Sequence[str], socket_path: Path,
              api_url: Optional[str] = None, prefetch: Optional[bool] = None) -> Path:
    """`vegavisor.py init`, then only githubApiUrl (and prefetch) changed; fake core v1."""
    home = root / "home"
    done = subprocess.run([PYTHON, str(VEGAVISOR), "init", "--home", str(home)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
    if done.returncode:
        raise BenchError(f"vegavisor init failed: {done.stdout.decode(errors='replace')}")
    config = (home / "config.toml").read_text()
    if api_url is not None:
        config = re.sub(r"(?m)^githubApiUrl = .*$", f"githubApiUrl = {json.dumps(api_url)}", config)
    if prefetch is not None:
        config = re.sub(r"(?m)^prefetch = .*$", f"prefetch = {str(prefetch).lower()}", config)
    (home / "config.toml").write_text(config)
    make_binary(home / "genesis" / "vega", OLD)
    (home / "genesis" / "run-config.toml").write_text(
        f'name = "genesis"\n[vega.binary]\npath = "vega"\nargs = {toml_list(core_args)}\n'
        f'[vega.rpc]\nsocketPath = {json.dumps(str(socket_path))}\nhttpPath = "/rpc"\n')
    return home


def stop_visor(visor: subprocess.Popen) -> int:
    if visor.poll() is None:
        visor.send_signal(signal.SIGTERM)
    return wait_exit(visor, 30)


# --- machine ---

def machine() -> Dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": f"{platform.python_implementation()} {platform.python_version()} ({PYTHON})",
        "kernel": f"{platform.system()} {platform.release()}",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def subject() -> str:
    """Which vegavisor.py was measured: the copy taken at the start of this invocation."""
    import hashlib
    data = VEGAVISOR.read_bytes()
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                              timeout=10).stdout.strip() or "unknown"
        committed = subprocess.run(["git", "-C", str(ROOT), "show", "HEAD:vegavisor.py"],
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                   timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        head, committed = "unknown", data
    lines = data.count(b"\n")
    if SOURCE != ROOT / "vegavisor.py":
        return (f"{SOURCE} as copied at the start of the run: {lines} lines, sha256 "
                f"{hashlib.sha256(data).hexdigest()[:12]} (not this checkout's vegavisor.py)")
    return (f"vegavisor.py as copied at the start of the run: {lines} lines, sha256 "
            f"{hashlib.sha256(data).hexdigest()[:12]}, git HEAD {head}"
            + ("" if committed == data else " plus uncommitted changes"))


def snapshot_vegavisor() -> Path:
    """Copy vegavisor.py (others may be editing it) so that every section measures one file."""
    global VEGAVISOR
    folder = Path(tempfile.mkdtemp(prefix="vvb-subject-", dir="/tmp"))
    target = folder / "vegavisor.py"
    for _ in range(10):
        shutil.copy2(SOURCE, target)
        try:
            compile(target.read_text(), str(target), "exec")
            break
        except SyntaxError:  # caught mid-edit: try again
            time.sleep(2)
    else:
        shutil.rmtree(folder, ignore_errors=True)
        raise SystemExit(f"{SOURCE} does not compile; nothing to measure")
    VEGAVISOR = target
    return folder


def machine_line(m: Dict[str, str]) -> str:
    return (f"Measured {m['date']} on {m['cpu']}, {m['cores']} cores, {m['python']}, "
            f"{m['kernel']}; {subject()}.")


class Section:
    """One benchmark's part of BENCHMARKS.md."""

    def __init__(self, name: str, title: str, command: str, m: Dict[str, str]) -> None:
        self.name, self.title, self.command, self.machine = name, title, command, m
        self.rows: List[Tuple[str, ...]] = []
        self.lines: List[str] = []
        self.failed: Optional[str] = None
        self.load_before = loadavg()
        self.load_after = ""

    def row(self, figure: str, med: str, base: str, rat: str, target: str, met: Optional[bool]) -> None:
        self.rows.append((figure, med, base, rat, target,
                          "n/a" if met is None else ("yes" if met else "**no**")))

    def text(self) -> str:
        out = [f"<!-- section:{self.name} -->", f"## {self.title}", "",
               machine_line(self.machine), f"Load average (1, 5, 15 min) before: {self.load_before}; "
               f"after: {self.load_after}.", f"Reproduce: `{self.command}`", ""]
        if self.failed:
            out += [f"**FAILED**: {self.failed}", ""]
        if self.rows:
            out += ["| figure | median | baseline | ratio | target | met |",
                    "|---|---|---|---|---|---|"]
            out += ["| " + " | ".join(r) + " |" for r in self.rows]
            out.append("")
        out += self.lines
        out += ["", f"<!-- /section:{self.name} -->"]
        return "\n".join(out)


# --- a. switchover ---

def switch_core_args(root: Path, upgrade_height: int, ready_delay: float) -> List[str]:
    return ["node", "--admin-socket", str(root / "admin.sock"), "--record",
            str(root / "record.jsonl"), "--block-interval", str(BLOCK_SECONDS),
            "--upgrade-tag", NEW, "--accept-height", str(ACCEPT_HEIGHT),
            "--upgrade-height", str(upgrade_height), "--ready-delay", f"{ready_delay:.3f}"]


def switch_times(record: Path) -> Dict[str, float]:
    ready = first_record(record, "ready", OLD)
    answered = first_record(record, "rpc", OLD, ready=True)
    started = first_record(record, "start", NEW)
    if not (ready and answered and started):
        raise BenchError(f"incomplete record {record}: ready={bool(ready)} "
                         f"answered-ready={bool(answered)} v2-start={bool(started)}")
    return {"total": started["time"] - ready["time"], "answered_at": answered["time"],
            "detect": answered["time"] - ready["time"],
            "act": started["time"] - answered["time"],
            "ready_at": ready["time"], "start_at": started["time"]}


VISOR_MILESTONES = (  # (label, log pattern), in the order they happen at the block
    ("visor sees ready", r"ready to upgrade "),
    ("core stopped", r"stopped role=core"),
    ("download started", r"downloading "),
    ("download done", r"downloaded "),
    ("unpacked + version checked", r"version checked "),
    ("installed", r"installed "),
    ("current switched", r"switched "),
    ("v2 started (visor log)", r"started role=core .*version=v2"),
)


def visor_switch_run(ws: Workspace, n: int, api_url: str, prefetch: bool,
                     upgrade_height: int, ready_delay: float) -> Dict[str, Any]:
    root = ws.dir / f"{'p' if prefetch else 'n'}{n}"
    root.mkdir()
    home = make_home(root, switch_core_args(root, upgrade_height, ready_delay),
                     root / "admin.sock", api_url, prefetch)
    log = root / "visor.log"
    visor = ws.popen([PYTHON, VEGAVISOR, "run", "--home", home], log=log, cwd=str(root))
    record = root / "record.jsonl"
    try:
        wait_for(lambda: first_record(record, "start", NEW) or visor.poll() is not None,
                 upgrade_height * BLOCK_SECONDS + 60, "the v2 core to start", 0.05)
    finally:
        code = stop_visor(visor)
    text = log.read_text(errors="replace")
    if code != 0 or not first_record(record, "start", NEW):
        raise BenchError(f"vegavisor run exited {code} without an upgrade; log:\n{text[-3000:]}")
    result = switch_times(record)
    events = log_events(text)
    ready_log = log_time(events, r"ready to upgrade ")
    prefetched = log_time(events, r"prefetched ")
    result["prefetch_done_before_block"] = bool(prefetched and ready_log and prefetched <= ready_log)
    marks: Dict[str, float] = {}
    for label, pattern in VISOR_MILESTONES:
        t = log_time(events, pattern, after=(ready_log or 0) - 0.0005)
        if t is not None and ready_log is not None:
            marks[label] = t - result["answered_at"]
    result["marks"] = marks
    shutil.rmtree(root, ignore_errors=True)
    return result


def floor_run(ws: Workspace, n: int, ready_delay: float, v1: Path, v2: Path,
              vv: Any) -> Dict[str, Any]:
    """SIGTERM v1 and start v2 with nothing in between, after polling the way vegavisor does."""
    root = ws.dir / f"f{n}"
    root.mkdir()
    args = switch_core_args(root, UPGRADE_HEIGHT_OTHER, ready_delay)
    sock, record, log = str(root / "admin.sock"), root / "record.jsonl", root / "core.log"
    core = ws.popen([v1] + args, log=log, start_new_session=True, cwd=str(root))
    client = vv.AdminClient(vv.RpcConfig(sock, "/rpc"), 5.0)  # vegavisor's own admin client
    next_poll, tag, request_id = time.monotonic() + POLL_INTERVAL, "", 1
    deadline = time.monotonic() + UPGRADE_HEIGHT_OTHER * BLOCK_SECONDS + 60
    while True:
        if time.monotonic() > deadline:
            raise BenchError("floor driver: v1 never became ready")
        time.sleep(max(0.0, next_poll - time.monotonic()))
        try:
            status = client.upgrade_status(request_id)
            request_id += 1
            tag = status.tag
            if status.ready:
                break
        except vv.AdminError:
            pass
        if core.poll() is not None:
            raise BenchError(f"floor driver: v1 exited {core.returncode}")
        next_poll = time.monotonic() + (UPGRADE_POLL_INTERVAL if tag else POLL_INTERVAL)
    client.close()
    core.send_signal(signal.SIGTERM)
    wait_exit_exact(core, 15)
    new = ws.popen([v2] + args + ["--snapshot.load-from-block-height", str(UPGRADE_HEIGHT_OTHER)],
                   log=log, start_new_session=True, cwd=str(root))
    try:
        wait_for(lambda: first_record(record, "start", NEW), 30, "the floor's v2 start")
    finally:
        new.send_signal(signal.SIGTERM)
        wait_exit(new, 15)
    result = switch_times(record)
    shutil.rmtree(root, ignore_errors=True)
    return result


def measure_switchover(quick: bool) -> Dict[str, Any]:
    """ready -> v2 start, per run: the floor, vegavisor with prefetch on, and off."""
    runs = 3 if quick else 7
    runs_off = 3 if quick else 5
    rng = random.Random(20260101)
    # Ready comes a random 0-250 ms after the upgrade block, so where it falls between two
    # 0.25 s polls is random in every run, for the visor and the floor driver alike.
    delays = [rng.uniform(0.0, UPGRADE_POLL_INTERVAL) for _ in range(max(runs, runs_off))]
    vv = load_subject()
    with Workspace("sw") as ws, FakeGitHub(unauthenticated_limit=100000) as gh:
        archive = build_release_zip(ws.dir / "release-v2.zip", NEW, SWITCH_ASSET_BYTES)
        gh.add_release(NEW, {host_asset_name(): archive})
        asset_size = archive.stat().st_size
        v1 = make_binary(ws.dir / "bin" / "vega-v1", OLD)
        v2 = make_binary(ws.dir / "bin" / "vega-v2", NEW)
        floor, on, off = [], [], []
        for i in range(runs):  # interleaved, so drifts of the machine hit every variant
            floor.append(floor_run(ws, i, delays[i], v1, v2, vv))
            on.append(visor_switch_run(ws, i, gh.url, True, UPGRADE_HEIGHT_PREFETCH, delays[i]))
            if i < runs_off:
                off.append(visor_switch_run(ws, i, gh.url, False, UPGRADE_HEIGHT_OTHER, delays[i]))
            print(f"  switchover run {i + 1}/{runs}: floor {fmt_ms(floor[-1]['total'])}, "
                  f"prefetch on {fmt_ms(on[-1]['total'])}"
                  + (f", prefetch off {fmt_ms(off[-1]['total'])}" if i < runs_off else ""),
                  flush=True)
    return {"floor": floor, "on": on, "off": off, "asset_size": asset_size}


# --- b. idle ---

# The phases of a node's life that `run` idles in for hours or days, and the poll
# period of each (vegavisor's defaults, as `init` writes them).
IDLE_PHASES = (
    ("no upgrade accepted", "pollIntervalSeconds", POLL_INTERVAL),
    ("upgrade accepted, block not reached", "upgradePollIntervalSeconds", UPGRADE_POLL_INTERVAL),
)
# Fake core for the accepted phase: v2 accepted from the first block, its block far away.
ACCEPTED_CORE_ARGS = ["--upgrade-tag", NEW, "--accept-height", "0",
                      "--upgrade-height", "1000000000"]
CORE_BUDGET = 0.001  # 0.1 % of one core: the project's target for idle CPU


def start_idle_visor(ws: Workspace, name: str, accepted: bool,
                     python_flags: Sequence[str] = ()) -> Tuple[subprocess.Popen, Path]:
    """`vegavisor.py run` over its own fake core, in one phase (no network: the release
    folder exists, so no prefetch starts, and githubApiUrl points at a closed port)."""
    root = ws.dir / name
    root.mkdir()
    sock = root / "admin.sock"
    core = ["node", "--admin-socket", str(sock), "--record", str(root / "record.jsonl")]
    home = make_home(root, core + (ACCEPTED_CORE_ARGS if accepted else []), sock,
                     api_url="http://127.0.0.1:9")
    if accepted:
        make_binary(home / NEW / "vega", NEW)
        (home / NEW / "run-config.toml").write_text(
            (home / "genesis" / "run-config.toml").read_text().replace('"genesis"', f'"{NEW}"'))
    proc = ws.popen([PYTHON] + list(python_flags) + [VEGAVISOR, "run", "--home", home],
                    log=root / "visor.log", cwd=str(root))
    return proc, root


FLOOR_POLLER = """
import sys, time
sys.path.insert(0, sys.argv[1])
import vegavisor
client = vegavisor.AdminClient(vegavisor.RpcConfig(sys.argv[2], "/rpc"), 5.0)
interval, n = float(sys.argv[3]), 0
while True:
    time.sleep(interval)
    n += 1
    try:
        client.upgrade_status(n)
    except vegavisor.AdminError:
        pass
"""


def start_floor_poller(ws: Workspace, name: str, interval: float) -> Tuple[subprocess.Popen, Path]:
    """The least a Python poller can do: sleep, one kept-alive AdminClient call, again;
    against its own fake core (v2 accepted)."""
    root = ws.dir / name
    root.mkdir()
    sock = root / "admin.sock"
    ws.popen([PYTHON, ROOT / "fakes" / "core.py", "node", "--admin-socket", sock, "--record",
              root / "record.jsonl"] + ACCEPTED_CORE_ARGS, log=root / "core.log")
    # The measured copy's AdminClient, or this checkout's for a copy that has none.
    client_dir = VEGAVISOR.parent if "class AdminClient" in VEGAVISOR.read_text() else ROOT
    proc = ws.popen([PYTHON, "-c", FLOOR_POLLER, client_dir, sock, f"{interval:g}"],
                    log=root / "floor.log")
    return proc, root


def rpc_times(root: Path) -> List[float]:
    return [r["time"] for r in read_records(root / "record.jsonl")
            if r.get("event") == "rpc" and r.get("status") == 200]


def measure_idle(quick: bool) -> Dict[str, Any]:
    """CPU and peak RSS of idle `vegavisor.py run` processes in every phase, side by side
    with idle `python3 -c "sleep"` processes read at the same moments."""
    duration, warm, runs = (20.0, 6.0, 2) if quick else (60.0, 6.0, 3)
    sleep_cmd = f"import time; time.sleep({duration + 30:g})"
    with Workspace("idle") as ws:
        procs: Dict[str, List[Tuple[subprocess.Popen, Optional[Path]]]] = {}
        for phase, _, _ in IDLE_PHASES:
            procs[phase] = [start_idle_visor(ws, f"{phase[:2]}{i}", phase != IDLE_PHASES[0][0])
                            for i in range(runs)]
        for phase, _, interval in IDLE_PHASES:
            procs[f"floor, {phase}"] = [start_floor_poller(ws, f"fl{phase[:2]}{i}", interval)
                                        for i in range(runs)]
        procs["-S"] = [start_idle_visor(ws, "nosite", False, ["-S"])]
        procs["baseline"] = [(ws.popen([PYTHON, "-c", sleep_cmd]), None) for _ in range(runs)]
        started = time.monotonic()
        time.sleep(warm)
        for phase, group in procs.items():
            for proc, root in group:
                check_idle_visor(proc, root, phase)
        everyone = [p for group in procs.values() for p, _ in group]
        t_warm, wall_warm = time.monotonic(), time.time()
        cpu_warm = {p.pid: (proc_stat_cpu(p.pid), proc_schedstat_cpu(p.pid)) for p in everyone}
        time.sleep(max(0.0, started + duration - time.monotonic()))
        cpu_end = {p.pid: (proc_stat_cpu(p.pid), proc_schedstat_cpu(p.pid)) for p in everyone}
        t_end, wall_end = time.monotonic(), time.time()
        hwm = {p.pid: (proc_status_kb(p.pid, "VmHWM") or 0) / 1024 for p in everyone}
        window = t_end - t_warm
        result: Dict[str, Any] = {"duration": duration, "warm": warm, "window": window,
                                  "runs": runs, "sleep_cmd": sleep_cmd, "phases": {}}
        for phase, group in procs.items():
            rows = []
            for proc, root in group:
                if proc.poll() is not None:
                    raise BenchError(f"pid {proc.pid} ({phase}) exited during the idle window")
                (c0, s0), (c1, s1) = cpu_warm[proc.pid], cpu_end[proc.pid]
                polls = [t for t in rpc_times(root) if wall_warm <= t <= wall_end] if root else []
                rows.append({"ticks": c1 - c0, "sched": s1 - s0, "cpu_total": c1,
                             "hwm": hwm[proc.pid], "polls": len(polls),
                             "threads": len(list(Path(f"/proc/{proc.pid}/task").iterdir()))})
            result["phases"][phase] = rows
        for phase, group in procs.items():
            for proc, root in group:
                if is_visor(phase) and stop_visor(proc) != 0:
                    raise BenchError(f"vegavisor ({phase}) exited {proc.returncode} on SIGTERM")
    result["rss"] = rss_breakdown()
    return result


def is_visor(group: str) -> bool:
    return group == "-S" or group in [phase for phase, _, _ in IDLE_PHASES]


def check_idle_visor(proc: subprocess.Popen, root: Optional[Path], phase: str) -> None:
    """A visor or floor poller polls its core; in the accepted phase it knows the release."""
    if root is None:
        return
    answered = [r for r in read_records(root / "record.jsonl")
                if r.get("event") == "rpc" and r.get("status") == 200]
    accepted = phase == IDLE_PHASES[1][0]
    if proc.poll() is not None or not answered or (accepted and answered[-1].get("tag") != NEW):
        log = "".join(f.read_text(errors="replace") for f in root.glob("*.log"))
        raise BenchError(f"vegavisor ({phase}) is not polling as it should: exit {proc.poll()}, "
                         f"{len(answered)} answers; log: {log[-2000:]}")


RSS_PROBE = r"""
import sys, time
def kb(key):
    for line in open('/proc/self/status'):
        if line.startswith(key + ':'):
            return int(line.split()[1])
out = {'base': kb('VmRSS'), 'mods': []}
for name in MODULES:
    before = kb('VmRSS')
    __import__(name)
    out['mods'].append((kb('VmRSS') - before, name))
out['stdlib_done'] = kb('VmRSS')
source = open(PATH).read()
code = compile(source, PATH, 'exec')
out['compiled'] = kb('VmRSS')
out['compile_hwm'] = kb('VmHWM')
exec(code, {'__name__': 'vegavisor_probe'})
out['executed'] = kb('VmRSS')
import tracemalloc  # last: its own bookkeeping would swell the RSS figures above
tracemalloc.start()
compile(source, PATH, 'exec')
out['compile_peak'] = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
out['lines'] = source.count(chr(10))
print(repr(out))
"""


def rss_breakdown() -> Dict[str, Any]:
    """VmRSS of a fresh interpreter after vegavisor's imports, its compile, its execution."""
    source = VEGAVISOR.read_text()
    modules: List[str] = []
    for m in re.finditer(r"(?m)^(?:import (\S+)$|from (\S+) import )", source):
        name = m.group(1) or m.group(2)
        if name != "__future__" and name not in modules:
            modules.append(name)
    code = f"MODULES = {modules!r}\nPATH = {str(VEGAVISOR)!r}\n" + RSS_PROBE
    done = subprocess.run([PYTHON, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=60)
    if done.returncode:
        raise BenchError(f"RSS probe failed: {done.stderr}")
    r = ast.literal_eval(done.stdout)
    return {"base": r["base"] / 1024, "stdlib": (r["stdlib_done"] - r["base"]) / 1024,
            "top": sorted(r["mods"], reverse=True),
            "compile": (r["compiled"] - r["stdlib_done"]) / 1024,
            "compile_hwm": r["compile_hwm"] / 1024, "compile_peak": r["compile_peak"] / MiB,
            "exec": (r["executed"] - r["compiled"]) / 1024, "total": r["executed"] / 1024,
            "lines": r["lines"]}


# --- c. download ---

def prepare_upgrade_run(ws: Workspace, n: int, api_url: str, tag: str) -> Dict[str, Any]:
    root = ws.dir / f"d{n}"
    root.mkdir()
    sock = root / "admin.sock"
    home = make_home(root, ["node", "--admin-socket", str(sock)], sock, api_url)
    log = root / "prepare.log"
    started = time.monotonic()
    proc = ws.popen([PYTHON, VEGAVISOR, "prepare-upgrade", "--home", home, tag], log=log,
                    cwd=str(root))
    hwm, rusage, status = 0, None, None
    deadline = started + 600
    while True:
        value = proc_status_kb(proc.pid, "VmHWM")
        if value:
            hwm = max(hwm, value)
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            raise BenchError(f"prepare-upgrade {tag} still running after 600 s")
        time.sleep(0.01)
    wall = time.monotonic() - started
    proc.returncode = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)
    text = log.read_text(errors="replace")
    if proc.returncode:
        raise BenchError(f"prepare-upgrade {tag} exited {proc.returncode}:\n{text[-3000:]}")
    m = re.search(r"downloaded .*?size=(\d+) .*?seconds=([0-9.]+)", text)
    if not m:
        raise BenchError(f"no 'downloaded ... seconds=' line in:\n{text[-3000:]}")
    events = log_events(text)
    t_down = log_time(events, r"downloaded ")
    t_checked = log_time(events, r"version checked ")
    t_installed = log_time(events, r"installed ")
    shutil.rmtree(root, ignore_errors=True)
    return {"hwm": hwm / 1024, "maxrss": rusage.ru_maxrss / 1024, "size": int(m.group(1)),
            "seconds": float(m.group(2)), "wall": wall,
            "unpack": (t_checked - t_down) if t_down and t_checked else float("nan"),
            "install": (t_installed - t_down) if t_down and t_installed else float("nan")}


def profile_prepare(ws: Workspace, api_url: str, tag: str) -> Dict[str, float]:
    """One prepare-upgrade under cProfile (wall-clock timer): where download() spends its time."""
    import pstats
    root = ws.dir / "prof"
    root.mkdir()
    sock = root / "admin.sock"
    home = make_home(root, ["node", "--admin-socket", str(sock)], sock, api_url)
    out = root / "prepare.prof"
    done = subprocess.run([PYTHON, "-m", "cProfile", "-o", str(out), str(VEGAVISOR),
                           "prepare-upgrade", "--home", str(home), tag],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    if done.returncode:
        raise BenchError(f"profiled prepare-upgrade failed: {done.stdout[-2000:]!r}")
    stats = pstats.Stats(str(out)).stats  # type: ignore[attr-defined]

    def own(name: str) -> float:
        return sum(v[3] for k, v in stats.items() if k[0].endswith("vegavisor.py") and k[2] == name)

    def called_from(caller: str, callee: Callable[[Tuple[str, int, str]], bool]) -> float:
        total = 0.0
        for key, value in stats.items():
            if callee(key):
                total += sum(edge[3] for ck, edge in value[4].items()
                             if ck[0].endswith("vegavisor.py") and ck[2] == caller)
        return total
    shutil.rmtree(root, ignore_errors=True)
    return {
        "download": own("download"),
        "sha256": called_from("download", lambda k: "_hashlib.HASH" in k[2] and "update" in k[2]),
        "write": called_from("download", lambda k: "BufferedWriter" in k[2] and "'write'" in k[2]),
        "fsync": called_from("download", lambda k: "fsync" in k[2]),
        "read": called_from("<lambda>", lambda k: k[2] == "read" and k[0].endswith("client.py")),
        "open": called_from("download", lambda k: k[2] == "open" and k[0].endswith("vegavisor.py")),
        "unpack": own("unpack_zip"),
        "unpack_write": called_from("_extract_member", lambda k: k[2] == "copyfileobj"),
        "unpack_fsync": called_from("_extract_member", lambda k: "fsync" in k[2]),
        "install": own("install_release"),
    }


def hash_rate(path: Path, limit: int = 512 * MiB) -> float:
    """hashlib SHA-256 bytes/second over (part of) a page-cached file, 1 MiB reads."""
    import hashlib
    digest, done = hashlib.sha256(), 0
    with open(path, "rb") as f:
        f.read(MiB)
        t = time.perf_counter()
        while done < limit:
            chunk = f.read(MiB)
            if not chunk:
                break
            digest.update(chunk)
            done += len(chunk)
    return done / (time.perf_counter() - t)


def curl_run(url: str, out: str = "/dev/null") -> Dict[str, float]:
    done = subprocess.run(
        ["curl", "-s", "-o", out, "-L", "-H", "Accept: application/octet-stream",
         "-w", "%{time_total} %{size_download} %{http_code}", url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=600)
    parts = done.stdout.split()
    if done.returncode or len(parts) != 3 or parts[2] != "200":
        raise BenchError(f"curl {url} failed: rc={done.returncode} {done.stdout} {done.stderr}")
    return {"seconds": float(parts[0]), "size": int(parts[1])}


def measure_download(quick: bool) -> Dict[str, Any]:
    """prepare-upgrade against curl, per asset size; one profiled run of the largest."""
    if not shutil.which("curl"):
        raise BenchError("curl is not installed: it is the throughput baseline")
    free = shutil.disk_usage("/tmp").free
    cases = [("10 MiB", 10 * MiB, 3 if quick else 5), ("100 MiB", 100 * MiB, 3 if quick else 5),
             ("1 GiB", GiB, 1 if quick else 3)]
    skipped = None
    if free < 5e9:
        skipped = (f"the 1 GiB case was skipped: only {free / 1e9:.1f} GB free under /tmp "
                   f"(5 GB needed: asset, download and unpacked copy)")
        cases = cases[:2]
    results: Dict[str, Dict[str, Any]] = {}
    with Workspace("dl") as ws, FakeGitHub(unauthenticated_limit=100000) as gh:
        for label, size, runs in cases:
            tag = f"v0.{size // MiB}.0"
            archive = build_release_zip(ws.dir / f"{tag}.zip", tag, size)
            release = gh.add_release(tag, {host_asset_name(): archive})
            asset = release.assets[0]
            url = f"{gh.url}/repos/{gh.owner}/{gh.repo}/releases/assets/{asset.id}"
            vv, cu, null = [], [], []
            os.sync()
            warm = (prepare_upgrade_run(ws, 99, gh.url, tag), curl_run(url))  # not counted
            curl_file = ws.dir / "curl.download"
            for i in range(runs):
                os.sync()
                vv.append(prepare_upgrade_run(ws, len(results) * 10 + i, gh.url, tag))
                os.sync()
                cu.append(curl_run(url, str(curl_file)))
                curl_file.unlink()
                null.append(curl_run(url))
                if cu[-1]["size"] != asset.size or vv[-1]["size"] != asset.size:
                    raise BenchError(f"sizes differ: asset {asset.size}, curl {cu[-1]['size']}, "
                                     f"vegavisor {vv[-1]['size']}")
            print(f"  download {label}: vegavisor {[round(r['seconds'], 3) for r in vv]} s, "
                  f"curl {[round(r['seconds'], 3) for r in cu]} s, "
                  f"VmHWM {[round(r['hwm'], 1) for r in vv]} MiB", flush=True)
            results[label] = {"vv": vv, "curl": cu, "null": null, "size": asset.size,
                              "runs": runs, "url": url, "warm": warm}
            if label == cases[-1][0]:  # diagnostics on the largest asset
                os.sync()
                prof = profile_prepare(ws, gh.url, tag)
                prof["label"] = label
                prof["size"] = asset.size
                sha_rate = hash_rate(archive)
            archive.unlink()
    return {"results": results, "prof": prof, "sha_rate": sha_rate, "skipped": skipped}


# --- d. startup ---

def timed(cmd: List[str]) -> Tuple[float, float]:
    """Wall time, and CPU time (user + system) of the child from its rusage."""
    import resource
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    # No `timeout=` here: with one, Popen.wait polls with sleeps of up to 50 ms, which
    # would quantize these ~50 ms figures; a timer kills a hung child instead.
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killer = threading.Timer(30, proc.kill)
    killer.start()
    code = proc.wait()
    wall = time.perf_counter() - t
    killer.cancel()
    if code != 0:
        raise BenchError(f"{cmd} exited with {code}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def import_times(flags: Sequence[str], runs: int = 5) -> Dict[str, float]:
    """Median cumulative -X importtime (s) of each top-level import of `vegavisor.py
    version` that `python3 -c pass` does not make (a shared dependency counts for the
    first module that imports it)."""
    def top_level(argv: List[str]) -> Dict[str, int]:
        done = subprocess.run([PYTHON] + list(flags) + ["-X", "importtime"] + argv,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              timeout=30)
        rows = {}
        for line in done.stderr.splitlines():
            m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\S.*)$", line)
            if m:
                rows[m.group(3)] = int(m.group(2))
        return rows
    base = set(top_level(["-c", "pass"]))
    seen = [top_level([str(VEGAVISOR), "version"]) for _ in range(runs)]
    names = [name for name in seen[0] if name not in base]
    return {name: median([s.get(name, 0) for s in seen]) / 1e6 for name in names}


def measure_startup(quick: bool) -> Dict[str, Any]:
    """`vegavisor.py version` against `python3 -c pass`, as run and under `python3 -S`;
    the installed module with its bytecode cached; and where the difference goes."""
    runs = 10 if quick else 20
    commands = {
        "vegavisor": [PYTHON, str(VEGAVISOR), "version"],
        "pass": [PYTHON, "-c", "pass"],
        "vegavisor -S": [PYTHON, "-S", str(VEGAVISOR), "version"],
        "pass -S": [PYTHON, "-S", "-c", "pass"],
    }
    import importlib.util
    import py_compile
    import tracemalloc
    with tempfile.TemporaryDirectory() as cached:
        module = Path(cached) / "vegavisor.py"
        shutil.copy(VEGAVISOR, module)
        py_compile.compile(str(module), cfile=importlib.util.cache_from_source(str(module)))
        commands["installed"] = [PYTHON, "-c", f"import sys; sys.path.insert(0, {cached!r}); "
                                 f"import vegavisor; sys.exit(vegavisor.main(['version']))"]
        for _ in range(3):  # warm the page cache and the .pyc of imported modules
            for cmd in commands.values():
                timed(cmd)
        wall: Dict[str, List[float]] = {name: [] for name in commands}
        cpu: Dict[str, List[float]] = {name: [] for name in commands}
        for _ in range(runs):  # alternating, so drifts of the machine hit every command
            for name, cmd in commands.items():
                w, c = timed(cmd)
                wall[name].append(w)
                cpu[name].append(c)
    source = VEGAVISOR.read_text()
    compiles = []
    for _ in range(5):
        t = time.perf_counter()
        compile(source, str(VEGAVISOR), "exec")
        compiles.append(time.perf_counter() - t)
    tracemalloc.start()
    compile(source, str(VEGAVISOR), "exec")
    compile_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"runs": runs, "wall": wall, "cpu": cpu, "compiles": compiles,
            "compile_peak": compile_peak, "lines": source.count("\n"),
            "imports": import_times([]), "imports_S": import_times(["-S"])}


# --- e. admin poll ---

def load_subject() -> Any:
    """The measured vegavisor.py (the snapshot) as a module, for in-process calls."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("vegavisor_subject", str(VEGAVISOR))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


class UnixHTTPConnection(http.client.HTTPConnection):
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


def http_client_poll(vv: Any, rpc: Any, request_id: int) -> Any:
    """The admin call of vegavisor.py up to 466b07d: http.client, a new connection a poll."""
    body = json.dumps({"method": "protocolupgrade.UpgradeStatus", "params": [None],
                       "id": request_id})
    conn = UnixHTTPConnection(rpc.socket_path, 5.0)
    try:
        conn.request("POST", rpc.http_path, body=body.encode(),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        answer = response.read(64 * 1024 + 1)
    finally:
        conn.close()
    if response.status != 200:
        raise BenchError(f"HTTP {response.status}")
    return vv.parse_upgrade_status(answer, request_id)


def measure_polls(quick: bool) -> Dict[str, Any]:
    """CPU of one UpgradeStatus call in this process, per client, against one fake core:
    blocks of polls, the clients interleaved block by block."""
    polls, blocks = (200, 3) if quick else (500, 7)
    vv = load_subject()
    with Workspace("poll") as ws:
        sock = ws.dir / "admin.sock"
        ws.popen([PYTHON, ROOT / "fakes" / "core.py", "node", "--admin-socket", sock]
                 + ACCEPTED_CORE_ARGS, log=ws.dir / "core.log")
        rpc = vv.RpcConfig(str(sock), "/rpc")
        keep = vv.AdminClient(rpc, 5.0)
        wait_for(lambda: poll_ok(keep), 30, "the fake core's admin socket")
        clients: Dict[str, Callable[[int], Any]] = {
            "http.client, new connection per poll (vegavisor.py up to 466b07d)":
                lambda n: http_client_poll(vv, rpc, n),
            "AdminClient, new connection per poll (call_upgrade_status)":
                lambda n: vv.call_upgrade_status(rpc, 5.0, n),
            "AdminClient, connection kept alive": keep.upgrade_status,
        }
        cpu: Dict[str, List[float]] = {name: [] for name in clients}
        wall: Dict[str, List[float]] = {name: [] for name in clients}
        for name, call in clients.items():  # warm-up, not counted
            for n in range(20):
                call(n)
        for block in range(blocks):
            for name, call in clients.items():
                t, w = time.thread_time(), time.perf_counter()
                for n in range(polls):
                    call(n)
                cpu[name].append((time.thread_time() - t) / polls)
                wall[name].append((time.perf_counter() - w) / polls)
        keep.close()
    return {"polls": polls, "blocks": blocks, "cpu": cpu, "wall": wall}


def poll_ok(client: Any) -> bool:
    try:
        return client.upgrade_status(1).tag == NEW
    except Exception:  # the socket not there yet, or before the first block
        return False


# --- reports: each formats one benchmark's numbers into its BENCHMARKS.md section ---

def report_switchover(sec: "Section", r: Dict[str, Any]) -> None:
    floor, on, off, asset_size = r["floor"], r["on"], r["off"], r["asset_size"]
    f_med = median([r["total"] for r in floor])
    on_med = median([r["total"] for r in on])
    off_med = median([r["total"] for r in off])
    late = sum(not r["prefetch_done_before_block"] for r in on)
    sec.row("prefetch on: ready -> v2 start", fmt_ms(on_med), fmt_ms(f_med), ratio(on_med, f_med),
            "floor + 300 ms", on_med - f_med <= 0.300)
    sec.row("prefetch off: ready -> v2 start", fmt_ms(off_med), fmt_ms(f_med),
            ratio(off_med, f_med), "(none; for comparison)", None)
    sec.row("prefetch on, minus floor", fmt_ms(on_med - f_med), "", "", "<= 300 ms",
            on_med - f_med <= 0.300)
    act = {k: median([r["act"] for r in v]) for k, v in (("floor", floor), ("on", on), ("off", off))}
    sec.row("prefetch on: first ReadyToUpgrade=true answer -> v2 start", fmt_ms(act["on"]),
            fmt_ms(act["floor"]), ratio(act["on"], act["floor"]), "(diagnostic)", None)
    sec.row("prefetch off: first ReadyToUpgrade=true answer -> v2 start", fmt_ms(act["off"]),
            fmt_ms(act["floor"]), ratio(act["off"], act["floor"]), "(diagnostic)", None)
    L = sec.lines
    L += [f"Runs: floor {len(floor)}, prefetch on {len(on)}, prefetch off {len(off)}, "
          f"interleaved. Release asset: {asset_size} bytes (a zip: `vega` = fake core v2, "
          f"plus {SWITCH_ASSET_BYTES // MiB} MiB of random bytes stored uncompressed), served by "
          f"FakeGitHub on 127.0.0.1 from a file.",
          "",
          "What is timed: from the `ready` event in fake core v1's `--record` file (written "
          "when core first finds itself ReadyToUpgrade, within its 20 ms main-loop tick) to the "
          "`start` event of fake core v2 (written by v2 right after its first stdout line, so "
          f"it includes v2's start-up: the fake binary's `#!/usr/bin/env python3` line, "
          f"i.e. {shutil.which('python3')} on this PATH, then Python and fakes/core.py; the "
          f"same for the floor). Both are `time.time()` on this host.",
          "",
          f"Setup: vegavisor's default config.toml from `init`, only `githubApiUrl` changed "
          f"(and `prefetch = false` for the prefetch-off runs); pollIntervalSeconds = 2, "
          f"upgradePollIntervalSeconds = 0.25 as shipped. Fake chain: {BLOCK_SECONDS} s blocks, "
          f"accepted at height {ACCEPT_HEIGHT}, upgrade block {UPGRADE_HEIGHT_PREFETCH} with "
          f"prefetch on (the prefetch must finish before it), {UPGRADE_HEIGHT_OTHER} otherwise; "
          f"`--ready-delay` is a random 0-250 ms per run (the same sequence for every variant) "
          f"so that where ready falls between two 0.25 s polls is random, not a fixed phase. "
          f"The floor is this script itself: it starts v1 with the same arguments, polls "
          f"UpgradeStatus with vegavisor's AdminClient 2 s after the start and then every "
          f"0.25 s once a release is accepted (vegavisor's schedule), sends SIGTERM, waits for "
          f"the exit on a pidfd, and starts v2 with `--snapshot.load-from-block-height`.",
          "",
          f"Prefetch finished before the upgrade block in {len(on) - late} of {len(on)} "
          f"prefetch-on runs.",
          "",
          "Raw values, ms (ready -> v2 start):",
          "",
          f"- floor: {fmt_list([r['total'] for r in floor], 1000)}",
          f"- prefetch on: {fmt_list([r['total'] for r in on], 1000)}",
          f"- prefetch off: {fmt_list([r['total'] for r in off], 1000)}",
          "",
          "Split of each run, ms: poll delay (ready -> first ReadyToUpgrade=true answer) + "
          "the rest (that answer -> v2 start):",
          ""]
    for name, rs in (("floor", floor), ("prefetch on", on), ("prefetch off", off)):
        L.append(f"- {name}: " + ", ".join(f"{r['detect'] * 1000:.0f}+{r['act'] * 1000:.0f}"
                                           for r in rs))
    L += ["", "Median time after core's first ReadyToUpgrade=true answer (its `rpc` record) at "
          "which each vegavisor log line appears (log stamps are truncated to 1 ms):", "",
          "| milestone | prefetch on | prefetch off |", "|---|---|---|"]
    for label, _ in VISOR_MILESTONES:
        cells = []
        for rs in (on, off):
            vals = [r["marks"][label] for r in rs if label in r["marks"]]
            cells.append(fmt_ms(median(vals)) if vals else "-")
        L.append(f"| {label} | {cells[0]} | {cells[1]} |")
    L.append(f"| v2 `start` record | {fmt_ms(act['on'])} | {fmt_ms(act['off'])} |")
    L.append(f"| (floor: v2 `start` record) | {fmt_ms(act['floor'])} | |")
    if on_med - f_med > 0.300:
        L += ["", "**What limits it**: prefetch on is more than 300 ms over the floor; see the "
              "milestones above for where the time goes."]


def report_idle(sec: "Section", r: Dict[str, Any]) -> None:
    window, phases = r["window"], r["phases"]

    def share(rows: List[Dict[str, float]], key: str) -> List[float]:
        return [row[key] / window for row in rows]  # CPU seconds per second = share of a core
    def per_poll(rows: List[Dict[str, float]]) -> float:
        return median([row["sched"] / row["polls"] for row in rows if row["polls"]])
    base_sched = median(share(phases["baseline"], "sched"))
    met_all = True
    for phase, key, interval in IDLE_PHASES:
        rows, floor = phases[phase], phases[f"floor, {phase}"]
        sched, ticks = median(share(rows, "sched")), median(share(rows, "ticks"))
        floor_sched = median(share(floor, "sched"))
        met = sched < CORE_BUDGET and ticks < CORE_BUDGET
        met_all = met_all and met
        sec.row(f"CPU, {phase} ({key} = {interval:g}; schedstat, ns)",
                f"{sched * 100:.4f} % of a core", f"{floor_sched * 100:.4f} % (floor poller)",
                ratio(sched, floor_sched), "<= 0.1 % of a core", met)
        sec.row(f"CPU, {phase} (/proc stat, 1/{CLK_TCK} s ticks)",
                f"{ticks * 100:.3f} % of a core", "", "", "<= 0.1 % of a core", met)
        sec.row(f"CPU per poll cycle, {phase}", f"{per_poll(rows) * 1000:.3f} ms",
                f"{per_poll(floor) * 1000:.3f} ms (floor poller)",
                ratio(per_poll(rows), per_poll(floor)),
                f"<= {CORE_BUDGET * interval * 1000:.2f} ms (0.1 % at {interval:g} s)",
                per_poll(rows) < CORE_BUDGET * interval)
    sec.row("CPU of an idle `python3 -c \"time.sleep(N)\"`", f"{base_sched * 100:.4f} %",
            "", "", "(diagnostic)", None)
    visors = [row for phase, _, _ in IDLE_PHASES for row in phases[phase]]
    hwm, base_hwm = median([row["hwm"] for row in visors]), median(
        [row["hwm"] for row in phases["baseline"]])
    rss_limit = 30e6  # "30 MB", read strictly as 30,000,000 bytes (28.6 MiB)
    sec.row("peak RSS (VmHWM)", f"{hwm:.1f} MiB = {hwm * MiB / 1e6:.1f} MB",
            f"{base_hwm:.1f} MiB = {base_hwm * MiB / 1e6:.1f} MB", ratio(hwm, base_hwm),
            "< 30 MB (30,000,000 bytes)", hwm * MiB < rss_limit)
    nosite = phases["-S"][0]["hwm"]
    sec.row("peak RSS (VmHWM), `python3 -S` (no site-packages .pth files run at start)",
            f"{nosite:.1f} MiB = {nosite * MiB / 1e6:.1f} MB", "", "",
            "(diagnostic)", None)
    rss = r["rss"]
    L = sec.lines
    if r["duration"] < 60:
        L += [f"**--quick: the idle window was shortened to {r['duration']:g} s "
              f"(the default run measures 60 s).**", ""]
    L += [f"Runs: {r['runs']} per phase, all side by side: each `vegavisor.py run` supervises "
          f"its own fake core for {r['duration']:g} s with the config.toml `init` writes "
          f"(only githubApiUrl pointed at a closed local port). Phase \"{IDLE_PHASES[0][0]}\": "
          f"the core has no proposal. Phase \"{IDLE_PHASES[1][0]}\": the core reports "
          f"{NEW} accepted from its first block with the upgrade block a billion blocks away, "
          f"and HOME/{NEW} is already installed, so vegavisor polls every "
          f"{UPGRADE_POLL_INTERVAL:g} s and starts no prefetch. Baseline (floor poller): the "
          f"least a Python process polling at the same period can do, a loop of `time.sleep` "
          f"and one call of vegavisor's AdminClient on a kept-alive connection, each against "
          f"its own fake core; and an idle `{PYTHON} -c \"{r['sleep_cmd']}\"`. All are "
          f"started and read at the same moments. CPU is utime+stime of "
          f"the process itself (children excluded) over the window from {r['warm']:g} s after "
          f"start (core up and answering) to the end, as a share of one core: schedstat sums "
          f"/proc/PID/task/*/schedstat in nanoseconds; the tick rows read /proc/PID/stat, "
          f"whose 1/{CLK_TCK} s ticks hold only a few counts over such a window. CPU per poll "
          f"cycle = schedstat CPU / the UpgradeStatus calls the fake core recorded in the "
          f"window. Peak RSS is VmHWM at the end of the window; one more visor runs under "
          f"`python3 -S` to show the share of this host's site-packages .pth files.",
          "",
          "Raw values, per process (schedstat CPU ms in the window, polls answered, VmHWM MiB, "
          "threads):",
          ""]
    for phase, rows in phases.items():
        L.append(f"- {phase}: " + "; ".join(
            f"{row['sched'] * 1000:.1f} ms, {row['polls']} polls, {row['hwm']:.1f} MiB, "
            f"{row['threads']} threads" for row in rows))
    L += ["",
          f"Where the resident memory comes from, measured once in a fresh `{PYTHON}` (VmRSS "
          f"after each step, MiB): interpreter alone {rss['base']:.1f}; + the standard-library "
          f"modules vegavisor.py imports {rss['stdlib']:+.1f} (largest: "
          + ", ".join(f"{name} {kb / 1024:+.1f}" for kb, name in rss["top"][:4])
          + f"); + compiling vegavisor.py ({rss['lines']} lines; a script run as `python3 "
          f"vegavisor.py` is compiled from source on every start, never read from a .pyc) "
          f"{rss['compile']:+.1f} (VmHWM during the compile {rss['compile_hwm']:.1f}; "
          f"tracemalloc peak of the compile {rss['compile_peak']:.1f}); + executing the module "
          f"{rss['exec']:+.1f}; total {rss['total']:.1f}."]
    for phase, _, interval in IDLE_PHASES:
        rows, floor = phases[phase], phases[f"floor, {phase}"]
        sched, floor_sched = median(share(rows, "sched")), median(share(floor, "sched"))
        if sched >= CORE_BUDGET:
            L += ["", f"**What limits it (CPU, {phase})**: {interval:g} s polls at "
                  f"{per_poll(rows) * 1000:.3f} ms a cycle; the floor poller (sleep, one "
                  f"kept-alive call) needs {per_poll(floor) * 1000:.3f} ms a cycle, "
                  f"{floor_sched * 100:.3f} % of a core"
                  + (", itself over the budget: no Python process that makes one HTTP call "
                     f"every {interval:g} s stays under 0.1 % of a core on this machine"
                     if floor_sched >= CORE_BUDGET else "")
                  + ". Section e measures the admin call alone."]
    if hwm * MiB >= rss_limit:
        L += ["", f"**What limits it (RSS)**: the peak is {hwm:.1f} MiB = "
              f"{hwm * MiB / 1e6:.1f} MB, over 30 MB read as 30,000,000 bytes. By the breakdown "
              f"above, the interpreter accounts for {rss['base']:.1f} MiB, the standard-library "
              f"imports for {rss['stdlib']:.1f} MiB and compiling vegavisor.py's source for "
              f"{rss['compile']:.1f} MiB (memory the compiler used and the allocator kept)."]


def report_download(sec: "Section", r: Dict[str, Any]) -> None:
    results, prof, sha_rate, skipped = r["results"], r["prof"], r["sha_rate"], r["skipped"]
    labels = list(results)
    hwm = {k: median([r["hwm"] for r in v["vv"]]) for k, v in results.items()}
    growth = hwm[labels[-1]] - hwm[labels[0]]
    for label in labels[1:-1]:
        sec.row(f"peak RSS (VmHWM), {label} asset", f"{hwm[label]:.1f} MiB",
                f"{hwm[labels[0]]:.1f} MiB ({labels[0]} asset)",
                ratio(hwm[label], hwm[labels[0]]), "(for reference)", None)
    sec.row(f"peak RSS (VmHWM), {labels[-1]} asset", f"{hwm[labels[-1]]:.1f} MiB",
            f"{hwm[labels[0]]:.1f} MiB ({labels[0]} asset)", ratio(hwm[labels[-1]], hwm[labels[0]]),
            "grows < 10 MB", growth * MiB < 10e6)
    sec.row(f"peak RSS growth, {labels[0]} -> {labels[-1]}", f"{growth:+.1f} MiB", "", "",
            "< 10 MB", growth * MiB < 10e6)
    tp_ok = True
    for label in labels:
        r = results[label]
        v = median([r["size"] / x["seconds"] for x in r["vv"]])
        c = median([r["size"] / x["seconds"] for x in r["curl"]])
        n = median([r["size"] / x["seconds"] for x in r["null"]])
        ok = v >= 0.8 * c
        tp_ok = tp_ok and ok
        sec.row(f"download throughput, {label}", f"{v / 1e6:.0f} MB/s",
                f"{c / 1e6:.0f} MB/s (curl to a file)", f"{v / c:.2f}x", ">= 0.8x", ok)
        sec.row(f"download throughput, {label}, against curl to /dev/null",
                f"{v / 1e6:.0f} MB/s", f"{n / 1e6:.0f} MB/s (curl -o /dev/null)",
                f"{v / n:.2f}x", "(for reference: curl neither writes nor hashes)", None)
    L = sec.lines
    if skipped:
        L += [f"**{skipped}.**", ""]
    counts = ", ".join(f"{k}: {v['runs']}" for k, v in results.items())
    L += [f"Runs: {counts} "
          f"(vegavisor and curl alternating, after one uncounted warm-up run of each per size, "
          f"listed last in the raw values). Each asset is a zip holding `vega` (fake core "
          f"reporting the tag, so that vegavisor's version check passes) and the padding as a "
          f"second, stored member of random bytes; it is served from a file under /tmp by "
          f"FakeGitHub (in this script's process, on 127.0.0.1, unauthenticated limit raised). "
          f"vegavisor: `{PYTHON} vegavisor.py prepare-upgrade --home H TAG` on a fresh home "
          f"from `init` with githubApiUrl pointed at the fake; peak RSS is the last VmHWM read "
          f"from /proc/PID/status, polled every 10 ms until exit (ru_maxrss from wait4 is "
          f"listed too: on Linux it is the largest of the process and the children it waited "
          f"for, here the `vega version` check, which starts through the fake binary's "
          f"`#!/usr/bin/env python3` line, i.e. {shutil.which('python3')} on this PATH). The asset is synced to disk (`os.sync()`) "
          f"before each run, so that no writeback of an earlier file competes with it. "
          f"Throughput: asset bytes / the `seconds=` of vegavisor's `downloaded` log line "
          f"(request, 302, stream, SHA-256 in a second thread, write) against asset bytes / "
          f"curl's time_total for `curl -s -o FILE -L -H 'Accept: application/octet-stream' "
          f"<asset API URL>` (request, 302, stream to a file in the same /tmp folder: the "
          f"baseline does the same work but the hashing), and for reference the same with "
          f"`-o /dev/null`.",
          "",
          "Raw values:", ""]
    for label, r in results.items():
        L += [f"- {label} ({r['size']} bytes): vegavisor VmHWM MiB "
              f"{fmt_list([x['hwm'] for x in r['vv']], 1, 1)}; ru_maxrss MiB "
              f"{fmt_list([x['maxrss'] for x in r['vv']], 1, 1)}; download s "
              f"{fmt_list([x['seconds'] for x in r['vv']], 1, 3)}; curl s "
              f"{fmt_list([x['seconds'] for x in r['curl']], 1, 3)}; after the download: unpack + "
              f"version check s {fmt_list([x['unpack'] for x in r['vv']], 1, 3)}, whole "
              f"prepare-upgrade wall s {fmt_list([x['wall'] for x in r['vv']], 1, 2)}; warm-up "
              f"(not counted): vegavisor download s {r['warm'][0]['seconds']:.3f}, VmHWM MiB "
              f"{r['warm'][0]['hwm']:.1f}, curl s {r['warm'][1]['seconds']:.3f}"]
    p = prof
    rest = p["download"] - p["sha256"] - p["write"] - p["fsync"] - p["read"] - p["open"]
    big = results[p["label"]]
    curl_rate = median([big["size"] / x["seconds"] for x in big["curl"]])
    L += ["",
          f"Where the time goes, from one extra `prepare-upgrade` of the {p['label']} asset under "
          f"`python3 -m cProfile` (wall-clock timer; profiling adds some overhead): download() "
          f"{p['download']:.3f} s = SHA-256 `update` {p['sha256']:.3f} s + file `write` "
          f"{p['write']:.3f} s + socket reads (http.client `read`) {p['read']:.3f} s + "
          f"`fsync` {p['fsync']:.3f} s + request and 302 {p['open']:.3f} s + the rest "
          f"{rest:.3f} s. After it, unpack_zip() {p['unpack']:.3f} s (copy "
          f"{p['unpack_write']:.3f} s, fsync {p['unpack_fsync']:.3f} s); install_release() in "
          f"all {p['install']:.3f} s. hashlib SHA-256 alone on this machine, 1 MiB updates "
          f"over the page-cached asset: {sha_rate / 1e6:.0f} MB/s; curl's median on the same "
          f"asset: {curl_rate / 1e6:.0f} MB/s."]
    if not tp_ok:
        size = p["size"]
        curl_time = size / curl_rate
        budget = curl_time / 0.8  # the longest download that still meets 0.8x curl
        hash_time = size / sha_rate
        L += ["",
              f"**What limits it (throughput)**: curl streams to /dev/null; vegavisor, in one "
              f"thread, hashes every byte with SHA-256, writes it to a file and fsyncs it, and "
              f"the `seconds=` of its log covers all of that. For the {p['label']} asset, 0.8x "
              f"of curl's median rate means a download of at most {budget:.3f} s. Hashing "
              f"{size} bytes at the {sha_rate / 1e6:.0f} MB/s measured above takes "
              f"{hash_time:.3f} s by itself ({hash_time / budget * 100:.0f} % of that budget); "
              f"in the profile, SHA-256 took {p['sha256']:.3f} s, file writes {p['write']:.3f} s, "
              f"socket reads {p['read']:.3f} s and fsync {p['fsync']:.3f} s, one after the "
              f"other, {p['download']:.3f} s in all. The baseline does none of the hashing, "
              f"writing or fsync, so the ratio measures the cost of verifying and storing the "
              f"download rather than the transfer itself."]
    if growth * MiB >= 10e6:
        L += ["", "**What limits it (memory)**: see the raw VmHWM values above."]


def report_startup(sec: "Section", r: Dict[str, Any]) -> None:
    wall = {name: median(values) for name, values in r["wall"].items()}
    cpu = {name: median(values) for name, values in r["cpu"].items()}
    mv, mb = wall["vegavisor"], wall["pass"]
    sec.row("`vegavisor.py version` wall time", fmt_ms(mv), fmt_ms(mb) + " (`python3 -c pass`)",
            ratio(mv, mb), "<= 2x", mv <= 2 * mb)
    sec.row("`vegavisor.py version` CPU time (user+sys)", fmt_ms(cpu["vegavisor"]),
            fmt_ms(cpu["pass"]) + " (`python3 -c pass`)", ratio(cpu["vegavisor"], cpu["pass"]),
            "(diagnostic: less sensitive to load)", None)
    sec.row("the same under `python3 -S` (no site-packages .pth files at start), wall time",
            fmt_ms(wall["vegavisor -S"]), fmt_ms(wall["pass -S"]) + " (`python3 -S -c pass`)",
            ratio(wall["vegavisor -S"], wall["pass -S"]), "(diagnostic: near a stock host)", None)
    sec.row("`vegavisor version` as installed (module, bytecode cached) wall time",
            fmt_ms(wall["installed"]), fmt_ms(mb) + " (`python3 -c pass`)",
            ratio(wall["installed"], mb), "(diagnostic: the console script's start)", None)
    total = sum(r["imports"].values())

    def largest(imports: Dict[str, float]) -> str:
        ranked = sorted(imports.items(), key=lambda item: -item[1])
        return ", ".join(f"{name} {seconds * 1000:.1f}" for name, seconds in ranked[:10])
    L = sec.lines
    L += [f"Runs: {r['runs']} of each command, alternating, after 3 warm-up runs each; wall "
          f"time of `subprocess.Popen` + wait from this script (fork/exec included in all); "
          f"CPU time from the children's rusage (1/{CLK_TCK} s resolution here). Commands: "
          f"`{PYTHON} vegavisor.py version`, `{PYTHON} -c pass`, both again with `-S`, and "
          f"the module imported from a folder holding its .pyc.",
          "",
          "Raw values, ms (wall):",
          ""]
    for name, values in r["wall"].items():
        L.append(f"- {name}: {fmt_list(values, 1000, 1)}")
    L += ["",
          f"Where the extra {fmt_ms(mv - mb)} (median difference) goes: compiling "
          f"vegavisor.py's source ({r['lines']} lines; run as a script it is compiled on every "
          f"start, never read from a .pyc) takes {fmt_ms(median(r['compiles']))} in this "
          f"process (median of 5: {fmt_list(r['compiles'], 1000, 1)} ms) and "
          f"{r['compile_peak'] / MiB:.1f} MiB at its peak (tracemalloc). `python3 -X "
          f"importtime vegavisor.py version` (median of 5; importtime adds its own overhead) "
          f"shows {total * 1000:.1f} ms of cumulative import time in top-level imports that "
          f"`python3 -c pass` does not make; the largest, ms: {largest(r['imports'])}. Under "
          f"`-S` (site-packages' .pth files here import certifi, pathlib, re, zipfile and "
          f"more before any script runs, and so hide those from the list above): "
          f"{sum(r['imports_S'].values()) * 1000:.1f} ms; the largest, ms: "
          f"{largest(r['imports_S'])}."]
    if mv > 2 * mb:
        L += ["", "**What limits it**: the compile and the imports above."]


def report_polls(sec: "Section", r: Dict[str, Any]) -> None:
    names = list(r["cpu"])
    old, keep = names[0], names[-1]
    med = {name: median(values) for name, values in r["cpu"].items()}
    for name in names:
        sec.row(f"CPU per UpgradeStatus call: {name}", f"{med[name] * 1e6:.0f} us",
                f"{med[old] * 1e6:.0f} us (http.client)", ratio(med[name], med[old]),
                "(lower is better)" if name != keep else "< 1x", None if name != keep
                else med[keep] < med[old])
    L = sec.lines
    L += [f"Blocks: {r['blocks']} per client of {r['polls']} calls each, the clients "
          f"interleaved block by block after 20 uncounted calls each, all in this script's "
          f"process against one fake core (`fakes/core.py node`, release {NEW} accepted) on a "
          f"unix socket; CPU is time.thread_time() of the calling thread over a block / "
          f"{r['polls']} (client side only: the fake core's CPU is another process). This is "
          f"the admin call's share of a poll cycle; section b measures the whole `run`.",
          "",
          "Raw values, us per call (CPU; wall in brackets):",
          ""]
    for name in names:
        L.append(f"- {name}: " + ", ".join(
            f"{c * 1e6:.0f} ({w * 1e6:.0f})" for c, w in zip(r["cpu"][name], r["wall"][name])))


# --- BENCHMARKS.md ---

TITLES = {
    "switchover": "a. Switchover at the upgrade block (100 MiB release)",
    "idle": "b. Idle cost of `vegavisor.py run`, in every phase",
    "download": "c. Download: memory and throughput of `prepare-upgrade`",
    "startup": "d. Start-up time",
    "polls": "e. CPU of one admin poll, per client",
}
# Each benchmark: a measurement returning numbers, and the report that writes them.
MEASURES: Dict[str, Callable[[bool], Dict[str, Any]]] = {
    "switchover": measure_switchover, "idle": measure_idle, "download": measure_download,
    "startup": measure_startup, "polls": measure_polls}
REPORTS: Dict[str, Callable[["Section", Dict[str, Any]], None]] = {
    "switchover": report_switchover, "idle": report_idle, "download": report_download,
    "startup": report_startup, "polls": report_polls}


def existing_sections() -> Dict[str, str]:
    if not OUTPUT.exists():
        return {}
    text = OUTPUT.read_text()
    return {m.group(1): m.group(0) for m in re.finditer(
        r"<!-- section:(\w+) -->.*?<!-- /section:\1 -->", text, re.DOTALL)}


def write_report(sections: Dict[str, str], m: Dict[str, str], elapsed: Dict[str, float]) -> None:
    head = ["# vegavisor benchmarks", "",
            "Written by `scripts/bench.py` (`python3 scripts/bench.py [--quick] [--only NAME]`); "
            "every figure is measured with the fakes in `fakes/` on one machine, with its "
            "baseline measured in the same run. Each section names its machine, date, run "
            "count and the command that reproduces it. \"met\" compares the median to the "
            "project's target.", "",
            f"Last written {m['date']}; machine: {m['cpu']}, {m['cores']} cores, "
            f"{m['python']}, {m['kernel']}; {subject()}. The script runs that copy (from a "
            f"temporary folder), so that every section of one invocation measures the same file "
            f"while others edit the working tree.", ""]
    if elapsed:
        head += ["Time taken by the last invocation: " + ", ".join(
            f"{k} {v:.0f} s" for k, v in elapsed.items()) + ".", ""]
    body = [sections[name] for name in BENCHMARKS if name in sections]
    OUTPUT.write_text("\n".join(head) + "\n" + "\n\n".join(body) + "\n")


def main(argv: Optional[Sequence[str]] = None) -> int:
    global SOURCE, OUTPUT
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer runs and a 20 s idle window (said so in the output)")
    parser.add_argument("--only", choices=BENCHMARKS, action="append",
                        help="run only this benchmark (repeatable); other sections are kept")
    parser.add_argument("--subject", type=Path, default=SOURCE, metavar="FILE",
                        help="measure this copy of vegavisor.py (default: this checkout's)")
    parser.add_argument("--output", type=Path, default=OUTPUT, metavar="FILE",
                        help="the report to write (default: BENCHMARKS.md)")
    args = parser.parse_args(argv)
    SOURCE, OUTPUT = args.subject.resolve(), args.output.resolve()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up like on Ctrl-C
    names = args.only or list(BENCHMARKS)
    snapshot = snapshot_vegavisor()
    try:
        return run_benchmarks(args, names)
    finally:
        shutil.rmtree(snapshot, ignore_errors=True)


def run_benchmarks(args: argparse.Namespace, names: List[str]) -> int:
    m = machine()
    sections = existing_sections() if args.only else {}
    failures, elapsed = 0, {}
    t_all = time.monotonic()
    for name in names:
        cmd = f"python3 scripts/bench.py --only {name}" + (" --quick" if args.quick else "")
        sec = Section(name, TITLES[name] + (" (--quick)" if args.quick else ""), cmd, m)
        print(f"{name} ...", flush=True)
        t = time.monotonic()
        try:
            REPORTS[name](sec, MEASURES[name](args.quick))
        except Exception as e:  # report it in the section, go on with the others
            failures += 1
            sec.failed = f"{type(e).__name__}: {e}"
            print(f"  FAILED: {e}", file=sys.stderr, flush=True)
        elapsed[name] = time.monotonic() - t
        sec.load_after = loadavg()
        sec.lines += ["", f"Time taken: {elapsed[name]:.0f} s."]
        sections[name] = sec.text()
        for row in sec.rows:
            print("  " + " | ".join(row), flush=True)
    elapsed["total"] = time.monotonic() - t_all
    write_report(sections, m, elapsed)
    print(f"wrote {OUTPUT} in {elapsed['total']:.0f} s", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
