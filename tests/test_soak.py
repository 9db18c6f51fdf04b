"""scripts/soak.py: a short soak through its command line, and its checker on records
that break an invariant (the checker must be able to fail)."""
from __future__ import annotations

import importlib.util
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from conftest import stop_mid_run
from conftest import wait_for

SOAK = ROOT / "scripts" / "soak.py"


def load_soak():
    spec = importlib.util.spec_from_file_location("soak", SOAK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_soak(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SOAK)] + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)


def start(pid: int, version: str, when: float, snapshot=None, upgrade_height=None) -> dict:
    upgrade = {"tag": "v%d" % (int(version[1:]) + 1), "upgrade_height": upgrade_height} \
        if upgrade_height else None
    return {"event": "start", "role": "core", "pid": pid, "version": version, "time": when,
            "snapshot_height": snapshot, "upgrade": upgrade}


def event(name: str, pid: int, version: str, when: float, **facts) -> dict:
    return dict({"event": name, "role": "core", "pid": pid, "version": version, "time": when},
                **facts)


def write_record(path: Path, events) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


# --- the soak itself ---

@pytest.mark.timeout(90)
def test_a_short_soak_with_kills_crashes_and_github_faults_holds_every_invariant(tmp_path):
    report = tmp_path / "report.json"
    done = run_soak("--upgrades", "3", "--seed", "7", "--kill-rate", "1", "--crash-rate", "1",
                    "--github-fault-rate", "1", "--report", str(report))
    assert done.returncode == 0, done.stdout
    lines = done.stdout.splitlines()
    assert lines[0].startswith(
        "soak: 3 upgrades v1 -> v4, seed 7 (`python3 scripts/soak.py --upgrades 3 --seed 7 "
        "--kill-rate 1 --crash-rate 1 --github-fault-rate 1 --core-stop-delay 0.5` replays "
        "the choices), home /tmp/vv-soak-")
    upgrades = [line for line in lines if line.startswith("upgrade ")]
    assert [line.split()[1:5] for line in upgrades] == [
        ["1", "v1", "->", "v2"], ["2", "v2", "->", "v3"], ["3", "v3", "->", "v4"]]
    assert all(line.endswith("  ok") for line in upgrades), done.stdout
    assert sum("kill -9 visor" in line for line in upgrades) >= 1, done.stdout
    assert sum("core crash" in line for line in upgrades) >= 1, done.stdout
    summary = lines[-1]
    assert summary.startswith("summary: upgrades done 3/3 (v1 -> v4), kills ")
    assert summary.endswith("seed 7, invariant violations = 0")
    figures = json.loads(report.read_text())
    assert figures["upgrades_done"] == 3 and figures["invariant_violations"] == 0
    assert figures["kills"] >= 1 and figures["crashes"] >= 1
    assert figures["max_cores_alive"] == 1 and figures["proc_scans"] > 100
    assert [u["to"] for u in figures["per_upgrade"]] == ["v2", "v3", "v4"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_soak_stopped_by_a_signal_leaves_no_process_and_keeps_its_folder(sig):
    """A cancelled CI job sends SIGTERM, a closed terminal SIGHUP: they ended the soak at
    once, and vegavisor and its core ran on for good."""
    soak = subprocess.Popen([sys.executable, str(SOAK), "--upgrades", "3", "--seed", "7"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stopped = stop_mid_run(soak, sig, levels=1, processes=2)
    assert stopped.code == 128 + sig, stopped.out + stopped.err
    assert stopped.err == (f"soak.py: stopped by {sig.name}: no process it started is left; "
                           f"its folder is kept to look at\n")
    assert stopped.out.splitlines()[-1] == f"kept {stopped.folder}"
    assert stopped.left == []


@pytest.mark.timeout(30)
def test_the_same_seed_makes_the_same_choices():
    soak = load_soak()
    rates = {"kill": 0.5, "crash": 0.5, "github": 0.5}
    first = soak.make_plans(soak.random.Random(11), 20, rates)
    assert first == soak.make_plans(soak.random.Random(11), 20, rates)
    assert first != soak.make_plans(soak.random.Random(12), 20, rates)
    assert {p.source for p in first} == {"github", "placed"}


# --- the checker can fail ---

@pytest.mark.timeout(30)
def test_the_checker_reports_two_cores_alive_at_once_and_exits_1(tmp_path):
    record = write_record(tmp_path / "record.jsonl", [
        start(101, "v1", 100.0, upgrade_height=40),
        start(102, "v2", 103.0, snapshot=40, upgrade_height=80),
        event("rpc", 101, "v1", 105.0),  # the old core still answered after v2 started
    ])
    done = run_soak("--check-record", str(record))
    assert done.returncode == 1, done.stdout
    assert done.stdout == (
        "violation: two cores alive at once: pid 101 (v1) was alive 2.000s after pid 102 (v2) "
        "started\n2 core lives, invariant violations = 1\n")


@pytest.mark.timeout(30)
def test_the_checker_passes_cores_one_after_another(tmp_path):
    record = write_record(tmp_path / "record.jsonl", [
        start(101, "v1", 100.0, upgrade_height=40),
        event("rpc", 101, "v1", 101.0),
        start(103, "v1", 101.5, upgrade_height=40),  # a crash restart
        event("sigterm", 103, "v1", 102.0),
        start(104, "v2", 102.5, snapshot=40, upgrade_height=80),
        event("crash", 104, "v2", 102.6),  # before it answered: the snapshot again
        start(105, "v2", 102.8, snapshot=40, upgrade_height=80),
        event("rpc", 105, "v2", 103.0, status=200),
        event("exit", 105, "v2", 104.0),
        start(106, "v2", 104.5, upgrade_height=40),  # answered once: as configured
        event("exit", 106, "v2", 105.0),
    ])
    done = run_soak("--check-record", str(record))
    assert (done.returncode, done.stdout) == (0, "5 core lives, invariant violations = 0\n")


V1 = [start(101, "v1", 100.0, upgrade_height=40), event("exit", 101, "v1", 101.0)]
V2 = [start(102, "v2", 102.0, snapshot=40, upgrade_height=80), event("exit", 102, "v2", 103.0)]


@pytest.mark.parametrize("events, expected", [
    (V1 + [start(102, "v3", 102.0, snapshot=40)],
     "core v3 (pid 102) started after v1: versions must step up by one"),
    (V1 + [start(102, "v2", 102.0)],
     "core v2 (pid 102) started with snapshot height None before v2 ever answered, not the "
     "upgrade block 40"),
    (V1 + V2 + [start(103, "v2", 104.0, snapshot=None, upgrade_height=40)],
     "core v2 (pid 103) started with snapshot height None before v2 ever answered, not the "
     "upgrade block 40"),
    (V1 + V2 + [start(103, "v1", 104.0)],
     "core v1 (pid 103) started after v2: versions must step up by one"),
], ids=["skips-a-version", "forgets-the-snapshot", "restart-forgets-the-snapshot", "goes-back"])
@pytest.mark.timeout(30)
def test_the_checker_reports_a_wrong_version_step(tmp_path, events, expected):
    record = write_record(tmp_path / "record.jsonl", events)
    done = run_soak("--check-record", str(record))
    assert done.returncode == 1
    assert done.stdout.splitlines()[0] == f"violation: {expected}"


@pytest.mark.timeout(30)
def test_a_proc_scan_finds_two_cores_under_the_soak_folder(tmp_path):
    soak = load_soak()
    marker = str(tmp_path)
    sleeper = [sys.executable, "-c", "import time; time.sleep(30)", "node", marker]
    procs = [subprocess.Popen(sleeper) for _ in range(2)]
    other = subprocess.Popen(sleeper[:3] + ["version", marker])  # a version query: no core
    try:
        found = wait_for(lambda: len(soak.live_cores(marker.encode())) == 2 and
                         soak.live_cores(marker.encode()), 10, "two cores in /proc")
        assert sorted(found) == sorted(p.pid for p in procs)
        with soak.Sampler(tmp_path, tmp_path) as sampler:
            wait_for(lambda: sampler.violations, 10, "the sampler's report")
        assert re.match(r"/proc scan saw 2 cores alive at once: \d+: ", sampler.violations[0])
    finally:
        for proc in procs + [other]:
            proc.kill()
            proc.wait()


# --- the fake core's chain of upgrades, which the soak plays ---

@pytest.mark.parametrize("version, expected", [
    ("v1", "v2"), ("v9", "v10"), ("v0.73.9", "v0.73.10"), ("v1.0.0-rc1", "v1.0.0-rc2")])
def test_the_next_version_counts_up_the_last_number(version, expected):
    from fakes.core import next_version
    assert next_version(version) == expected


@pytest.mark.parametrize("start_height, accept_after, expected", [
    (0, 0, (0, 40)), (40, 0, (40, 80)), (39, 5, (40, 40)), (41, 2, (43, 80))])
def test_the_chain_schedules_the_next_multiple_above_the_start(start_height, accept_after,
                                                                 expected):
    from fakes import core
    script = core.chain_upgrade_script(40, start_height, accept_after, 0.0)
    assert (script.tag, script.accept_height, script.upgrade_height) == (
        core.next_version(core.VERSION),) + expected


@pytest.mark.timeout(30)
def test_the_chain_does_not_mix_with_a_scripted_tag(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "fakes" / "core.py"), "node",
                           "--admin-socket", str(tmp_path / "s"), "--upgrade-every", "40",
                           "--upgrade-tag", "v9"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=20)
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == ("core.py: error: --upgrade-every plays a chain: no "
                                            "--upgrade-tag or --upgrade-height")


@pytest.mark.timeout(30)
def test_the_committed_soak_report_is_a_default_run_that_held_every_invariant():
    figures = json.loads((ROOT / "scripts" / "soak-report.json").read_text())
    assert (figures["upgrades"], figures["upgrades_done"]) == (20, 20)
    assert (figures["invariant_violations"], figures["violations"]) == (0, [])
    assert figures["max_cores_alive"] == 1
    assert figures["kills"] > 0 and figures["crashes"] > 0 and figures["github_spells"] > 0
    assert [u["result"] for u in figures["per_upgrade"]] == ["ok"] * 20
