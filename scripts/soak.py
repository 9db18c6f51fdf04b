#!/usr/bin/env python3
"""Soak vegavisor: N protocol upgrades in a row under random faults, checking SPEC 3.3.

A temporary home runs fake core v1 (fakes/core.py) whose args play a chain of upgrades
(`--upgrade-every`: v1 -> v2 -> ... each a few seconds apart). Each next release is
either served by a fake GitHub on 127.0.0.1 (auto-install and prefetch on; the asset
`url`s name a second fake server, as a CDN) or pre-placed in HOME/<tag> by the
"operator". A seeded random generator picks, for each upgrade, the faults: kill -9 of
vegavisor (then it is started again, as systemd would) or, one time in four, a
`systemctl restart` (SIGTERM, then started again); a core crash (SIGSEGV or SIGKILL);
a spell of GitHub failures (5xx, connection resets, slow answers, rate limit). Each
lands a random moment after an anchor: the upgrade's start, the old core's acceptance
of the release, its ready-to-upgrade, the new core's first start, or just before the
upgrade block. After each upgrade and at the end it checks:

- never two cores alive at once: from the fake cores' record (a start event and any
  later event of the same pid prove it alive then) and from /proc scans every 20 ms;
- each upgrade ends with the expected version answering and `current` naming it; core
  versions only ever step up by one, and until a new version has answered, each of its
  starts loads the snapshot of its upgrade block;
- no core left running once vegavisor has stopped; vegavisor exits 0 on each SIGTERM;
- no traceback in vegavisor's output, no exception its guards call unexpected;
- no release folder deleted (pre-placed ones unchanged, byte for byte), no staging left;
- GITHUB_TOKEN (a dummy) sent only to the API server's API paths, never to the CDN or
  a download, never written to a log or file under HOME, never in a core's environment.

Prints a line per upgrade and a summary; exits 0 only when every invariant held.

    python3 scripts/soak.py [--upgrades 20] [--seed S] [--report FILE] [--keep]
                            [--kill-rate P] [--crash-rate P] [--github-fault-rate P]
    python3 scripts/soak.py --check-record FILE   # only the record checks, on a file
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any
from typing import Dict
from typing import List
from typing import NamedTuple
from typing import Optional
from typing import Sequence
from typing import Set
from typing import Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import vegavisor  # noqa: E402
from fakes.core import make_binary  # noqa: E402
from fakes.github import FakeGitHub  # noqa: E402

VEGAVISOR = ROOT / "vegavisor.py"
# Blocks every 50 ms, an upgrade every 40 blocks: about 2 s of blocks per upgrade.
BLOCK_SECONDS = 0.05
UPGRADE_EVERY = 40
# An upgrade that has not finished in this long has lost the node.
UPGRADE_DEADLINE_SECONDS = 60.0
# A fault lands this many seconds (at most) after its anchor: the upgrade's start (a
# bit past its blocks), the old core's acceptance of the release (the prefetch starts),
# the old core's ready-to-upgrade (the stop, install, switch and start), the new core's
# first start (before it answers: the snapshot flag must repeat); or before "near-block",
# the upgrade block as the old core's start height, socket and block interval foretell.
ANCHOR_WINDOW_SECONDS = {"upgrade": 2.2, "accepted": 0.1, "near-block": 0.5, "block": 0.3,
                         "new-core": 0.1}
SPELL_SECONDS = (0.3, 2.5)
SPELL_KINDS = ("5xx", "reset", "slow", "rate-limit")
CRASH_SIGNALS = (signal.SIGSEGV, signal.SIGKILL)
# How often /proc is scanned for cores.
SAMPLE_SECONDS = 0.02
# systemd's RestartSec default.
RESTART_SECONDS = 0.1
STOP_TIMEOUT_SECONDS = 30.0
TOKEN = "ghp_soakDummyToken0123456789"
# How vegavisor's outer guard and install threads name an exception nobody expected.
UNEXPECTED = re.compile(r"unexpected [A-Z][A-Za-z]*(?:Error|Exception)\b")
PLACED_SHARE = 0.3
# Of the faults that end vegavisor, this share is a clean `systemctl restart` (SIGTERM).
RESTART_SHARE = 0.25
DEFAULT_RATES = {"kill": 0.5, "crash": 0.5, "github": 0.6}
# A core stopping on SIGTERM (not at its upgrade block: there it dies at once) takes
# this long, as a real one flushing its state does: a restarted vegavisor meets it.
DEFAULT_STOP_DELAY = 0.5
# config.toml keys (all unique names in init's file): fast polls, and restart limits
# that a soak's crashes (seconds apart, not hours) and GitHub spells do not exhaust.
CONFIG = {
    "pollIntervalSeconds": 0.1,
    "upgradePollIntervalSeconds": 0.05,
    "rpcTimeoutSeconds": 2,
    "restartsDelaySeconds": 0.1,
    "restartsBackoffMaxSeconds": 0.5,
    "restartsResetAfterSeconds": 1,
    "maxNumberOfRestarts": 10,
    "stopSignalTimeoutSeconds": 3,
    "maxNumberOfFirstConnectionRetries": 300,
    "maxNumberOfRestartConnectionRetries": 300,
    "prefetchRetryDelaySeconds": 0.2,
    "httpTimeoutSeconds": 3,
}


def tag(number: int) -> str:
    return f"v{number}"


def tag_number(version: str) -> int:
    match = re.fullmatch(r"v(\d+)", version or "")
    return int(match[1]) if match else -1


# --- the plan: every random choice, made up front from the seed ---

class Fault(NamedTuple):
    kind: str  # "kill" (kill -9 of vegavisor), "restart" (systemctl restart: SIGTERM,
    #           then started again), "crash" (of core), "github" (a spell)
    anchor: str  # what `delay` counts from (see ANCHOR_WINDOW_SECONDS)
    delay: float  # seconds after the anchor (before it, for "near-block")
    signal: int = 0  # crash: the signal core dies of
    spell: str = ""  # github: 5xx, reset, slow or rate-limit
    seconds: float = 0.0  # github: how long the spell lasts

    def describe(self) -> str:
        what = {"kill": "kill -9 visor", "restart": "restart visor (SIGTERM)",
                "crash": f"core crash {signal.Signals(self.signal).name if self.signal else ''}",
                "github": f"github {self.spell} {self.seconds:.1f}s"}[self.kind]
        sign = "-" if self.anchor == "near-block" else "+"
        return f"{what} @{self.anchor}{sign}{self.delay:.2f}s"


class Plan(NamedTuple):
    number: int  # upgrade from tag(number) to tag(number + 1)
    source: str  # "github" or "placed"
    faults: Tuple[Fault, ...]


def make_plans(rng: random.Random, upgrades: int, rates: Dict[str, float]) -> List[Plan]:
    """Every random choice of the soak, made up front: a seed replays them all."""
    plans = []
    for number in range(1, upgrades + 1):
        source = "placed" if rng.random() < PLACED_SHARE else "github"
        faults = []
        if rng.random() < rates["kill"]:
            kind = "restart" if rng.random() < RESTART_SHARE else "kill"
            faults.append(Fault(kind, *anchored(rng, ("upgrade", "accepted", "near-block",
                                                      "block"))))
        if rng.random() < rates["crash"]:
            faults.append(Fault("crash", *anchored(rng, ("upgrade", "block", "new-core")),
                                signal=int(rng.choice(CRASH_SIGNALS))))
        if rng.random() < rates["github"]:
            faults.append(Fault("github", *anchored(rng, ("upgrade", "accepted", "near-block")),
                                spell=rng.choice(SPELL_KINDS),
                                seconds=rng.uniform(*SPELL_SECONDS)))
        plans.append(Plan(number, source, tuple(faults)))
    return plans


def anchored(rng: random.Random, anchors: Sequence[str]) -> Tuple[str, float]:
    anchor = rng.choice(anchors)
    return anchor, rng.uniform(0, ANCHOR_WINDOW_SECONDS[anchor])


# --- the record checks (pure: they also run on a given file) ---

class Life(NamedTuple):
    pid: int
    version: str
    started: float  # the start event's time: the process existed then
    last_seen: float  # its latest event's time: it was still alive then
    snapshot_height: Optional[int]
    upgrade_height: Optional[int]  # the upgrade block it scheduled, if any
    answered: bool  # it wrote an admin answer (HTTP 200)


def core_lives(events: Sequence[Dict[str, Any]],
               seen_alive: Optional[Dict[int, float]] = None) -> List[Life]:
    """Each core process's life from the record: its start event, and the latest moment an
    event of it (or a /proc scan, seen_alive: pid -> time) proves it was alive."""
    lives: List[Life] = []
    current: Dict[int, int] = {}  # pid -> index of its life in `lives`
    for event in events:
        if event.get("role") != "core" or not isinstance(event.get("pid"), int):
            continue
        pid, when = event["pid"], float(event.get("time", 0))
        if event.get("event") == "start":
            upgrade = event.get("upgrade") or {}
            current[pid] = len(lives)
            lives.append(Life(pid, str(event.get("version")), when, when,
                              event.get("snapshot_height"), upgrade.get("upgrade_height"),
                              False))
        elif pid in current:
            i = current[pid]
            answered = event.get("event") == "rpc" and event.get("status") == 200
            lives[i] = lives[i]._replace(last_seen=max(lives[i].last_seen, when),
                                         answered=lives[i].answered or answered)
    for pid, when in (seen_alive or {}).items():
        if pid in current:
            i = current[pid]
            if when >= lives[i].started:
                lives[i] = lives[i]._replace(last_seen=max(lives[i].last_seen, when))
    return lives


def overlaps(lives: Sequence[Life]) -> List[str]:
    """Two cores alive at once: B's start event came while A was proven alive later."""
    found = []
    ordered = sorted(lives, key=lambda life: life.started)
    for i, a in enumerate(ordered):
        for b in ordered[i + 1:]:
            if b.started >= a.last_seen:
                continue
            found.append(f"two cores alive at once: pid {a.pid} ({a.version}) was alive "
                         f"{a.last_seen - b.started:.3f}s after pid {b.pid} ({b.version}) "
                         f"started")
    return found


