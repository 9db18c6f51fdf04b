"""scripts/simulate_upgrade.py: the README's first command (a whole upgrade simulated
with the fakes), and `--home H`, the rehearsal of an operator's own upgrade.

The rehearsal is run as an operator's CI job runs it, on homes written here by hand
as a Vega Visor operator has them (GO_VISOR_CONFIG, a run-config with a real core's
args and an admin socket in /tmp, `current` pointing at the validator's own path).
What is asserted is what the operator sees: the exit code, the PASS/FAIL/SKIP lines
naming the key to fix, the timeline, the JUnit report, and a home left as it was.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict
from typing import List
from typing import NamedTuple
from typing import Optional

import pytest

from conftest import GO_VISOR_CONFIG
from conftest import ROOT
from conftest import make_fake_home
from conftest import snapshot
from conftest import stop_mid_run

SCRIPT = ROOT / "scripts" / "simulate_upgrade.py"
SCENARIOS = ["plain", "slow-core", "crash-before-block", "github-down-then-up",
             "kill-visor-mid-upgrade", "wrong-version-asset"]
# A validator's run-config, as an operator fills in the Go Visor's template: the real
# core's flags (which the fake core must accept), an admin socket in /tmp that a
# running node may be using, and a data node run by the same binary.
OPERATOR_RUN_CONFIG = """\
name = "{name}"

[vega]
  [vega.binary]
    path = "vega"
    args = ["node", "--home", "/home/vega/.vega", "--tendermint-home", "/home/vega/.tm",
            "--nodewallet-passphrase-file", "/home/vega/.passphrase"]
  [vega.rpc]
    socketPath = "{socket}"
    httpPath = "/rpc"

[data_node]
  [data_node.binary]
    path = "{data_node_path}"
    args = ["datanode", "start", "--home", "/home/vega/.data-node"]
"""
GENESIS, NEXT = "v0.78.7", "v0.79.0"


def write_operator_home(root: Path, config: str = GO_VISOR_CONFIG,
                        data_node_path: str = "vega") -> Path:
    """A copy of a validator's Go Visor home, as an operator keeps it in a CI repository:
    config files, a placeholder for the binary, and `current` naming the validator's path."""
    home = root / "my-home"
    (home / "genesis").mkdir(parents=True)
    (home / "config.toml").write_text(config)
    (home / "genesis" / "run-config.toml").write_text(OPERATOR_RUN_CONFIG.format(
        name=GENESIS, socket=str(root / "vega.sock"), data_node_path=data_node_path))
    (home / "genesis" / "vega").write_text("the real binary is not needed\n")
    os.symlink("/home/vega/vegavisor/genesis", home / "current")
    return home


def preplace(home: Path, folder: str, name: str) -> None:
    """The next release installed by hand, as an operator does with auto-install off."""
    (home / folder).mkdir()
    text = (home / "genesis" / "run-config.toml").read_text().replace(GENESIS, name)
    (home / folder / "run-config.toml").write_text(text)
    (home / folder / "vega").write_text("the real binary is not needed\n")


class Rehearsal(NamedTuple):
    code: int
    out: str
    err: str
    cases: Dict[str, ET.Element]  # testcase name -> element
    suite: Optional[ET.Element]

    def line(self, word: str, scenario: str) -> str:
        """The PASS/FAIL/SKIP line of a scenario."""
        return next(line for line in self.out.splitlines()
                    if line.startswith(f"{word} {scenario} "))


def rehearse(home: Path, *args: str, timeout: float = 150) -> Rehearsal:
    report = home.parent / "report.xml"
    done = subprocess.run([sys.executable, str(SCRIPT), "--home", str(home),
                           "--junit", str(report)] + list(args),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=timeout)
    suite = ET.parse(str(report)).getroot() if report.exists() else None
    cases = {case.get("name"): case for case in suite.iter("testcase")} if suite is not None \
        else {}
    return Rehearsal(done.returncode, done.stdout, done.stderr, cases, suite)


def scenario_args(*names: str) -> List[str]:
    return [arg for name in names for arg in ("--scenario", name)]


