"""`vegavisor config`: every setting in effect and its source, through the real command line."""
from __future__ import annotations

import json
import os
import re

import pytest

import vegavisor
from conftest import GO_VISOR_CONFIG
from conftest import GO_VISOR_EXAMPLE_RUN_CONFIG
from conftest import host_asset_name
from conftest import make_fake_home
from conftest import run_main
from conftest import run_vegavisor
from conftest import snapshot

TOKEN = "ghp_vegavisorTestTokenThatMustNeverBePrinted"
REPORT_KEYS = {"home", "homeSource", "config", "environment", "runConfig", "autoInstall",
               "tags", "warnings"}
SETTING_KEYS = {"key", "value", "source", "default"}
TAG_KEYS = {"tag", "folder", "exists", "runConfig", "current", "knownFrom", "error"}


def clean_env(**extra: str) -> dict:
    """This environment without the variables `config` reports, plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in {v.name.lower() for v in vegavisor.ENVIRONMENT}}
    return dict(env, **extra)


def config(home, output="json", env=None):
    done = run_main(["config", "--home", str(home), "--output", output], env=env or clean_env())
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    return json.loads(done.stdout) if output == "json" else done.stdout


def settings(report, part="config"):
    found = {}
    for s in report[part]["settings"]:
        assert s["key"] not in found, f"{s['key']} listed twice"
        found[s["key"]] = (s["value"], s["source"])
    return found


def row(text, key):
    """The (source, value) of one `key  source  value` line of the human output."""
    match = re.search(rf"(?m)^  {re.escape(key)} +(\S+) +(.*)$", text)
    assert match, f"no line for {key} in:\n{text}"
    return match.group(1), match.group(2)


@pytest.fixture
def go_home(short_tmp):
    """A home as the Go Visor's init leaves it, genesis filled in by the operator."""
    home = make_fake_home(short_tmp, GO_VISOR_CONFIG)
    (home / "vX.X.X").mkdir()
    (home / "vX.X.X" / "run-config.toml").write_text(
        GO_VISOR_EXAMPLE_RUN_CONFIG.format(name="vX.X.X"))
    return home


# --- config.toml: every key, its value in effect, its source ---

@pytest.mark.timeout(30)
def test_a_go_visor_home_lists_file_keys_and_defaults_and_changes_nothing(go_home):
    before = snapshot(go_home)
    found = settings(config(go_home))
    assert {k: found[k] for k in (
        "maxNumberOfFirstConnectionRetries", "maxNumberOfRestarts", "restartsDelaySeconds",
        "upgradeFolders", "autoInstall.enabled", "autoInstall.repositoryOwner",
        "autoInstall.asset.name", "autoInstall.asset.binaryName")} == {
        "maxNumberOfFirstConnectionRetries": (175000, "file"),
        "maxNumberOfRestarts": (3, "file"),
        "restartsDelaySeconds": (5, "file"),
        "upgradeFolders": ({"vX.X.X": "vX.X.X"}, "file"),
        "autoInstall.enabled": (True, "file"),
        "autoInstall.repositoryOwner": ("vegaprotocol", "file"),
        "autoInstall.asset.name": ("vega-linux-amd64.zip", "file"),
        "autoInstall.asset.binaryName": ("vega", "file")}
    # the keys the Go Visor never had take their defaults (SPEC 2.3)
    assert {k: found[k] for k in (
        "pollIntervalSeconds", "upgradePollIntervalSeconds", "metricsFile",
        "autoInstall.githubApiUrl", "autoInstall.prefetch", "autoInstall.checksums",
        "logging.format")} == {
        "pollIntervalSeconds": (2, "default"),
        "upgradePollIntervalSeconds": (0.25, "default"),
        "metricsFile": ("", "default"),
        "autoInstall.githubApiUrl": ("https://api.github.com", "default"),
        "autoInstall.prefetch": (True, "default"),
        "autoInstall.checksums": ({}, "default"),
        "logging.format": ("text", "default")}
    # every key the file sets is listed as set in the file, and nothing else is
    in_file = {k for k, (_, source) in found.items() if source == "file"}
    assert in_file == {"maxNumberOfFirstConnectionRetries", "maxNumberOfRestartConnectionRetries",
                       "maxNumberOfRestarts", "restartsDelaySeconds", "stopDelaySeconds",
                       "stopSignalTimeoutSeconds", "upgradeFolders", "autoInstall.enabled",
                       "autoInstall.repositoryOwner", "autoInstall.repository",
                       "autoInstall.asset.name", "autoInstall.asset.binaryName"}
    assert snapshot(go_home) == before