def version_steps(lives: Sequence[Life]) -> List[str]:
    """Core versions only step up, one at a time; until an upgraded version has answered,
    each of its starts loads the snapshot of the upgrade block (SPEC 1.6.4, 3.1.10)."""
    found = []
    previous: Optional[Life] = None
    block: Dict[str, Optional[int]] = {}  # upgraded version -> its upgrade block
    answered: Set[str] = set()
    for life in sorted(lives, key=lambda life: life.started):
        if previous is not None:
            was, now = tag_number(previous.version), tag_number(life.version)
            if now < was or now > was + 1:
                found.append(f"core {life.version} (pid {life.pid}) started after "
                             f"{previous.version}: versions must step up by one")
            elif now == was + 1:
                block[life.version] = previous.upgrade_height
        if (life.version in block and life.version not in answered
                and life.snapshot_height != block[life.version]):
            found.append(f"core {life.version} (pid {life.pid}) started with snapshot height "
                         f"{life.snapshot_height} before {life.version} ever answered, not the "
                         f"upgrade block {block[life.version]}")
        if life.answered:
            answered.add(life.version)
        previous = life
    return found


def check_record(events: Sequence[Dict[str, Any]],
                 seen_alive: Optional[Dict[int, float]] = None) -> List[str]:
    lives = core_lives(events, seen_alive)
    return overlaps(lives) + version_steps(lives)


