#!/usr/bin/env python3
"""Simulate a Vega protocol upgrade end to end, with no Vega and no internet.

Without --home, the built-in simulation: builds a release zip whose `vega` is
the fake core reporting v2, serves it from the fake GitHub on 127.0.0.1, makes a
temporary home running fake core v1 with a data node and an upgrade to v2
scheduled a few seconds ahead, runs `vegavisor.py run` on it, and prints the
timeline of the upgrade. Exits 0 once core and data node are back on v2 and
visor stopped cleanly, 1 otherwise.

    python3 scripts/simulate_upgrade.py [--keep] [--python PYTHON]

With --home H, a rehearsal of the operator's own upgrade: H's config files
(config.toml, each folder's run-config.toml, `current`, [upgradeFolders]) are
copied into a temporary home (H is never written), the fake core stands in for
every binary the run-configs name (the operator's args, rpc settings, data node
and folder mappings kept), and vegavisor is driven through an upgrade to TAG
once per scenario, each in a fresh copy. Each scenario prints its timeline and
a PASS, FAIL or SKIP line; --junit writes them as a JUnit XML report. --jobs N
runs up to N scenarios at once; the output stays in scenario order. Exits 0 only
when no scenario failed.

    python3 scripts/simulate_upgrade.py --home H [--to TAG] [--scenario NAME ...]
                                        [--junit FILE] [--core-start-seconds S]
                                        [--jobs N]
"""
from __future__ import annotations

import argparse
import calendar
import collections
import concurrent.futures
import contextlib
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any
from typing import Callable
from typing import Dict
from typing import List
from typing import NamedTuple
from typing import Optional
from typing import Sequence
from typing import Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fakes.core import make_binary  # noqa: E402
from fakes.github import FakeGitHub  # noqa: E402

OLD, NEW = "v1", "v2"
BLOCK_SECONDS = 0.1
ACCEPT_HEIGHT, UPGRADE_HEIGHT = 10, 40  # accepted after 1 s, upgrade block after 4 s
DEADLINE_SECONDS = 60
# How long vegavisor may take to stop its node when the simulation is interrupted.
STOP_SECONDS = 10

# Visor log messages that make the timeline, in the words shown for them.
MILESTONES = (
    (r"vegavisor starting", "vegavisor started"),
    (r"started role=(core|\"data node\") pid=\d+ version=(\S+)", "{0} {1} up"),
    (r"upgrade accepted tag=(\S+) height=(\d+)", "upgrade to {0} accepted for block {1}"),
    (r"downloaded tag=(\S+) .*size=(\d+) .*verified=(\S+)",
     "{0} downloaded ({1} bytes), verified by {2}"),
    (r"installed tag=(\S+) folder=(\S+)", "{0} installed in {1}"),
    (r"ready to upgrade tag=(\S+) height=(\d+)", "core ready to upgrade at block {1}"),
    (r"stopped role=(core|\"data node\") pid=\d+ version=(\S+)", "{0} {1} stopped"),
    (r"switched current=(\S+)", "current -> {0}"),
    (r"vegavisor stopped", "vegavisor stopped cleanly"),
)


def build_release(workdir: Path) -> Path:
    """The release asset Vega publishes: a zip holding `vega` at its root."""
    binary = make_binary(workdir / "vega-v2", NEW)
    archive = workdir / "release.zip"
    info = zipfile.ZipInfo("vega", date_time=(2026, 1, 1, 0, 0, 0))
    info.external_attr = 0o100755 << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr(info, binary.read_bytes())
    return archive


def vegavisor(python: str, *args: str) -> None:
    subprocess.run([python, str(ROOT / "vegavisor.py")] + list(args), check=True,
                   stdout=subprocess.DEVNULL)


def make_home(python: str, workdir: Path, api_url: str) -> Path:
    home = workdir / "home"
    vegavisor(python, "init", "--home", str(home), "--with-data-node")
    config = (home / "config.toml").read_text()
    for key, value in (("githubApiUrl", json.dumps(api_url)), ("pollIntervalSeconds", "0.5"),
                       ("upgradePollIntervalSeconds", "0.1"), ("stopSignalTimeoutSeconds", "5")):
        config = re.sub(rf"(?m)^{key} = .*$", f"{key} = {value}", config)
    (home / "config.toml").write_text(config)
    make_binary(home / "genesis" / "vega", OLD)
    record = str(workdir / "events.jsonl")
    core = ["node", "--admin-socket", str(workdir / "admin.sock"), "--record", record,
            "--block-interval", str(BLOCK_SECONDS), "--upgrade-tag", NEW,
            "--accept-height", str(ACCEPT_HEIGHT), "--upgrade-height", str(UPGRADE_HEIGHT)]
    data_node = ["datanode", "start", "--home", str(workdir / "datanode"), "--record", record]
    (home / "genesis" / "run-config.toml").write_text(
        f'name = "genesis"\n[vega.binary]\npath = "vega"\nargs = {json.dumps(core)}\n'
        f'[vega.rpc]\nsocketPath = "{workdir / "admin.sock"}"\nhttpPath = "/rpc"\n'
        f'[data_node.binary]\npath = "vega"\nargs = {json.dumps(data_node)}\n')
    return home


def new_version_up(events: Path) -> bool:
    """v2 core and v2 data node both started, and v2 core answered an admin poll."""
    if not events.exists():
        return False
    seen = set()
    for line in events.read_text().splitlines():
        event = json.loads(line)
        if event.get("version") == NEW:
            seen.add((event.get("role"), event.get("event")))
    return {("core", "start"), ("datanode", "start"), ("core", "rpc")} <= seen


def timeline(log: str) -> List[Tuple[float, str]]:
    events, start = [], None
    for line in log.splitlines():
        stamp = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:)(\d\d\.\d{3})Z ", line)
        if not stamp:
            continue
        seconds = time.mktime(time.strptime(stamp.group(1) + "00", "%Y-%m-%dT%H:%M:%S")) \
            + float(stamp.group(2))
        start = seconds if start is None else start
        for pattern, words in MILESTONES:
            match = re.search(pattern, line)
            if match:
                words = words.format(*(g.strip('"') for g in match.groups()))
                events.append((seconds - start, words))
    return events


def wait_until_upgraded(visor: subprocess.Popen, events: Path) -> Optional[str]:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline:
        if new_version_up(events):
            return None
        if visor.poll() is not None:
            return f"vegavisor exited with status {visor.returncode} before the upgrade finished"
        time.sleep(0.1)
    return f"the upgrade did not finish within {DEADLINE_SECONDS}s"


