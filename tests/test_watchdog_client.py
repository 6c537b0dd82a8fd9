"""The client's side of the watchdog: config validation, and the arm / renew / launch shell lines run for real."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpurun.errors import ConfigError
from gpurun.job import machine
from gpurun.job import watchdog as wc
from tests.test_watchdog import process_gone, wait_for

VAST = {"kind": "vast", "url": "https://console.vast.ai", "instance_id": "123", "token": "instance-key"}


def test_build_config_is_validated_by_the_watchdogs_own_parser() -> None:
    config = wc.build_config("r1", VAST, deadline=1.9e9, lease_ttl_s=240, artifact_grace_s=600)
    assert config["version"] == wc.template().CONFIG_VERSION
    assert config["deadline"] == 1.9e9
    assert json.loads(wc.config_json(config)) == config
    # token_env is resolved on the instance, not on the laptop
    wc.build_config("r1", {**VAST, "token": None, "token_env": "CONTAINER_API_KEY"}, deadline=None)


@pytest.mark.parametrize(
    ("destroy", "options", "needle"),
    [
        (VAST, {"lease_tll_s": 60}, "lease_tll_s"),
        ({**VAST, "token": ""}, {}, "destroy.token"),
        ({"kind": "aws"}, {}, "kind vast|runpod|kill"),
        (VAST, {"poll_s": 0}, "poll_s"),
        (VAST, {"fallback_command": "shutdown -h now"}, "fallback_command"),
    ],
)
def test_build_config_refuses_mistakes_by_name(destroy, options, needle) -> None:
    with pytest.raises(ConfigError) as info:
        wc.build_config("r1", destroy, deadline=None, **options)
    assert needle in info.value.one_line()
    assert info.value.where == "watchdog config"


def sh(command: str) -> None:
    subprocess.run(["sh", "-c", command], check=True, timeout=10)


def test_arm_renew_and_launch_lines_work_together(tmp_path: Path) -> None:
    remote = tmp_path / "remote run dir"  # a space, to prove the quoting
    remote.mkdir()
    shutil.copy(wc.SOURCE, remote / "watchdog.py")
    fast = {"poll_s": 0.1, "lease_ttl_s": 30, "term_grace_s": 1.0, "fallback_command": None}
    config = wc.build_config("r1", {"kind": "kill"}, deadline=time.time() + 3.0, **fast)
    (remote / wc.CONFIG_NAME).write_text(wc.config_json(config))

    sh(wc.start_command(str(remote), python=sys.executable))
    log = remote / wc.LOG_NAME
    wait_for(lambda: log.exists() and '"start"' in log.read_text(), what="watchdog start")
    assert (remote / wc.CONFIG_NAME).stat().st_mode & 0o777 == 0o600

    sh(wc.lease_command(str(remote), "r1", 7))
    assert json.loads((remote / wc.LEASE_NAME).read_text()) == {"run_id": "r1", "seq": 7}

    runner = (
        "import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
    )
    runner += " open('child.pid', 'w').write(str(c.pid)); print('{\"type\": \"start\"}', flush=True); time.sleep(60)"
    sh(machine.runner_launch_command(str(remote), [sys.executable, "-c", runner], python=sys.executable))
    pid = int(wait_for(lambda: (remote / machine.PID).exists() and (remote / machine.PID).read_text(), what="pid"))
    child = int(wait_for(lambda: (remote / "child.pid").exists() and (remote / "child.pid").read_text()))
    try:
        assert os.getpgid(pid) == pid and os.getsid(pid) == pid  # leads its own session and group
        assert os.getpgid(child) == pid
        wait_for(lambda: (remote / "events.jsonl").read_text().strip() == '{"type": "start"}', what="events")

        # the watchdog notices the runner on its next poll; a busy machine may show "none" for a poll or two
        def running_status() -> dict | None:
            status = (
                wc.parse_status((remote / wc.STATUS_NAME).read_text()) if (remote / wc.STATUS_NAME).exists() else None
            )
            return status if status and status["runner"]["state"] == "running" else None

        status = wait_for(running_status, what="status showing the runner")
        assert status["runner"] == {"state": "running", "pid": pid, "exit_code": None}

        # the deadline: SIGTERM to the runner, SIGKILL to its group, the launcher records the exit code
        done = wait_for(lambda: (remote / "runner.exit").exists() and (remote / "runner.exit").read_text(), timeout=15)
        assert done.strip() == str(128 + signal.SIGTERM)
        wait_for(lambda: process_gone(child), what="the runner's child to be killed")
        wait_for(lambda: '"exit"' in log.read_text(), what="the watchdog to exit")
        events = [json.loads(line)["event"] for line in log.read_text().splitlines()]
        assert events[-4:] == ["decision", "runner_sigterm", "runner_sigkill", "exit"]
    finally:
        for p in (pid, child):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)


def test_parse_status_is_lenient() -> None:
    assert wc.parse_status("{half") is None
    assert wc.parse_status("[1, 2]") is None
    assert wc.parse_status('{"lease_age_s": 3}') == {"lease_age_s": 3}