@pytest.mark.timeout(120)
def test_simulate_upgrade_brings_core_and_data_node_back_on_v2():
    done = subprocess.run([sys.executable, str(SCRIPT)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=110)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    # With prefetch on (the default) the release is staged long before the block.
    order = ["upgrade to v2 accepted for block 40", "v2 downloaded", "v2 installed",
             "core ready to upgrade at block 40", "core genesis stopped", "current -> ",
             "core v2 up", "data node v2 up", "vegavisor stopped cleanly"]
    positions = [next(i for i, line in enumerate(lines) if words in line) for words in order]
    assert positions == sorted(positions), done.stdout
    assert lines[-1].startswith("OK: core and data node upgraded from v1 to v2; current -> v2")


# --- a Go Visor home through every scenario (one run, many checks) ---

@pytest.mark.timeout(150)
def test_a_go_visor_home_is_rehearsed_through_every_scenario(tmp_path):
    """One rehearsal, the six scenarios at once (--jobs 6: about the longest one's time,
    not the sum), checked five ways: one test, so that it runs once whichever worker runs
    it (a module fixture would run again on each worker)."""
    root = Path(os.path.realpath(tmp_path))
    home = write_operator_home(root)
    before = snapshot(home)
    full_rehearsal = root, home, before, rehearse(home, "--jobs", "6", timeout=140)
    check_every_scenario_passes_with_a_junit_report(full_rehearsal)
    check_the_timeline_shows_each_step_of_the_upgrade_in_order(full_rehearsal)
    check_the_operators_home_is_never_written(full_rehearsal)
    check_the_fake_core_runs_with_the_operators_args(full_rehearsal)
    check_the_scenarios_ran_at_once(full_rehearsal)


def check_every_scenario_passes_with_a_junit_report(full_rehearsal):
    _, _, _, result = full_rehearsal
    assert result.code == 0, result.out + result.err
    suite = result.suite
    assert suite is not None and suite.tag == "testsuite"
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("6", "0", "0")
    assert list(result.cases) == SCENARIOS
    for name, case in result.cases.items():
        assert case.find("failure") is None and case.find("skipped") is None, name
        assert float(case.get("time")) > 0
        assert "vegavisor started" in case.find("system-out").text
        assert result.line("PASS", name)
    assert result.out.splitlines()[-1].startswith("6 passed, 0 failed, 0 skipped in ")


def check_the_timeline_shows_each_step_of_the_upgrade_in_order(full_rehearsal):
    _, _, _, result = full_rehearsal
    timeline = result.cases["plain"].find("system-out").text.splitlines()
    # The prefetch usually ends before the block, but on a loaded host it may end after it
    # (run waits for it there): each chain is in order, not the two against each other.
    for steps in [["vegavisor started", f"node: core {GENESIS} started",
                   f"upgrade to {NEXT} accepted for block", "upgrade block",
                   f"node stopped: core {GENESIS}", "current switched to",
                   f"node: core {NEXT} started",
                   f"upgrade to {NEXT} complete: the new core answers"],
                  [f"upgrade to {NEXT} accepted for block", f"release {NEXT} installed",
                   "current switched to"]]:
        positions = [next(i for i, line in enumerate(timeline) if step in line)
                     for step in steps]
        assert positions == sorted(positions), "\n".join(timeline)
    # every step has its time offset, in order
    offsets = [float(line.split("s  ", 1)[0]) for line in timeline if not line.startswith("note")]
    assert offsets == sorted(offsets)
    assert any("socketPath" in line and "outside the home" in line for line in timeline)
    kill = result.cases["kill-visor-mid-upgrade"].find("system-out").text
    assert "vegavisor killed with SIGKILL mid-upgrade" in kill
    assert "resumes the upgrade" in kill
    crash = result.cases["crash-before-block"].find("system-out").text
    assert "crashed at block" in crash and "node restarts in" in crash
    down = result.cases["github-down-then-up"].find("system-out").text
    assert "answered HTTP 503" in down and "fake GitHub up again" in down
    wrong = result.cases["wrong-version-asset"].find("system-out").text
    assert "reports version v0.0.0-wrong-asset" in wrong
    assert "node: core v0.0.0-wrong-asset" not in wrong


def check_the_operators_home_is_never_written(full_rehearsal):
    root, home, before, result = full_rehearsal
    assert snapshot(home) == before  # every file, link, mode and mtime
    assert not (root / "vega.sock").exists()  # the node's own socket is never touched


def check_the_fake_core_runs_with_the_operators_args(full_rehearsal):
    _, _, _, result = full_rehearsal
    timeline = result.cases["plain"].find("system-out").text.splitlines()
    operator_args = ("node --home /home/vega/.vega --tendermint-home /home/vega/.tm "
                     "--nodewallet-passphrase-file /home/vega/.passphrase")
    old = next(line for line in timeline if f"node: core {GENESIS} started: " in line)
    assert old.endswith("/current/vega " + operator_args)
    new = next(line for line in timeline if f"node: core {NEXT} started: " in line)
    assert new.endswith(operator_args + " --snapshot.load-from-block-height " +
                        new.rsplit(" ", 1)[1])
    data_node = next(line for line in timeline if f'node: data node {NEXT} started: ' in line)
    assert data_node.endswith("datanode start --home /home/vega/.data-node")
    assert f"core {NEXT} listening on" in "\n".join(timeline)


def check_the_scenarios_ran_at_once(full_rehearsal):
    _, _, _, result = full_rehearsal
    each = [float(case.get("time")) for case in result.cases.values()]
    # One after the other, the whole would take at least the sum.
    assert float(result.suite.get("time")) < sum(each) / 2, (result.suite.get("time"), each)


# --- --jobs: scenarios at once, reported in scenario order ---

@pytest.mark.timeout(90)
def test_scenarios_run_at_once_are_reported_in_scenario_order(tmp_path):
    """plain runs for seconds; slow-core, after it, fails at once (the retry limit is too
    short, by arithmetic): its result is known first, and still comes after plain's."""
    config = GO_VISOR_CONFIG.replace("maxNumberOfFirstConnectionRetries = 175000",
                                     "maxNumberOfFirstConnectionRetries = 3")
    home = write_operator_home(tmp_path, config)
    result = rehearse(home, "--jobs", "2", *scenario_args("plain", "slow-core"))
    assert result.code == 1, result.out + result.err
    lines = result.out.splitlines()
    heads = [i for i, line in enumerate(lines) if line.startswith(("-- ", "PASS ", "FAIL "))]
    assert [lines[i].split(" (")[0] for i in heads] == ["-- plain", "PASS plain",
                                                         "FAIL slow-core"], result.out
    plain = lines[heads[0] + 1:heads[1]]  # its timeline, whole, between its two lines
    assert plain and all(line.startswith("  ") for line in plain), result.out
    assert "vegavisor started" in "\n".join(plain)
    assert result.line("FAIL", "slow-core").startswith("FAIL slow-core (0.0s): ")
    assert float(result.cases["plain"].get("time")) > 1  # slow-core had long finished
    assert list(result.cases) == ["plain", "slow-core"]
    assert lines[-1].startswith("1 passed, 1 failed, 0 skipped in ")


@pytest.mark.timeout(90)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT],
                         ids=["SIGTERM", "SIGHUP", "SIGINT"])