def simulate(python: str, workdir: Path) -> int:
    archive = build_release(workdir)
    with FakeGitHub() as github:
        github.add_release(OLD, {"vega-linux-amd64.zip": b"the old release, never fetched"})
        asset = subprocess.run(
            [python, "-c", "import vegavisor as v; "
             "print(v.asset_name('vega-{os}-{arch}.zip', v.host_platform()))"],
            cwd=str(ROOT), check=True, stdout=subprocess.PIPE, text=True).stdout.strip()
        github.add_release(NEW, {asset: archive})
        home = make_home(python, workdir, github.url)
        print(f"home {home}: fake core {OLD} with a data node, upgrade to {NEW} at block "
              f"{UPGRADE_HEIGHT} (~{UPGRADE_HEIGHT * BLOCK_SECONDS:g}s); release served by "
              f"{github.url}")
        log_path = workdir / "vegavisor.log"
        with open(log_path, "wb") as log:
            visor = subprocess.Popen([python, str(ROOT / "vegavisor.py"), "run", "--home",
                                      str(home)], stdout=log, stderr=subprocess.STDOUT)
            try:
                problem = wait_until_upgraded(visor, workdir / "events.jsonl")
                visor.send_signal(signal.SIGTERM)
                status = visor.wait(30)
            finally:  # interrupted: SIGTERM first, so that vegavisor stops its node itself
                if visor.poll() is None:
                    visor.terminate()
                    try:
                        visor.wait(STOP_SECONDS)
                    except subprocess.TimeoutExpired:
                        visor.kill()
                        visor.wait()
    output = log_path.read_text(errors="replace")
    print()
    for seconds, words in timeline(output):
        print(f"  {seconds:7.3f}s  {words}")
    current = os.readlink(home / "current")
    problem = problem or (f"vegavisor exited with status {status}" if status else None)
    problem = problem or (f"current -> {current}, not {NEW}" if current != NEW else None)
    if problem:
        print(f"\nFAILED: {problem}; vegavisor's output:\n{output}", file=sys.stderr)
        return 1
    print(f"\nOK: core and data node upgraded from {OLD} to {NEW}; current -> {current}")
    return 0


# --- rehearsal of an operator's home (--home) ---
# Everything below only reads the operator's home. Each scenario gets a fresh
# temporary copy under /tmp (unix socket paths are short there), its own fake
# GitHub (its own port), its own fake cores and admin sockets, and every process
# it started is gone when it returns. Scenarios share nothing else, so --jobs can
# run several at once, each in a thread: the only shared things are the Plan
# (read-only) and vegavisor's parsers (pure); only the main thread prints.

SCENARIOS = ("plain", "slow-core", "crash-before-block", "github-down-then-up",
             "kill-visor-mid-upgrade", "wrong-version-asset")
# What the fake cores are told on top of the operator's args: a block every 0.1 s,
# the upgrade accepted at block 2, the upgrade block half a second after vegavisor's
# first poll (so vegavisor sees the proposal before the block, as on a real chain).
REHEARSAL_BLOCK_SECONDS = 0.1
REHEARSAL_ACCEPT_HEIGHT = 2
UPGRADE_BLOCK_AFTER_FIRST_POLL_SECONDS = 0.5
# A slow core really waits at most this long before listening: longer limits are
# checked by arithmetic, not by waiting (the whole run must fit in a minute).
SLOW_CORE_WAIT_MAX_SECONDS = 2.0
# The slow core listens this long (at least one poll interval) before vegavisor
# would give up: scheduling on a loaded CI machine must not decide the result.
SLOW_CORE_MARGIN_SECONDS = 1.0
# How long a real core may take to open its admin socket (snapshot load and block
# replay): a minute on a small chain; --core-start-seconds for mainnet's minutes.
DEFAULT_CORE_START_SECONDS = 60.0
# The version the wrong-version-asset scenario's binary reports.
WRONG_VERSION = "v0.0.0-wrong-asset"
# A refused release must stay refused: vegavisor is watched this long afterwards.
REFUSAL_WATCH_SECONDS = 2.0
# Fixed part of a scenario's deadline; the operator's delays are added to it.
SCENARIO_DEADLINE_SECONDS = 45.0
# Scenarios run one after the other unless --jobs says otherwise: a validator's CI
# runner may be small, the scenarios' margins (slow-core's second, the restart
# delays) assume a core to spare, and a rehearsal that fails because its scenarios
# starved each other of CPU costs an operator more than one that takes a minute.
DEFAULT_JOBS = 1
# Signals that stop the script as Ctrl-C does (see stop_as_on_ctrl_c).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
# While stopping scenarios (Ctrl-C, or one that raised), their processes are killed
# this often until every scenario has returned: one may be starting another.
STOP_SWEEP_SECONDS = 0.1
# The files of a home that say how it runs; state files and binaries are not copied.
HOME_CONFIG = "config.toml"
RUN_CONFIG = "run-config.toml"
# vegavisor's text log: `2026-01-02T03:04:05.678Z INFO  message key=value ...`.
LOG_LINE = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.(\d{3})Z (\w+)\s+(.*)")
# A TOML table header (not an array of tables).
TABLE_HEADER = re.compile(r"\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")

# vegavisor's log messages that make the timeline, in the words shown for them.
REHEARSAL_MILESTONES = (
    (r"^vegavisor starting", "vegavisor started"),
    (r"^resuming upgrade tag=(\S+) height=(\d+) step=(\S+)",
     "vegavisor resumes the upgrade to {0} from its journal (step {2})"),
    (r"^started role=(core|\"data node\") pid=(\d+) version=(\S+)",
     "node: {0} {2} started: {command}"),
    (r"^admin socket answering socket=(\S+)", "core answering on {0}"),
    (r"^upgrade accepted tag=(\S+) height=(\d+)", "upgrade to {0} accepted for block {1}"),
    (r"^downloaded tag=(\S+) .*size=(\d+)", "release {0} downloaded ({1} bytes)"),
    (r"^installed tag=(\S+) folder=(\S+)", "release {0} installed in {1}"),
    (r"^ready to upgrade tag=(\S+) height=(\d+)", "upgrade block {1} reached: core ready"),
    (r"^stopped role=(core|\"data node\") pid=\d+ version=(\S+) status=(.*)",
     "node stopped: {0} {1} ({2})"),
    (r"^version checked role=(core|\"data node\") binary=\S+ version=(\S+)",
     "{0} binary reports {1}"),
    (r"^switched current=(\S+)", "current switched to {0}"),
    (r"^upgrade complete tag=(\S+)", "upgrade to {0} complete: the new core answers"),
    (r"^restarting delay=(\S+)", "node restarts in {0}s"),
    (r"^hook started hook=(\S+)", "{0} hook started: {argv}"),
    (r"^hook finished hook=(\S+)", "{0} hook finished after {seconds}s"),
    (r"^hook failed hook=(\S+)", "{0} hook failed: {error}"),
    (r"^vegavisor stopped", "vegavisor stopped"),
)
# What the fake cores record (--record), in the words shown for them.
RECORD_MILESTONES = {
    "socket-listening": "core {version} listening on {socket}",
    "accepted": "core {version}: upgrade to {tag} accepted at block {height}",
    "ready": "core {version}: upgrade block {height} reached",
    "crash": "core {version} crashed at block {height} (scripted)",
}


class RehearsalError(Exception):
    """A home the rehearsal cannot run: one line naming the file and the key."""


class Scenario(NamedTuple):
    name: str
    status: str  # passed, failed, skipped
    message: str  # why it failed or was skipped; what it proved when it passed
    seconds: float
    timeline: Tuple[str, ...]


class Plan(NamedTuple):
    """What the operator's home says, read once; every scenario copies from it."""
    source: Path
    config: Any  # vegavisor.Config
    config_text: str
    folders: Tuple[str, ...]  # every folder of the home, relative to it
    run_config_files: Tuple[str, ...]  # relative to the home
    current: str  # the folder `current` names, relative to the home
    old: str  # the version running there (its run-config's name)
    current_link: Optional[str]  # how `current` is made in the copy: None, "link", "folder"
    tag: str
    target: str  # the folder vegavisor uses for tag, relative to the home
    preplaced: bool  # the home holds the release already (a run-config named tag)
    notes: Tuple[str, ...]
    problems: Tuple[str, ...]  # mistakes every scenario fails on
    stand_in_hooks: Dict[str, List[str]]  # [hooks] key -> the operator's argv, not run


