"""Crash points: visor SIGKILLed at each step of an upgrade, then started again.

Each row kills a real `vegavisor.py run` at one step (live, by waiting for that step's
journal entry, log line or file), or, where the step lasts microseconds, constructs
exactly what a SIGKILL there leaves on disk. A new `run` on the same home must then
end on v2: the v2 core started from the upgrade snapshot, `current` -> v2, a complete
v2 folder, no staging folder, the journal "done" once v2 answered, and never two
cores (nor two data nodes) alive at once, which a thread checks every ~5 ms in /proc.

The helpers it shares with the other matrices (the /proc monitor, the end-state check)
are in conftest.py.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any
from typing import Callable
from typing import Dict
from typing import List
from typing import Optional

import pytest

import vegavisor
from conftest import Ctx
from conftest import HEIGHT
from conftest import LATE_HEIGHT
from conftest import LATE_UPGRADE
from conftest import Row
from conftest import SLOW
from conftest import SNAPSHOT_FLAG
from conftest import UPGRADE
from conftest import V2_ARGS
from conftest import alive
from conftest import assert_v2_end_state
from conftest import core_starts
from conftest import dead_pid
from conftest import host_asset_name
from conftest import install_elf_version
from conftest import journal
from conftest import kill_visor
from conftest import point_current
from conftest import rows
from conftest import serve_v2
from conftest import stop_visor
from conftest import use_github
from conftest import wait_for
from conftest import write_journal

def live_ready_seen(ctx: Ctx) -> None:
    home = ctx.home
    home.set_config(stopDelaySeconds=3)
    serve_v2(ctx.github, ctx.tmp)
    use_github(home, ctx.github, prefetch=False)
    home.install_version("genesis", "v1", UPGRADE, data_node=True)
    ctx.data_node = True
    visor = ctx.start_visor()
    wait_for(lambda: journal(home).get("step") == "ready", 15, f"step ready:\n{visor.log()}")
    kill_visor(visor)
    assert not (home.path / "v2").exists()


def live_ready_seen_prefetched(ctx: Ctx) -> None:
    home = ctx.home
    home.set_config(stopDelaySeconds=3)
    serve_v2(ctx.github, ctx.tmp)
    use_github(home, ctx.github)  # prefetch on: staged long before the block
    home.install_version("genesis", "v1", LATE_UPGRADE)
    ctx.height = LATE_HEIGHT
    visor = ctx.start_visor()
    visor.wait_log("prefetched tag=v2")
    wait_for(lambda: journal(home).get("step") == "ready", 15, f"step ready:\n{visor.log()}")
    kill_visor(visor)
    assert os.readlink(home.path / "current") == "genesis"


def live_sigterm_sent(ctx: Ctx, elf: bool = False) -> None:
    home = ctx.home
    home.set_config(stopSignalTimeoutSeconds=3)
    if elf:
        install_elf_version(home, "genesis", "v1", UPGRADE + ["--ignore-sigterm"])
    else:
        home.install_version("genesis", "v1", UPGRADE + ["--ignore-sigterm"])
    home.install_version("v2", "v2", V2_ARGS)
    visor = ctx.start_visor()
    match = visor.wait_log(r"stopping role=core pid=(\d+) version=v1 signal=SIGTERM")
    assert journal(home).get("step") == "ready"
    kill_visor(visor)
    ctx.facts["leftover"] = int(match.group(1))
    assert alive(ctx.facts["leftover"]), "v1 ignores SIGTERM, PDEATHSIG's too"


def check_leftover_stopped_first(ctx: Ctx, visor) -> None:
    pid = ctx.facts["leftover"]
    log = visor.log()
    line = f'stopping a child left by an earlier vegavisor role="recorded core" pid={pid} '
    assert line in log, log
    assert log.index(line) < log.index("INFO  started role=core"), log
    assert not alive(pid)
    killed = [r for r in ctx.home.records("sigterm") if r["pid"] == pid]
    assert killed and all(r["action"] == "ignore" for r in killed)


def live_leftover_child(ctx: Ctx, elf: bool = False) -> None:
    home = ctx.home
    home.set_config(stopSignalTimeoutSeconds=1)
    if elf:
        install_elf_version(home, "genesis", "v1", LATE_UPGRADE + ["--ignore-sigterm"])
    else:
        home.install_version("genesis", "v1", LATE_UPGRADE + ["--ignore-sigterm"])
    home.install_version("v2", "v2", V2_ARGS)
    ctx.height = LATE_HEIGHT
    visor = ctx.start_visor()
    visor.wait_log("admin socket answering")
    [start] = core_starts(home, "v1")
    kill_visor(visor)
    assert journal(home) == {}, "killed before the block"
    ctx.facts["leftover"] = start["pid"]
    assert alive(start["pid"])


def live_mid_download(ctx: Ctx) -> None:
    home = ctx.home
    data = serve_v2(ctx.github, ctx.tmp)
    ctx.github.slow(r"^/objects/", **SLOW)
    use_github(home, ctx.github, prefetch=False)
    home.install_version("genesis", "v1", UPGRADE)
    visor = ctx.start_visor()
    # The zip is created when the download starts and written as the body comes in.
    [partial] = wait_for(lambda: list(home.path.glob(".staging-v2-*/*.zip")), 20,
                         "a download under way")
    kill_visor(visor)
    assert journal(home)["step"] == "stopped"
    assert partial.stat().st_size < len(data), "killed mid-download"
    assert not [r for r in ctx.github.requests if r.path.startswith("/objects/")
                and r.bytes_sent == len(data)], "the body was not all sent"
    ctx.facts["staging"] = partial.parent


def check_stale_staging_removed(ctx: Ctx, visor) -> None:
    assert not ctx.facts["staging"].exists()


def live_mid_prefetch(ctx: Ctx) -> None:
    home = ctx.home
    data = serve_v2(ctx.github, ctx.tmp)
    ctx.github.slow(r"^/objects/", **SLOW)
    use_github(home, ctx.github)
    home.install_version("genesis", "v1", LATE_UPGRADE)
    ctx.height = LATE_HEIGHT
    visor = ctx.start_visor()
    [partial] = wait_for(lambda: list(home.path.glob(".staging-v2-*/*.zip")), 20,
                         "a prefetch under way")
    kill_visor(visor)
    assert journal(home) == {}, "killed before the block"
    assert partial.stat().st_size < len(data)
    ctx.facts["staging"] = partial.parent


def staged_by_dead_visor(ctx: Ctx, zip_bytes: Optional[int], binary_bytes: Optional[int],
                         run_config: bool) -> Path:
    """A .staging-v2-<dead pid>-<nonce> folder as install_release leaves it when killed."""
    home = ctx.home
    data = serve_v2(ctx.github, ctx.tmp)
    use_github(home, ctx.github, prefetch=False)
    home.install_version("genesis", "v1", UPGRADE)
    write_journal(home, "stopped")
    import vegavisor
    folder = vegavisor.make_staging(home.path, "v2", home.path / "v2", pid=dead_pid())
    (folder / host_asset_name()).write_bytes(data[:zip_bytes])
    if binary_bytes is not None or run_config:
        home.install_version(f"{folder.name}/release", "v2", V2_ARGS)
        binary = folder / "release" / "vega"
        binary.write_bytes(binary.read_bytes()[:binary_bytes])
        if not run_config:
            (folder / "release" / "run-config.toml").unlink()
    ctx.facts["staging"] = folder
    return folder


def built_downloaded_not_unpacked(ctx: Ctx) -> None:
    staged_by_dead_visor(ctx, zip_bytes=None, binary_bytes=None, run_config=False)


def built_mid_unpack(ctx: Ctx) -> None:
    staged_by_dead_visor(ctx, zip_bytes=None, binary_bytes=5000, run_config=False)


def built_staged_not_renamed(ctx: Ctx) -> None:
    staged_by_dead_visor(ctx, zip_bytes=None, binary_bytes=None, run_config=True)


def built_renamed_not_journaled(ctx: Ctx) -> None:
    home = ctx.home
    home.install_version("genesis", "v1", UPGRADE)
    home.install_version("v2", "v2", V2_ARGS)
    write_journal(home, "stopped")


def built_installed_not_switched(ctx: Ctx) -> None:
    built_renamed_not_journaled(ctx)
    write_journal(ctx.home, "installed")


def built_switched_not_started(ctx: Ctx) -> None:
    built_renamed_not_journaled(ctx)
    point_current(ctx.home, "v2")
    write_journal(ctx.home, "switched")


def live_started(ctx: Ctx) -> None:
    home = ctx.home
    home.install_version("genesis", "v1", UPGRADE)
    # v2's admin socket opens 1.5 s after it starts: the journal stays at "started".
    home.install_version("v2", "v2", V2_ARGS + ["--socket-delay", "1.5"])
    visor = ctx.start_visor()
    wait_for(lambda: journal(home).get("step") == "started", 15, f"step started:\n{visor.log()}")
    wait_for(lambda: core_starts(home, "v2"), 10, "the v2 core's first line of life")
    kill_visor(visor)
    assert journal(home)["step"] == "started"


def built_started_not_recorded(ctx: Ctx) -> None:
    """Killed between forking the v2 core and recording its pid: .run-state.json holds
    only the marker of the child about to start (written before the fork, also in the
    child's environment as VEGAVISOR_CHILD); the core got PDEATHSIG's
    SIGTERM and takes 3 s to shut down, as a real core saving its state."""
    home = ctx.home
    home.install_version("genesis", "v1", UPGRADE)
    home.install_version("v2", "v2", V2_ARGS + ["--stop-delay", "3"])
    point_current(home, "v2")
    write_journal(home, "switched")
    argv = [str(home.path / "current" / "vega")] \
        + home.core_args(V2_ARGS + ["--stop-delay", "3"]) + [SNAPSHOT_FLAG, str(HEIGHT)]
    marker = "999999.1.123.000000"  # recorded before the fork, in the child's environment
    (home.path / ".run-state.json").write_text(json.dumps(
        {"pid": 999999, "phase": "starting", "children": [], "starting": [marker]}))
    env = dict(os.environ, **{vegavisor.CHILD_MARKER_VARIABLE: marker})
    core = subprocess.Popen(argv, stdout=subprocess.DEVNULL, start_new_session=True, env=env)
    ctx.own.append(core)
    # Its parent (visor) was killed: init reaps it when it exits. This test is its parent
    # here, so a thread reaps it, or its zombie would keep its process group alive.
    threading.Thread(target=core.wait, daemon=True).start()
    wait_for(lambda: [r for r in home.records("socket-listening") if r["pid"] == core.pid],
             10, "the orphaned v2 core's socket")
    core.send_signal(signal.SIGTERM)
    wait_for(lambda: [r for r in home.records("sigterm") if r["pid"] == core.pid], 10,
             "the orphaned core noting PDEATHSIG's SIGTERM")
    ctx.facts["orphan"] = core


def built_pid_reused(ctx: Ctx, same_argv: bool) -> None:
    home = ctx.home
    home.install_version("genesis", "v1", UPGRADE)
    home.install_version("v2", "v2", V2_ARGS)
    write_journal(home, "ready")
    sleeper = subprocess.Popen(["sleep", "60"])
    ctx.own.append(sleeper)
    start_time = int(Path(f"/proc/{sleeper.pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    if same_argv:  # the very argv recorded, but the pid was reused: another start time
        child = {"role": "core", "pid": sleeper.pid, "argv": ["sleep", "60"],
                 "startTime": start_time - 100}
    else:  # a reused pid always has another start time; the argv is a core's
        child = {"role": "core", "pid": sleeper.pid, "startTime": start_time - 100,
                 "argv": [str(home.path / "current" / "vega")] + home.core_args(UPGRADE)}
    state = {"pid": dead_pid(), "phase": "upgrading", "version": "v1",
             "folder": str(home.path / "genesis"), "children": [child]}
    (home.path / ".run-state.json").write_text(json.dumps(state) + "\n")
    ctx.facts["sleeper"] = sleeper


def check_unrelated_process_untouched(ctx: Ctx, visor) -> None:
    assert ctx.facts["sleeper"].poll() is None, "the unrelated process is alive"
    assert "stopping a child left by an earlier vegavisor" not in visor.log()


END = ("end state: the v2 core started with `--snapshot.load-from-block-height {h}`, "
       "`current` -> v2, v2 folder complete, no `.staging-*`, journal `done` once v2 "
       "answered, never two cores alive at once")
RESUME = "the restarted visor logs `resuming upgrade tag=v2 height={h} step={step}`; "

FAULTS = [
    Row("crash points", "ready-seen",
        "live: SIGKILL once the journal says `ready` (visor held there by stopDelaySeconds "
        "= 3), with a data node; v2 not yet downloaded (prefetch off)",
        RESUME.format(h=HEIGHT, step="ready") + "downloads v2 and starts core and data node; "
        + END.format(h=HEIGHT) + ", nor two data nodes",
        (live_ready_seen, None)),
    Row("crash points", "ready-seen-prefetched",
        "live: SIGKILL at journal `ready` after a prefetch staged v2 (block at height 30)",
        RESUME.format(h=LATE_HEIGHT, step="ready") + "checks the staged v2 and uses it; "
        + END.format(h=LATE_HEIGHT),
        (live_ready_seen_prefetched, None)),
    Row("crash points", "sigterm-sent",
        "live: SIGKILL while visor waits for v1 to obey SIGTERM (v1 --ignore-sigterm, "
        "stopSignalTimeoutSeconds = 3): v1 survives PDEATHSIG",
        "the restarted visor logs `stopping a child left by an earlier vegavisor "
        "role=\"recorded core\" pid=<v1>`, kills it (SIGTERM, 3 s, SIGKILL) and only then "
        "starts v2; "
        + END.format(h=HEIGHT),
        (live_sigterm_sent, check_leftover_stopped_first)),
    Row("crash points", "sigterm-sent-elf-binary",
        "live: as `sigterm-sent`, but v1's run-config starts core through an ELF binary "
        "(the python interpreter, the fake core script its first argument), so "
        "`/proc/<pid>/cmdline` equals the recorded argv as for a real vega",
        "the restarted visor logs `stopping a child left by an earlier vegavisor "
        "role=\"recorded core\" pid=<v1>`, kills it and only then starts v2; "
        + END.format(h=HEIGHT),
        (lambda ctx: live_sigterm_sent(ctx, elf=True), check_leftover_stopped_first)),
    Row("crash points", "leftover-child-alive",
        "live: SIGKILL while v1 runs before the block; v1 --ignore-sigterm survives "
        "PDEATHSIG's SIGTERM",
        "the restarted visor logs `stopping a child left by an earlier vegavisor`, kills "
        "it before starting any core, runs v1 again and upgrades at the block; "
        + END.format(h=LATE_HEIGHT),
        (live_leftover_child, check_leftover_stopped_first)),
    Row("crash points", "leftover-child-alive-elf-binary",
        "live: as `leftover-child-alive`, v1 started through an ELF binary (cmdline equals "
        "the recorded argv)",
        "the restarted visor stops the leftover before starting any core, then upgrades "
        "at the block; " + END.format(h=LATE_HEIGHT),
        (lambda ctx: live_leftover_child(ctx, elf=True), check_leftover_stopped_first)),
    Row("crash points", "mid-download",
        "live: SIGKILL mid-download at the block (prefetch off, the fake GitHub sends the "
        "zip 1 KB per 0.2 s): a partial zip in `.staging-v2-<pid>/`",
        "the restarted visor removes the dead pid's staging folder, resumes at step "
        "`stopped` and downloads v2 again; " + END.format(h=HEIGHT),
        (live_mid_download, check_stale_staging_removed)),
    Row("crash points", "mid-prefetch",
        "live: SIGKILL mid-prefetch, before the block (block at height 30): a partial zip "
        "in `.staging-v2-<pid>/`, no journal",
        "the restarted visor removes the stale staging folder, runs v1, prefetches again "
        "and upgrades at the block; " + END.format(h=LATE_HEIGHT),
        (live_mid_prefetch, check_stale_staging_removed)),
    Row("crash points", "downloaded-not-unpacked",
        "constructed: `.staging-v2-<dead pid>/` holding the complete zip and an empty "
        "`release/`, journal `stopped`, `current` -> genesis, no v1 running",
        RESUME.format(h=HEIGHT, step="stopped") + "the staging folder is removed and v2 "
        "downloaded again; " + END.format(h=HEIGHT),
        (built_downloaded_not_unpacked, check_stale_staging_removed)),
    Row("crash points", "mid-unpack",
        "constructed: `.staging-v2-<dead pid>/` with the zip and a truncated "
        "`release/vega` (5000 bytes), no run-config, journal `stopped`",
        "the half-unpacked binary is never run nor moved into place: the staging folder "
        "is removed and v2 installed again; " + END.format(h=HEIGHT),
        (built_mid_unpack, check_stale_staging_removed)),
    Row("crash points", "staged-not-renamed",
        "constructed: `.staging-v2-<dead pid>/release/` complete (binary and "
        "run-config.toml) but not renamed to `v2/`, journal `stopped`",
        "the staging folder is removed and v2 installed again; " + END.format(h=HEIGHT),
        (built_staged_not_renamed, check_stale_staging_removed)),
    Row("crash points", "renamed-not-journaled",
        "constructed: `HOME/v2` complete (renamed into place), journal still `stopped`, "
        "`current` -> genesis",
        RESUME.format(h=HEIGHT, step="stopped") + "uses the folder after checking its "
        "binary's version; " + END.format(h=HEIGHT),
        (built_renamed_not_journaled, None)),
    Row("crash points", "renamed-not-switched",
        "constructed: `HOME/v2` complete, journal `installed`, `current` -> genesis",
        RESUME.format(h=HEIGHT, step="installed") + "checks the version and switches; "
        + END.format(h=HEIGHT),
        (built_installed_not_switched, None)),
    Row("crash points", "switched-not-started",
        "constructed: `current` -> v2, journal `switched`, no core running",
        RESUME.format(h=HEIGHT, step="switched") + "starts v2 from the snapshot, not as a "
        "plain restart; " + END.format(h=HEIGHT),
        (built_switched_not_started, None)),
    Row("crash points", "started",
        "live: SIGKILL right after the v2 core started, before it answered (its socket "
        "opens 1.5 s late), journal `started`",
        RESUME.format(h=HEIGHT, step="started") + "starts v2 again from the snapshot; "
        + END.format(h=HEIGHT),
        (live_started, None)),
    Row("crash points", "started-not-recorded",
        "constructed: SIGKILL between forking the v2 core and recording its pid "
        "(`.run-state.json` names only the `VEGAVISOR_CHILD` marker in the environment "
        "of the child being started); that core got "
        "PDEATHSIG's SIGTERM and takes 3 s to stop (`--stop-delay 3`, as a real core "
        "saving its state)",
        "the restarted visor does not start a second core while the first is still alive; "
        + END.format(h=HEIGHT),
        (built_started_not_recorded, None)),
    Row("crash points", "stale-run-state-pid-reused",
        "constructed: `.run-state.json` names a core child (argv `HOME/current/vega ...`) "
        "whose pid now belongs to an unrelated `sleep 60` (another argv, another start "
        "time), journal `ready`",
        "the unrelated process is not signalled (no `stopping a child left` line); "
        + END.format(h=HEIGHT),
        (lambda ctx: built_pid_reused(ctx, same_argv=False), check_unrelated_process_untouched)),
    Row("crash points", "stale-run-state-same-argv",
        "constructed: `.run-state.json` names pid and argv of a running `sleep 60` but "
        "another start time (a reused pid), journal `ready`",
        "the process is not signalled: pid and argv alone do not name it; "
        + END.format(h=HEIGHT),
        (lambda ctx: built_pid_reused(ctx, same_argv=True), check_unrelated_process_untouched)),
]

BUGS: Dict[str, str] = {}  # row id -> "BUG: ..." for a row that shows a known bug


def params() -> List[Any]:
    return [pytest.param(*p.values, id=p.id, marks=pytest.mark.xfail(strict=True,
                                                                     reason=BUGS[p.id]))
            if p.id in BUGS else p for p in rows(FAULTS)]


@pytest.mark.parametrize(("row", "kill", "check"), params())
@pytest.mark.timeout(60)
def test_crash_point(row: Row, kill: Callable[[Ctx], None],
                     check: Optional[Callable[[Ctx, Any], None]],
                     home, start_visor, github, short_tmp, monitor) -> None:
    ctx = Ctx(home, start_visor, github, short_tmp, monitor)
    try:
        # 1. the first visor dies at the step (or its remains are built on disk)
        kill(ctx)
        # 2. a new `run` on the same home
        v1_starts, left = len(core_starts(home, "v1")), journal(home).get("step")
        visor = start_visor()
        assert_v2_end_state(home, visor, monitor, height=ctx.height, data_node=ctx.data_node)
        if left:  # killed past the block: the upgrade is finished, v1 never runs again
            assert f"WARN  resuming upgrade tag=v2 height={ctx.height} step={left}" \
                in visor.log(), visor.log()
            assert len(core_starts(home, "v1")) == v1_starts, "v1 ran past the upgrade block"
        else:  # killed before the block: v1 runs again and upgrades at the block
            assert "resuming upgrade" not in visor.log()
            assert len(core_starts(home, "v1")) == v1_starts + 1
        if check is not None:
            check(ctx, visor)
        stop_visor(visor)
    finally:
        for process in ctx.own:
            if process.poll() is None:
                process.kill()
            process.wait()
