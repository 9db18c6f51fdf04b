"""`vegavisor validate`: every problem of a home in one pass, through the real command line."""
from __future__ import annotations

import os
import re
import shutil
import stat
import sys

import pytest

import vegavisor
from conftest import GO_VISOR_CONFIG
from conftest import GO_VISOR_EXAMPLE_RUN_CONFIG
from conftest import Home
from conftest import run_main
from conftest import run_vegavisor
from conftest import set_table
from conftest import snapshot


def validate(home):
    done = run_main(["validate", "--home", str(home.path)])
    assert done.stderr == ""
    return done


def problems(done):
    return [line for line in done.stdout.splitlines() if line.startswith("problem: ")]


def notes(done):
    return [line for line in done.stdout.splitlines() if line.startswith("note: ")]


@pytest.fixture
def good(home):
    """An init-made home whose genesis holds a fake core reporting v1, `current` linked to
    genesis by hand as the operator docs say."""
    home.install_version("genesis", "v1")
    os.symlink("genesis", home.path / "current")
    return home


def write_core_config(path, socket, http_path="/rpc"):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.toml").write_text(
        f'[Admin]\n  Level = "Info"\n  [Admin.Server]\n    SocketPath = "{socket}"\n'
        f'    HTTPPath = "{http_path}"\n')


# --- a good home ---

@pytest.mark.timeout(30)
def test_a_good_home_has_no_problems(good):
    done = validate(good)
    assert (done.returncode, done.stdout) == (
        0, f"no problems in {good.path} (1 version folder checked)\n")


@pytest.mark.timeout(30)
def test_a_good_home_with_core_and_data_node_configs_and_a_release(good, short_tmp):
    core_home, dn_home = short_tmp / "core", short_tmp / "dn"
    write_core_config(core_home / "config" / "node", good.socket)
    (dn_home / "config" / "data-node").mkdir(parents=True)
    (dn_home / "config" / "data-node" / "config.toml").write_text(
        "[SQLStore]\n  UseEmbedded = false\n")
    for folder, version in (("genesis", "v1"), ("v2", "v2")):
        good.install_version(folder, version, ["--home", str(core_home)], data_node=True,
                             data_node_args=["--home", str(dn_home)])
    done = validate(good)
    assert (done.returncode, done.stdout) == (
        0, f"no problems in {good.path} (2 version folders checked)\n")


# --- one problem at a time: each is found, named, and fails validate ---

def config_line(home, text):
    path = home.path / "config.toml"
    path.write_text(text + "\n" + path.read_text())


def edit_run_config(home, folder, old, new):
    path = home.path / folder / "run-config.toml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def fake_binary(path, script):
    path.unlink()
    path.write_text(script)
    path.chmod(0o755)


def relink_current(home, target):
    (home.path / "current").unlink()
    os.symlink(target, home.path / "current")