def load_visor() -> Any:
    """vegavisor.py of this checkout, imported for its parsers (never run from here)."""
    import vegavisor
    return vegavisor


def relative_to(path: Path, root: Path) -> Optional[str]:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return None


def next_minor(version: str) -> str:
    """A made-up next version: v0.78.7 -> v0.79.0; one without numbers -> v0.1.0."""
    match = re.match(r"(v?)(\d+)(?:\.(\d+))?", version)
    if not match:
        return "v0.1.0"
    return f"{match.group(1)}{match.group(2)}.{int(match.group(3) or 0) + 1}.0"


def walk_home(home: Path) -> Tuple[List[str], List[str]]:
    """Every folder under the home and every run-config.toml in them, relative to the
    home (not through `current` or other links, not in dot folders such as staging)."""
    folders, run_configs = [], []
    for folder, dirs, files in os.walk(home):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and not os.path.islink(os.path.join(folder, d)))
        if Path(folder) == home:
            continue
        folders.append(str(Path(folder).relative_to(home)))
        if RUN_CONFIG in files:
            run_configs.append(str(Path(folder, RUN_CONFIG).relative_to(home)))
    return folders, run_configs


def read_current_folder(visor: Any, home: Path) -> Tuple[str, Optional[str], List[str]]:
    """The folder `current` names (relative), how to recreate it, and notes."""
    current = visor.read_current(home)
    if current.kind == "folder":
        return "current", "folder", []
    if current.kind == "link":
        inside = relative_to(Path(current.folder), home.resolve())
        if inside is not None:
            return inside, "link", []
    if current.kind in ("dangling", "incomplete", "link"):
        # A copy of a validator's home: the link names the folder where it was.
        name = Path(os.readlink(home / "current")).name
        if (home / name / RUN_CONFIG).is_file():
            return name, "link", [f"current -> {os.readlink(home / 'current')} is outside this "
                                  f"copy of the home; the rehearsal uses {name}"]
    if not (home / "genesis" / RUN_CONFIG).is_file():
        raise RehearsalError(current.problem)
    note = current.problem if current.kind != "missing" else \
        "current is missing: vegavisor starts genesis"
    return "genesis", None, [note]


def binary_problems(visor: Any, home: Path, folder: str,
                    run_config: Any) -> Tuple[List[str], List[str]]:
    """(problems, notes) for the binaries the run-config names that are not in the home
    (relative paths only). A CI copy of a home rarely holds the binaries: one missing is
    a note, as the fake core takes its place; a path with a space in it is a mistake (the
    Go Visor's `init --with-data-node` template writes "vega data-node")."""
    problems, notes = [], []
    for key, binary in (("vega.binary.path", run_config.vega),
                        ("data_node.binary.path", run_config.data_node)):
        if binary is None or Path(binary.path).is_absolute():
            continue
        path = visor.resolve_binary(home / folder, binary)
        if path.is_file():
            continue
        where = f"{home / folder / RUN_CONFIG}: {key} = {json.dumps(binary.path)}"
        if any(c.isspace() for c in binary.path):
            problems.append(f"{where} names {path}, which does not exist: a program and its "
                            f"arguments? put the program in path and the rest in args")
        else:
            notes.append(f"{where}: {path} is not in this copy of the home; the fake core "
                         f"takes its place (on the validator, `vegavisor validate` checks it)")
    return problems, notes


def folder_mapping_problems(home: Path, tag: str, target: str, current: str,
                            names: Dict[str, str]) -> List[str]:
    """[upgradeFolders] mistakes for tag: a folder that holds another version, or the
    release pre-placed in a folder vegavisor will not look in."""
    key = f"[upgradeFolders] {json.dumps(tag)}"
    problems = []
    if target == current:
        problems.append(f"{home / HOME_CONFIG}: {key} = {json.dumps(target)} is the folder of the "
                        f"running version: the upgrade to {tag} would never be made")
    elif target in names and names[target] != tag:
        problems.append(f"{home / HOME_CONFIG}: {key} = {json.dumps(target)} names a folder "
                        f"holding {names[target]}, not {tag}: vegavisor would use it as it is "
                        f"and refuse it at the upgrade block")
    elif target not in names:
        elsewhere = [folder for folder, name in names.items() if name == tag]
        if elsewhere:
            mapped = f"{key} = {json.dumps(target)}" if target != tag else \
                f"no {key} entry (vegavisor looks in {home / tag})"
            problems.append(f"{home / HOME_CONFIG}: {mapped}, but the release {tag} is "
                            f"pre-placed in {home / elsewhere[0]}: vegavisor would not find it")
    return problems


def version_key(name: str) -> Tuple[int, ...]:
    """v0.78.7 -> (0, 78, 7): enough to tell a newer release from an older one."""
    return tuple(int(n) for n in re.findall(r"\d+", name)[:3])


def choose_tag(names: Dict[str, str], current: str) -> str:
    """The newer release the operator pre-placed when there is exactly one, else a
    made-up next one."""
    old = names[current]
    candidates = sorted({name for name in names.values()
                         if re.fullmatch(r"v\d[\w.+-]*", name)
                         and version_key(name) > version_key(old)})
    return candidates[0] if len(candidates) == 1 else next_minor(old)


HOOK_KEYS = ("preUpgrade", "postUpgrade")


def hooks_to_stand_in(visor: Any, text: str) -> Dict[str, List[str]]:
    """The [hooks] argv lists of config.toml: they name programs of the validator host
    (a backup, a pager) that a CI machine lacks and a rehearsal must not run."""
    try:
        hooks = visor.read_toml_text(text).get("hooks")
    except (ValueError, RecursionError):
        return {}  # load_config says what is wrong with the file
    if not isinstance(hooks, dict):
        return {}
    return {key: hooks[key] for key in HOOK_KEYS
            if isinstance(hooks.get(key), list) and hooks[key]}


def with_stand_in_hooks(text: str, stand_ins: Dict[str, Path]) -> str:
    for key, program in stand_ins.items():
        text = set_toml_key(text, "hooks", key, json.dumps([str(program)]))
    return text


def write_stand_in_hook(folder: Path, key: str, argv: List[str]) -> Path:
    """A program in the hook's place that says what would have run, and succeeds."""
    path = folder / f"hook-{key}"
    said = f"stand-in for [hooks] {key}, not run: " + " ".join(str(a) for a in argv)
    path.write_text(f'#!/bin/sh\necho {shlex.quote(said)} "(tag $VEGAVISOR_UPGRADE_TAG)"\n')
    path.chmod(0o755)
    return path


