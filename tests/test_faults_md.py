"""FAULTS.md is rendered from the FAULTS rows of every tests/test_faults_*.py module, and
its Soak section from the committed report of scripts/soak.py (scripts/soak-report.json).

`python3 tests/test_faults_md.py` rewrites FAULTS.md; the tests here fail when the file
differs from the rendering, when a row id repeats within its file, or when a row is
not a case of a test function of its module.
"""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any
from typing import Dict
from typing import List
from typing import NamedTuple
from typing import Optional
from typing import Tuple

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
FAULTS_MD = ROOT / "FAULTS.md"
REGENERATE = "python3 tests/test_faults_md.py"
SOAK_REPORT = ROOT / "scripts" / "soak-report.json"
# The issue's order; an area not listed here comes after them, alphabetically.
AREAS = ("crash points", "downloads", "admin socket", "children", "signals")
KNOWN_BUG = " (strict xfail: a known bug, the expected outcome does not happen yet)"


class Located(NamedTuple):
    """A row with the file and the test function that check it."""

    row: Any
    file: str  # e.g. "test_faults_crash.py"
    function: Optional[str]  # None when no test function of the module has the row
    xfail: bool  # the case is a strict xfail: the row shows a known bug

    @property
    def test(self) -> str:
        return f"tests/{self.file}::{self.function}[{self.row.id}]"


def fault_modules() -> List[Any]:
    """Every tests/test_faults_*.py module but this one, imported by name."""
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    names = sorted(p.stem for p in TESTS.glob("test_faults_*.py") if p.stem != Path(__file__).stem)
    return [importlib.import_module(name) for name in names]


def parametrized_rows(function: Any) -> List[Tuple[Any, bool]]:
    """(first value, marked xfail) of each case of a function's parametrize marks."""
    found = []
    for mark in getattr(function, "pytestmark", []):
        if mark.name != "parametrize" or len(mark.args) < 2:
            continue
        for case in mark.args[1]:
            values = getattr(case, "values", case if isinstance(case, (tuple, list)) else (case,))
            xfail = any(m.name == "xfail" for m in getattr(case, "marks", ()))
            if values:
                found.append((values[0], xfail))
    return found


def matrix_function_of(module: Any, row: Any) -> Tuple[Optional[str], bool]:
    """The test function of `module` that has `row` as a case, and whether it is xfail."""
    for name in sorted(vars(module)):
        function = getattr(module, name)
        if not (name.startswith("test") and callable(function)
                and getattr(function, "__module__", None) == module.__name__):
            continue
        for case, xfail in parametrized_rows(function):
            if case is row or case == row:
                return name, xfail
    return None, False


def collect() -> List[Located]:
    located = []
    for module in fault_modules():
        for row in getattr(module, "FAULTS", []):
            located.append(Located(row, Path(module.__file__).name,
                                   *matrix_function_of(module, row)))
    return located


def cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def area_order(area: str) -> tuple:
    return (AREAS.index(area), "") if area in AREAS else (len(AREAS), area)


def soak_report() -> Optional[Dict[str, Any]]:
    """The figures of the last soak committed (`scripts/soak.py --report`), if any."""
    return json.loads(SOAK_REPORT.read_text()) if SOAK_REPORT.exists() else None


