"""environment.yml and the pip requirements pin the same versions."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^\s*(?:-\s*)?([A-Za-z0-9_.\-\[\]]+)==([^\s#]+)")


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        match = PIN.match(line)
        if match:
            found[match.group(1).lower()] = match.group(2)
    return found


def test_environment_yml_pins_exactly_the_pip_requirements():
    pip_pins = pins(ROOT / "requirements.txt") | pins(ROOT / "requirements-dev.txt")
    conda_pins = pins(ROOT / "environment.yml")
    assert pip_pins, "no pinned requirement found"
    assert conda_pins == pip_pins


def test_environment_yml_uses_the_tested_python():
    assert re.search(r"^\s*-\s*python=3\.11\s*$", (ROOT / "environment.yml").read_text(), re.MULTILINE)
