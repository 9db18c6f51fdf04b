#!/usr/bin/env python3
"""Simulate a Vega protocol upgrade end to end, with no Vega and no internet.

Builds a release zip whose `vega` is the fake core reporting v2, serves it from
the fake GitHub on 127.0.0.1, makes a temporary home running fake core v1 with a
data node and an upgrade to v2 scheduled a few seconds ahead, runs
`vegavisor.py run` on it, and prints the timeline of the upgrade. Exits 0 once
core and data node are back on v2 and visor stopped cleanly, 1 otherwise.

    python3 scripts/simulate_upgrade.py [--keep] [--python PYTHON]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import List
from typing import Optional
from typing import Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fakes.core import make_binary  # noqa: E402
from fakes.github import FakeGitHub  # noqa: E402

OLD, NEW = "v1", "v2"
BLOCK_SECONDS = 0.1
ACCEPT_HEIGHT, UPGRADE_HEIGHT = 10, 40  # accepted after 1 s, upgrade block after 4 s
DEADLINE_SECONDS = 60

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
            finally:
                if visor.poll() is None:
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


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter that runs vegavisor.py (default: this one)")
    args = parser.parse_args(argv)
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
