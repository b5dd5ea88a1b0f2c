"""The Makefile and the README do what they say: every make target has a rule, the scripts
its rules run exist, and every file the README cites is in the repository."""

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


def test_the_readme_cites_only_files_the_repository_has() -> None:
    """A figure's source must be something a reader can open or run: not a result file that
    ``.gitignore`` keeps out (``benchmarks/results/``) nor a script that was renamed."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    cited = set(re.findall(
        r"`((?:benchmarks|models|service|tests|docker|clients|docs)/[^`\s]+"
        r"\.(?:py|json|sh|md|png|conf|yml|js))`", text))
    assert len(cited) > 10
    missing = sorted(c for c in cited if not (REPO / c).exists())
    assert not missing, f"README cites files that are not in the repository: {missing}"
    assert not re.search(r"`bench_\w+(-\*)?\.json`", text), "cites a benchmark's JSON output"