class RecordReader:
    """The fake cores' shared record, read incrementally (a last partial line waits)."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0
        self.events: List[Dict[str, Any]] = []

    def read(self) -> List[Dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return self.events
        end = data.rfind(b"\n") + 1
        self.offset += end
        for line in data[:end].splitlines():
            if line.strip():
                self.events.append(json.loads(line))
        return self.events


# --- /proc: the cores alive now ---

def live_cores(marker: bytes) -> Dict[int, bytes]:
    """Processes whose command line names the soak's folder and runs `node`: cores.
    A zombie's command line is empty: it does not count."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if marker in cmdline and b"node" in cmdline.split(b"\0"):
            found[int(name)] = cmdline
    return found


def shown_argv(cmdline: bytes) -> str:
    return cmdline.replace(b"\0", b" ").decode(errors="replace").strip()


def environment_of(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read()
    except OSError:
        return b""


class Sampler:
    """Scans /proc every SAMPLE_SECONDS: the most cores seen at once, when each pid was
    last seen alive, a core that inherited GITHUB_TOKEN, the release folders seen."""

    def __init__(self, workdir: Path, home: Path) -> None:
        self.marker, self.home = str(workdir).encode(), home
        self.last_seen: Dict[int, float] = {}
        self.violations: List[str] = []
        self.folders: Set[str] = set()
        self.scans, self.max_cores = 0, 0
        self.together: Set[Tuple[int, ...]] = set()  # pids seen alive at once, reported
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self.scan()

    def scan(self) -> None:
        now = time.time()  # before the scan: whatever it finds was alive at or after this
        cores = live_cores(self.marker)
        for pid in cores:
            if pid not in self.last_seen and b"GITHUB_TOKEN=" in environment_of(pid):
                self.violations.append(f"core pid {pid} inherited GITHUB_TOKEN")
            self.last_seen[pid] = now
        self.scans += 1
        if len(cores) > 1:
            # A scan reads one process after another: one may have died before the next
            # was read. Read them again: two found in both reads were alive together.
            again = live_cores(self.marker)
            cores = {pid: c for pid, c in cores.items() if again.get(pid) == c}
        self.max_cores = max(self.max_cores, len(cores))
        if len(cores) > 1 and tuple(sorted(cores)) not in self.together:
            self.together.add(tuple(sorted(cores)))
            shown = "; ".join(f"{pid}: {shown_argv(c)}" for pid, c in sorted(cores.items()))
            self.violations.append(f"/proc scan saw {len(cores)} cores alive at once: {shown}")
        try:
            self.folders.update(n for n in os.listdir(self.home) if tag_number(n) > 0)
        except OSError:
            pass


# --- the home, the releases and the fake GitHub ---

def release_zip(dest: Path, version: str) -> Path:
    """A release asset as Vega publishes it: a zip holding `vega` at its root."""
    binary = make_binary(dest.parent / f".{dest.name}.binary", version)
    info = zipfile.ZipInfo("vega", date_time=(2026, 1, 1, 0, 0, 0))
    info.external_attr = 0o100755 << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(dest, "w") as z:
        z.writestr(info, binary.read_bytes())
    binary.unlink()
    return dest


def core_args(workdir: Path, flags: Sequence[str]) -> List[str]:
    return ["node", "--admin-socket", str(workdir / "admin.sock"), "--record",
            str(workdir / "record.jsonl"), "--block-interval", str(BLOCK_SECONDS),
            "--upgrade-every", str(UPGRADE_EVERY)] + list(flags)


def place_version(home: Path, workdir: Path, version: str, folder: str,
                  flags: Sequence[str]) -> Path:
    target = home / folder
    make_binary(target / "vega", version)
    (target / "run-config.toml").write_text(
        f'name = "{version}"\n[vega.binary]\npath = "vega"\n'
        f"args = {json.dumps(core_args(workdir, flags))}\n"
        f'[vega.rpc]\nsocketPath = "{workdir / "admin.sock"}"\nhttpPath = "/rpc"\n')
    return target


def make_home(workdir: Path, api_url: str, flags: Sequence[str]) -> Path:
    home = workdir / "home"
    done = subprocess.run([sys.executable, str(VEGAVISOR), "init", "--home", str(home)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"vegavisor init failed: {done.stdout}")
    config = (home / "config.toml").read_text()
    for key, value in dict(CONFIG, githubApiUrl=json.dumps(api_url)).items():
        config, n = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", config)
        if n != 1:
            raise RuntimeError(f"config.toml written by init has no single {key} line")
    (home / "config.toml").write_text(config)
    place_version(home, workdir, tag(1), "genesis", flags)
    return home


def folder_snapshot(folder: Path) -> Dict[str, Tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mode)
            for p in sorted(folder.rglob("*")) if p.is_file()}


class GitHubs:
    """The API server and a CDN server with the same releases (so the same asset ids);
    the API's asset `url`s name the CDN, where the token must never go."""

    def __init__(self) -> None:
        self.api = FakeGitHub(unauthenticated_limit=100000, authenticated_limit=100000)
        self.cdn = FakeGitHub(unauthenticated_limit=100000, authenticated_limit=100000)
        self.api.asset_base = self.cdn.url
        self.spells = 0
        self.hit, self.answered_before = 0, 0  # requests answered during spells

    def __enter__(self) -> GitHubs:
        self.api.start()
        self.cdn.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.api.close()
        self.cdn.close()

    def add_release(self, version: str, archive: Path, asset: str) -> None:
        for server in (self.api, self.cdn):
            server.add_release(version, {asset: archive})

    def begin_spell(self, kind: str, seconds: float) -> None:
        self.spells += 1
        self.answered_before = self.answered()
        for server in (self.api, self.cdn):
            if kind == "5xx":
                server.fail(r"^/objects/", 503)
                server.fail(r"", 502)
            elif kind == "reset":
                server.reset(r"", after_bytes=100)
            elif kind == "slow":
                server.slow(r"", delay_per_chunk=0.1, chunk_size=2048)
            else:
                server.rate_limit(403, reset=time.time() + seconds)

    def end_spell(self) -> None:
        for server in (self.api, self.cdn):
            server.clear_faults()
        self.hit += self.answered() - self.answered_before

    def answered(self) -> int:
        return len(self.api.requests) + len(self.cdn.requests)

    def failed_requests(self) -> int:
        return sum(1 for server in (self.api, self.cdn) for r in server.requests
                   if r.status == 0 or r.status >= 500 or r.status in (403, 429))

    def api_requests(self) -> int:
        return sum(1 for r in self.api.requests if is_api(r.path))

    def token_leaks(self) -> List[str]:
        """Authorization anywhere but the API server's API paths (SPEC 3.3.6)."""
        leaks = [f"Authorization sent to the API server's non-API path {r.path}"
                 for r in self.api.requests
                 if r.header("Authorization") is not None and not is_api(r.path)]
        leaks += [f"Authorization sent to the CDN host: {r.path}"
                  for r in self.cdn.requests if r.header("Authorization") is not None]
        return leaks


def is_api(path: str) -> bool:
    return path.startswith(("/repos/", "/repositories/"))


# --- vegavisor, as systemd runs it ---

class Visor:
    """`vegavisor.py run`, started again whenever it dies; one log file per life."""

    def __init__(self, workdir: Path, home: Path) -> None:
        self.workdir, self.home = workdir, home
        self.env = dict(os.environ, GITHUB_TOKEN=TOKEN,
                        PATH=os.path.dirname(sys.executable) + os.pathsep
                        + os.environ.get("PATH", ""))
        self.logs: List[Path] = []
        self.proc: Optional[subprocess.Popen] = None
        self.own_exits: List[str] = []

    def start(self) -> None:
        log = self.workdir / f"visor-{len(self.logs) + 1}.log"
        self.logs.append(log)
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(VEGAVISOR), "run", "--home", str(self.home)],
                stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=str(self.workdir))

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        time.sleep(RESTART_SECONDS)
        self.start()

    def restart(self, marker: bytes) -> Tuple[Optional[int], List[int]]:
        """systemctl restart: SIGTERM, wait for the exit, start again; the exit code and
        the cores alive once vegavisor had exited."""
        code = self.stop()
        left = sorted(live_cores(marker))
        time.sleep(RESTART_SECONDS)
        self.start()
        return code, left

    def restart_if_exited(self) -> Optional[str]:
        """vegavisor ended by itself (gave up): note why and start it again."""
        assert self.proc is not None
        if self.proc.poll() is None:
            return None
        lines = self.logs[-1].read_text(errors="replace").strip().splitlines()
        said = f"exit {self.proc.returncode}: {lines[-1] if lines else '(no output)'}"
        self.own_exits.append(said)
        time.sleep(RESTART_SECONDS)
        self.start()
        return said

    def stop(self) -> Optional[int]:
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None

    def output(self) -> str:
        return "".join(log.read_text(errors="replace") for log in self.logs)


