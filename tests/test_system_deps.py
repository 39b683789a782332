"""A test that needs a missing system package skips on a developer's machine and fails in CI
(REQUIRE_SYSTEM_DEPS=1), so a green CI run means every test ran."""

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

TEST = """
import pytest

@pytest.mark.needs_system(what="Debian package nothing-here", missing="not installed")
def test_needs_missing():
    pass

@pytest.mark.needs_system(what="Debian package present", missing=None)
def test_needs_present():
    pass
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makepyfile(test_marked=TEST)
    return pytester


def test_missing_dependency_skips_by_default(suite: pytest.Pytester, monkeypatch) -> None:
    monkeypatch.delenv("REQUIRE_SYSTEM_DEPS", raising=False)
    suite.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1, skipped=1)


def test_missing_dependency_fails_when_required(suite: pytest.Pytester, monkeypatch) -> None:
    monkeypatch.setenv("REQUIRE_SYSTEM_DEPS", "1")
    result = suite.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*required system dependency missing (Debian package nothing-here*"])