def test_a_rehearsal_stopped_by_a_signal_leaves_no_process_nor_folder(tmp_path, sig):
    """A CI job cancelled or timed out sends SIGTERM; a closed terminal, SIGHUP. Left to
    their defaults, they ended the script at once, and vegavisor went on running the
    scenarios, with their fake cores, for good."""
    home = write_operator_home(tmp_path)
    script = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--home", str(home), "--jobs", "2"]
        + scenario_args("plain", "crash-before-block"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as a terminal's
    stopped = stop_mid_run(script, sig, levels=2, processes=3)
    assert stopped.code == 128 + sig, stopped.out + stopped.err
    assert stopped.err.splitlines()[-1] == (
        f"simulate_upgrade.py: stopped by {sig.name}: the processes it started are stopped "
        f"and its temporary folder removed")
    assert "Traceback" not in stopped.err
    assert stopped.left == []
    assert not stopped.kept


@pytest.mark.parametrize("args, says", [
    pytest.param(["--jobs", "0"], "argument --jobs: 0 would run no scenario: give 1 or more",
                 id="zero"),
    pytest.param(["--jobs", "-2"], "argument --jobs: -2 would run no scenario: give 1 or more",
                 id="negative"),
    pytest.param(["--jobs", "two"], "argument --jobs: 'two' is not a whole number",
                 id="a-word"),
    pytest.param(["--jobs=1.5"], "argument --jobs: '1.5' is not a whole number",
                 id="a-fraction"),
    pytest.param(["--jobs"], "argument --jobs: expected one argument", id="no-value"),
])
def test_a_jobs_value_that_is_no_count_of_scenarios_is_refused(capsys, args, says):
    with pytest.raises(SystemExit) as exited:
        load_script().main(["--home", "my-home"] + args)
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.endswith(f": error: {says}\n"), err


def test_jobs_without_home_is_refused(capsys):
    """--jobs is the rehearsal's; the built-in simulation has one scenario."""
    with pytest.raises(SystemExit) as exited:
        load_script().main(["--jobs", "2"])
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.endswith(": error: --jobs needs --home\n"), err


# --- homes with a mistake fail the matching scenario, naming the key ---

@pytest.mark.timeout(60)
def test_retry_limit_too_short_for_a_slow_core_fails_slow_core_naming_the_key(tmp_path):
    config = GO_VISOR_CONFIG.replace("maxNumberOfFirstConnectionRetries = 175000",
                                     "maxNumberOfFirstConnectionRetries = 3")
    home = write_operator_home(tmp_path, config)
    result = rehearse(home, *scenario_args("slow-core"))
    assert result.code == 1, result.out + result.err
    line = result.line("FAIL", "slow-core")
    assert "maxNumberOfFirstConnectionRetries = 3 gives core 8s" in line
    assert "raise maxNumberOfFirstConnectionRetries to at least 30" in line
    failure = result.cases["slow-core"].find("failure")
    assert "maxNumberOfFirstConnectionRetries" in failure.get("message")
    # a core allowed 2 minutes passes the same limit
    result = rehearse(home, "--core-start-seconds", "5", *scenario_args("slow-core"))
    assert result.code == 0, result.out + result.err
    assert "core takes 2s to open its admin socket" in result.out


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", ["mapped-away-from-the-release", "mapped-to-another-version",
                                  "mapped-to-the-running-version", "binary-path-missing"])