def journal_step(home: Path) -> str:
    try:
        return str(json.loads((home / ".upgrade-journal.json").read_text()).get("step"))
    except (OSError, ValueError, AttributeError):
        return "none"


def kill_everything_under(marker: bytes) -> None:
    """Cleanup: every process whose command line names the soak's folder."""
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if marker in f.read():
                    os.kill(int(name), signal.SIGKILL)
        except OSError:
            continue


# --- one upgrade ---

class Outcome(NamedTuple):
    number: int
    source: str
    seconds: float
    faults: List[str]
    result: str  # "ok", or what went wrong
    violations: List[str]


class Soak:
    def __init__(self, workdir: Path, home: Path, githubs: GitHubs, visor: Visor,
                 sampler: Sampler) -> None:
        self.workdir, self.home, self.githubs = workdir, home, githubs
        self.visor, self.sampler = visor, sampler
        self.record = RecordReader(workdir / "record.jsonl")
        self.kills, self.crashes, self.restarts = 0, 0, 0
        self.bad_stops: List[str] = []  # a SIGTERM that did not end in exit 0
        self.missed = 0  # faults planned but not reached: the upgrade was over first
        self.reported: Set[str] = set()  # violations already shown with an upgrade

    def answered(self, version: str) -> bool:
        return any(e.get("event") == "rpc" and e.get("role") == "core"
                   and e.get("version") == version and e.get("status") == 200
                   for e in self.record.read())

    def upgrade(self, plan: Plan) -> Outcome:
        """Wait for tag(n+1) to answer while the plan's faults happen; then check."""
        old, target = tag(plan.number), tag(plan.number + 1)
        start, wall_start = time.monotonic(), time.time()
        pending, done = list(plan.faults), []
        spell_ends: Optional[float] = None
        result = "ok"
        while not self.answered(target):
            now = time.monotonic() - start
            if now > UPGRADE_DEADLINE_SECONDS:
                result = f"{target} did not answer within {UPGRADE_DEADLINE_SECONDS:g}s"
                break
            said = self.visor.restart_if_exited()
            if said:
                done.append(f"visor {said}")
            anchors = {"upgrade": wall_start, "accepted": self.latest("accepted", old),
                       "near-block": self.foretold_block(old),
                       "block": self.latest("ready", old),
                       "new-core": self.latest("start", target)}
            for fault in list(pending):
                at = anchors[fault.anchor]
                delay = -fault.delay if fault.anchor == "near-block" else fault.delay
                if at is None or time.time() < at + delay:
                    continue
                happened = self.inject(fault, target)
                if happened is None:
                    continue  # no core alive to crash: tried again in a moment
                pending.remove(fault)
                done.append(f"{fault.describe()} ({happened})")
                if fault.kind == "github":
                    spell_ends = now + fault.seconds
            if spell_ends is not None and now >= spell_ends:
                self.githubs.end_spell()
                spell_ends = None
            time.sleep(0.02)
        if spell_ends is not None:
            self.githubs.end_spell()
        self.missed += len(pending)
        seconds = time.monotonic() - start
        violations = self.new_violations(self.check(target))
        if violations and result == "ok":
            result = "VIOLATION"
        return Outcome(plan.number, plan.source, seconds, done, result, violations)

    def latest(self, name: str, version: str) -> Optional[float]:
        """When the latest core event `name` of `version` happened (time.time())."""
        found = None
        for e in self.record.read():
            if e.get("event") == name and e.get("role") == "core" and e.get("version") == version:
                found = e["time"]
        return found

    def foretold_block(self, version: str) -> Optional[float]:
        """When the latest core of `version` reaches its upgrade block: its blocks start
        when its socket listens, one every BLOCK_SECONDS from its start height."""
        start: Optional[Dict[str, Any]] = None
        block = None
        for e in self.record.read():
            if e.get("role") != "core" or e.get("version") != version:
                continue
            if e.get("event") == "start":
                start, block = e, None
            elif e.get("event") == "socket-listening" and start and e["pid"] == start["pid"]:
                upgrade = start.get("upgrade") or {}
                if upgrade.get("upgrade_height") is not None:
                    blocks = upgrade["upgrade_height"] - start["start_height"]
                    block = e["time"] + blocks * BLOCK_SECONDS
        return block

    def inject(self, fault: Fault, target: str) -> Optional[str]:
        """Act a fault out; say what it hit (None: nothing to hit now)."""
        if fault.kind == "kill":
            step = journal_step(self.home)
            self.visor.kill()
            self.kills += 1
            return f"journal {step}"
        if fault.kind == "restart":
            step = journal_step(self.home)
            code, left = self.visor.restart(self.sampler.marker)
            self.restarts += 1
            if code != 0:
                self.bad_stops.append(f"vegavisor exited {code} on SIGTERM (journal {step}), "
                                      f"not 0")
            self.bad_stops += [f"core pid {pid} still running after vegavisor exited on "
                               f"SIGTERM (journal {step})" for pid in left]
            return f"journal {step}, exit {code}"
        if fault.kind == "crash":
            cores = live_cores(self.sampler.marker)
            if len(cores) != 1:
                return None
            [(pid, cmdline)] = cores.items()
            os.kill(pid, fault.signal)
            self.crashes += 1
            return f"pid {pid}" + (" with snapshot flag" if b"--snapshot" in cmdline else "")
        self.githubs.begin_spell(fault.spell, fault.seconds)
        return f"{target} already installed" if (self.home / target).is_dir() \
            else f"{target} not installed yet"

    def check(self, version: str) -> List[str]:
        """The invariants after an upgrade to `version`."""
        found = list(self.sampler.violations) + self.bad_stops
        found += check_record(self.record.read(), self.sampler.last_seen)
        current = os.path.realpath(self.home / "current")
        if Path(current).name != version:
            found.append(f"current -> {current}, not {version}")
        output = self.visor.output()
        if "Traceback" in output:
            found.append("a traceback in vegavisor's output")
        found += [f"vegavisor met an unexpected exception (a bug its guard caught): "
                  f"{line.strip()[:300]}" for line in output.splitlines()
                  if UNEXPECTED.search(line)]
        return found

    def new_violations(self, found: List[str]) -> List[str]:
        fresh = list(dict.fromkeys(v for v in found if v not in self.reported))
        self.reported.update(fresh)
        return fresh


