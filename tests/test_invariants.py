"""SPEC 3.3 as a state machine: hypothesis drives the supervisor in-process (conftest's
FakeWorld: fake clock, processes, admin answers and installs) through random sequences
of admin answers, crashes, installs that fail or lie, operators replacing folders and
signals, and checks the invariants after every step the supervisor takes."""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import List
from typing import Optional

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine
from hypothesis.stateful import initialize
from hypothesis.stateful import invariant
from hypothesis.stateful import precondition
from hypothesis.stateful import rule

import vegavisor
from conftest import FakeWorld
from conftest import make_fake_home
from conftest import run_in_process
from conftest import write_fake_binary
from conftest import write_run_config

TAGS = ["v2", "v3", "", "v1", "..", "v2/../x"]
RELEASES = ["v2", "v3"]
STEP_SECONDS = 5.0  # how long the supervisor may run between two rules (fake time)
MAX_INSTALLS_AN_HOUR = 25


class Supervised(RuleBasedStateMachine):
    """The supervisor runs in a thread, one wait at a time: a rule changes the world,
    then lets it run until it waits again (or exits)."""

    @initialize(prefetch=st.booleans(), data_node=st.booleans(),
                prepared=st.sampled_from(["none", "v2", "v3"]))
    def start(self, prefetch: bool, data_node: bool, prepared: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="vv-inv-"))
        self.home = make_fake_home(
            self.root, "maxNumberOfRestarts = 3\nrestartsDelaySeconds = 1\n"
            "maxNumberOfRestartConnectionRetries = 5\nprefetchRetryDelaySeconds = 1\n"
            f"[autoInstall]\nenabled = true\nprefetch = {str(prefetch).lower()}\n",
            data_node=data_node)
        if prepared != "none":
            write_run_config(self.home / prepared, prepared, data_node=data_node)
            write_fake_binary(self.home / prepared / "vega", prepared)
        self.status = vegavisor.UpgradeStatus(False, "", 0)
        self.failing = False
        self.world = FakeWorld(self.home, self.answer, max_seconds=10**7)
        self.world.releases.update(v2="v2", v3="v3")
        self.complete = set()  # release folders seen complete: never deleted
        self.corrupted = set()  # folders whose binary reports another version
        self.procs_checked = 0  # world.procs[:procs_checked] were checked (check)
        self.go, self.back = threading.Semaphore(0), threading.Semaphore(0)
        self.done = threading.Event()
        self.code: Optional[int] = None
        self.log = ""
        self.violations: List[str] = []
        self.target = 0.0  # the supervisor runs on, without a hand-over, until this time
        self.world.on_step = self.pause
        self.thread = threading.Thread(target=self.supervise, daemon=True)
        self.thread.start()
        self.run_until(STEP_SECONDS)

    # the supervisor's thread
    def supervise(self) -> None:
        self.go.acquire()  # lockstep: the supervisor runs only while the test waits
        try:
            self.code, self.log = run_in_process(self.home, self.world)
        except BaseException as e:  # an escape is itself a violation
            self.violations.append(f"run raised {type(e).__name__}: {e}")
        finally:
            self.done.set()
            self.back.release()

    def pause(self, world: FakeWorld) -> None:
        self.check(during=True)
        if world.clock < self.target:  # the test thread waits for the target time anyway
            return
        self.back.release()
        self.go.acquire()

    def answer(self, world: FakeWorld) -> vegavisor.UpgradeStatus:
        if self.failing or world.live("core") is None:
            raise vegavisor.AdminError("no answer")
        return self.status

    # the test's thread
    def run_until(self, seconds: float) -> None:
        self.target = target = self.world.clock + seconds
        while not self.done.is_set() and self.world.clock < target:
            self.go.release()
            assert self.back.acquire(timeout=10), "the supervisor neither waits nor exits"

    @rule(ready=st.booleans(), tag=st.sampled_from(TAGS), height=st.integers(0, 2000))
    def core_answers(self, ready: bool, tag: str, height: int) -> None:
        self.failing = False
        self.status = vegavisor.UpgradeStatus(ready, tag, height)
        self.run_until(STEP_SECONDS)

    @rule(tag=st.sampled_from(RELEASES), height=st.integers(1, 2000))
    def upgrade_block_reached(self, tag: str, height: int) -> None:
        self.failing = False
        self.status = vegavisor.UpgradeStatus(False, tag, height)
        self.run_until(STEP_SECONDS)
        self.status = vegavisor.UpgradeStatus(True, tag, height)
        self.run_until(STEP_SECONDS)

    @rule()
    def core_answers_null(self) -> None:
        self.failing = False
        self.status = vegavisor.UpgradeStatus(False, "", 0)
        self.run_until(STEP_SECONDS)

    @rule()
    def core_stops_answering(self) -> None:
        self.failing = True
        self.run_until(STEP_SECONDS)

    @rule(role=st.sampled_from(["core", "data node"]), code=st.sampled_from([0, 1, -11]))
    def child_exits(self, role: str, code: int) -> None:
        child = self.world.live(role)
        if child is not None:
            child.exit(code)
        self.run_until(STEP_SECONDS)

    @rule(tag=st.sampled_from(["v2", "v3"]), outcome=st.sampled_from(["ok", "fail", "lie"]))
    def github_changes(self, tag: str, outcome: str) -> None:
        self.world.releases[tag] = {"ok": tag, "fail": None, "lie": "v9"}[outcome]
        self.run_until(STEP_SECONDS)

    @rule(tag=st.sampled_from(["v2", "v3"]))
    def operator_replaces_a_binary(self, tag: str) -> None:
        folder = self.home / tag
        if (folder / "run-config.toml").is_file():
            write_fake_binary(folder / "vega", "v9")
            self.corrupted.add(str(folder))
        self.run_until(STEP_SECONDS)

    @rule(seconds=st.sampled_from([1.0, 30.0, 400.0]))
    def time_passes(self, seconds: float) -> None:
        self.run_until(seconds)

    @precondition(lambda self: not self.done.is_set())
    @rule(sig=st.sampled_from(["SIGTERM", "SIGINT"]))
    def visor_is_stopped(self, sig: str) -> None:
        self.world.stop_signal = sig
        self.run_until(60)
        assert self.done.is_set(), "a stop signal ends run within the grace"
        assert self.code == 0, self.log

    # the invariants (SPEC 3.3), after every step the supervisor took
    def check(self, during: bool = False) -> None:
        """Runs at every wait (tens of thousands a run): one scandir of home and one stat
        a subfolder, strings rather than Paths, and each spawned child looked at once."""
        world = self.world
        try:
            world.live("core")
            world.live("data node")
        except AssertionError as e:
            self.violations.append(str(e))
        seen = set()  # complete now: a real folder (not a symlink) with a run-config file
        with os.scandir(self.home) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False) \
                        and os.path.isfile(os.path.join(entry.path, "run-config.toml")):
                    seen.add(entry.path)
        self.complete |= seen
        for folder in self.complete - seen:  # gone, or replaced by a symlink
            if not os.path.isfile(os.path.join(folder, "run-config.toml")):
                self.violations.append(f"a complete release folder was deleted: {folder}")
        # a child's argv and version never change: look at each once, when it is new
        for proc in world.procs[self.procs_checked:]:
            # at the block (or resuming it) the binary started reports the tag (3.3.3)
            if "--snapshot.load-from-block-height" in proc.argv and proc.version == "v9":
                self.violations.append(f"a binary reporting v9 was started at the block: "
                                       f"{proc.argv}")
        self.procs_checked = len(world.procs)
        installs = [t for t, _ in world.installs if t > world.clock - 3600]
        if len(installs) > MAX_INSTALLS_AN_HOUR:
            self.violations.append(f"{len(installs)} installs in an hour")

    @invariant()
    def invariants_hold(self) -> None:
        self.check()
        assert not self.violations, self.violations
        assert "unexpected" not in self.log, self.log
        if self.done.is_set():
            assert self.code in (0, 1, 2), self.code
            assert all(p.gone() for p in self.world.procs), "exit left a child running"
            state = vegavisor.read_record(self.home / ".run-state.json", vegavisor.RunState)[0]
            assert state is not None and state.children == () and state.ended, state

    def teardown(self) -> None:
        if not self.done.is_set():
            self.world.stop_signal = "SIGTERM"
            self.run_until(120)
        shutil.rmtree(self.root, ignore_errors=True)


Supervised.TestCase.settings = settings(max_examples=100, stateful_step_count=30,
                                        deadline=None)
test_the_invariants_hold_after_every_step = Supervised.TestCase
