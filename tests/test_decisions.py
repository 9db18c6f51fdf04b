"""Pure decisions: exit status words, backoff, args, history segments, log lines (admin
answers are in test_admin.py)."""
from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

import vegavisor


@pytest.mark.parametrize(("returncode", "words"), [
    pytest.param(0, "exited with status 0", id="zero"),
    pytest.param(3, "exited with status 3", id="three"),
    pytest.param(-signal.SIGSEGV, "terminated by SIGSEGV", id="segv"),
    pytest.param(-signal.SIGKILL, "terminated by SIGKILL", id="kill"),
    pytest.param(-200, "terminated by signal 200", id="unknown-signal"),
])
def test_describe_exit_status(returncode, words):
    assert vegavisor.describe_exit_status(returncode) == words


@pytest.mark.parametrize(("attempt", "base", "cap", "delay"), [
    pytest.param(1, 5, 60, 5, id="first"),
    pytest.param(2, 5, 60, 10, id="doubles"),
    pytest.param(4, 5, 60, 40, id="fourth"),
    pytest.param(5, 5, 60, 60, id="capped"),
    pytest.param(10**9, 5, 60, 60, id="huge-attempt"),
    pytest.param(3, 0, 60, 0, id="no-delay"),
    pytest.param(3, 10, 2, 10, id="cap-below-base"),
])
def test_restart_delay(attempt, base, cap, delay):
    assert vegavisor.restart_delay(attempt, base, cap) == delay


@pytest.mark.parametrize(("restarts", "uptime", "after"), [
    pytest.param(2, 10.0, 3, id="short-lived-counts"),
    pytest.param(1, 599.9, 2, id="just-under-reset"),
    pytest.param(3, 600.0, 1, id="long-lived-resets"),
])
def test_count_restart(restarts, uptime, after):
    assert vegavisor.count_restart(restarts, uptime, 600) == after


@pytest.mark.parametrize(("tag", "folders", "expected"), [
    pytest.param("v0.74.0", {}, "/h/v0.74.0", id="tag"),
    pytest.param("v0.74.0", {"v0.74.0": "custom"}, "/h/custom", id="mapped"),
    pytest.param("v1", {"v0.74.0": "custom"}, "/h/v1", id="other-mapping"),
])
def test_folder_for_tag(tag, folders, expected):
    assert vegavisor.folder_for_tag(Path("/h"), tag, folders) == Path(expected)


@pytest.mark.parametrize("tag", ["../etc", "..", "a/b", "", "current"])
def test_folder_for_tag_refuses_tags_that_leave_home(tag):
    with pytest.raises(vegavisor.VisorError, match="cannot name a folder inside /h"):
        vegavisor.folder_for_tag(Path("/h"), tag, {})


@pytest.mark.parametrize(("args", "expected"), [
    pytest.param(("node",), ("node", "--snapshot.load-from-block-height", "100"), id="added"),
    pytest.param(("node", "--snapshot.load-from-block-height=5"),
                 ("node", "--snapshot.load-from-block-height=5"), id="kept-equals"),
    pytest.param(("node", "--snapshot.load-from-block-height", "5"),
                 ("node", "--snapshot.load-from-block-height", "5"), id="kept"),
])
def test_with_snapshot_flag(args, expected):
    assert vegavisor.with_snapshot_flag(args, 100) == expected


@pytest.mark.parametrize(("args", "expected"), [
    pytest.param(("datanode", "start", "--home", "h"), ("datanode", "start", "--home", "h"),
                 id="already"),
    pytest.param(("start", "--home", "h"), ("datanode", "start", "--home", "h"), id="old-binary"),
    pytest.param((), (), id="empty"),
])
def test_data_node_args(args, expected):
    assert vegavisor.data_node_args(args) == expected


@pytest.mark.parametrize(("args", "expected"), [
    pytest.param(("--home", "/a"), "/a", id="separate"),
    pytest.param(("--home=/b",), "/b", id="equals"),
    pytest.param(("--home", "/a", "--home=/b"), "/b", id="last-wins"),
    pytest.param(("--home",), None, id="dangling"),
    pytest.param(("--homes", "/a"), None, id="other-flag"),
])
def test_flag_value(args, expected):
    assert vegavisor.flag_value(args, "--home") == expected