def test_wrong_folder_mapping_fails_naming_the_key(tmp_path, case):
    config = GO_VISOR_CONFIG
    if case == "mapped-away-from-the-release":  # pre-placed in v0.79.0, mapped to v0.79
        config = config.replace("enabled = true", "enabled = false").replace(
            '"vX.X.X" = "vX.X.X"', f'"{NEXT}" = "v0.79"')
        key = f'[upgradeFolders] "{NEXT}" = "v0.79", but the release {NEXT} is pre-placed'
    elif case == "mapped-to-another-version":
        config = config.replace('"vX.X.X" = "vX.X.X"', f'"{NEXT}" = "old"')
        key = f'[upgradeFolders] "{NEXT}" = "old" names a folder holding v0.77.0, not {NEXT}'
    elif case == "mapped-to-the-running-version":
        config = config.replace('"vX.X.X" = "vX.X.X"', f'"{NEXT}" = "genesis"')
        key = f'[upgradeFolders] "{NEXT}" = "genesis" is the folder of the running version'
    else:  # the Go Visor's `init --with-data-node` template, left as it was
        key = 'data_node.binary.path = "vega data-node"'
    home = write_operator_home(tmp_path, config, data_node_path="vega data-node"
                               if case == "binary-path-missing" else "vega")
    if case == "mapped-away-from-the-release":
        preplace(home, NEXT, NEXT)
    if case == "mapped-to-another-version":
        preplace(home, "old", "v0.77.0")
    before = snapshot(home)
    result = rehearse(home, *scenario_args("plain", "kill-visor-mid-upgrade"))
    assert result.code == 1, result.out + result.err
    for name in ("plain", "kill-visor-mid-upgrade"):
        assert key in result.line("FAIL", name)
        assert key in result.cases[name].find("failure").get("message")
    assert snapshot(home) == before


@pytest.mark.timeout(60)
def test_a_ci_copy_without_binaries_nor_hook_programs_is_rehearsed(tmp_path):
    """An operator's CI repository holds the config files, not the 100 MB binary; [hooks]
    name programs of the validator host (a backup, a pager): not on a CI machine, and not
    to be run by a rehearsal unless asked."""
    config = GO_VISOR_CONFIG + ('\n[hooks]\npreUpgrade = ["/nonexistent/backup", "--fast"]\n'
                                'postUpgrade = ["/nonexistent/page-me"]\n')
    home = write_operator_home(tmp_path, config)
    (home / "genesis" / "vega").unlink()
    result = rehearse(home, *scenario_args("plain"))
    assert result.code == 0, result.out + result.err
    assert f'{home}/genesis/run-config.toml: vega.binary.path = "vega": {home}/genesis/vega ' \
        f"is not in this copy of the home; the fake core takes its place" in result.out
    assert '[hooks] preUpgrade = ["/nonexistent/backup", "--fast"] is not run: a stand-in ' \
        'runs in its place' in result.out
    out = result.out
    assert out.index("preUpgrade hook finished") < out.index("current switched") \
        < out.index("postUpgrade hook finished")
    refused = rehearse(home, "--run-hooks", *scenario_args("plain"))
    assert refused.code == 1
    assert "hooks.preUpgrade" in refused.line("FAIL", "plain")