def read_plan(source: Path, to: Optional[str], run_hooks: bool = False) -> Plan:
    """Read the operator's home; RehearsalError when it cannot be rehearsed at all."""
    visor = load_visor()
    if not (source / HOME_CONFIG).is_file():
        raise RehearsalError(f"{source / HOME_CONFIG} does not exist: --home must be a "
                             f"vegavisor (or Vega Visor) home")
    config_text = (source / HOME_CONFIG).read_text(encoding="utf-8")
    stand_in = {} if run_hooks else hooks_to_stand_in(visor, config_text)
    try:
        if stand_in:  # read with a program that exists in each hook's place
            with tempfile.TemporaryDirectory(prefix="vegavisor-plan-") as probe:
                Path(probe, HOME_CONFIG).write_text(with_stand_in_hooks(
                    config_text, {key: Path(sys.executable) for key in stand_in}))
                config, _ = visor.load_config(Path(probe))
        else:
            config, _ = visor.load_config(source)
        current, link, notes = read_current_folder(visor, source)
        current_run_config, _ = visor.load_run_config(source / current)
    except visor.VisorError as e:
        raise RehearsalError(str(e)) from None
    folders, files = walk_home(source)
    names: Dict[str, str] = {}
    for file in files:
        try:
            run_config, _ = visor.load_run_config(source / Path(file).parent)
        except visor.VisorError:
            continue  # a folder no upgrade uses; vegavisor reports it if it does
        names[str(Path(file).parent)] = run_config.name
    names[current] = current_run_config.name
    tag = to or choose_tag(names, current)
    try:
        target_path = visor.folder_for_tag(source, tag, config.upgrade_folders)
    except visor.VisorError as e:
        raise RehearsalError(str(e)) from None
    target = str(target_path.relative_to(source))
    problems, missing = binary_problems(visor, source, current, current_run_config)
    notes += missing
    problems += folder_mapping_problems(source, tag, target, current, names)
    preplaced = names.get(target) == tag
    if preplaced and not problems:
        target_run_config, _ = visor.load_run_config(source / target)
        more, missing = binary_problems(visor, source, target, target_run_config)
        problems += more
        notes += missing
    notes += [f"[hooks] {key} = {json.dumps(argv)} is not run: a stand-in runs in its place "
              f"and says so (--run-hooks runs it)" for key, argv in stand_in.items()]
    return Plan(source, config, config_text,
                tuple(folders), tuple(files), current, current_run_config.name, link, tag,
                target, preplaced, tuple(notes), tuple(problems), stand_in)


# --- rehearsal: the temporary home ---

def set_toml_key(text: str, table: str, key: str, value: str) -> str:
    """config.toml's text with `key = value` in [table] ("" for the top level)."""
    lines = text.splitlines()
    in_table, header_at = table == "", -1 if table == "" else None
    pattern = re.compile(rf"\s*{re.escape(key)}\s*=", re.IGNORECASE)
    for i, line in enumerate(lines):
        header = TABLE_HEADER.match(line)
        if header or line.lstrip().startswith("[["):
            in_table = bool(header) and header.group(1).lower() == table.lower()
            if in_table:
                header_at = i
            continue
        if in_table and pattern.match(line):
            lines[i] = f"{key} = {value}"
            return "\n".join(lines) + "\n"
    if header_at is None:
        return "\n".join(lines + ["", f"[{table}]", f"{key} = {value}"]) + "\n"
    lines.insert(header_at + 1, f"{key} = {value}")
    return "\n".join(lines) + "\n"


def toml_string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def run_config_text(run_config: Any) -> str:
    """A run-config.toml for the copy: the operator's values, binary and socket rewritten."""
    lines = [f"name = {toml_string(run_config.name)}", "", "[vega.binary]",
             f"path = {toml_string(run_config.vega.path)}",
             f"args = [{', '.join(toml_string(a) for a in run_config.vega.args)}]", "",
             "[vega.rpc]", f"socketPath = {toml_string(run_config.rpc.socket_path)}",
             f"httpPath = {toml_string(run_config.rpc.http_path)}"]
    if run_config.data_node is not None:
        lines += ["", "[data_node.binary]", f"path = {toml_string(run_config.data_node.path)}",
                  "args = [" + ", ".join(toml_string(a) for a in run_config.data_node.args) + "]"]
    return "\n".join(lines) + "\n"


WRAPPER = '''\
#!{python}
# vegavisor's upgrade rehearsal: the fake core stands in for {original} ({role}).
# It gets the operator's args as they are, plus the rehearsal's own flags.
import os
import runpy
import sys

FAKE = {fake!r}
ROLE = {role!r}
CORE_FLAGS = {core_flags!r}
DATA_NODE_FLAGS = {data_node_flags!r}
# (marker file, height): crash at that height once; restarted, resume a few blocks
# before it, as a real core resumes from its latest snapshot.
CRASH_ONCE = {crash_once!r}


def strip(args, *words):
    for word in words:
        if args[:1] == [word]:
            args = args[1:]
    return args


args = sys.argv[1:]
if args[:1] == ["version"]:
    argv = args
elif "network-history" in args:
    argv = ["datanode"] + args[args.index("network-history"):]
elif ROLE == "data node" or (ROLE == "core and data node" and args[:1] == ["datanode"]):
    argv = ["datanode", "start"] + strip(args, "datanode", "start", "node") + DATA_NODE_FLAGS
else:
    argv = ["node"] + strip(args, "node", "start") + CORE_FLAGS
    if CRASH_ONCE and not os.path.exists(CRASH_ONCE[0]):
        open(CRASH_ONCE[0], "w").close()
        argv += ["--crash-at-height", str(CRASH_ONCE[1])]
    elif CRASH_ONCE:
        argv += ["--start-height", str(CRASH_ONCE[1] - 3)]
sys.argv = [FAKE] + argv
runpy.run_path(FAKE, run_name="__main__")
'''


class FakeSetup(NamedTuple):
    """What the fake cores of one scenario are told."""
    python: str
    fakes: Path  # folder of the fake core copies, one per version
    record: Path
    core_flags: List[str]  # all but the admin socket
    crash_once: Optional[Tuple[str, int]]


class Stage(NamedTuple):
    """One scenario's temporary world."""
    root: Path
    home: Path
    record: Path
    log: Path
    setup: FakeSetup
    notes: List[str]


def shebang_python(python: str) -> str:
    return python if len(python) < 120 and " " not in python else "/usr/bin/env python3"


def write_wrapper(dest: Path, setup: FakeSetup, version: str, role: str, original: str,
                  socket: str, http_path: str) -> Path:
    """The fake core of `version` in place of a binary: a script that runs it."""
    fake = setup.fakes / f"vega-{version}"
    if not fake.exists():
        make_binary(fake, version)
    core_flags = ["--admin-socket", socket, "--admin-http-path", http_path,
                  "--record", str(setup.record)] + setup.core_flags
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(WRAPPER.format(
        python=shebang_python(setup.python), original=original, role=role, fake=str(fake),
        core_flags=core_flags, data_node_flags=["--record", str(setup.record)],
        crash_once=setup.crash_once))
    dest.chmod(0o755)
    return dest


def place_binaries(visor: Any, folder: Path, run_config: Any, setup: FakeSetup,
                   version: str, sockets: Dict[str, str], stage: Stage) -> Any:
    """Fake cores at the paths the run-config names; absolute paths outside the home are
    moved into the stage. Returns the run-config as the copy must say it."""
    socket = sockets[run_config.rpc.socket_path]
    shared = run_config.data_node is not None and run_config.data_node.path == run_config.vega.path
    roles = [("vega", run_config.vega, "core and data node" if shared else "core")]
    if run_config.data_node is not None and not shared:
        roles.append(("data_node", run_config.data_node, "data node"))
    changed = {}
    for key, binary, role in roles:
        path = visor.resolve_binary(folder, binary)
        if relative_to(path, stage.home) is None:
            moved = stage.root / "bin" / folder.name / Path(binary.path).name
            stage.notes.append(f"{key}.binary.path {binary.path} is outside the home: the fake "
                               f"core stands in at {moved}")
            path = moved
            changed[key] = binary._replace(path=str(moved))
        write_wrapper(path, setup, version, role, binary.path, socket, run_config.rpc.http_path)
    vega = changed.get("vega", run_config.vega)
    data_node = run_config.data_node
    if data_node is not None:
        data_node = data_node._replace(path=vega.path) if shared \
            else changed.get("data_node", data_node)
    return run_config._replace(vega=vega, data_node=data_node,
                               rpc=run_config.rpc._replace(socket_path=socket))


