"""Signals: SIGTERM or SIGINT to `vegavisor.py run` at each kind of moment.

Each row brings visor to a moment (running, downloading at the block, prefetching,
pausing before the stop, stopping the node, backing off), sends the signal and checks:
exit 0 promptly, `vegavisor stopped signal=...`, no `.staging-*`, no half-written
folder, no child left running; and when an upgrade had begun, that a new `run` on the
same home finishes it (v2 from the snapshot, `current` -> v2, journal `done`).
"""
from __future__ import annotations

import signal
import time
from typing import Any
from typing import Callable
from typing import Dict
from typing import List
from typing import Optional

import pytest

from conftest import BLOCKS
from conftest import Ctx
from conftest import HEIGHT
from conftest import LATE_HEIGHT
from conftest import LATE_UPGRADE
from conftest import Row
from conftest import SLOW
from conftest import UPGRADE
from conftest import V2_ARGS
from conftest import assert_complete_folder
from conftest import assert_v2_end_state
from conftest import core_starts
from conftest import journal
from conftest import live_processes
from conftest import rows
from conftest import serve_v2
from conftest import staging
from conftest import stop_visor
from conftest import use_github
from conftest import wait_for


def running(ctx: Ctx) -> Any:
    ctx.home.install_version("genesis", "v1", BLOCKS)
    visor = ctx.start_visor()
    visor.wait_log("admin socket answering")
    return visor


def downloading_at_block(ctx: Ctx) -> Any:
    serve_v2(ctx.github, ctx.tmp)
    ctx.github.slow(r"^/objects/", **SLOW)
    use_github(ctx.home, ctx.github, prefetch=False)
    ctx.home.install_version("genesis", "v1", UPGRADE)
    visor = ctx.start_visor()
    wait_for(lambda: list(ctx.home.path.glob(".staging-v2-*/*.zip")), 20, "a download")
    return visor


def prefetching(ctx: Ctx) -> Any:
    serve_v2(ctx.github, ctx.tmp)
    ctx.github.slow(r"^/objects/", **SLOW)
    use_github(ctx.home, ctx.github)
    ctx.home.install_version("genesis", "v1", LATE_UPGRADE)
    ctx.height = LATE_HEIGHT
    visor = ctx.start_visor()
    wait_for(lambda: list(ctx.home.path.glob(".staging-v2-*/*.zip")), 20, "a prefetch")
    assert journal(ctx.home) == {}, "before the block"
    return visor


def stalled(ctx: Ctx, prefetch: bool) -> Any:
    """A download whose body stops after 2000 bytes (httpTimeoutSeconds = 15)."""
    serve_v2(ctx.github, ctx.tmp)
    ctx.github.slow(r"^/objects/", stall_after=2000, times=1)
    use_github(ctx.home, ctx.github, prefetch=prefetch, httpTimeoutSeconds=15)
    ctx.home.install_version("genesis", "v1", LATE_UPGRADE if prefetch else UPGRADE)
    ctx.height = LATE_HEIGHT if prefetch else HEIGHT
    visor = ctx.start_visor()
    wait_for(lambda: [r for r in ctx.github.requests if r.path.startswith("/repos/")
                      and "/assets/" in r.path], 20, "the redirect to the bytes")
    wait_for(lambda: list(ctx.home.path.glob(".staging-v2-*/*.zip")), 20, "a download")
    return visor


def stalled_at_block(ctx: Ctx) -> Any:
    return stalled(ctx, prefetch=False)


def stalled_prefetch(ctx: Ctx) -> Any:
    return stalled(ctx, prefetch=True)


def pausing_before_stop(ctx: Ctx) -> Any:
    ctx.home.set_config(stopDelaySeconds=10)
    ctx.home.install_version("genesis", "v1", UPGRADE)
    ctx.home.install_version("v2", "v2", V2_ARGS)
    visor = ctx.start_visor()
    wait_for(lambda: journal(ctx.home).get("step") == "ready", 15, "the journal's step ready")
    return visor


def stopping_at_block(ctx: Ctx) -> Any:
    ctx.home.set_config(stopSignalTimeoutSeconds=2)
    ctx.home.install_version("genesis", "v1", UPGRADE + ["--ignore-sigterm"])
    ctx.home.install_version("v2", "v2", V2_ARGS)
    visor = ctx.start_visor()
    visor.wait_log(r"stopping role=core pid=\d+ version=v1 signal=SIGTERM")
    return visor


