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
from dataclasses import replace
from pathlib import Path

import pytest

from gpurun.errors import ConfigError
from gpurun.job import boot, machine
from gpurun.job import watchdog as wc
from gpurun.models import Instance, InstanceState
from gpurun.provision.runpod import RunpodProvider
from gpurun.provision.vast import VastProvider
from gpurun.remote.transport import BOXPROC_PATH
from tests.support.processes import process_alive, python38, wait_for

_INSTANCE_URL = "https://console.vast.ai/api/v0/instances/{instance_id}/"
#: what VastProvider.self_destroy builds (checked below against the provider itself)
VAST = {
    "kind": "http",
    "instance_id": "123",
    "token": "instance-key",
    "check": {"method": "GET", "url": _INSTANCE_URL},
    "attempts": [{"method": "DELETE", "url": _INSTANCE_URL, "body": {}}],
}


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
        ({"kind": "aws"}, {}, "kind http|kill"),
        ({**VAST, "attempts": [{"method": "DELETE"}]}, {}, "destroy.attempts[0].url"),
        (VAST, {"poll_s": 0}, "poll_s"),
        (VAST, {"fallback_command": "shutdown -h now"}, "fallback_command"),
    ],
)
def test_build_config_refuses_mistakes_by_name(destroy, options, needle) -> None:
    with pytest.raises(ConfigError) as info:
        wc.build_config("r1", destroy, deadline=None, **options)
    assert needle in info.value.one_line()
    assert info.value.where == "watchdog config"


def _resolved(destroy: dict, environ: dict[str, str] | None = None) -> dict:
    """A recipe as the watchdog will run it: parsed by its own parser, placeholders filled in."""
    config = {"version": 1, "run_id": "r1", "destroy": destroy}
    return wc.template().parse_config(config, ".", environ or {}).public()["destroy"]


async def test_the_providers_recipes_are_their_vendor_requests_with_the_instance_key() -> None:
    """The watchdog knows no provider: each provider's recipe must resolve to the exact requests it always sent."""
    instance = Instance("vast", "123", InstanceState.RUNNING, self_destroy_token="instance-key")
    vast = VastProvider("account-key", base_url="https://console.vast.ai/")
    runpod = RunpodProvider(
        "account-key", base_url="https://rest.example/v1", graphql_url="https://gql.example/graphql"
    )
    try:
        assert vast.self_destroy(instance) == VAST
        url = "https://console.vast.ai/api/v0/instances/123/"
        assert _resolved(VAST) == {
            "kind": "http", "instance_id": "123", "token": "***",
            "check": {"method": "GET", "url": url, "body": None, "when": ""},
            "attempts": [{"method": "DELETE", "url": url, "body": "{}", "when": ""}],  # Vast wants a JSON body
        }  # fmt: skip
        pod = replace(instance, provider="runpod", instance_id="pod-abc")
        query = json.dumps({"query": 'mutation { podTerminate(input: {podId: "pod-abc"}) }'})
        assert _resolved(runpod.self_destroy(pod)) == {
            "kind": "http", "instance_id": "pod-abc", "token": "***",
            "check": {"method": "GET", "url": "https://rest.example/v1/pods/pod-abc", "body": None, "when": ""},
            "attempts": [
                {"method": "DELETE", "url": "https://rest.example/v1/pods/pod-abc", "body": "", "when": ""},
                {"method": "POST", "url": "https://gql.example/graphql", "body": query, "when": "refused"},
            ],
        }  # fmt: skip
        # at boot the id and the key come from the container's environment, under each provider's own names
        at_boot = _resolved(vast.self_destroy(None), {"CONTAINER_ID": "9", "CONTAINER_API_KEY": "k"})
        assert at_boot["attempts"][0]["url"].endswith("/instances/9/")
        at_boot = _resolved(runpod.self_destroy(None), {"RUNPOD_POD_ID": "p9", "RUNPOD_API_KEY": "k"})
        assert at_boot["attempts"][1]["body"] == query.replace("pod-abc", "p9")
        # a create recovered by label has no key in hand: the box's own
        assert vast.self_destroy(replace(instance, self_destroy_token=None))["token_env"] == "CONTAINER_API_KEY"
    finally:
        await vast.aclose()
        await runpod.aclose()


def sh(command: str) -> None:
    subprocess.run(["sh", "-c", command], check=True, timeout=10)


def test_arm_renew_and_launch_lines_work_together(tmp_path: Path) -> None:
    remote = tmp_path / "remote run dir"  # a space, to prove the quoting
    remote.mkdir()
    for name, source in wc.PROGRAM_FILES.items():  # the watchdog imports the process helper from its own folder
        shutil.copy(source, remote / name)
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
    # the runner's launch, as machine.launch_runner makes it: through the box helper, output to the event file
    launch = [sys.executable, "-I", str(BOXPROC_PATH), "launch", "--pid-file", machine.PID, "--stdout", machine.EVENTS]
    launch += ["--stderr", machine.STDERR, "--", sys.executable, "-c", runner]
    answer = json.loads(subprocess.run(launch, cwd=remote, check=True, capture_output=True, text=True).stdout)
    pid = int((remote / machine.PID).read_text())
    assert answer == {"started": pid}
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
        wait_for(lambda: not process_alive(child), what="the runner's child to be killed")
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


@pytest.mark.parametrize("interpreter", ["python3", "python3.8"])
def test_the_boot_script_writes_and_starts_the_watchdog_with_its_helper(tmp_path: Path, interpreter: str) -> None:
    """What a provider runs at container start: the watchdog and boxproc.py come out of the environment (stripped of
    their documentation, every other line as written, so an old Python reads them) and the watchdog runs."""
    python = sys.executable if interpreter == "python3" else python38()
    if python is None:
        pytest.skip("no Python 3.8 here (set GPURUN_TEST_PYTHON38)")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(python)
    fast = {"poll_s": 0.1, "fallback_command": None}
    config = boot.boot_config("r0boot", {"kind": "kill"}, deadline_in_s=None, boot_lease_s=60, **fast)
    env = {**os.environ, **boot.boot_env(config), "HOME": str(tmp_path), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    assert max(len(value) for value in boot.boot_env(config).values()) < 12_000  # environment variables stay small
    subprocess.run(["bash", "-c", boot.boot_script("r0boot")], env=env, check=True, timeout=30)
    folder = tmp_path / "gpurun" / "r0boot"
    log = folder / wc.LOG_NAME
    try:
        wait_for(lambda: log.exists() and '"start"' in log.read_text(), what="the boot-armed watchdog")
        assert {p.name for p in folder.iterdir()} >= {"boxproc.py", "watchdog.json", "watchdog.py"}
        start = next(json.loads(line) for line in log.read_text().splitlines() if '"start"' in line)
        assert start["python"].startswith("3.8." if interpreter == "python3.8" else "3.")
        assert boot.unpack_source(boot.packed_source("boxproc.py")).count('"""') == 0
    finally:
        lock = folder / "watchdog.pid"
        if lock.exists() and lock.read_text().strip():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(lock.read_text()), signal.SIGTERM)
    wait_for(lambda: '"stopped"' in log.read_text(), what="the watchdog to stop")