def render_soak(figures: Dict[str, Any]) -> List[str]:
    command = figures["command"] + " --report scripts/soak-report.json"
    lines = [
        "", "## Soak", "",
        f"`{command}` (Python {figures['python']}; `tests/test_soak.py` runs a short one): "
        f"{figures['upgrades']} upgrades in a row, {figures['from']} to {figures['to']}, each "
        f"scheduled by the running fake core; each release served by the fake GitHub "
        f"(auto-install, prefetch) or pre-placed. Seeded faults: kill -9 of vegavisor (then "
        f"started again, as systemd would) or a `systemctl restart` (SIGTERM), core crashes "
        f"(SIGSEGV, SIGKILL), spells of GitHub failures (5xx, connection resets, slow "
        f"answers, rate limit), each at a random moment after the upgrade's start, the old "
        f"core's acceptance of the release, its ready-to-upgrade or the new core's first "
        f"start, or just before the upgrade block. Checked after each upgrade and at the "
        f"end: never two cores alive at once (the fake cores' record and /proc scans every "
        f"20 ms), the expected version answering, versions stepping up by one with the "
        f"upgrade block's snapshot until the new one answered, no core left after vegavisor "
        f"stopped (exit 0 on SIGTERM), no traceback nor unexpected exception, no release "
        f"folder deleted (pre-placed ones unchanged), no staging left, the token only on "
        f"the API host's API paths and "
        f"never in a log, file or core's environment.",
        "", "| figure | value |", "|---|---|",
    ]
    rows = (
        ("upgrades done", f"{figures['upgrades_done']} of {figures['upgrades']}"),
        ("kill -9 of vegavisor", figures["kills"]),
        ("restarts of vegavisor (SIGTERM, exit 0 expected)", figures["restarts"]),
        ("core crashes", figures["crashes"]),
        ("GitHub fault spells",
         f"{figures['github_spells']} ({figures['github_requests_in_spells']} requests answered "
         f"during them, {figures['github_failed_requests']} with an error status)"),
        ("faults planned but not reached (the upgrade was over first)",
         figures["faults_missed"]),
        ("GitHub API requests", figures["github_api_requests"]),
        ("vegavisor exits on its own", figures["visor_exits"]),
        ("core starts", figures["core_starts"]),
        ("most cores alive at once", f"{figures['max_cores_alive']} "
                                     f"(in {figures['proc_scans']} /proc scans)"),
        ("longest upgrade", f"{figures['max_upgrade_seconds']} s"),
        ("total time", f"{figures['total_seconds']} s"),
        ("invariant violations", figures["invariant_violations"]),
    )
    lines += [f"| {name} | {cell(value)} |" for name, value in rows]
    lines += ["", "| upgrade | release | seconds | faults injected | result |",
              "|---|---|---|---|---|"]
    lines += [f"| {u['from']} → {u['to']} | {u['source']} | {u['seconds']} | "
              f"{cell('; '.join(u['faults']) or 'none')} | {u['result']} |"
              for u in figures["per_upgrade"]]
    if figures["violations"]:
        lines += [""] + [f"- violation: {cell(v)}" for v in figures["violations"]]
    return lines


def render(located: List[Located], soak: Optional[Dict[str, Any]] = None) -> str:
    lines = [
        "# Fault matrix",
        "",
        f"Generated from the `FAULTS` rows of `tests/test_faults_*.py`, each row a test case; "
        f"do not edit by hand, regenerate with `{REGENERATE}`. A row marked strict xfail "
        f"shows a known bug: its test fails until vegavisor does what the row expects.",
    ]
    for area in sorted({item.row.area for item in located}, key=area_order):
        items = [item for item in located if item.row.area == area]
        lines += ["", f"## {area}", "", "| fault | expected outcome | test |", "|---|---|---|"]
        lines += [f"| {cell(item.row.fault)} | {cell(item.row.expected)} | `{item.test}`"
                  f"{KNOWN_BUG if item.xfail else ''} |" for item in items]
        bugs = sum(item.xfail for item in items)
        lines += ["", f"{len(items)} cases in {area}"
                  + (f", {bugs} of them strict xfail (known bugs)." if bugs else ".")]
    if soak is not None:
        lines += render_soak(soak)
    return "\n".join(lines) + "\n"


def write() -> Path:
    FAULTS_MD.write_text(render(collect(), soak_report()))
    return FAULTS_MD


@pytest.mark.timeout(60)
def test_faults_md_is_the_rendering_of_the_rows():
    expected = render(collect(), soak_report())
    actual = FAULTS_MD.read_text() if FAULTS_MD.exists() else ""
    assert actual == expected, f"{FAULTS_MD} is out of date; regenerate it with `{REGENERATE}`"


@pytest.mark.timeout(60)
def test_every_row_has_a_unique_id_and_a_test_function():
    located = collect()
    assert located, "no FAULTS rows found"
    by_file = {}
    for item in located:
        by_file.setdefault(item.file, []).append(item.row.id)
    for file, ids in by_file.items():
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        assert not repeated, f"tests/{file} repeats row ids {repeated}"
    orphans = [f"tests/{item.file}: {item.row.id}" for item in located if item.function is None]
    assert not orphans, f"rows that are no test function's case: {orphans}"
    for item in located:
        module = sys.modules[Path(item.file).stem]
        assert callable(getattr(module, item.function))


@pytest.mark.timeout(60)
def test_every_area_has_rows_and_the_issue_minimums():
    counts = {}
    for item in collect():
        counts[item.row.area] = counts.get(item.row.area, 0) + 1
    minimums = {"crash points": 9, "downloads": 14, "admin socket": 9, "children": 7,
                "signals": 3}
    short = {area: counts.get(area, 0) for area, least in minimums.items()
             if counts.get(area, 0) < least}
    assert not short, f"areas below the issue's minimum: {short}"


if __name__ == "__main__":
    print(f"wrote {write()}")