@pytest.mark.parametrize(("output", "height"), [
    pytest.param('{"LatestSegment":{"from_height":1,"to_height":1033500}}', 1033500, id="json"),
    pytest.param("Error: no history segments found\n", None, id="none"),
])
def test_parse_latest_segment(output, height):
    assert vegavisor.parse_latest_segment(output) == height


def segment(height: str) -> str:
    return '{"LatestSegment":{"from_height":1,"to_height":%s}}' % height


NOT_A_HEIGHT = "latest-history-segment to_height is not a height: "


@pytest.mark.parametrize(("output", "problem"), [
    pytest.param("", "unexpected latest-history-segment output: ''", id="empty"),
    pytest.param("{}", "unexpected latest-history-segment output: '{}'", id="no-segment"),
    pytest.param(segment('"x"'), NOT_A_HEIGHT + "'x'", id="string"),
    # a bool is an int to Python: true is no block to restart core from
    pytest.param(segment("true"), NOT_A_HEIGHT + "True", id="bool"),
    pytest.param(segment("-1"), NOT_A_HEIGHT + "-1", id="negative"),
    pytest.param(segment("1.5"), NOT_A_HEIGHT + "1.5", id="float"),
])
def test_parse_latest_segment_rejects(output, problem):
    with pytest.raises(vegavisor.VisorError) as error:
        vegavisor.parse_latest_segment(output)
    assert str(error.value) == problem


@pytest.mark.parametrize(("url", "problem"), [
    pytest.param("https://api.github.com", None, id="https"),
    pytest.param("http://127.0.0.1:8080", None, id="loopback-v4"),
    pytest.param("http://127.9.9.9", None, id="loopback-range"),
    pytest.param("http://[::1]:80/x", None, id="loopback-v6"),
    pytest.param("http://localhost:9", None, id="localhost"),
    pytest.param("http://api.github.com", "plain http:// to a host that is not loopback",
                 id="http"),
    pytest.param("http://10.0.0.1", "plain http://", id="private"),
    pytest.param("http://localhost.evil.com", "plain http://", id="lookalike"),
    pytest.param("file:///etc/passwd", "is not an https:// URL", id="file"),
    pytest.param("https://", "has no host", id="no-host"),
    pytest.param("http://127.0.0.1:99999/x", "http://127.0.0.1:99999/x is not a valid URL (Port "
                 "out of range 0-65535)", id="port-out-of-range"),
])
def test_url_problem(url, problem):
    found = vegavisor.url_problem(url)
    assert found is None if problem is None else problem in found


@pytest.mark.parametrize(("value", "shown"), [
    pytest.param("core", "core", id="plain"),
    pytest.param("a b", '"a b"', id="space"),
    pytest.param("", '""', id="empty"),
    pytest.param('say "hi"', '"say \\"hi\\""', id="quotes"),
    pytest.param(12, "12", id="int"),
    pytest.param(None, "null", id="none"),
])
def test_format_fact(value, shown):
    assert vegavisor.format_fact(value) == shown


def test_format_log_line_text_and_json():
    ts = 1795737600.25  # 2026-11-27T00:00:00.250Z
    text = vegavisor.format_log_line("text", ts, "info", "started", {"role": "core", "pid": 9})
    assert text == "2026-11-27T00:00:00.250Z INFO  started role=core pid=9"
    line = vegavisor.format_log_line("json", ts, "warn", "stopped", {"status": "exited"})
    # Vega's own JSON log keys T, L, N, M (SPEC part 3)
    assert json.loads(line) == {"T": "2026-11-27T00:00:00.250Z", "L": "warn",
                                "N": "vegavisor", "M": "stopped", "status": "exited"}


def test_log_lines_carry_the_wall_clock_in_utc():
    import calendar
    import io
    import re
    stream = io.StringIO()
    at = calendar.timegm((2026, 11, 27, 3, 0, 0)) + 0.25  # the clock is passed, not patched
    vegavisor.Log(stream, clock=lambda: at).info("ready to upgrade", tag="v2")
    vegavisor.Log(stream, level="warn", clock=lambda: at).info("filtered out")
    assert stream.getvalue() == "2026-11-27T03:00:00.250Z INFO  ready to upgrade tag=v2\n"
    assert re.fullmatch(r"20\d\d-\d\d-\d\dT\d\d:\d\d:\d\dZ", vegavisor.utc_now())