BREAKAGES = {
    "config-bad-type": (
        lambda h: h.set_config(restartsDelaySeconds="5"),
        r'config\.toml: restartsDelaySeconds: expected a number of seconds, got "5"$'),
    "config-unknown-key": (
        lambda h: config_line(h, "restartDelaySeconds = 5"),
        r"config\.toml: unknown key restartDelaySeconds is ignored "
        r"\(did you mean restartsDelaySeconds\?\)$"),
    "config-old-assets-format": (
        lambda h: h.path.joinpath("config.toml").write_text(
            h.path.joinpath("config.toml").read_text()
            + '\n[autoInstall.assets.vega]\nasset_name = "vega-linux-amd64.zip"\n'),
        r"config\.toml: \[autoInstall\.assets\] is the old format.*"
        r'name = "vega-linux-amd64\.zip"'),
    "config-bad-logging-level": (
        lambda h: set_table(h, "logging", level="verbose"),
        r'config\.toml: logging\.level: expected one of "debug", "info", "warn", "error", '
        r'got "verbose"$'),
    "config-toml-syntax": (
        lambda h: config_line(h, "maxNumberOfRestarts = = 3"),
        r"config\.toml: line 1, column \d+: "),
    "config-missing": (
        lambda h: h.path.joinpath("config.toml").unlink(),
        r"config\.toml does not exist; create it with `vegavisor init --home "),
    "upgrade-folder-named-current": (
        lambda h: set_table(h, "upgradeFolders", v2="current"),
        r"config\.toml: upgradeFolders\.v2: expected a path inside HOME \(not absolute; no "
        r"'\.\.', '\.' or empty part, not 'current'\)"),
    "run-config-bad-http-path": (
        lambda h: edit_run_config(h, "genesis", 'httpPath = "/rpc"', 'httpPath = ""'),
        r'genesis/run-config\.toml: vega\.rpc\.httpPath: must not be empty, got ""$'),
    "run-config-rpc-not-a-table": (
        lambda h: h.path.joinpath("genesis", "run-config.toml").write_text(re.sub(
            r"\[vega\.rpc\][^[]*", "[vega]\nrpc = 5\n",
            h.path.joinpath("genesis", "run-config.toml").read_text())),
        r"genesis/run-config\.toml: vega\.rpc must be a table, got 5$"),
    "run-config-missing-name": (
        lambda h: edit_run_config(h, "genesis", 'name = "v1"\n', ""),
        r"genesis/run-config\.toml: name is missing$"),
    "run-config-unknown-binary-key": (
        lambda h: edit_run_config(h, "genesis", "args = ", "arg = "),
        r"genesis/run-config\.toml: unknown key vega\.binary\.arg is ignored "
        r"\(did you mean vega\.binary\.args\?\)$"),
    "binary-missing": (
        lambda h: h.path.joinpath("genesis", "vega").unlink(),
        r"genesis/run-config\.toml: vega\.binary\.path: \S+/genesis/vega does not exist"),
    "binary-not-a-regular-file": (
        lambda h: (h.path.joinpath("genesis", "vega").unlink(),
                   h.path.joinpath("genesis", "vega").mkdir()),
        r"vega\.binary\.path: \S+/genesis/vega is not a regular file"),
    "binary-version-fails": (
        lambda h: fake_binary(h.path / "genesis" / "vega",
                              "#!/bin/sh\necho 'segmentation fault' >&2\nexit 3\n"),
        r"vega\.binary\.path: `\S+/genesis/vega version --output json` exited with status 3: "
        r"segmentation fault$"),
    "binary-prints-no-version": (
        lambda h: fake_binary(h.path / "genesis" / "vega", "#!/bin/sh\necho hello\n"),
        r"vega\.binary\.path: `\S+ version --output json` printed no version: 'hello\\n'$"),
    "tag-folder-holds-another-release": (
        lambda h: h.install_version("v2", "v3"),
        r"v2/run-config\.toml: vega\.binary\.path: the binary reports version v3, but this "
        r"folder is for release v2: an upgrade to v2 refuses it"),
    "tag-folder-name-differs": (
        lambda h: (h.install_version("v2", "v2"),
                   edit_run_config(h, "v2", 'name = "v2"', 'name = "two"')),
        r'v2/run-config\.toml: name = "two", but the binary reports v2; set name = "v2"$'),
    "mapped-folder-holds-another-release": (
        lambda h: (set_table(h, "upgradeFolders", v2="custom"),
                   h.install_version("custom", "v1")),
        r"custom/run-config\.toml: vega\.binary\.path: the binary reports version v1, but this "
        r"folder is for release v2"),
    "mapped-folder-without-run-config": (
        lambda h: (set_table(h, "upgradeFolders", v2="custom"), h.path.joinpath("custom").mkdir()),
        r"/custom holds no run-config\.toml: an upgrade to v2 stops there"),
    "tag-folder-without-run-config": (
        lambda h: h.path.joinpath("v0.74.0").mkdir(),
        r"/v0\.74\.0 holds no run-config\.toml: an upgrade to v0\.74\.0 stops there"),
    "socket-differs-from-core-config": (
        lambda h: (write_core_config(h.root / "core" / "config" / "node", "/tmp/other.sock"),
                   h.install_version("genesis", "v1", ["--home=" + str(h.root / "core")])),
        r'genesis/run-config\.toml: vega\.rpc\.socketPath = "\S+/admin\.sock", but core\'s '
        r'\S+/core/config/node/config\.toml has \[Admin\.Server\] SocketPath = '
        r'"/tmp/other\.sock": vegavisor would never reach core'),
    "socket-differs-from-core-config-keys-in-lower-case": (  # Go reads keys in any case
        lambda h: (h.root.joinpath("core", "config", "node").mkdir(parents=True),
                   h.root.joinpath("core", "config", "node", "config.toml").write_text(
                       '[admin.server]\nsocketpath = "/tmp/other.sock"\nhttppath = "/rpc"\n'),
                   h.install_version("genesis", "v1", ["--home", str(h.root / "core")])),
        r'genesis/run-config\.toml: vega\.rpc\.socketPath = "\S+/admin\.sock", but core\'s '
        r'\S+/core/config/node/config\.toml has \[Admin\.Server\] SocketPath = '
        r'"/tmp/other\.sock": vegavisor would never reach core'),
    "http-path-differs-from-core-config": (
        lambda h: (write_core_config(h.root / "core" / "config" / "node", h.socket, "/admin"),
                   h.install_version("genesis", "v1", ["--home", str(h.root / "core")])),
        r'vega\.rpc\.httpPath = "/rpc", but core\'s \S+ has \[Admin\.Server\] HTTPPath = '
        r'"/admin"'),
    "embedded-postgres": (
        lambda h: (h.root.joinpath("dn", "config", "data-node").mkdir(parents=True),
                   h.root.joinpath("dn", "config", "data-node", "config.toml").write_text(
                       "[SQLStore]\nUseEmbedded = true\n"),
                   h.install_version("genesis", "v1", data_node=True,
                                     data_node_args=["--home", str(h.root / "dn")])),
        r"dn/config/data-node/config\.toml: \[SQLStore\] UseEmbedded = true: embedded Postgres "
        r"is not supported under Visor: the upgrade fails; run Postgres yourself and set "
        r"UseEmbedded = false$"),
    "current-dangling": (
        lambda h: relink_current(h, "v9"),
        r"/current is dangling: it points at v9, which does not exist; `vegavisor run` points "
        r"it at genesis \(ln -sfn FOLDER \S+/current to run another version\)$"),
    "current-without-run-config": (
        lambda h: (h.path.joinpath("empty").mkdir(), relink_current(h, "empty")),
        r"/current points at empty, which has no run-config\.toml"),
    "current-a-real-folder": (
        lambda h: (h.path.joinpath("current").unlink(), h.path.joinpath("current").mkdir()),
        # SPEC 3.1.6: run moves it aside (never deletes it) and links genesis
        r"/current is a folder without run-config\.toml; `vegavisor run` points it at "
        r"genesis$"),
    "mapped-subfolder-holds-another-release": (
        lambda h: (set_table(h, "upgradeFolders", v2="releases/v2"),
                   h.install_version("releases/v2", "v3")),
        r"releases/v2/run-config\.toml: vega\.binary\.path: the binary reports version v3, but "
        r"this folder is for release v2"),
    # what current runs is checked when it is no folder of HOME's own, nor mapped
    "current-in-a-subfolder-without-binary": (
        lambda h: (h.install_version("releases/v1", "v1"), relink_current(h, "releases/v1"),
                   h.path.joinpath("releases", "v1", "vega").unlink()),
        r"releases/v1/run-config\.toml: vega\.binary\.path: \S+/releases/v1/vega does not "
        r"exist"),
    "current-outside-home-without-binary": (
        lambda h: (h.install_version(str(h.root / "opt" / "v1"), "v1"),
                   relink_current(h, str(h.root / "opt" / "v1")),
                   h.root.joinpath("opt", "v1", "vega").unlink()),
        r"opt/v1/run-config\.toml: vega\.binary\.path: \S+/opt/v1/vega does not exist"),
    "metrics-folder-missing": (
        lambda h: h.set_config(metricsFile=str(h.root / "nowhere" / "vegavisor.prom")),
        r'config\.toml: metricsFile = "\S+/nowhere/vegavisor\.prom": \S+/nowhere is not a '
        r'folder; create it or change metricsFile$'),
    "current-missing-and-no-genesis": (
        lambda h: (h.path.joinpath("current").unlink(),
                   h.path.joinpath("genesis", "run-config.toml").rename(h.path / "rc.bak")),
        r"/current does not exist; \S+/genesis/run-config\.toml does not exist either"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
@pytest.mark.timeout(30)
def test_each_problem_is_reported_once_naming_the_file_and_key(breakage, good):
    breaks, expected = BREAKAGES[breakage]
    breaks(good)
    done = validate(good)
    assert done.returncode == 1, done.stdout
    [line] = problems(done)
    assert re.search(expected, line), line
    assert done.stdout.splitlines()[-1].startswith(f"1 problem in {good.path} (")


@pytest.mark.timeout(60)
def test_every_problem_is_reported_in_one_pass(good):
    # embedded-postgres rewrites genesis: it goes before the edits of genesis's run-config
    chosen = ["embedded-postgres", "config-bad-type", "config-unknown-key",
              "config-bad-logging-level", "upgrade-folder-named-current",
              "run-config-bad-http-path", "run-config-missing-name",
              "tag-folder-holds-another-release", "tag-folder-without-run-config",
              "current-dangling"]
    for name in chosen:
        BREAKAGES[name][0](good)
    good.path.joinpath("genesis", "vega").unlink()
    done = validate(good)
    assert done.returncode == 1
    lines = problems(done)
    for name in chosen:
        assert [line for line in lines if re.search(BREAKAGES[name][1], line)], name
    assert [line for line in lines if "genesis/vega does not exist" in line]
    assert len(lines) == len(chosen) + 1, done.stdout
    assert done.stdout.splitlines()[-1] == (
        f"{len(lines)} problems in {good.path} (2 version folders checked)")


@pytest.mark.timeout(30)
def test_several_bad_keys_of_one_table_are_all_reported(good):
    good.set_config(restartsDelaySeconds=-1, maxNumberOfRestarts=1.5, pollIntervalSeconds=0)
    done = validate(good)
    keys = sorted(re.search(r"config\.toml: (\w+):", line).group(1) for line in problems(done))
    assert keys == ["maxNumberOfRestarts", "pollIntervalSeconds", "restartsDelaySeconds"]


# --- notes: reported, but validate still passes ---

@pytest.mark.timeout(30)
def test_a_binary_without_exec_bits_is_a_note_and_keeps_its_mode(good):
    binary = good.path / "genesis" / "vega"
    binary.chmod(0o644)
    done = validate(good)
    assert done.returncode == 0, done.stdout
    [line] = notes(done)
    assert line == (f"note: {good.path}/genesis/run-config.toml: vega.binary.path: {binary} is "
                    f"not executable: vegavisor adds the exec bits when it starts it")
    assert stat.S_IMODE(binary.stat().st_mode) == 0o644, "validate never chmods"
    assert done.stdout.splitlines()[-1] == (
        f"no problems in {good.path} (1 note, 1 version folder checked)")


@pytest.mark.timeout(30)
def test_a_home_made_by_the_go_visors_init_passes_with_notes(short_tmp):
    home = Home(short_tmp)
    home.path.mkdir()
    (home.path / "config.toml").write_text(GO_VISOR_CONFIG)
    home.install_version("genesis", "v1")  # filled in by the operator, as the docs say
    (home.path / "vX.X.X").mkdir()
    (home.path / "vX.X.X" / "run-config.toml").write_text(
        GO_VISOR_EXAMPLE_RUN_CONFIG.format(name="vX.X.X"))
    done = validate(home)
    assert done.stdout == (
        f"note: {home.path}/current does not exist; `vegavisor run` points it at genesis\n"
        f"note: {home.path}/vX.X.X is for 'vX.X.X', which is not a release tag (the Go Visor's "
        f"init writes such an example): not checked\n"
        f"no problems in {home.path} (2 notes, 1 version folder checked)\n")
    assert done.returncode == 0


def run_as_nobody(argv):
    """vegavisor.main(argv) in a child running as nobody; (exit code, stdout)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        code = 99
        try:
            os.close(read_end)
            sys.stdout = os.fdopen(write_end, "w")
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            code = vegavisor.main(argv)
            sys.stdout.flush()
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as out:
        text = out.read()
    return os.waitpid(pid, 0)[1] >> 8, text


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a file another user owns")
@pytest.mark.timeout(30)
def test_a_binary_nobody_can_make_executable_is_a_problem_saying_what_to_do(good):
    binary = good.path / "genesis" / "vega"
    binary.chmod(0o644)  # root's, and not executable: only root can add the bits
    good.root.chmod(0o755)
    code, out = run_as_nobody(["validate", "--home", str(good.path)])
    assert code == 1, out
    assert (f"problem: {good.path}/genesis/run-config.toml: vega.binary.path: {binary} is not "
            f"executable, and vegavisor (uid 65534) cannot add its exec bits: it belongs to uid "
            f"0; run chmod +x {binary} as its owner") in out.splitlines()
    assert (f"problem: {good.path} is not writable by uid 65534: `vegavisor run` keeps its lock, "
            f"state files and the current link there; give the home to the user that runs "
            f"vegavisor (chown -R)") in out.splitlines()


# --- the checks `run` makes at start-up: the same functions, without running binaries ---

def quick_checks(home):
    config, _ = vegavisor.load_config(home.path)
    run_config, _ = vegavisor.load_run_config(home.path / "genesis")
    return [f"{f.level}: {f.text}" for f in
            vegavisor.quick_checks(home.path, config, home.path / "genesis", run_config)]


@pytest.mark.parametrize("breakage", ["binary-missing", "binary-not-a-regular-file",
                                      "socket-differs-from-core-config",
                                      "http-path-differs-from-core-config",
                                      "metrics-folder-missing"])
@pytest.mark.timeout(30)
def test_quick_checks_find_what_validate_finds_without_running_anything(breakage, good):
    assert quick_checks(good) == []
    breaks, expected = BREAKAGES[breakage]
    breaks(good)
    [line] = quick_checks(good)
    assert line.startswith("problem: ") and re.search(expected, line), line
    assert line in problems(validate(good))


@pytest.mark.timeout(30)
def test_a_missing_core_config_is_a_note(good, short_tmp):
    good.install_version("genesis", "v1", ["--home", str(short_tmp / "nowhere")])
    done = validate(good)
    assert done.returncode == 0, done.stdout
    [line] = notes(done)
    assert line.startswith(f"note: {good.path}/genesis/run-config.toml: vega.rpc against core's "
                           f"config not checked: {short_tmp}/nowhere/config/node/config.toml "
                           f"does not exist")


# --- validate only reads ---

@pytest.mark.timeout(60)
def test_validate_changes_nothing_in_home(good):
    good.path.joinpath("genesis", "vega").chmod(0o644)
    relink_current(good, "v9")
    good.install_version("v2", "v3")
    shutil.copy(good.path / "config.toml", good.path / "config.toml.bak")
    before = snapshot(good.path)
    assert validate(good).returncode == 1
    assert snapshot(good.path) == before
    assert os.readlink(good.path / "current") == "v9", "a dangling current is not switched"


@pytest.mark.timeout(30)
def test_validate_without_a_home_is_a_usage_error(monkeypatch):
    monkeypatch.delenv("VEGAVISOR_HOME", raising=False)
    env = {k: v for k, v in os.environ.items() if k != "VEGAVISOR_HOME"}
    done = run_vegavisor(["validate"], env=env)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "vegavisor: error: validate: --home is required (or set VEGAVISOR_HOME)\n"


@pytest.mark.timeout(30)
def test_a_home_that_does_not_exist_is_one_problem(short_tmp):
    done = run_vegavisor(["validate", "--home", str(short_tmp / "missing")])
    assert done.returncode == 1
    assert done.stdout.splitlines()[0] == (
        f"problem: {short_tmp}/missing is not a folder; create a home with "
        f"`vegavisor init --home {short_tmp}/missing`")