def map_sockets(plan: Plan, run_configs: Dict[str, Any], stage: Stage) -> Dict[str, str]:
    """Each admin socket path to the copy's: the same place inside the home, else a socket
    under the stage (a running node's socket is never touched)."""
    sockets: Dict[str, str] = {}
    for run_config in run_configs.values():
        path = run_config.rpc.socket_path
        if path in sockets:
            continue
        inside = relative_to(Path(path), plan.source) if os.path.isabs(path) else None
        if inside is not None:
            sockets[path] = str(stage.home / inside)
        else:
            sockets[path] = str(stage.root / f"admin-{len(sockets) + 1}.sock")
            stage.notes.append(f"vega.rpc.socketPath {path} is outside the home: the rehearsal's "
                               f"core listens on {Path(sockets[path]).name} in its temporary "
                               f"folder instead")
    return sockets


def upgrade_height(plan: Plan) -> int:
    """The upgrade block, in blocks after core starts listening."""
    seconds = plan.config.poll_interval + UPGRADE_BLOCK_AFTER_FIRST_POLL_SECONDS
    return REHEARSAL_ACCEPT_HEIGHT + 1 + int(math.ceil(seconds / REHEARSAL_BLOCK_SECONDS))


def stage_home(plan: Plan, scenario: str, root: Path, python: str, github_url: Optional[str],
               socket_delay: float) -> Stage:
    """A copy of the operator's home for one scenario, fake cores in place of binaries."""
    visor = load_visor()
    height = upgrade_height(plan)
    flags = ["--block-interval", str(REHEARSAL_BLOCK_SECONDS), "--upgrade-tag", plan.tag,
             "--accept-height", str(REHEARSAL_ACCEPT_HEIGHT), "--upgrade-height", str(height)]
    if socket_delay:
        flags += ["--socket-delay", f"{socket_delay:g}", "--snapshot-socket-delay",
                  f"{socket_delay:g}"]
    crash = (str(root / "crashed-once"), height - 5) if scenario == "crash-before-block" else None
    setup = FakeSetup(python, root / "fakes", root / "record.jsonl", flags, crash)
    stage = Stage(root, root / "home", setup.record, root / "vegavisor.log", setup, [])
    stage.home.mkdir(parents=True)
    for folder in plan.folders:  # an [upgradeFolders] subfolder's parent, say
        (stage.home / folder).mkdir(parents=True, exist_ok=True)
    run_configs = {}
    for file in plan.run_config_files:
        (stage.home / file).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(plan.source / file, stage.home / file)
        folder = str(Path(file).parent)
        with contextlib.suppress(visor.VisorError):
            run_configs[folder] = visor.load_run_config(plan.source / folder)[0]
    if plan.current_link == "link":
        os.symlink(stage.home / plan.current, stage.home / "current")
    sockets = map_sockets(plan, run_configs, stage)
    current = run_configs[plan.current]
    rewritten = place_binaries(visor, stage.home / plan.current, current, setup,
                               fake_version(current.name), sockets, stage)
    (stage.home / plan.current / RUN_CONFIG).write_text(run_config_text(rewritten))
    release_version = WRONG_VERSION if scenario == "wrong-version-asset" else plan.tag
    if plan.preplaced:
        target = run_configs[plan.target]
        rewritten = place_binaries(visor, stage.home / plan.target, target, setup,
                                   release_version, sockets, stage)
        (stage.home / plan.target / RUN_CONFIG).write_text(run_config_text(rewritten))
    elif not plan.config.auto_install.enabled:
        preplace_release(visor, plan, stage, setup, release_version, current, sockets)
    write_config(plan, stage, github_url)
    return stage


def preplace_release(visor: Any, plan: Plan, stage: Stage, setup: FakeSetup, version: str,
                     current: Any, sockets: Dict[str, str]) -> None:
    """Auto-install is off: the release in its folder, as an operator would place it."""
    folder = stage.home / plan.target
    run_config = current._replace(name=plan.tag)
    folder.mkdir(parents=True, exist_ok=True)
    rewritten = place_binaries(visor, folder, run_config, setup, version, sockets, stage)
    (folder / RUN_CONFIG).write_text(run_config_text(rewritten))
    stage.notes.append(f"auto-install is off: {plan.tag} pre-placed in HOME/{plan.target} "
                       f"as an operator would")


def write_config(plan: Plan, stage: Stage, github_url: Optional[str]) -> None:
    """config.toml as the operator wrote it, but nothing outside the stage is written or
    fetched, and vegavisor's log is the text the timeline is read from."""
    text = with_stand_in_hooks(plan.config_text, {
        key: write_stand_in_hook(stage.root, key, argv)
        for key, argv in plan.stand_in_hooks.items()})
    if github_url is not None:
        text = set_toml_key(text, "autoInstall", "githubApiUrl", toml_string(github_url))
    if plan.config.metrics_file:
        text = set_toml_key(text, "", "metricsFile", toml_string(str(stage.root / "metrics.prom")))
        stage.notes.append(f"metricsFile {plan.config.metrics_file} is written in the "
                           f"rehearsal's folder instead")
    if "logging" in {m.group(1).lower() for m in map(TABLE_HEADER.match, text.splitlines()) if m}:
        text = set_toml_key(text, "logging", "format", '"text"')
        text = set_toml_key(text, "logging", "level", '"info"')
    (stage.home / HOME_CONFIG).write_text(text)
    config, _ = load_visor().load_config(stage.home)
    if github_url is not None and config.auto_install.github_api_url != github_url:
        raise RehearsalError(f"{plan.source / HOME_CONFIG}: could not point [autoInstall] "
                             f"githubApiUrl at the fake GitHub")


def fake_version(name: str) -> str:
    """The version a fake core of this run-config reports: its name, where it can."""
    return name if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", name) else "v0.0.0"


def release_archive(stage: Stage, plan: Plan, version: str) -> Path:
    """The release asset: a zip holding, at binaryName, the fake core of `version` with
    the flags of the old one (its upgrade script is off: the tag is its own version)."""
    current, _ = load_visor().load_run_config(stage.home / plan.current)
    binary = write_wrapper(stage.root / "release-binary", stage.setup, version,
                           "core and data node", "the release's binary",
                           current.rpc.socket_path, current.rpc.http_path)
    archive = stage.root / "release.zip"
    info = zipfile.ZipInfo(plan.config.auto_install.asset.binary_name,
                           date_time=(2026, 1, 1, 0, 0, 0))
    info.external_attr = 0o100755 << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr(info, binary.read_bytes())
    return archive


# --- rehearsal: driving vegavisor through each scenario ---

def skip_reason(plan: Plan, name: str) -> Optional[str]:
    if name != "github-down-then-up":
        return None
    if not plan.config.auto_install.enabled:
        return ("auto-install is off ([autoInstall] enabled): nothing is downloaded, so "
                "GitHub being down cannot matter")
    if plan.preplaced:
        return f"{plan.tag} is already in HOME/{plan.target}: nothing is downloaded"
    return None


