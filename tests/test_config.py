"""config.toml and run-config.toml: parsed once into records; bad input exits 2 naming it."""
from __future__ import annotations

from pathlib import Path

import pytest

import vegavisor
from conftest import run_vegavisor

CONFIG = Path("/h/config.toml")
RUN_CONFIG = Path("/h/genesis/run-config.toml")

# A config.toml exactly as the original Go Visor's `init` writes it.
ORIGINAL_VISOR_CONFIG = """\
maxNumberOfFirstConnectionRetries = 175000
maxNumberOfRestartConnectionRetries = 10
maxNumberOfRestarts = 3
restartsDelaySeconds = 5
stopDelaySeconds = 0
stopSignalTimeoutSeconds = 15

[upgradeFolders]
  "vX.X.X" = "vX.X.X"

[autoInstall]
  enabled = true
  repositoryOwner = "vegaprotocol"
  repository = "vega"
  [autoInstall.asset]
    name = "vega-linux-amd64.zip"
    binaryName = "vega"
"""

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
def test_empty_config_takes_every_default():
    config, warnings = parse("")
    assert warnings == []
    assert config == vegavisor.Config(
        max_first_connection_retries=175000, max_restart_connection_retries=10,
        max_restarts=3, restarts_delay=5.0, stop_delay=0.0, stop_signal_timeout=15.0,
        poll_interval=2.0, upgrade_poll_interval=0.25, rpc_timeout=5.0,
        restarts_backoff_max=60.0, restarts_reset_after=600.0, metrics_file="",
        upgrade_folders={},
        auto_install=vegavisor.AutoInstallConfig(
            enabled=True, repository_owner="vegaprotocol", repository="vega",
            github_api_url="https://api.github.com", prefetch=True,
            prefetch_retry_delay=30.0, http_timeout=60.0, require_checksum=False,
            checksums={}, asset=vegavisor.AssetConfig("vega-{os}-{arch}.zip", "vega")),
        logging=vegavisor.LoggingConfig("text", "info"),
    )


@pytest.mark.timeout(10)
def test_init_template_parses_to_the_defaults():
    assert parse(vegavisor.CONFIG_TEMPLATE) == parse("")


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


@pytest.mark.parametrize(("text", "expected"), [
    pytest.param("maxNumberOfRestarts = -1",
                 "maxNumberOfRestarts: expected a whole number >= 0, got -1", id="negative"),
    pytest.param("maxNumberOfRestarts = 2.5",
                 "maxNumberOfRestarts: expected a whole number >= 0, got 2.5", id="float-count"),
    pytest.param("maxNumberOfRestarts = true",
                 "maxNumberOfRestarts: expected a whole number >= 0, got true", id="bool-count"),
    pytest.param('restartsDelaySeconds = "5"',
                 'restartsDelaySeconds: expected a number of seconds, got "5"', id="string"),
    pytest.param("pollIntervalSeconds = 0",
                 "pollIntervalSeconds: expected a number of seconds > 0, got 0", id="zero-poll"),
    pytest.param("stopSignalTimeoutSeconds = inf",
                 "stopSignalTimeoutSeconds: expected a number of seconds >= 0, got inf",
                 id="inf"),
    pytest.param("[autoInstall]\nenabled = 'yes'",
                 'autoInstall.enabled: expected true or false, got "yes"', id="bool"),
    pytest.param("autoInstall = 1", "autoInstall must be a table, got 1", id="not-a-table"),
    pytest.param("[autoInstall]\ngithubApiUrl = 'http://api.example.com'",
                 "autoInstall.githubApiUrl: 'http://api.example.com' is plain http:// to a "
                 "host that is not loopback; use https://", id="insecure-url"),
    pytest.param("[autoInstall]\ngithubApiUrl = 'ftp://x'",
                 "autoInstall.githubApiUrl: 'ftp://x' is not an https:// URL", id="ftp-url"),
    pytest.param("[autoInstall.asset]\nname = 'vega-{platform}.zip'",
                 "autoInstall.asset.name: only {os} and {arch} can be filled in, not {platform}",
                 id="template"),
    pytest.param("[autoInstall.asset]\nbinaryName = '../vega'",
                 "autoInstall.asset.binaryName: expected a folder name inside HOME", id="binary"),
    pytest.param("[upgradeFolders]\n'v1' = '/etc'",
                 "upgradeFolders.v1: expected a folder name inside HOME", id="folder-escape"),
    pytest.param("[autoInstall.checksums]\n'v1' = 'md5:abc'",
                 "autoInstall.checksums.v1: expected \"sha256:\" followed by 64 hex digits",
                 id="checksum"),
    pytest.param("[logging]\nformat = 'xml'",
                 'logging.format: expected one of "text", "json", got "xml"', id="log-format"),
])
@pytest.mark.timeout(10)
def test_invalid_values_name_the_key_and_the_problem(text, expected):
    with pytest.raises(vegavisor.ConfigError) as e:
        parse(text)
    assert str(e.value).startswith(f"{CONFIG}: {expected}")
    assert e.value.exit_code == 2