@pytest.mark.timeout(90)
def test_a_limit_vegavisor_gives_up_on_fails_the_scenario_with_its_words(tmp_path):
    """No retry of a failed install: GitHub down at the block is the end of the upgrade."""
    config = GO_VISOR_CONFIG.replace("maxNumberOfRestarts = 3", "maxNumberOfRestarts = 0")
    home = write_operator_home(tmp_path, config)
    result = rehearse(home, *scenario_args("github-down-then-up"))
    assert result.code == 1, result.out + result.err
    line = result.line("FAIL", "github-down-then-up")
    assert "vegavisor exited with status 1" in line and "maxNumberOfRestarts = 0" in line
    assert "giving up" in result.cases["github-down-then-up"].find("failure").text


# --- auto-install off: the release pre-placed; nothing to download ---

@pytest.mark.timeout(90)
def test_auto_install_off_skips_github_down_then_up_and_upgrades_from_the_folder(tmp_path):
    config = GO_VISOR_CONFIG.replace("enabled = true", "enabled = false")
    home = write_operator_home(tmp_path, config)
    preplace(home, NEXT, NEXT)
    result = rehearse(home, *scenario_args("github-down-then-up", "plain"))
    assert result.code == 0, result.out + result.err
    assert "auto-install is off" in result.line("SKIP", "github-down-then-up")
    skipped = result.cases["github-down-then-up"].find("skipped")
    assert skipped is not None and "auto-install is off" in skipped.get("message")
    assert result.suite.get("skipped") == "1" and result.suite.get("failures") == "0"
    assert f"{GENESIS}) -> {NEXT} (the release pre-placed in HOME/{NEXT})" in result.out
    assert result.line("PASS", "plain")
    assert result.out.splitlines()[-1].startswith("1 passed, 0 failed, 1 skipped")


@pytest.mark.timeout(90)
def test_conftest_fake_home_rehearses_to_a_made_up_next_version(short_tmp):
    """conftest's Go Visor home: no `current`, name "v1", the default TAG is v1.1.0."""
    home = make_fake_home(short_tmp, GO_VISOR_CONFIG, data_node=True)
    before = snapshot(home)
    result = rehearse(home, *scenario_args("plain"))
    assert result.code == 0, result.out + result.err
    assert "genesis (v1) -> v1.1.0 (auto-install from a fake GitHub)" in result.out
    assert "current is missing: vegavisor starts genesis" in result.out
    assert "upgraded to v1.1.0" in result.line("PASS", "plain")
    assert snapshot(home) == before


@pytest.mark.timeout(30)
def test_a_folder_that_is_no_home_fails_every_scenario_in_one_line(tmp_path):
    result = rehearse(tmp_path, *scenario_args("plain"))
    assert result.code == 1
    assert f"{tmp_path / 'config.toml'} does not exist" in result.line("FAIL", "plain")
    assert "Traceback" not in result.err


# --- the rehearsal's decisions, in-process ---

def load_script():
    import importlib.util
    spec = importlib.util.spec_from_file_location("simulate_upgrade", str(SCRIPT))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Limits(NamedTuple):
    max_first_connection_retries: int
    poll_interval: float


@pytest.mark.parametrize("retries, poll, start, waits, key_says", [
    pytest.param(175000, 2.0, 60, 2.0, None, id="go-visor-defaults-wait-capped"),
    pytest.param(30, 2.0, 60, 2.0, None, id="62s-window-minus-a-poll-is-enough"),
    pytest.param(29, 2.0, 60, 0.0, "at least 30", id="60s-window-minus-a-poll-is-not"),
    pytest.param(0, 0.5, 0.1, 0.0, "at least 2", id="one-poll-minus-the-1s-margin"),
    pytest.param(3, 0.5, 1.0, 1.0, None, id="short-limits-short-core-waits-what-they-allow"),
])
def test_slow_core_waits_what_the_limits_allow_or_names_the_key(retries, poll, start, waits,
                                                                  key_says):
    script = load_script()
    delay, problem = script.slow_core_delay(Limits(retries, poll), start, Path("H/config.toml"))
    assert delay == waits
    if key_says is None:
        assert problem is None
    else:
        assert problem.startswith(f"H/config.toml: maxNumberOfFirstConnectionRetries = {retries}")
        assert problem.endswith(f"raise maxNumberOfFirstConnectionRetries to {key_says}")