def slow_core_delay(config: Any, core_start_seconds: float,
                    config_path: Path) -> Tuple[float, Optional[str]]:
    """How long the slow core waits before listening, or the key to raise.

    vegavisor polls pollIntervalSeconds after a start, then every pollIntervalSeconds
    while core does not answer, and gives up at failure number
    maxNumberOfFirstConnectionRetries + 1: core must listen before that poll."""
    retries, poll = config.max_first_connection_retries, config.poll_interval
    window = (retries + 1) * poll
    margin = max(poll, SLOW_CORE_MARGIN_SECONDS)
    if window - margin < core_start_seconds:
        need = int(math.ceil((core_start_seconds + margin) / poll)) - 1
        return 0.0, (f"{config_path}: maxNumberOfFirstConnectionRetries = {retries} gives core "
                     f"{window:g}s to open its admin socket ({retries + 1} polls, "
                     f"pollIntervalSeconds = {poll:g}); a core loading its snapshot takes "
                     f"longer (--core-start-seconds {core_start_seconds:g}): raise "
                     f"maxNumberOfFirstConnectionRetries to at least {need}")
    return min(window - margin, SLOW_CORE_WAIT_MAX_SECONDS), None


def scenario_deadline(plan: Plan, socket_delay: float) -> float:
    config = plan.config
    return (SCENARIO_DEADLINE_SECONDS + 4 * config.poll_interval + 2 * socket_delay
            + config.stop_delay + 3 * min(config.restarts_delay, config.restarts_backoff_max))


def read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def read_record(path: Path) -> List[Dict[str, Any]]:
    events = []
    for line in read_text(path).splitlines():
        with contextlib.suppress(ValueError):
            events.append(json.loads(line))
    return events


def log_value(message: str, key: str) -> Optional[str]:
    """The value of key=... in one of vegavisor's log messages (quoted values unquoted)."""
    match = re.search(rf'(?:^| ){key}=("(?:[^"\\]|\\.)*"|\S+)', message)
    if not match:
        return None
    value = match.group(1)
    if value.startswith('"'):
        with contextlib.suppress(ValueError):
            return json.loads(value)
    return value


def last_error(log: str) -> Optional[str]:
    """What vegavisor last said went wrong: its giving-up reason, else its last error."""
    errors = []
    for line in log.splitlines():
        match = LOG_LINE.match(line)
        if match and match.group(3) == "ERROR":
            message = match.group(4)
            reason = log_value(message, "reason") or log_value(message, "error")
            errors.append(reason or message)
    return errors[-1] if errors else None


class Run:
    """vegavisor on one stage: started, restarted, stopped; its events for the timeline."""

    def __init__(self, python: str, stage: Stage) -> None:
        self.python, self.stage = python, stage
        self.env = {k: v for k, v in os.environ.items() if k != "GITHUB_TOKEN"}
        self.events: List[Tuple[float, str]] = []
        self.proc = self.start()

    def start(self) -> subprocess.Popen:
        with open(self.stage.log, "ab") as log:
            return subprocess.Popen(
                [self.python, str(ROOT / "vegavisor.py"), "run", "--home", str(self.stage.home)],
                stdout=log, stderr=subprocess.STDOUT, cwd=str(self.stage.root), env=self.env)

    def log(self) -> str:
        return read_text(self.stage.log)

    def wait(self, condition: Callable[[], Any], deadline: float, what: str) -> Optional[str]:
        """None once condition() holds; else why not (vegavisor exited, or the deadline)."""
        while not condition():
            said = last_error(self.log()) or "no error logged"
            if self.proc.poll() is not None:
                return (f"vegavisor exited with status {self.proc.returncode} while waiting "
                        f"for {what}: {said}")
            if time.monotonic() > deadline:
                return f"timed out waiting for {what}: {said}"
            time.sleep(0.02)
        return None

    def kill(self, why: str) -> None:
        self.proc.kill()
        self.proc.wait()
        self.events.append((time.time(), why))

    def restart(self) -> None:
        self.proc = self.start()

    def stop(self) -> Optional[int]:
        """SIGTERM, as systemd stops it; its exit status (None when it had to be killed)."""
        if self.proc.poll() is not None:
            return self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None


def kill_leftovers(root: Path) -> None:
    """Every process still running from this folder (fake cores, vegavisor): a stage's,
    or the whole rehearsal's. The trailing slash keeps scenario `a` off scenario `a-b`'s
    processes when they run side by side."""
    marker = os.path.join(str(root), "").encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if marker in (proc / "cmdline").read_bytes():
                os.kill(int(proc.name), signal.SIGKILL)


def journal_step(stage: Stage) -> Optional[str]:
    with contextlib.suppress(OSError, ValueError):
        step = json.loads((stage.home / ".upgrade-journal.json").read_text()).get("step")
        return step if step != "done" else None
    return None


def refused_at_block(log: str) -> bool:
    _, ready, after = log.partition("ready to upgrade")
    return bool(ready) and f"reports version {WRONG_VERSION}" in after


def upgraded(plan: Plan, run: Run, data_node: bool) -> Callable[[], bool]:
    """The new core answered (and a postUpgrade hook, when there is one, has ended)."""
    hooks = getattr(plan.config, "hooks", None)  # [hooks], in vegavisor versions that have it
    post_hook = bool(getattr(hooks, "post_upgrade", ()))

    def done() -> bool:
        log = run.log()
        if f"upgrade complete tag={plan.tag}" not in log:
            return False
        if post_hook and not re.search(r"hook (finished|failed) hook=postUpgrade", log):
            return False
        started = {r.get("role") for r in read_record(run.stage.record)
                   if r.get("event") == "start" and r.get("version") == plan.tag}
        return "core" in started and (not data_node or "datanode" in started)
    return done


def drive(plan: Plan, name: str, stage: Stage, python: str, github: Any,
          deadline: float) -> Tuple[Optional[str], str, List[Tuple[float, str]]]:
    """Run vegavisor through the scenario: (problem or None, what passed, driver events)."""
    visor = load_visor()
    data_node = visor.load_run_config(stage.home / plan.current)[0].data_node is not None
    run = Run(python, stage)
    try:
        problem = None
        if name == "kill-visor-mid-upgrade":
            problem = run.wait(lambda: journal_step(stage) not in (None, "ready"), deadline,
                               "the node to be stopped for the upgrade")
            if problem is None:
                run.kill(f"vegavisor killed with SIGKILL mid-upgrade (journal step "
                         f"{journal_step(stage) or 'done'})")
                run.restart()
                run.events.append((time.time(), "vegavisor started again"))
        if name == "github-down-then-up" and problem is None:
            problem = run.wait(lambda: "install failed" in run.log(), deadline,
                               "an install to fail while GitHub is down")
            if problem is None:
                github.clear_faults()
                run.events.append((time.time(), "fake GitHub up again"))
        if name == "wrong-version-asset" and problem is None:
            problem = run.wait(lambda: refused_at_block(run.log()), deadline,
                               f"vegavisor to refuse the binary reporting {WRONG_VERSION} "
                               f"at the upgrade block")
            if problem is None:
                run.events.append((time.time(), f"vegavisor refused the release: its binary "
                                                 f"reports {WRONG_VERSION}"))
                time.sleep(REFUSAL_WATCH_SECONDS)  # it must stay refused
        elif problem is None:
            problem = run.wait(upgraded(plan, run, data_node), deadline,
                               f"the node to run {plan.tag}")
        status = run.stop()
        run.events.append((time.time(), "vegavisor stopped by the rehearsal (SIGTERM)"))
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()
    if problem is None:
        problem, proof = check_outcome(plan, name, stage, status, github)
    else:
        problem, proof = name_folder_key(plan, stage, problem), ""
    return problem, proof, run.events