def stopping_on_shutdown(ctx: Ctx) -> Any:
    ctx.home.set_config(stopSignalTimeoutSeconds=5)
    ctx.home.install_version("genesis", "v1", BLOCKS + ["--stop-delay", "1.5"])
    visor = ctx.start_visor()
    visor.wait_log("admin socket answering")
    visor.signal(signal.SIGTERM)
    visor.wait_log(r"stopping role=core pid=\d+ version=v1 signal=SIGTERM")
    wait_for(lambda: ctx.home.records("sigterm"), 10, "the node noting SIGTERM")
    return visor


def stopping_after_a_crash(ctx: Ctx) -> Any:
    ctx.home.set_config(stopSignalTimeoutSeconds=5)
    ctx.home.install_version("genesis", "v1", BLOCKS + ["--stop-delay", "1.5"], data_node=True,
                             data_node_args=["--crash-after", "0.5"])
    visor = ctx.start_visor()
    visor.wait_log(r"stopping role=core pid=\d+ version=v1 signal=SIGTERM")
    return visor


def backing_off(ctx: Ctx) -> Any:
    ctx.home.set_config(restartsDelaySeconds=10, restartsBackoffMaxSeconds=10)
    ctx.home.install_version("genesis", "v1", BLOCKS + ["--crash-at-height", "2"])
    visor = ctx.start_visor()
    visor.wait_log("restarting delay=10")
    return visor


def retrying_install(ctx: Ctx) -> Any:
    ctx.home.set_config(restartsDelaySeconds=10, restartsBackoffMaxSeconds=10)
    serve_v2(ctx.github, ctx.tmp)
    ctx.github.fail(r"^/objects/", 500, times=1)
    use_github(ctx.home, ctx.github, prefetch=False)
    ctx.home.install_version("genesis", "v1", UPGRADE)
    visor = ctx.start_visor()
    visor.wait_log(r"ERROR install failed tag=v2 attempt=1 limit=\d+ retry_in=10(\.0)? ")
    return visor


CLEAN = ("exit 0 within {s} s, `vegavisor stopped signal={sig}`, no `.staging-*`, no "
         "half-written folder, no child left running")
RESUMES = ("; journal `{step}`: the next `run` finishes the upgrade (v2 from "
           "`--snapshot.load-from-block-height {h}`, `current` -> v2, journal `done`)")


def row(id: str, fault: str, moment: Callable[[Ctx], Any], sig: signal.Signals,
        within: float, step: Optional[str] = None, extra: str = "") -> Row:
    """A row: bring visor to `moment`, send `sig`, expect a clean exit within `within` s;
    `step` is the journal step left (an upgrade had begun), then a restart finishes it."""
    first = "SIGTERM" if moment is stopping_on_shutdown else sig.name
    expected = CLEAN.format(s=within, sig=first) + extra
    if step == "none":
        expected += "; no journal (the upgrade had not begun): the next `run` carries on " \
                    "and upgrades at the block"
    elif step:
        expected += RESUMES.format(step=step, h=HEIGHT)
    return Row("signals", id, f"{sig.name} {fault}", expected, (moment, sig, within, step))


FAULTS = [
    row("running-sigterm", "while the node runs", running, signal.SIGTERM, 5,
        extra="; core got SIGTERM and exited 0"),
    row("running-sigint", "while the node runs", running, signal.SIGINT, 5,
        extra="; core got SIGTERM (not the SIGINT) and exited 0"),
    row("download-at-block-sigterm", "while downloading v2 at the block (prefetch off, "
        "slow download)", downloading_at_block, signal.SIGTERM, 5, step="stopped",
        extra="; the download is cancelled, no `v2/`"),
    row("download-at-block-sigint", "while downloading v2 at the block (prefetch off, "
        "slow download)", downloading_at_block, signal.SIGINT, 5, step="stopped",
        extra="; the download is cancelled, no `v2/`"),
    row("prefetch-sigterm", "while prefetching v2 before the block (slow download)",
        prefetching, signal.SIGTERM, 5, step="none",
        extra="; the prefetch is cancelled, no `v2/`"),
    row("prefetch-sigint", "while prefetching v2 before the block (slow download)",
        prefetching, signal.SIGINT, 5, step="none",
        extra="; the prefetch is cancelled, no `v2/`"),
    row("download-stalled-at-block-sigterm", "while a download at the block has stalled "
        "(the fake GitHub sent 2000 bytes, then nothing; httpTimeoutSeconds = 15)",
        stalled_at_block, signal.SIGTERM, 3, step="stopped",
        extra="; the download is cancelled, no `v2/`"),
    row("prefetch-stalled-sigterm", "while a prefetch download has stalled (2000 bytes, "
        "then nothing; httpTimeoutSeconds = 15)", stalled_prefetch, signal.SIGTERM, 3,
        step="none", extra="; the prefetch is cancelled, no `v2/`"),
    row("stop-delay-sigterm", "during stopDelaySeconds = 10 after ReadyToUpgrade",
        pausing_before_stop, signal.SIGTERM, 5, step="stopped",
        extra="; the pause ends at once, the node is stopped"),
    row("stopping-at-block-sigterm", "while stopping the node at the block (v1 "
        "--ignore-sigterm, stopSignalTimeoutSeconds = 2)", stopping_at_block, signal.SIGTERM,
        6, step="stopped", extra="; v1 is SIGKILLed after the grace"),
    row("stopping-at-block-sigint", "while stopping the node at the block (v1 "
        "--ignore-sigterm, stopSignalTimeoutSeconds = 2)", stopping_at_block, signal.SIGINT,
        6, step="stopped", extra="; v1 is SIGKILLed after the grace"),
    row("stopping-on-shutdown-sigint", "(a second signal) while the node takes 1.5 s to "
        "stop after visor's SIGTERM (--stop-delay 1.5, grace 5 s)", stopping_on_shutdown,
        signal.SIGINT, 5, extra="; the node finishes its own shutdown (exit 0, no SIGKILL)"),
    row("stopping-after-crash-sigterm", "while stopping core after the data node crashed "
        "(core --stop-delay 1.5)", stopping_after_a_crash, signal.SIGTERM, 5,
        extra="; nothing is restarted"),
    row("restart-backoff-sigterm", "during a crash restart's 10 s backoff", backing_off,
        signal.SIGTERM, 3, extra="; nothing is restarted"),
    row("install-retry-sigterm", "during the 10 s wait before retrying a failed download "
        "at the block (HTTP 500)", retrying_install, signal.SIGTERM, 3, step="stopped"),
]