@pytest.mark.timeout(30)
def test_human_output_one_setting_a_line_grouped_by_file(go_home):
    text = config(go_home, "human")
    assert text.startswith(f"home: {go_home} (from --home)\n\n"
                           f"config.toml: {go_home}/config.toml\n")
    assert row(text, "maxNumberOfRestarts") == ("file", "3")
    assert row(text, "pollIntervalSeconds") == ("default", "2")
    assert row(text, "autoInstall.repositoryOwner") == ("file", '"vegaprotocol"')
    assert row(text, 'upgradeFolders."vX.X.X"') == ("file", '"vX.X.X"')
    assert row(text, "autoInstall.checksums") == ("default", "{}")
    # the run-config `run` would start: genesis, as `current` is missing (SPEC 3.1.11)
    assert (f"\nrun-config.toml: {go_home}/genesis/run-config.toml (current is missing: "
            f"`vegavisor run` points it at genesis)\n") in text
    assert row(text, "vega.binary.args") == ("file", '["node"]')
    assert row(text, "vega.rpc.socketPath") == ("file", '"/tmp/fake.sock"')
    assert row(text, "data_node") == ("default", "absent")
    assert f"\n  core starts as {go_home}/current/vega\n" in text
    assert f"  - {go_home}/current does not exist; `vegavisor run` points it at genesis" in text


@pytest.mark.timeout(30)
def test_values_set_in_the_file_are_shown_as_in_effect(short_tmp):
    home = make_fake_home(short_tmp, 'pollIntervalSeconds = 0.5\nmetricsFile = "/tmp/m.prom"\n'
                                     '[logging]\n  level = "debug"\n')
    (home / "genesis" / "run-config.toml").write_text(
        'name = "v1"\n[vega.binary]\n  path = "bin/vega"\n  args = ["node", "--home", "/v"]\n'
        '[vega.rpc]\n  socketPath = "/tmp/v.sock"\n  httpPath = "rpc"\n'
        '[data_node.binary]\n  path = "vega"\n  args = ["datanode", "start"]\n')
    report = config(home)
    found = settings(report)
    assert found["pollIntervalSeconds"] == (0.5, "file")
    assert found["metricsFile"] == ("/tmp/m.prom", "file")
    assert found["logging.level"] == ("debug", "file")
    assert found["logging.format"] == ("text", "default")
    # without an [autoInstall] table auto-install is off (SPEC 3.1.2)
    assert found["autoInstall.enabled"] == (False, "default")
    run = settings(report, "runConfig")
    assert run["vega.rpc.httpPath"] == ("/rpc", "file")  # the leading slash Go adds (3.1.7)
    assert run["vega.binary.args"] == (["node", "--home", "/v"], "file")
    assert run["data_node.binary.args"] == (["datanode", "start"], "file")
    assert report["runConfig"]["file"] == f"{home}/genesis/run-config.toml"
    assert report["runConfig"]["binaries"] == {"core": f"{home}/current/bin/vega",
                                               "dataNode": f"{home}/current/vega"}
    text = config(home, "human")
    assert "\nauto-install: off (a release must be installed in its folder before its block)\n" \
        in text


# --- the environment ---