def name_folder_key(plan: Plan, stage: Stage, problem: str) -> str:
    """A failure in the release's folder names the [upgradeFolders] entry that chose it."""
    mapped = plan.config.upgrade_folders.get(plan.tag)
    if mapped is None or str(stage.home / plan.target) not in problem:
        return problem
    return (f"{problem} (the folder comes from {plan.source / HOME_CONFIG}: [upgradeFolders] "
            f"{json.dumps(plan.tag)} = {json.dumps(mapped)})")


def check_outcome(plan: Plan, name: str, stage: Stage, status: Optional[int],
                  github: Any) -> Tuple[Optional[str], str]:
    current = os.path.realpath(stage.home / "current")
    target = os.path.realpath(stage.home / plan.target)
    records = read_record(stage.record)
    if name == "wrong-version-asset":
        started = [r for r in records if r.get("event") == "start"
                   and r.get("version") == WRONG_VERSION]
        if started:
            return f"the node was started on the binary reporting {WRONG_VERSION}", ""
        if current == target:
            return f"current was switched to {target}, which holds the wrong release", ""
        return None, f"the release reporting {WRONG_VERSION} was refused; the node never ran it"
    if status != 0:
        return f"vegavisor exited with status {status} when stopped", ""
    if current != target:
        return f"current -> {current}, not {target}", ""
    if name == "crash-before-block" and not any(r.get("event") == "crash" for r in records):
        return "core never crashed: the scenario did not happen", ""
    if name == "github-down-then-up" and not any(r.status == 503 for r in github.requests):
        return "vegavisor never asked the fake GitHub while it was down", ""
    return None, f"upgraded to {plan.tag}; current -> HOME/{plan.target}"


def start_github(plan: Plan, name: str) -> Any:
    auto = plan.config.auto_install
    github = FakeGitHub(owner=auto.repository_owner, repo=auto.repository,
                        unauthenticated_limit=10000).start()
    if name == "github-down-then-up":
        github.fail(r".", 503)
    return github


def run_scenario(plan: Plan, name: str, python: str, workdir: Path,
                 core_start_seconds: float) -> Scenario:
    began = time.monotonic()
    skipped = skip_reason(plan, name)
    if skipped:
        return Scenario(name, "skipped", skipped, 0.0, ())
    if plan.problems:
        return Scenario(name, "failed", plan.problems[0], 0.0, ())
    delay, problem = (slow_core_delay(plan.config, core_start_seconds,
                                      plan.source / HOME_CONFIG)
                      if name == "slow-core" else (0.0, None))
    if problem:
        return Scenario(name, "failed", problem, 0.0, ())
    root = workdir / name
    root.mkdir()
    downloads = plan.config.auto_install.enabled and not plan.preplaced
    github = start_github(plan, name) if downloads else None
    notes: List[str] = []
    events: List[Tuple[float, str]] = []
    try:
        stage = stage_home(plan, name, root, python, github.url if github else None, delay)
        notes = list(plan.notes) + stage.notes
        if delay:
            notes.append(f"core takes {delay:g}s to open its admin socket at every start "
                         f"(the limits allow {format_seconds(slow_core_window(plan.config))}; "
                         f"longer waits are checked by arithmetic)")
        if github is not None:
            version = WRONG_VERSION if name == "wrong-version-asset" else plan.tag
            asset = load_visor().asset_name(plan.config.auto_install.asset.name,
                                            load_visor().host_platform())
            github.add_release(plan.tag, {asset: release_archive(stage, plan, version)})
            events.append((time.time(), f"fake GitHub serves {plan.tag} ({asset})" +
                           (", answering 503 to everything for now"
                            if name == "github-down-then-up" else "")))
        problem, proof, driven = drive(plan, name, stage, python, github,
                                       time.monotonic() + scenario_deadline(plan, delay))
        events += driven
        timeline = tuple(f"note: {n}" for n in notes) + tuple(read_timeline(stage, events))
    except RehearsalError as e:
        problem, proof, timeline = str(e), "", tuple(notes)
    finally:
        kill_leftovers(root)
        if github is not None:
            github.close()
    seconds = time.monotonic() - began
    if problem:
        tail = read_text(root / "vegavisor.log").splitlines()[-40:]
        return Scenario(name, "failed", problem, seconds,
                        timeline + ("vegavisor's log (end):",) + tuple(tail))
    return Scenario(name, "passed", proof, seconds, timeline)


def slow_core_window(config: Any) -> float:
    return (config.max_first_connection_retries + 1) * config.poll_interval


def format_seconds(seconds: float) -> str:
    """3s, 350002s (4d 1h)."""
    if seconds < 3600:
        return f"{seconds:g}s"
    days, rest = divmod(int(seconds), 86400)
    return f"{seconds:.0f}s ({days}d {rest // 3600}h)" if days else \
        f"{seconds:.0f}s ({rest // 3600}h)"