# --- the whole run ---

class Settings(NamedTuple):
    upgrades: int
    seed: int
    rates: Dict[str, float]  # chance of each fault kind in an upgrade
    stop_delay: float  # the fake cores' --stop-delay
    ignore_sigterm: bool  # the fake cores ignore SIGTERM: only SIGKILL stops them

    @property
    def core_flags(self) -> List[str]:
        return ["--stop-delay", f"{self.stop_delay:g}"] + (
            ["--ignore-sigterm"] if self.ignore_sigterm else [])

    @property
    def command(self) -> str:
        """The command line that replays this soak."""
        rates = self.rates
        return (f"python3 scripts/soak.py --upgrades {self.upgrades} --seed {self.seed} "
                f"--kill-rate {rates['kill']:g} --crash-rate {rates['crash']:g} "
                f"--github-fault-rate {rates['github']:g} --core-stop-delay "
                f"{self.stop_delay:g}" + (" --core-ignores-sigterm" if self.ignore_sigterm
                                          else ""))


def soak(workdir: Path, settings: Settings) -> Dict[str, Any]:
    upgrades, seed, flags = settings.upgrades, settings.seed, settings.core_flags
    plans = make_plans(random.Random(seed), upgrades, settings.rates)
    asset = vegavisor.asset_name("vega-{os}-{arch}.zip", vegavisor.host_platform())
    began = time.monotonic()
    with GitHubs() as githubs:
        home = make_home(workdir, githubs.api.url, flags)
        placed: Dict[str, Dict[str, Tuple[bytes, int]]] = {}
        for plan in plans:
            version = tag(plan.number + 1)
            if plan.source == "placed":
                placed[version] = folder_snapshot(
                    place_version(home, workdir, version, version, flags))
            else:
                archive = release_zip(workdir / f"release-{version}.zip", version)
                githubs.add_release(version, archive, asset)
        decoy = home / "v1-operator-backup"
        place_version(home, workdir, tag(1), decoy.name, flags)
        placed[decoy.name] = folder_snapshot(decoy)
        print(f"soak: {upgrades} upgrades {tag(1)} -> {tag(upgrades + 1)}, seed {seed} "
              f"(`{settings.command}` replays the choices), home {home}", flush=True)
        visor = Visor(workdir, home)
        outcomes: List[Outcome] = []
        with Sampler(workdir, home) as sampler:
            run = Soak(workdir, home, githubs, visor, sampler)
            visor.start()
            for plan in plans:
                outcome = run.upgrade(plan)
                outcomes.append(outcome)
                print(upgrade_line(outcome), flush=True)
                if outcome.result not in ("ok", "VIOLATION"):
                    break
            stop_code = visor.stop()
            left = live_cores(sampler.marker)
            kill_everything_under(sampler.marker)
        final = final_violations(run, outcomes, upgrades, stop_code, left, placed)
        violations = [v for o in outcomes for v in o.violations] + run.new_violations(final)
        return report(settings, outcomes, run, time.monotonic() - began, violations)