@pytest.mark.timeout(30)
def test_github_token_is_shown_as_set_but_its_value_never_appears(short_tmp):
    home = make_fake_home(short_tmp, '[autoInstall]\n  enabled = true\n'
                                     '  githubApiUrl = "https://ghe.example:8443/api/v3"\n')
    env = clean_env(GITHUB_TOKEN=TOKEN, https_proxy="http://me:pw-secret@proxy.example:3128")
    for output in ("human", "json"):
        done = run_vegavisor(["config", "--home", str(home), "--output", output], env=env)
        assert done.returncode == 0, done.stderr
        assert TOKEN not in done.stdout + done.stderr
        assert "pw-secret" not in done.stdout + done.stderr
    report = config(home, env=env)
    variables = {v["name"]: v for v in report["environment"]}
    assert variables["GITHUB_TOKEN"] == {
        "name": "GITHUB_TOKEN", "set": True, "value": None,
        "use": "sent only to https://ghe.example:8443 (Authorization: Bearer), never logged, "
               "not passed to the node"}
    assert variables["https_proxy"]["value"] == "http://proxy.example:3128"
    assert variables["VEGAVISOR_HOME"] == {"name": "VEGAVISOR_HOME", "set": False,
                                           "value": None,
                                           "use": "the home when --home is not given"}
    text = config(home, "human", env=env)
    assert row(text, "GITHUB_TOKEN") == (
        "environment", "set, value not shown: sent only to https://ghe.example:8443 "
                       "(Authorization: Bearer), never logged, not passed to the node")
    assert row(text, "VEGAVISOR_HOME") == ("unset", "the home when --home is not given")
    # an empty token is no token (`run` sends none): said so, not "set"
    text = config(home, "human", env=clean_env(GITHUB_TOKEN=""))
    assert row(text, "GITHUB_TOKEN")[1].startswith("set but empty, so not used: sent only to ")


@pytest.mark.timeout(30)
def test_home_from_vegavisor_home_says_so(go_home):
    done = run_vegavisor(["config"], env=clean_env(VEGAVISOR_HOME=str(go_home)))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"home: {go_home} (from VEGAVISOR_HOME)\n")
    assert row(done.stdout, "VEGAVISOR_HOME") == (
        "environment", f'"{go_home}": the home when --home is not given')


# --- auto-install ---

@pytest.mark.timeout(30)
def test_asset_name_is_filled_in_for_this_host(short_tmp):
    home = make_fake_home(short_tmp, '[autoInstall]\n  enabled = true\n  repository = "vega2"\n')
    auto = config(home)["autoInstall"]
    os_name, arch = vegavisor.host_platform()
    assert auto == {"enabled": True, "asset": host_asset_name(),
                    "assetTemplate": "vega-{os}-{arch}.zip", "os": os_name, "arch": arch,
                    "binaryName": "vega", "repository": "vegaprotocol/vega2",
                    "apiUrl": "https://api.github.com",
                    "releaseUrl": "https://api.github.com/repos/vegaprotocol/vega2/releases/"
                                  "tags/{tag}"}
    text = config(home, "human")
    assert (f"\nauto-install: on\n"
            f'  asset        {host_asset_name()} (from "vega-{{os}}-{{arch}}.zip" on '
            f"{os_name}/{arch})\n"
            f"  binary       vega (inside the asset)\n"
            f"  repository   vegaprotocol/vega2\n"
            f"  release API  https://api.github.com/repos/vegaprotocol/vega2/releases/tags/"
            f"{{tag}}\n") in text


# --- the folder each known tag maps to ---

