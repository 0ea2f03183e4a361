"""The benchmark shell scripts run under `set -u`: a variable they read must have a value or a default, or the
script dies halfway through a long run (a default written inside a comment once did exactly that)."""

import re
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
ENVIRONMENT = {"PATH", "HOME", "PWD", "OMP_NUM_THREADS", "PYTHONPATH", "RANDOM", "SECONDS", "LINENO"}


def _code(text: str) -> str:
    """The script without its comments (a `#` at a line's start or after a blank; `$#` and `${#x}` stay)."""
    return "\n".join(re.sub(r"(^|\s)#(?![!{]).*$", "", line) for line in text.splitlines())


def _assigned(code: str) -> set[str]:
    names = set(re.findall(r"(?:^|[\s;(])(?:export\s+|local\s+)?([A-Z_][A-Z0-9_]*)=", code, re.M))
    names |= set(re.findall(r"\bfor\s+([A-Za-z_]\w*)\s+in\b", code))
    names |= set(re.findall(r"\bread\s+(?:-\w+\s+)*([A-Za-z_]\w*)", code))
    names |= set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*):?[-+?=]", code))  # ${X:-default} and friends
    for sourced in re.findall(r"source\s+\"\$\(dirname \"\$0\"\)/([\w.]+)\"", code):
        names |= _assigned(_code((BENCH / sourced).read_text()))
    return names


def unset_reads(text: str) -> list[str]:
    code = _code(text)
    used = set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", code))
    return sorted(used - _assigned(code) - ENVIRONMENT)


STRICT = [p for p in sorted(BENCH.glob("*.sh")) if re.search(r"^set -\w*u", p.read_text(), re.M)]


@pytest.mark.parametrize("script", STRICT, ids=lambda p: p.name)
def test_every_variable_a_strict_script_reads_has_a_value(script):
    assert unset_reads(script.read_text()) == [], f"{script.name} reads variables that may be unset"


def test_the_check_catches_a_default_hidden_in_a_comment():
    assert len(STRICT) >= 5
    assert unset_reads("set -u\nA=${A:-1}  # B=${B:-2}\necho $A $B\n") == ["B"]
    assert unset_reads("set -u\nA=${A:-1}\nB=${B:-2}\necho $A $B $# ${#A}\n") == []