@pytest.mark.parametrize("text, table, expected", [
    pytest.param('[autoInstall]\n  enabled = true\n  [autoInstall.asset]\n    name = "x"\n',
                  "autoInstall",
                  '[autoInstall]\ngithubApiUrl = "U"\n  enabled = true\n'
                  '  [autoInstall.asset]\n    name = "x"\n', id="added-under-its-table"),
    pytest.param('[autoInstall]\nGithubApiURL = "https://api.github.com" # mirror\n',
                 "autoInstall", '[autoInstall]\ngithubApiUrl = "U"\n', id="replaced-any-case"),
    pytest.param('maxNumberOfRestarts = 3\n', "autoInstall",
                 'maxNumberOfRestarts = 3\n\n[autoInstall]\ngithubApiUrl = "U"\n',
                 id="table-appended"),
])
def test_config_copy_points_github_api_url_at_the_fake(text, table, expected):
    assert load_script().set_toml_key(text, table, "githubApiUrl", '"U"') == expected


@pytest.mark.parametrize("old, names, expected", [
    pytest.param("v0.78.7", {}, "v0.79.0", id="made-up-next-minor"),
    pytest.param("v1", {}, "v1.1.0", id="major-only"),
    pytest.param("genesis", {}, "v0.1.0", id="no-number"),
    pytest.param("v0.78.7", {"v0.79.1": "v0.79.1", "old": "v0.77.0", "vX.X.X": "vX.X.X"},
                 "v0.79.1", id="the-newer-pre-placed-release"),
])
def test_default_tag(old, names, expected):
    assert load_script().choose_tag(dict(names, genesis=old), "genesis") == expected


# --- a home off the beaten track ---

UNUSUAL_CONFIG = """\
maxNumberOfFirstConnectionRetries = 100
maxNumberOfRestarts = 2
restartsDelaySeconds = 1
pollIntervalSeconds = 1
metricsFile = "/var/lib/node_exporter/textfile/vegavisor.prom"

[upgradeFolders]
  "v0.74.0" = "releases/v0.74.0"

[autoInstall]
  enabled = true
  githubApiUrl = "https://github-mirror.example.com/api"
  [autoInstall.asset]
    name = "vega-{os}-{arch}.zip"
    binaryName = "vega"

[logging]
  format = "json"
  level = "warn"
"""


@pytest.mark.timeout(120)
def test_unusual_home_is_rehearsed_as_it_is(short_tmp):
    """A binary at an absolute path outside the home, a standalone data-node binary, the
    admin socket inside the home, a release folder mapped into a subfolder, JSON logs at
    warn level and a metrics file elsewhere: all rehearsed, none of it written."""
    home = short_tmp / "home"
    (home / "genesis").mkdir(parents=True)
    (home / "releases").mkdir()
    (short_tmp / "bin").mkdir()
    (short_tmp / "bin" / "vega").write_text("placeholder\n")
    (home / "genesis" / "data-node").write_text("placeholder\n")
    (home / "config.toml").write_text(UNUSUAL_CONFIG)
    (home / "genesis" / "run-config.toml").write_text(
        f'name = "v0.73.4"\n[vega.binary]\npath = "{short_tmp / "bin" / "vega"}"\n'
        f'args = ["node", "--home=/home/vega/.vega"]\n[vega.rpc]\n'
        f'socketPath = "{home / "vega.sock"}"\nhttpPath = "rpc"\n'
        f'[data_node.binary]\npath = "data-node"\nargs = ["node", "--home", "/home/vega/.dn"]\n')
    os.symlink("genesis", home / "current")
    before, binary_before = snapshot(home), snapshot(short_tmp / "bin")
    result = rehearse(home, "--to", "v0.74.0", *scenario_args("plain"))
    assert result.code == 0, result.out + result.err
    assert "upgraded to v0.74.0; current -> HOME/releases/v0.74.0" in result.line("PASS", "plain")
    timeline = result.cases["plain"].find("system-out").text
    assert f"vega.binary.path {short_tmp / 'bin' / 'vega'} is outside the home" in timeline
    assert "metricsFile /var/lib/node_exporter/textfile/vegavisor.prom is written in the " \
           "rehearsal's folder instead" in timeline
    assert "socketPath" not in timeline  # inside the home: the copy's own
    assert "/current/data-node node --home /home/vega/.dn" in timeline
    assert "node: data node v0.74.0 started: " in timeline
    assert snapshot(home) == before and snapshot(short_tmp / "bin") == binary_before