@pytest.mark.timeout(30)
def test_tags_map_to_their_folders(short_tmp):
    home = make_fake_home(short_tmp, '[upgradeFolders]\n  "v0.75.0" = "releases/v0.75.0"\n'
                                     '  "v0.74.2" = "v0.74.2-patched"\n'
                                     '[autoInstall]\n  enabled = true\n')
    os.symlink(home / "genesis", home / "current")
    (home / "v0.74.1").mkdir()  # a release folder left half-prepared
    (home / "v0.74.2-patched").mkdir()
    (home / "v0.74.2-patched" / "run-config.toml").write_text("")
    (home / "notes").mkdir()  # not named like a release: no tag
    (home / ".prefetch.json").write_text(json.dumps(
        {"tag": "v0.76.0", "folder": str(home / "v0.76.0"), "state": "downloading"}))
    tags = {t["tag"]: t for t in config(home)["tags"]}
    assert set(tags) == {"v1", "v0.74.1", "v0.74.2", "v0.75.0", "v0.76.0"}
    assert all(set(t) == TAG_KEYS for t in tags.values())
    assert tags["v0.75.0"] == {"tag": "v0.75.0", "folder": f"{home}/releases/v0.75.0",
                               "exists": False, "runConfig": False, "current": False,
                               "knownFrom": ["upgradeFolders"], "error": None}
    assert tags["v0.74.2"]["folder"] == f"{home}/v0.74.2-patched"
    assert (tags["v0.74.2"]["runConfig"], tags["v0.74.2"]["knownFrom"]) == (
        True, ["upgradeFolders", "folder"])
    assert (tags["v0.74.1"]["exists"], tags["v0.74.1"]["runConfig"]) == (True, False)
    assert tags["v0.76.0"]["knownFrom"] == ["prefetch"]
    assert (tags["v1"]["knownFrom"], tags["v1"]["folder"]) == (["current"], f"{home}/v1")
    text = config(home, "human")
    lines = text[text.index("tags (the folder an upgrade to each tag uses):\n"):].splitlines()
    assert [re.split(r"  +", line.strip()) for line in lines[1:6]] == [
        ["v0.74.1", "exists, no run-config.toml", f"{home}/v0.74.1", "from folder"],
        ["v0.74.2", "installed", f"{home}/v0.74.2-patched", "from upgradeFolders, folder"],
        ["v0.75.0", "missing, auto-install downloads it", f"{home}/releases/v0.75.0",
         "from upgradeFolders"],
        ["v0.76.0", "missing, auto-install downloads it", f"{home}/v0.76.0",
         "from prefetch"],
        ["v1", f"current, runs from {home}/genesis", f"{home}/v1", "from current"]]


@pytest.mark.timeout(30)
def test_a_garbage_state_file_is_a_warning_not_the_end(go_home):
    (go_home / ".upgrade-journal.json").write_text("{trunc")
    report = config(go_home)
    assert [w for w in report["warnings"] if ".upgrade-journal.json" in w] == [
        f"{go_home}/.upgrade-journal.json is not a valid Journal record (Expecting property "
        f"name enclosed in double quotes: line 1 column 2 (char 1)); `vegavisor run` rewrites it"]


# --- the JSON form ---

@pytest.mark.timeout(30)
def test_json_shape(go_home):
    report = config(go_home)
    assert set(report) == REPORT_KEYS
    assert (report["home"], report["homeSource"]) == (str(go_home), "--home")
    assert set(report["config"]) == {"file", "settings"}
    assert set(report["runConfig"]) == {"file", "folder", "current", "binaries", "settings"}
    assert report["runConfig"]["current"] == "missing"
    for part in ("config", "runConfig"):
        for setting in report[part]["settings"]:
            assert set(setting) == SETTING_KEYS
            assert setting["source"] in ("file", "default")
    for variable in report["environment"]:
        assert set(variable) == {"name", "set", "value", "use"}
    assert [t["tag"] for t in report["tags"]] == ["v1", "vX.X.X"]
    assert all(set(t) == TAG_KEYS for t in report["tags"])
    assert report["warnings"] == [f"{go_home}/current does not exist; `vegavisor run` points "
                                  f"it at genesis"]


# --- bad input: one line, exit 2, never a traceback ---

