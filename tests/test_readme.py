"""The README's first lines are the commands CI runs: keep them honest."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _indented_commands(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.startswith("    ") and line.strip()]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme_commands = _indented_commands((ROOT / "README.md").read_text())
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    test_command = readme_commands[1]
    assert ci_lines[-1] == test_command, "the last line of .ci/run must be the README's test command"


def test_readme_install_command_installs_cpu_torch_first() -> None:
    install = _indented_commands((ROOT / "README.md").read_text())[0]
    assert install.index("torch==2.13.0") < install.index("pip install -e")
    assert install.split("&&")[-1].strip().startswith("gpurun ")