def final_violations(run: Soak, outcomes: List[Outcome], upgrades: int,
                     stop_code: Optional[int], left: Dict[int, bytes],
                     placed: Dict[str, Dict[str, Tuple[bytes, int]]]) -> List[str]:
    found = run.check(tag(upgrades + 1))
    found += [f"upgrade {o.number}: {o.result}" for o in outcomes
              if o.result not in ("ok", "VIOLATION")]
    if len(outcomes) < upgrades:
        found.append(f"only {len(outcomes)} of {upgrades} upgrades were tried")
    if stop_code != 0:
        found.append(f"vegavisor exited {stop_code} on SIGTERM, not 0")
    found += [f"core pid {pid} still running after vegavisor stopped" for pid in left]
    home = run.home
    for name, files in placed.items():
        if not (home / name).is_dir():
            found.append(f"{home / name} (not made by vegavisor) was deleted")
        elif folder_snapshot(home / name) != files:
            found.append(f"{home / name} (not made by vegavisor) was changed")
    found += [f"release folder {home / name} was deleted" for name in sorted(run.sampler.folders)
              if not (home / name).is_dir()]
    found += [f"staging folder left: {p}" for p in home.glob(".staging-*")]
    found += run.githubs.token_leaks()
    if TOKEN in run.visor.output():
        found.append("GITHUB_TOKEN written to vegavisor's output")
    found += [f"GITHUB_TOKEN written to {p}" for p in home.rglob("*")
              if p.is_file() and not p.is_symlink() and TOKEN.encode() in p.read_bytes()]
    return found