@pytest.mark.parametrize("text, error", [
    ("maxNumberOfRestarts = = 3\n", "config.toml: line 1, column 23: Invalid value"),
    ("maxNumberOfRestarts = -1\n",
     "config.toml: maxNumberOfRestarts: expected a whole number >= 0, got -1"),
    ('[autoInstall]\n  enabled = true\n  [autoInstall.assets.vega]\n    asset_name = "x.zip"\n',
     "config.toml: [autoInstall.assets] is the old format"),
], ids=["toml-syntax", "bad-value", "old-assets-format-with-auto-install"])
@pytest.mark.timeout(30)
def test_bad_config_is_the_same_one_line_error_as_run(short_tmp, text, error):
    home = make_fake_home(short_tmp, text)
    done = run_vegavisor(["config", "--home", str(home)], env=clean_env())
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"vegavisor: error: {home}/{error}")
    ran = run_vegavisor(["run", "--home", str(home)], env=clean_env())
    assert (ran.returncode, ran.stderr) == (2, done.stderr)


@pytest.mark.timeout(30)
def test_a_broken_run_config_in_effect_is_one_line_exit_2(go_home):
    (go_home / "genesis" / "run-config.toml").write_text('name = "v1"\n')
    done = run_vegavisor(["config", "--home", str(go_home)], env=clean_env())
    assert (done.returncode, done.stdout, done.stderr) == (
        2, "", f"vegavisor: error: {go_home}/genesis/run-config.toml: vega is missing: it says "
               f"how to run core\n")


@pytest.mark.timeout(30)
def test_a_missing_home_or_config_is_a_clear_error(short_tmp):
    missing = short_tmp / "nothere"
    done = run_vegavisor(["config", "--home", str(missing)], env=clean_env())
    assert (done.returncode, done.stdout, done.stderr) == (
        2, "", f"vegavisor: error: {missing} is not a folder; create a home with "
               f"`vegavisor init --home {missing}`\n")
    done = run_vegavisor(["config", "--home", str(short_tmp)], env=clean_env())
    assert (done.returncode, done.stdout, done.stderr) == (
        2, "", f"vegavisor: error: {short_tmp}/config.toml does not exist; create it with "
               f"`vegavisor init --home {short_tmp}`\n")
    done = run_vegavisor(["config"], env=clean_env())
    assert (done.returncode, done.stderr) == (
        2, "vegavisor: error: config: --home is required (or set VEGAVISOR_HOME)\n")


@pytest.mark.timeout(30)
def test_config_is_listed_in_help():
    done = run_vegavisor(["--help"])
    assert re.search(r"(?m)^    config +show every setting in effect and where it comes from$",
                     done.stdout), done.stdout


# --- the listing follows the schema ---

@pytest.mark.timeout(30)
def test_a_key_added_to_the_schema_is_listed_with_no_other_change(go_home, monkeypatch,
                                                                     capsys):
    """The schema is the one list of keys: a new Key or Table shows up in `config` as
    soon as it is in CONFIG_SCHEMA (as [hooks] will)."""
    schema = vegavisor.CONFIG_SCHEMA
    monkeypatch.setattr(vegavisor, "CONFIG_SCHEMA", schema._replace(fields=schema.fields + (
        vegavisor.Key("madeUpSeconds", "made_up", vegavisor._seconds, 7.0),
        vegavisor.Table("madeUp", "made_up_table", dict, (
            vegavisor.Key("argv", "argv", vegavisor._texts, ()),
            vegavisor.Key("limit", "limit", vegavisor._count, 3),
        )),
    )))
    with open(go_home / "config.toml", "a") as f:
        f.write('\n[madeUp]\n  argv = ["/bin/true", "x"]\n')
    assert vegavisor.main(["config", "--home", str(go_home), "--output", "json"]) == 0
    found = settings(json.loads(capsys.readouterr().out))
    assert (found["madeUpSeconds"], found["madeUp.argv"], found["madeUp.limit"]) == (
        (7, "default"), (["/bin/true", "x"], "file"), (3, "default"))
    assert vegavisor.main(["config", "--home", str(go_home)]) == 0
    text = capsys.readouterr().out
    assert row(text, "madeUp.argv") == ("file", '["/bin/true", "x"]')
    assert row(text, "madeUpSeconds") == ("default", "7")
