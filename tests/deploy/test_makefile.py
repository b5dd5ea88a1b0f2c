"""The Makefile does what it says: every target it declares has a rule, and the scripts its
rules run exist."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_declared_target_has_a_rule_and_its_scripts_exist() -> None:
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    phony = re.search(r"^\.PHONY:(.*)$", text, re.M)
    assert phony is not None
    rules = set(re.findall(r"^([A-Za-z_-]+):", text, re.M))
    missing = [t for t in phony.group(1).split() if t not in rules]
    assert not missing, f"make targets without a rule: {missing}"
    for script in re.findall(r"\$\(PY\) (\S+\.py)", text):
        assert (REPO / script).is_file(), script
    assert "bench" in rules