@pytest.mark.timeout(10)
def test_old_assets_format_says_how_to_rewrite_it():
    text = "[autoInstall.assets.vega]\nasset_name = 'vega-linux-amd64.zip'\nbinary_name = 'vega'\n"
    with pytest.raises(vegavisor.ConfigError) as e:
        parse(text)
    assert str(e.value) == (
        f"{CONFIG}: [autoInstall.assets] is the old format, which the original Visor ignored "
        'until the upgrade failed; replace it with [autoInstall.asset] '
        'name = "vega-linux-amd64.zip" and binaryName = "vega"')


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


@pytest.mark.parametrize(("text", "expected"), [
    pytest.param("", "vega is missing: it says how to run core", id="empty"),
    pytest.param("name='x'\n[vega.binary]\npath='vega'", "vega.rpc is missing", id="no-rpc"),
    pytest.param("[vega.binary]\npath='v'\n[vega.rpc]\nsocketPath='/s'\nhttpPath='/r'",
                 "name is missing", id="no-name"),
    pytest.param("name='x'\n[vega.rpc]\nsocketPath='/s'\nhttpPath='/r'",
                 "vega.binary is missing", id="no-binary"),
    pytest.param("name='x'\n[vega.binary]\npath='v'\nargs='node'\n[vega.rpc]\nsocketPath='/s'"
                 "\nhttpPath='/r'", 'vega.binary.args: expected an array of strings, got "node"',
                 id="args-string"),
    pytest.param("name='x'\n[vega.binary]\npath='v'\n[vega.rpc]\nsocketPath='/s'\nhttpPath='rpc'",
                 'vega.rpc.httpPath: expected an HTTP path starting with "/"', id="http-path"),
    pytest.param("name='x'\n[vega.binary]\npath='v'\n[vega.rpc]\nhttpPath='/r'\nsocketPath='/"
                 + "s" * 120 + "'", "vega.rpc.socketPath: a unix socket path is limited to 107",
                 id="socket-too-long"),
    pytest.param("name='x'\n[vega.binary]\npath='v'\n[vega.rpc]\nsocketPath='/s'\nhttpPath='/r'"
                 "\n[data_node]\npath='v'", "data_node.binary is missing", id="data-node-flat"),
])
@pytest.mark.timeout(10)
def test_invalid_run_configs_name_the_key(text, expected):
    with pytest.raises(vegavisor.ConfigError) as e:
        vegavisor.parse_run_config(vegavisor.read_toml_text(text), RUN_CONFIG)
    assert str(e.value).startswith(f"{RUN_CONFIG}: {expected}")


# --- through the real command line ---

@pytest.mark.parametrize(("config", "expected"), [
    pytest.param("maxNumberOfRestarts = 'three'\n",
                 r"config\.toml: maxNumberOfRestarts: expected a whole number >= 0, got \"three\"",
                 id="bad-type"),
    pytest.param("a = 1\nb = \n", r"config\.toml: line 2, column 5: ", id="toml-syntax"),
    pytest.param("[autoInstall.assets.vega]\nasset_name = 'x.zip'\n",
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
    assert done.stderr.strip().splitlines()[-1].endswith(
        f'reason="{home}/genesis/run-config.toml: vega.binary.path is missing"')


@pytest.mark.timeout(30)
def test_run_without_config_says_how_to_make_one(short_tmp):
    done = run_vegavisor(["run", "--home", str(short_tmp)])
    assert done.returncode == 2
    assert done.stderr == (f"vegavisor: error: {short_tmp}/config.toml does not exist; "
                           f"create it with `vegavisor init --home {short_tmp}`\n")