def upgrade_line(o: Outcome) -> str:
    faults = ", ".join(o.faults) or "no faults"
    line = (f"upgrade {o.number:2d} {tag(o.number)} -> {tag(o.number + 1)} "
            f"({o.source}) {o.seconds:6.2f}s  {faults}  {o.result}")
    return "\n".join([line] + [f"    violation: {v}" for v in o.violations])


def report(settings: Settings, outcomes: List[Outcome], run: Soak, total: float,
           violations: List[str]) -> Dict[str, Any]:
    done = [o for o in outcomes if o.result in ("ok", "VIOLATION")]
    githubs, sampler = run.githubs, run.sampler
    return {
        "seed": settings.seed,
        "upgrades": settings.upgrades,
        "upgrades_done": len(done),
        "from": tag(1),
        "to": tag(settings.upgrades + 1),
        "kills": run.kills,
        "restarts": run.restarts,
        "crashes": run.crashes,
        "github_spells": githubs.spells,
        "github_failed_requests": githubs.failed_requests(),
        "github_requests_in_spells": githubs.hit,
        "github_api_requests": githubs.api_requests(),
        "faults_missed": run.missed,
        "visor_exits": len(run.visor.own_exits),
        "core_starts": sum(1 for e in run.record.read()
                           if e.get("event") == "start" and e.get("role") == "core"),
        "max_cores_alive": sampler.max_cores,
        "proc_scans": sampler.scans,
        "max_upgrade_seconds": round(max((o.seconds for o in done), default=0.0), 2),
        "total_seconds": round(total, 1),
        "rates": settings.rates,
        "core_flags": settings.core_flags,
        "command": settings.command,
        "invariant_violations": len(violations),
        "violations": violations,
        "per_upgrade": [{"from": tag(o.number), "to": tag(o.number + 1), "source": o.source,
                         "seconds": round(o.seconds, 2), "faults": o.faults,
                         "result": o.result} for o in outcomes],
        "python": sys.version.split()[0],
    }