def log_time(match: "re.Match[str]") -> float:
    return calendar.timegm(time.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S")) \
        + int(match.group(2)) / 1000


def read_timeline(stage: Stage, extra: List[Tuple[float, str]]) -> List[str]:
    """Each step with its time since vegavisor started, from its log and the record."""
    events = list(extra)
    for line in read_text(stage.log).splitlines():
        match = LOG_LINE.match(line)
        if not match:
            continue
        message = match.group(4)
        for pattern, words in REHEARSAL_MILESTONES:
            found = re.search(pattern, message)
            if found:
                facts = {key: log_value(message, key)
                         for key in ("command", "argv", "seconds", "error")}
                events.append((log_time(match), words.format(
                    *(g.strip('"') for g in found.groups()), **facts)))
                break
        else:
            if match.group(3) == "ERROR":
                events.append((log_time(match), f"vegavisor error: {message[:300]}"))
    for record in read_record(stage.record):
        words = RECORD_MILESTONES.get(record.get("event", ""))
        if words and record.get("role") == "core":
            events.append((record.get("time", 0.0), words.format_map(
                collections.defaultdict(str, record))))
    origin = min((t for t, _ in events), default=0.0)
    return [f"{t - origin:8.3f}s  {words}" for t, words in sorted(events, key=lambda e: e[0])]


def write_junit(path: Path, home: Path, scenarios: Sequence[Scenario], seconds: float) -> None:
    import xml.etree.ElementTree as ET
    suite = ET.Element("testsuite", {
        "name": f"vegavisor upgrade rehearsal of {home}",
        "tests": str(len(scenarios)),
        "failures": str(sum(s.status == "failed" for s in scenarios)),
        "errors": "0",
        "skipped": str(sum(s.status == "skipped" for s in scenarios)),
        "time": f"{seconds:.3f}",
    })
    for scenario in scenarios:
        case = ET.SubElement(suite, "testcase", {
            "classname": "simulate_upgrade", "name": scenario.name,
            "time": f"{scenario.seconds:.3f}"})
        if scenario.status == "failed":
            failure = ET.SubElement(case, "failure", {"message": scenario.message})
            failure.text = "\n".join(scenario.timeline)
        elif scenario.status == "skipped":
            ET.SubElement(case, "skipped", {"message": scenario.message})
        if scenario.timeline:
            ET.SubElement(case, "system-out").text = "\n".join(scenario.timeline)
    ET.ElementTree(suite).write(str(path), encoding="utf-8", xml_declaration=True)


def print_scenario(scenario: Scenario, shown: set) -> None:
    """The scenario's timeline (a note already printed for an earlier one is left out)
    and its PASS, FAIL or SKIP line."""
    word = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP"}[scenario.status]
    if scenario.timeline:
        print(f"-- {scenario.name}")
        for line in scenario.timeline:
            if line not in shown:
                print(f"  {line}")
            if line.startswith("note: "):
                shown.add(line)
    print(f"{word} {scenario.name} ({scenario.seconds:.1f}s): {scenario.message}", flush=True)


def run_scenarios(plan: Plan, names: Sequence[str], python: str, workdir: Path,
                  core_start_seconds: float, jobs: int,
                  report: Callable[[Scenario], None]) -> List[Scenario]:
    """Up to `jobs` scenarios at once, each in a thread (a scenario mostly waits on its
    processes). report() gets each in the order of names, once it and every one before
    it have ended: the output reads as if they had run one after the other."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=jobs,
                                                 thread_name_prefix="scenario")
    futures: List[Any] = []
    scenarios: List[Scenario] = []
    try:
        for name in names:
            futures.append(pool.submit(run_scenario, plan, name, python, workdir,
                                       core_start_seconds))
        for future in futures:
            scenarios.append(future.result())
            report(scenarios[-1])
    except BaseException:  # Ctrl-C, or a scenario that raised: none may outlive us
        stop_scenarios(futures, workdir)
        raise
    finally:
        pool.shutdown(wait=True)
    return scenarios


def stop_scenarios(futures: Sequence[Any], workdir: Path) -> None:
    """Cancel the scenarios not started yet and kill the processes of those running
    until each has returned (a dead vegavisor ends its scenario's waits at once)."""
    for future in futures:
        future.cancel()
    while not all(future.done() for future in futures):
        try:
            kill_leftovers(workdir)
            concurrent.futures.wait(futures, timeout=STOP_SWEEP_SECONDS)
        except KeyboardInterrupt:
            pass  # a second Ctrl-C: still stopping, which takes a second or two


def rehearse(home: Path, to: Optional[str], names: Sequence[str], junit: Optional[Path],
             python: str, keep: bool, core_start_seconds: float,
             run_hooks: bool = False, jobs: int = DEFAULT_JOBS) -> int:
    began = time.monotonic()
    scenarios: List[Scenario] = []
    shown: set = set()
    try:
        plan: Optional[Plan] = read_plan(home, to, run_hooks)
    except RehearsalError as e:
        plan = None
        scenarios = [Scenario(name, "failed", str(e), 0.0, ()) for name in names]
        for scenario in scenarios:
            print_scenario(scenario, shown)
    if plan is not None:
        mode = (f"the release pre-placed in HOME/{plan.target}" if plan.preplaced
                else "auto-install from a fake GitHub" if plan.config.auto_install.enabled
                else f"auto-install off: the release placed in HOME/{plan.target}")
        print(f"rehearsing {home}: {plan.current} ({plan.old}) -> {plan.tag} ({mode}); "
              f"{len(names)} scenario(s)", flush=True)
        workdir = Path(tempfile.mkdtemp(prefix="vegavisor-rehearse-", dir="/tmp"))
        try:
            scenarios = run_scenarios(plan, names, python, workdir, core_start_seconds, jobs,
                                      lambda scenario: print_scenario(scenario, shown))
        finally:
            if keep:
                print(f"kept {workdir}")
            else:
                shutil.rmtree(workdir, ignore_errors=True)
    seconds = time.monotonic() - began
    if junit is not None:
        write_junit(junit, home, scenarios, seconds)
    counts = {status: sum(s.status == status for s in scenarios)
              for status in ("passed", "failed", "skipped")}
    print(f"\n{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} "
          f"skipped in {seconds:.1f}s" + (f"; JUnit report: {junit}" if junit else ""))
    return 1 if counts["failed"] else 0


def job_count(text: str) -> int:
    """--jobs: a whole number of scenarios, at least one."""
    try:
        jobs = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if jobs < 1:
        raise argparse.ArgumentTypeError(f"{jobs} would run no scenario: give 1 or more")
    return jobs


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter that runs vegavisor.py (default: this one)")
    parser.add_argument("--home", type=Path, metavar="H",
                        help="rehearse the upgrade of this home (never written) instead")
    parser.add_argument("--to", metavar="TAG", help="the release to upgrade to (default: the "
                        "one pre-placed in H, else a made-up next minor version)")
    parser.add_argument("--scenario", action="append", choices=SCENARIOS, metavar="NAME",
                        help="run only this scenario (repeatable): " + ", ".join(SCENARIOS))
    parser.add_argument("--junit", type=Path, metavar="FILE", help="write a JUnit XML report")
    parser.add_argument("--core-start-seconds", type=float, default=DEFAULT_CORE_START_SECONDS,
                        metavar="S", help="how long your core may take to open its admin "
                        "socket; slow-core fails when the retry limits allow less "
                        f"(default: {DEFAULT_CORE_START_SECONDS:g})")
    parser.add_argument("--run-hooks", action="store_true",
                        help="run H's [hooks] programs (default: a stand-in for each says "
                        "it would have run; they are the validator host's, not CI's)")
    parser.add_argument("--jobs", type=job_count, metavar="N",
                        help="run up to N scenarios at once, reported in scenario order; "
                        "they mostly wait, so --jobs 6 takes about the longest one's time, "
                        f"not the sum (default: {DEFAULT_JOBS}, one after the other: a small "
                        "CI runner may have no core to spare, and the scenarios' timing "
                        "margins assume one; with --run-hooks, your hooks may run side by "
                        "side)")
    args = parser.parse_args(argv)
    if args.home is None:
        for flag in ("to", "scenario", "junit", "jobs"):
            if getattr(args, flag) is not None:
                parser.error(f"--{flag} needs --home")
    handlers = {number: signal.signal(number, stop_as_on_ctrl_c) for number in STOP_SIGNALS}
    try:
        return run(args)
    except KeyboardInterrupt as stop:
        number = int(stop.args[0]) if stop.args else int(signal.SIGINT)
        print(f"{Path(__file__).name}: stopped by {signal.Signals(number).name}: the processes "
              f"it started are stopped" + ("" if args.keep else
                                           " and its temporary folder removed"),
              file=sys.stderr)
        return 128 + number
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)


def stop_as_on_ctrl_c(number: int, frame: Any) -> None:
    """SIGTERM (a CI job cancelled or timed out) or SIGHUP (the terminal gone): the same
    clean-up as Ctrl-C. Left to their defaults, they ended the script at once and left
    vegavisor running the scenarios, with their fake cores, for good."""
    raise KeyboardInterrupt(number)


def run(args: argparse.Namespace) -> int:
    if args.home is not None:
        return rehearse(args.home.resolve(), args.to, args.scenario or SCENARIOS, args.junit,
                        args.python, args.keep, args.core_start_seconds, args.run_hooks,
                        args.jobs or DEFAULT_JOBS)
    # Unix socket paths are short: the folder lives directly under /tmp.
    workdir = Path(tempfile.mkdtemp(prefix="vegavisor-sim-", dir="/tmp"))
    try:
        return simulate(args.python, workdir)
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
