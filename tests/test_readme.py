"""The README's first lines are the commands a newcomer runs: keep them honest, on a machine without OpenSSH and
rsync too."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.env import REPO_ROOT, subprocess_env

ROOT = REPO_ROOT
#: what a fresh machine may lack; the README's main command must not need any of it
ABSENT_TOOLS = {"ssh", "sshd", "rsync", "scp", "sftp", "ssh-keygen"}


def _indented_commands(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.startswith("    ") and line.strip()]


def test_the_readme_test_command_is_ci_which_installs_its_own_needs_then_runs_the_suite() -> None:
    readme_commands = _indented_commands((ROOT / "README.md").read_text())
    assert readme_commands[1] == "bash .ci/run"
    ci = (ROOT / ".ci" / "run").read_text()
    ci_lines = [line.strip() for line in ci.splitlines() if line.strip()]
    assert ci_lines[-1] == "python -m pytest -q"
    for package in ("openssh-server", "openssh-client", "rsync", "python3-venv"):
        assert package in ci  # installed when missing: the command works on a machine without them


def test_readme_install_command_installs_cpu_torch_first() -> None:
    install = _indented_commands((ROOT / "README.md").read_text())[0]
    assert install.index("torch==2.13.0") < install.index("pip install -e")
    assert install.split("&&")[-1].strip().startswith("gpurun ")


def _path_without_ssh_or_rsync(folder: Path) -> str:
    """A PATH with everything this machine has except OpenSSH and rsync, as on a fresh machine."""
    folder.mkdir()
    for directory in ("/usr/local/bin", "/usr/bin", "/bin"):
        for tool in Path(directory).iterdir() if Path(directory).is_dir() else []:
            target = folder / tool.name
            if tool.name not in ABSENT_TOOLS and not target.exists():
                target.symlink_to(tool)
    return f"{Path(sys.executable).parent}{os.pathsep}{folder}"


@pytest.mark.slow
def test_the_readme_main_command_trains_without_openssh_or_rsync(tmp_path: Path) -> None:
    command = _indented_commands((ROOT / "README.md").read_text())[0].split("&&")[-1].strip()
    argv = shlex.split(command)
    assert argv[0] == "gpurun" and shutil.which("gpurun", path=str(Path(sys.executable).parent))
    work = tmp_path / "work"
    work.mkdir()
    (work / "examples").symlink_to(ROOT / "examples")
    env = subprocess_env(PATH=_path_without_ssh_or_rsync(tmp_path / "bin"))
    assert shutil.which("rsync", path=env["PATH"]) is None and shutil.which("ssh", path=env["PATH"]) is None
    proc = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    (run,) = [p for p in (work / "runs").iterdir() if p.is_dir()]
    assert (run / "lora.safetensors").stat().st_size > 0 and (run / "grid.png").is_file()