def summary(figures: Dict[str, Any]) -> str:
    return (f"summary: upgrades done {figures['upgrades_done']}/{figures['upgrades']} "
            f"({figures['from']} -> {figures['to']}), kills {figures['kills']}, "
            f"restarts {figures['restarts']}, "
            f"crashes {figures['crashes']}, GitHub faults {figures['github_spells']} spells "
            f"({figures['github_requests_in_spells']} requests in them, "
            f"{figures['github_failed_requests']} failed), faults not reached "
            f"{figures['faults_missed']}, visor exits "
            f"{figures['visor_exits']}, core starts {figures['core_starts']}, max cores "
            f"alive {figures['max_cores_alive']} in {figures['proc_scans']} scans, max upgrade "
            f"{figures['max_upgrade_seconds']}s, total {figures['total_seconds']}s, "
            f"seed {figures['seed']}, invariant violations = {figures['invariant_violations']}")


def check_record_file(path: Path) -> int:
    """--check-record: the record checks alone, on a given record file."""
    try:
        events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as e:
        print(f"soak: cannot read the record {path}: {e}", file=sys.stderr)
        return 2
    found = check_record(events)
    for violation in found:
        print(f"violation: {violation}")
    print(f"{len(core_lives(events))} core lives, invariant violations = {len(found)}")
    return 1 if found else 0


def rate(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"a probability from 0 to 1, not {text}")
    return value


def stop_as_on_ctrl_c(number: int, frame: Any) -> None:
    raise KeyboardInterrupt(number)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upgrades", type=int, default=20, help="upgrades in a row (20)")
    parser.add_argument("--seed", type=int, help="seed of every random choice (default: "
                        "a fresh one, printed)")
    parser.add_argument("--report", type=Path, help="write the figures to this JSON file")
    parser.add_argument("--kill-rate", type=rate, default=DEFAULT_RATES["kill"],
                        help="chance of a kill -9 (or, one time in 4, a SIGTERM) of "
                             "vegavisor in each upgrade (0.5)")
    parser.add_argument("--crash-rate", type=rate, default=DEFAULT_RATES["crash"],
                        help="chance of a core crash in each upgrade (0.5)")
    parser.add_argument("--github-fault-rate", type=rate, default=DEFAULT_RATES["github"],
                        help="chance of a spell of GitHub failures in each upgrade (0.6)")
    parser.add_argument("--core-stop-delay", type=float, default=DEFAULT_STOP_DELAY,
                        metavar="SECONDS", help="the fake cores take this long to stop "
                        f"on SIGTERM ({DEFAULT_STOP_DELAY:g})")
    parser.add_argument("--core-ignores-sigterm", action="store_true",
                        help="the fake cores ignore SIGTERM (and the parent-death signal): "
                        "vegavisor must SIGKILL them after stopSignalTimeoutSeconds")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder "
                        "(kept anyway when an invariant broke, or when Ctrl-C, SIGTERM or "
                        "SIGHUP stopped the soak: every process it started is stopped then)")
    parser.add_argument("--check-record", type=Path, metavar="FILE",
                        help="only check a fake-core record file; exit 1 on a violation")
    args = parser.parse_args(argv)
    if args.check_record is not None:
        return check_record_file(args.check_record)
    if args.upgrades < 1:
        parser.error("--upgrades must be at least 1")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2 ** 32)
    rates = {"kill": args.kill_rate, "crash": args.crash_rate, "github": args.github_fault_rate}
    # Unix socket paths are short: the folder lives directly under /tmp.
    workdir = Path(tempfile.mkdtemp(prefix="vv-soak-", dir="/tmp"))
    figures: Dict[str, Any] = {}
    # SIGTERM (a cancelled CI job) and SIGHUP (a closed terminal) stop it as Ctrl-C does;
    # left to their defaults they ended it at once, with vegavisor and its core running on.
    for number in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, stop_as_on_ctrl_c)
    try:
        try:
            figures = soak(workdir, Settings(args.upgrades, seed, rates, args.core_stop_delay,
                                             args.core_ignores_sigterm))
        finally:
            kill_everything_under(str(workdir).encode())
            if args.keep or not figures or figures["invariant_violations"]:
                print(f"kept {workdir}", flush=True)
            else:
                shutil.rmtree(workdir, ignore_errors=True)
    except KeyboardInterrupt as stop:
        number = int(stop.args[0]) if stop.args else int(signal.SIGINT)
        print(f"soak.py: stopped by {signal.Signals(number).name}: no process it started is "
              f"left; its folder is kept to look at", file=sys.stderr)
        return 128 + number
    for violation in figures["violations"]:
        print(f"violation: {violation}")
    print(summary(figures))
    if args.report is not None:
        args.report.write_text(json.dumps(figures, indent=1) + "\n")
    return 1 if figures["invariant_violations"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