BUGS: Dict[str, str] = {}  # row id -> "BUG: ..." for a row that shows a known bug


def params() -> List[Any]:
    return [pytest.param(*p.values, id=p.id, marks=pytest.mark.xfail(strict=True,
                                                                     reason=BUGS[p.id]))
            if p.id in BUGS else p for p in rows(FAULTS)]


@pytest.mark.parametrize(("row", "moment", "sig", "within", "step"), params())
@pytest.mark.timeout(60)
def test_signal(row: Row, moment: Callable[[Ctx], Any], sig: signal.Signals, within: float,
                step: Optional[str], home, start_visor, github, short_tmp, monitor) -> None:
    ctx = Ctx(home, start_visor, github, short_tmp, monitor)
    visor = moment(ctx)
    cores = len(core_starts(home))
    sent = time.monotonic()
    visor.signal(sig)
    assert visor.wait_exit(within + 2) == 0, visor.log()
    took = time.monotonic() - sent
    print(f"exit took {took:.2f}s")
    assert took <= within, f"exit took {took:.2f}s; log:\n{visor.log()}"
    log = visor.log()
    first = "SIGTERM" if moment is stopping_on_shutdown else sig.name  # the first one wins
    assert log.strip().splitlines()[-1].endswith(f"vegavisor stopped signal={first}"), log
    assert "Traceback" not in log, log
    assert staging(home) == []
    v2 = home.path / "v2"
    if v2.exists():
        assert_complete_folder(v2, "v2")
    elif moment in (downloading_at_block, prefetching, stalled_at_block, stalled_prefetch):
        assert not v2.exists()
    wait_for(lambda: not live_processes(home.root), 10,
             f"no child left running; still: {live_processes(home.root)}")
    assert len(core_starts(home)) == cores, "nothing started after the signal"
    check_children(row.id, home, log)
    monitor.assert_never_two(log)
    if step == "none":
        assert journal(home) == {}
    elif step:
        assert journal(home)["step"] == step and journal(home)["tag"] == "v2"
    if step:
        # 2. the next run finishes (or carries on with) the upgrade
        again = start_visor()
        assert_v2_end_state(home, again, monitor, height=ctx.height)
        stop_visor(again)


def check_children(row_id: str, home, log: str) -> None:
    """What the children went through, as their --record files tell it."""
    exits = home.records("exit", role="core")
    if row_id.startswith("running"):
        assert [r["action"] for r in home.records("sigterm")] == ["stop"]
        assert [(r["code"], r["reason"]) for r in exits] == [(0, "signal")]
    if row_id == "stopping-on-shutdown-sigint":
        assert [(r["code"], r["reason"]) for r in exits] == [(0, "signal")]
        assert "killing" not in log
    if row_id.startswith("stopping-at-block"):
        assert "killing role=core" in log and 'status="terminated by SIGKILL"' in log
    if row_id in ("stopping-after-crash-sigterm", "restart-backoff-sigterm"):
        assert len(home.records("start", role="core")) == 1
