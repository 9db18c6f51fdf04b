"""config.toml and run-config.toml: parsed once into records; bad input exits 2 naming it."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import vegavisor
from conftest import GO_VISOR_CONFIG
from conftest import run_vegavisor

CONFIG = Path("/h/config.toml")
RUN_CONFIG = Path("/h/genesis/run-config.toml")

ORIGINAL_VISOR_CONFIG = GO_VISOR_CONFIG

ORIGINAL_RUN_CONFIG = """\
name = "v0.74.0"
[vega]
  [vega.binary]
    path = "vega"
    args = ["node", "--home", "/home/vega/.vega", "--tendermint-home", "/home/vega/.tm"]
  [vega.rpc]
    socketPath = "/tmp/vega.sock"
    httpPath = "/rpc"
[data_node]
  [data_node.binary]
    path = "vega"
    args = ["datanode", "start", "--home", "/home/vega/.vega"]
"""


def parse(text: str):
    return vegavisor.parse_config(vegavisor.read_toml_text(text), CONFIG)


@pytest.mark.timeout(10)
def test_original_visor_config_works_unchanged():
    config, warnings = parse(ORIGINAL_VISOR_CONFIG)
    assert warnings == []
    assert config.max_first_connection_retries == 175000
    assert config.max_restarts == 3
    assert config.restarts_delay == 5
    assert config.upgrade_folders == {"vX.X.X": "vX.X.X"}
    assert config.auto_install.asset == vegavisor.AssetConfig("vega-linux-amd64.zip", "vega")
    assert config.auto_install.github_api_url == "https://api.github.com"
    assert config.poll_interval == 2 and config.upgrade_poll_interval == 0.25


@pytest.mark.timeout(10)
def test_empty_config_takes_every_default_and_auto_install_is_off():
    config, warnings = parse("")
    assert warnings == []
    assert config == vegavisor.Config(
        max_first_connection_retries=175000, max_restart_connection_retries=10,
        max_restarts=3, restarts_delay=5.0, stop_delay=0.0, stop_signal_timeout=15.0,
        poll_interval=2.0, upgrade_poll_interval=0.25, rpc_timeout=5.0,
        restarts_backoff_max=60.0, restarts_reset_after=600.0, metrics_file="",
        upgrade_folders={},
        auto_install=vegavisor.AutoInstallConfig(
            enabled=False, repository_owner="vegaprotocol", repository="vega",
            github_api_url="https://api.github.com", prefetch=True,
            prefetch_retry_delay=30.0, http_timeout=60.0, require_checksum=False,
            checksums={}, asset=vegavisor.AssetConfig("vega-{os}-{arch}.zip", "vega")),
        logging=vegavisor.LoggingConfig("text", "info"),
    )


@pytest.mark.parametrize("text", [
    pytest.param("", id="no-table"),
    pytest.param("[autoInstall]\nrepository = 'vega'\n", id="table-without-enabled"),
    pytest.param("[autoInstall.asset]\nname = 'x.zip'\n", id="only-asset-table"),
])
@pytest.mark.timeout(10)
def test_auto_install_is_off_unless_enabled_is_set_as_in_go(text):
    assert parse(text)[0].auto_install.enabled is False


@pytest.mark.timeout(10)
def test_init_template_parses_to_the_defaults_with_auto_install_on():
    config, warnings = parse(vegavisor.CONFIG_TEMPLATE)
    assert warnings == []
    default = parse("")[0]
    assert config == default._replace(auto_install=default.auto_install._replace(enabled=True))


@pytest.mark.timeout(10)
def test_checksums_are_read_and_lowercased():
    config, _ = parse('[autoInstall.checksums]\n"v1" = "sha256:' + "AB" * 32 + '"\n')
    assert config.auto_install.checksums == {"v1": "sha256:" + "ab" * 32}


@pytest.mark.parametrize(("text", "expected"), [
    pytest.param("restartDelaySeconds = 1",
                 "unknown key restartDelaySeconds is ignored (did you mean restartsDelaySeconds?)",
                 id="top-level-typo"),
    pytest.param("[autoInstall]\nenable = true",
                 "unknown key autoInstall.enable is ignored (did you mean autoInstall.enabled?)",
                 id="autoInstall-typo"),
    pytest.param("[autoInstall.asset]\nbinaryname = 'vega'",
                 "unknown key autoInstall.asset.binaryname is ignored "
                 "(did you mean autoInstall.asset.binaryName?)", id="case"),
    pytest.param("[logging]\nformats = 'json'",
                 "unknown key logging.formats is ignored (did you mean logging.format?)",
                 id="logging-typo"),
    pytest.param("colour = 'blue'", "unknown key colour is ignored", id="no-near-key"),
])
@pytest.mark.timeout(10)
def test_unknown_keys_are_warned_with_the_nearest_valid_key(text, expected):
    _, warnings = parse(text)
    assert warnings == [f"{CONFIG}: {expected}"]


OLD_ASSETS = "[autoInstall.assets.vega]\nasset_name = 'vega-linux-amd64.zip'\nbinary_name = 'vega'\n"


@pytest.mark.timeout(10)
def test_old_assets_format_is_refused_while_auto_install_is_on():
    with pytest.raises(vegavisor.ConfigError) as e:
        parse("[autoInstall]\nenabled = true\n" + OLD_ASSETS)
    assert str(e.value) == (
        f"{CONFIG}: [autoInstall.assets] is the old format, which the original Visor ignored "
        'until the upgrade failed; replace it with [autoInstall.asset] '
        'name = "vega-linux-amd64.zip" and binaryName = "vega"')


@pytest.mark.parametrize("enabled", ["", "[autoInstall]\nenabled = false\n"],
                         ids=["enabled-missing", "enabled-false"])
@pytest.mark.timeout(10)
def test_old_assets_format_is_a_warning_while_auto_install_is_off(enabled):
    config, warnings = parse(enabled + OLD_ASSETS)
    assert config.auto_install.enabled is False
    assert warnings == [
        f"{CONFIG}: [autoInstall.assets] is the old format, ignored while auto-install is off; "
        'replace it with [autoInstall.asset] name = "vega-linux-amd64.zip" and '
        'binaryName = "vega"']


@pytest.mark.timeout(10)
def test_original_run_config_is_read():
    run_config, warnings = vegavisor.parse_run_config(
        vegavisor.read_toml_text(ORIGINAL_RUN_CONFIG), RUN_CONFIG)
    assert warnings == []
    assert run_config == vegavisor.RunConfig(
        name="v0.74.0",
        vega=vegavisor.Binary("vega", ("node", "--home", "/home/vega/.vega",
                                       "--tendermint-home", "/home/vega/.tm")),
        rpc=vegavisor.RpcConfig("/tmp/vega.sock", "/rpc"),
        data_node=vegavisor.Binary("vega", ("datanode", "start", "--home", "/home/vega/.vega")),
    )


def run_config_with(rpc: str = "socketPath = '/s'\nhttpPath = '/rpc'",
                    binary: str = "path = 'vega'") -> str:
    return f"name = 'x'\n[vega.binary]\n{binary}\n[vega.rpc]\n{rpc}\n"


@pytest.mark.parametrize(("http_path", "expected"), [
    pytest.param("/rpc", "/rpc", id="slash"),
    pytest.param("rpc", "/rpc", id="no-slash"),
    pytest.param("admin rpc/é", "/admin rpc/é", id="space-and-non-ascii"),
])
@pytest.mark.timeout(10)
def test_http_path_gets_a_leading_slash_like_go(http_path, expected):
    text = run_config_with(f"socketPath = '/s'\nhttpPath = {json.dumps(http_path)}")
    run_config, _ = vegavisor.parse_run_config(vegavisor.read_toml_text(text), RUN_CONFIG)
    assert run_config.rpc.http_path == expected


@pytest.mark.parametrize("name", ["vega", "bin/vega", "release/bin/vega-1.2"])
@pytest.mark.timeout(10)
def test_binary_name_may_name_a_subfolder(name):
    config, _ = parse(f"[autoInstall.asset]\nbinaryName = {json.dumps(name)}\n")
    assert config.auto_install.asset.binary_name == name


@pytest.mark.parametrize("folder", ["v2", "releases/v2", "a/b/c", "current-old", "x/current"])
@pytest.mark.timeout(10)
def test_upgrade_folders_may_name_a_subfolder(folder):
    config, _ = parse(f"[upgradeFolders]\nv2 = {json.dumps(folder)}\n")
    assert config.upgrade_folders == {"v2": folder}
    assert vegavisor.folder_for_tag(Path("/h"), "v2", config.upgrade_folders) == Path("/h", folder)


BINARY_NAME_PROBLEM = ("autoInstall.asset.binaryName: expected a path inside the release (not "
                       "absolute; no '..', '.' or empty part)")
FOLDER_PROBLEM = ("upgradeFolders.v1: expected a path inside HOME (not absolute; no '..', '.' or "
                  "empty part, not 'current')")

# Each case: (file, text, the first problem or None). Both the strict parse (`run`) and
# the check (`validate`) read it; they must agree.
CASES = {
    # config.toml: valid
    "config-empty": ("config", "", None),
    "config-original-visor": ("config", ORIGINAL_VISOR_CONFIG, None),
    "config-template": ("config", vegavisor.CONFIG_TEMPLATE, None),
    "config-unknown-key-only": ("config", "colour = 'blue'", None),
    "config-old-assets-off": ("config", OLD_ASSETS, None),
    "config-huge-count": ("config", "maxNumberOfRestarts = 9223372036854775807", None),
    # config.toml: invalid
    "negative": ("config", "maxNumberOfRestarts = -1",
                 "maxNumberOfRestarts: expected a whole number >= 0, got -1"),
    "float-count": ("config", "maxNumberOfRestarts = 2.5",
                    "maxNumberOfRestarts: expected a whole number >= 0, got 2.5"),
    "bool-count": ("config", "maxNumberOfRestarts = true",
                   "maxNumberOfRestarts: expected a whole number >= 0, got true"),
    "string-seconds": ("config", 'restartsDelaySeconds = "5"',
                       'restartsDelaySeconds: expected a number of seconds, got "5"'),
    "zero-poll": ("config", "pollIntervalSeconds = 0",
                  "pollIntervalSeconds: expected a number of seconds >= 0.05 (a shorter interval "
                  "only burns CPU: a block takes about a second), got 0"),
    "spinning-upgrade-poll": ("config", "upgradePollIntervalSeconds = 0.001",
                              "upgradePollIntervalSeconds: expected a number of seconds >= 0.05"),
    "shortest-poll": ("config", "upgradePollIntervalSeconds = 0.05", None),
    "inf": ("config", "stopSignalTimeoutSeconds = inf",
            "stopSignalTimeoutSeconds: expected a number of seconds >= 0 and <= 1e+09, got inf"),
    "nan": ("config", "stopDelaySeconds = nan",
            "stopDelaySeconds: expected a number of seconds >= 0 and <= 1e+09, got nan"),
    "seconds-overflow": ("config", "restartsDelaySeconds = 1e300",
                         "restartsDelaySeconds: expected a number of seconds >= 0 and <= 1e+09"),
    "seconds-huge-int": ("config", "restartsDelaySeconds = 9223372036854775807",
                         "restartsDelaySeconds: expected a number of seconds >= 0 and <= 1e+09"),
    "bool": ("config", "[autoInstall]\nenabled = 'yes'",
             'autoInstall.enabled: expected true or false, got "yes"'),
    "not-a-table": ("config", "autoInstall = 1", "autoInstall must be a table, got 1"),
    "insecure-url": ("config", "[autoInstall]\ngithubApiUrl = 'http://api.example.com'",
                     "autoInstall.githubApiUrl: 'http://api.example.com' is plain http:// to a "
                     "host that is not loopback; use https://"),
    "ftp-url": ("config", "[autoInstall]\ngithubApiUrl = 'ftp://x'",
                "autoInstall.githubApiUrl: 'ftp://x' is not an https:// URL"),
    "owner-with-slash": ("config", "[autoInstall]\nrepositoryOwner = 'a/b'",
                         "autoInstall.repositoryOwner: expected a GitHub name"),
    "template": ("config", "[autoInstall.asset]\nname = 'vega-{platform}.zip'",
                 "autoInstall.asset.name: only {os} and {arch} can be filled in, not {platform}"),
    "binary-dotdot": ("config", "[autoInstall.asset]\nbinaryName = '../vega'",
                      BINARY_NAME_PROBLEM + ', got "../vega"'),
    "binary-absolute": ("config", "[autoInstall.asset]\nbinaryName = '/usr/bin/vega'",
                        BINARY_NAME_PROBLEM),
    "binary-empty-part": ("config", "[autoInstall.asset]\nbinaryName = 'bin//vega'",
                          BINARY_NAME_PROBLEM),
    "binary-empty": ("config", "[autoInstall.asset]\nbinaryName = ''", BINARY_NAME_PROBLEM),
    "folder-absolute": ("config", "[upgradeFolders]\n'v1' = '/etc'", FOLDER_PROBLEM),
    "folder-dotdot": ("config", "[upgradeFolders]\n'v1' = 'a/../../etc'", FOLDER_PROBLEM),
    "folder-trailing-dotdot": ("config", "[upgradeFolders]\n'v1' = 'a/..'", FOLDER_PROBLEM),
    "binary-trailing-dotdot": ("config", "[autoInstall.asset]\nbinaryName = 'bin/..'",
                               BINARY_NAME_PROBLEM),
    "folder-dot": ("config", "[upgradeFolders]\n'v1' = '.'", FOLDER_PROBLEM),
    "folder-current": ("config", "[upgradeFolders]\n'v1' = 'current'", FOLDER_PROBLEM),
    "folder-in-current": ("config", "[upgradeFolders]\n'v1' = 'current/v1'", FOLDER_PROBLEM),
    "folder-not-a-string": ("config", "[upgradeFolders]\n'v1' = 1",
                            "upgradeFolders.v1: expected a string, got 1"),
    "checksum": ("config", "[autoInstall.checksums]\n'v1' = 'md5:abc'",
                 "autoInstall.checksums.v1: expected \"sha256:\" followed by 64 hex digits"),
    "log-format": ("config", "[logging]\nformat = 'xml'",
                   'logging.format: expected one of "text", "json", got "xml"'),
    "metrics-nul": ("config", 'metricsFile = "/a\\u0000b"',
                    "metricsFile: a NUL character cannot be passed on"),
    "old-assets-on": ("config", "[autoInstall]\nenabled = true\n" + OLD_ASSETS,
                      "[autoInstall.assets] is the old format"),
    "date-in-list": ("config", "[autoInstall.asset]\nname = [1979-05-27]",
                     'autoInstall.asset.name: expected a string, got ["1979-05-27"]'),
    # run-config.toml: valid
    "run-original": ("run", ORIGINAL_RUN_CONFIG, None),
    "run-http-path-without-slash": ("run", run_config_with("socketPath='/s'\nhttpPath='rpc'"),
                                    None),
    "run-unknown-key-only": ("run", run_config_with(binary="path = 'v'\narg = []"), None),
    # run-config.toml: invalid
    "run-empty": ("run", "", "vega is missing: it says how to run core"),
    "run-no-rpc": ("run", "name='x'\n[vega.binary]\npath='vega'",
                   "vega.rpc is missing: it names core's admin socket"),
    "run-no-name": ("run", "[vega.binary]\npath='v'\n[vega.rpc]\nsocketPath='/s'\nhttpPath='/r'",
                    "name is missing"),
    "run-no-binary": ("run", "name='x'\n[vega.rpc]\nsocketPath='/s'\nhttpPath='/r'",
                      "vega.binary is missing"),
    "run-no-path": ("run", run_config_with(binary="args = []"), "vega.binary.path is missing"),
    "run-args-string": ("run", run_config_with(binary="path='v'\nargs='node'"),
                        'vega.binary.args: expected an array of strings, got "node"'),
    "run-args-nul": ("run", run_config_with(binary="path='v'\nargs=[\"a\\u0000\"]"),
                     "vega.binary.args: a NUL character cannot be passed on"),
    "run-http-path-empty": ("run", run_config_with("socketPath='/s'\nhttpPath=''"),
                            "vega.rpc.httpPath: must not be empty"),
    "run-http-path-number": ("run", run_config_with("socketPath='/s'\nhttpPath=8"),
                             "vega.rpc.httpPath: expected a string, got 8"),
    "run-socket-too-long": ("run", run_config_with("httpPath='/r'\nsocketPath='/" + "s" * 120
                                                   + "'"),
                            "vega.rpc.socketPath: a unix socket path is limited to 107"),
    "run-rpc-not-a-table": ("run", "name='x'\n[vega]\nrpc = 5\n[vega.binary]\npath='v'",
                            "vega.rpc must be a table, got 5"),
    "run-data-node-flat": ("run", run_config_with() + "[data_node]\npath='v'",
                           "data_node.binary is missing"),
    "run-data-node-not-a-table": ("run", "data_node = 'vega'\n" + run_config_with(),
                                  'data_node must be a table, got "vega"'),
}
# Each check of seconds (any, a poll interval, more than zero) refuses what only looks like a
# number of seconds, naming the key: a bool (an int to Python), a string of digits, nan,
# inf, a negative, and an integer too big for a float (float() of it raises OverflowError).
NOT_SECONDS = {
    "bool": ("true", "expected a number of seconds, got true"),
    "string": ('"5"', 'expected a number of seconds, got "5"'),
    "nan": ("nan", "expected a number of seconds >= 0 and <= 1e+09, got nan"),
    "inf": ("inf", "expected a number of seconds >= 0 and <= 1e+09, got inf"),
    "negative": ("-1", "expected a number of seconds >= 0 and <= 1e+09, got -1"),
    "beyond-float": ("1" + "0" * 400, "expected a number of seconds >= 0 and <= 1e+09, got 10"),
}
CASES.update({
    f"{key}-{kind}": ("config", f"{key} = {value}", f"{key}: {problem}")
    for key in ("restartsDelaySeconds", "pollIntervalSeconds", "rpcTimeoutSeconds")
    for kind, (value, problem) in NOT_SECONDS.items()
})
PARSERS = {"config": (vegavisor.parse_config, vegavisor.check_config, CONFIG),
           "run": (vegavisor.parse_run_config, vegavisor.check_run_config, RUN_CONFIG)}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.timeout(10)
def test_run_and_validate_agree_on_every_case(case):
    kind, text, expected = CASES[case]
    parse_file, check_file, path = PARSERS[kind]
    doc = vegavisor.read_toml_text(text)
    record, findings = check_file(doc, path)
    if expected is None:
        parsed, warnings = parse_file(doc, path)
        assert record == parsed
        assert findings == [vegavisor.Finding("problem", w) for w in warnings]
    else:
        with pytest.raises(vegavisor.ConfigError) as e:
            parse_file(doc, path)
        assert e.value.exit_code == 2
        assert str(e.value).startswith(f"{path}: {expected}")
        assert findings[0] == vegavisor.Finding("problem", str(e.value))


@pytest.mark.timeout(10)
def test_check_reports_every_bad_key_where_parse_stops_at_the_first():
    doc = vegavisor.read_toml_text(
        "maxNumberOfRestarts = -1\npollIntervalSeconds = 0\ncolour = 1\n"
        "[autoInstall]\nenabled = 'no'\n[autoInstall.asset]\nbinaryName = '/x'\n")
    _, findings = vegavisor.check_config(doc, CONFIG)
    assert [f.text.split(": ")[1].split(" ")[0] for f in findings] == [
        "maxNumberOfRestarts", "pollIntervalSeconds", "autoInstall.enabled",
        "autoInstall.asset.binaryName", "unknown"]


@pytest.mark.timeout(10)
def test_changed_keys_are_named_as_in_config_toml():
    old, _ = parse(ORIGINAL_VISOR_CONFIG)
    new, _ = parse(ORIGINAL_VISOR_CONFIG.replace("restartsDelaySeconds = 5",
                                                 "restartsDelaySeconds = 7")
                   .replace("enabled = true", "enabled = false")
                   .replace('"vX.X.X" = "vX.X.X"', '"v2" = "releases/v2"')
                   + "[logging]\nlevel = 'debug'\n")
    assert vegavisor.changed_keys(old, new) == [
        "restartsDelaySeconds", "upgradeFolders", "autoInstall.enabled", "logging.level"]
    assert vegavisor.changed_keys(old, old) == []


# --- any value at any key: a record or one line, never a traceback (SPEC 3.1.7) ---

def key_paths(table, where=()):
    for field in table.fields:
        if isinstance(field, vegavisor.Table):
            yield where + (field.name,)
            yield from key_paths(field, where + (field.name,))
        else:
            yield where + (field.name,)


CONFIG_PATHS = sorted(key_paths(vegavisor.CONFIG_SCHEMA)) + [("upgradeFolders", "v1"),
                                                             ("autoInstall", "checksums", "v1")]
RUN_CONFIG_PATHS = sorted(key_paths(vegavisor.RUN_CONFIG_SCHEMA))
toml_scalars = (st.booleans() | st.integers() | st.floats() | st.text(max_size=200)
                | st.datetimes() | st.dates() | st.times())
# Any TOML value two levels deep: a scalar of any kind, a list or a table where a key needs
# another (st.recursive drew the same kinds of value at several times the cost).
toml_flat = (toml_scalars | st.lists(toml_scalars, max_size=4)
             | st.dictionaries(st.text(max_size=10), toml_scalars, max_size=4))
toml_values = toml_flat | st.lists(toml_flat, max_size=4) | st.dictionaries(
    st.text(max_size=10), toml_flat, max_size=4)


def put(doc: dict, path, value) -> dict:
    table = doc
    for name in path[:-1]:
        if not isinstance(table.get(name), dict):
            table[name] = {}
        table = table[name]
    table[path[-1]] = value
    return doc


@pytest.mark.timeout(120)
@settings(max_examples=int(os.environ.get("CONFIG_EXAMPLES", "300")), deadline=None)
@given(kind=st.sampled_from(["config", "run"]), data=st.data(), value=toml_values)
def test_any_value_at_any_key_is_a_record_or_one_line(kind, data, value):
    parse_file, check_file, path = PARSERS[kind]
    base = ORIGINAL_VISOR_CONFIG if kind == "config" else ORIGINAL_RUN_CONFIG
    key = data.draw(st.sampled_from(CONFIG_PATHS if kind == "config" else RUN_CONFIG_PATHS))
    doc = put(vegavisor.read_toml_text(base), key, value)
    _, findings = check_file(doc, path)
    try:
        parse_file(doc, path)
    except vegavisor.ConfigError as e:
        assert "\n" not in str(e)
        assert findings[0].text == str(e)
    else:
        assert all(f.text.startswith(f"{path}: unknown key") or "old format" in f.text
                   for f in findings)


# --- through the real command line ---

@pytest.mark.parametrize(("config", "expected"), [
    pytest.param("maxNumberOfRestarts = 'three'\n",
                 r"config\.toml: maxNumberOfRestarts: expected a whole number >= 0, got \"three\"",
                 id="bad-type"),
    pytest.param("a = 1\nb = \n", r"config\.toml: line 2, column 5: ", id="toml-syntax"),
    pytest.param("[autoInstall]\nenabled = true\n[autoInstall.assets.vega]\nasset_name = 'x'\n",
                 r"\[autoInstall\.assets\] is the old format", id="old-format"),
    pytest.param(b"\xff\xfe".decode("latin-1"), r"config\.toml: not UTF-8 text", id="not-utf8"),
])
@pytest.mark.timeout(30)
def test_run_with_a_bad_config_exits_2_with_one_line(short_tmp, config, expected):
    home = short_tmp / "home"
    assert run_vegavisor(["init", "--home", str(home)]).returncode == 0
    (home / "config.toml").write_bytes(config.encode("latin-1"))
    done = run_vegavisor(["run", "--home", str(home)])
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("vegavisor: error: " + str(home / "config.toml"))
    assert __import__("re").search(expected, lines[0]), lines[0]


@pytest.mark.timeout(30)
def test_run_with_a_bad_run_config_exits_2_naming_it(short_tmp):
    home = short_tmp / "home"
    assert run_vegavisor(["init", "--home", str(home)]).returncode == 0
    (home / "genesis" / "run-config.toml").write_text(
        "name = 'genesis'\n[vega.binary]\n[vega.rpc]\nsocketPath = '/s'\nhttpPath = '/rpc'\n")
    done = run_vegavisor(["run", "--home", str(home)])
    assert done.returncode == 2
    # `run` logs to stdout (SPEC part 3); giving up is its last line
    assert done.stdout.strip().splitlines()[-1].endswith(
        f'ERROR giving up reason="{home}/genesis/run-config.toml: vega.binary.path is missing"')


@pytest.mark.timeout(30)
def test_run_without_config_says_how_to_make_one(short_tmp):
    done = run_vegavisor(["run", "--home", str(short_tmp)])
    assert done.returncode == 2
    assert done.stderr == (f"vegavisor: error: {short_tmp}/config.toml does not exist; "
                           f"create it with `vegavisor init --home {short_tmp}`\n")


@pytest.mark.timeout(30)
def test_run_warns_of_run_config_typos_with_validates_did_you_mean(home, start_visor):
    home.install_version("genesis", "v1")
    path = home.path / "genesis" / "run-config.toml"
    path.write_text(path.read_text().replace("args = ", "arg = []\nargs = "))
    expected = "unknown key vega.binary.arg is ignored (did you mean vega.binary.args?)"
    visor = start_visor()
    visor.wait_log("run-config warning")
    visor.signal(signal.SIGTERM)
    assert visor.wait_exit() == 0
    [warning] = [line for line in visor.log().splitlines() if "run-config warning" in line]
    assert f"{path}: {expected}" in warning
    done = run_vegavisor(["validate", "--home", str(home.path)])
    assert f"problem: {path}: {expected}" in done.stdout.splitlines()
