"""The on-instance dead-man switch, run as a real subprocess (stdlib only, `python -I -S`) against a loopback fake
provider that records every destroy call, with timings shortened to fractions of a second."""

from __future__ import annotations

import ast
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.support.env import REPO_ROOT
from tests.support.processes import process_alive, python38, wait_for

WATCHDOG = REPO_ROOT / "gpurun" / "templates" / "watchdog.py"
BOXPROC = WATCHDOG.parent / "boxproc.py"
TOKEN = "instance-key-7f3a"


def delete_recipe(url: str, **instance: Any) -> dict[str, Any]:
    """The shape of Vast's recipe: one DELETE with a JSON body, the same URL read for the credential check."""
    target = f"{url}/api/v0/instances/{{instance_id}}/"
    attempts = [{"method": "DELETE", "url": target, "body": {}}]
    return {"kind": "http", **instance, "check": {"method": "GET", "url": target}, "attempts": attempts}


def rest_then_graphql_recipe(url: str, **instance: Any) -> dict[str, Any]:
    """The shape of RunPod's recipe: a bodiless REST DELETE, then a GraphQL mutation when the REST call is refused."""
    pod = f"{url}/v2/pods/{{instance_id}}"
    query = "mutation { podTerminate(input: {podId: {instance_id_json}}) }"
    attempts = [
        {"method": "DELETE", "url": pod},
        {"method": "POST", "url": f"{url}/graphql", "body": {"query": query}, "when": "refused"},
    ]
    return {"kind": "http", **instance, "check": {"method": "GET", "url": pod}, "attempts": attempts}


# ---- a fake provider that records destroys ---------------------------------------------------------------


@dataclass
class Call:
    method: str
    path: str
    auth: str
    body: bytes
    t: float


@dataclass
class FakeProvider:
    """Answers DELETE/POST from a script of (status, body), then 200 {"success": true}; records every call."""

    script: list[tuple[int, str]] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    url: str = ""
    #: what a read (the credential check) gets
    read_status: int = 200

    def answer(self) -> tuple[int, str]:
        return self.script.pop(0) if self.script else (200, '{"success": true}')

    @property
    def acts(self) -> list[Call]:
        """Every call but the credential check's read."""
        return [c for c in self.calls if c.method != "GET"]

    @property
    def deletes(self) -> list[Call]:
        return [c for c in self.calls if c.method == "DELETE"]


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    fake = FakeProvider()

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            call = Call(self.command, self.path, self.headers.get("Authorization", ""), body, time.time())
            fake.calls.append(call)
            # reads (the credential check) always succeed; the script is for the destroy calls
            status, text = (fake.read_status, '{"id": 4242}') if self.command == "GET" else fake.answer()
            data = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_DELETE = do_POST = do_GET = _handle

        def log_message(self, *args: Any) -> None:  # keep pytest output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()


# ---- running the watchdog -------------------------------------------------------------------------------


@dataclass
class Run:
    dir: Path
    proc: subprocess.Popen[bytes]

    @property
    def lease(self) -> Path:
        return self.dir / "lease"

    def log(self) -> list[dict[str, Any]]:
        path = self.dir / "watchdog.log"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.log() if e["event"] == name]

    def names(self) -> list[str]:
        return [e["event"] for e in self.log()]

    def stderr(self) -> str:
        return (self.dir / "stderr.txt").read_text()


FAST = {
    "lease_ttl_s": 1.0,
    "artifact_grace_s": 1.0,
    "term_grace_s": 1.0,
    "poll_s": 0.1,
    "http_timeout_s": 3,
    "destroy_backoff_s": 0.05,
    "destroy_backoff_max_s": 0.2,
    "fallback_command": None,
}


@pytest.fixture
def start(tmp_path: Path, provider: FakeProvider) -> Iterator[Callable[..., Run]]:
    """start(destroy=..., env=..., **config) → a running watchdog in its own folder; killed at teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    def _start(
        *,
        destroy: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        python: str = sys.executable,
        **overrides: Any,
    ) -> Run:
        run_dir = tmp_path / "run"
        run_dir.mkdir(exist_ok=True)
        config = {"version": 1, "run_id": "r0test", **FAST, **overrides}
        config["destroy"] = destroy or delete_recipe(provider.url, instance_id="4242", token=TOKEN)
        (run_dir / "watchdog.json").write_text(json.dumps(config))
        with open(run_dir / "stderr.txt", "ab") as stderr:
            proc = subprocess.Popen(
                [python, "-I", "-S", str(WATCHDOG), "--config", str(run_dir / "watchdog.json")],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=env or dict(os.environ),
            )
        procs.append(proc)
        run = Run(run_dir, proc)
        wait_for(lambda: "start" in run.names() or proc.poll() is not None, what="watchdog start")
        return run

    yield _start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
def runners() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """runner(run, code) → a fake runner leading its own process group, its pid in the run's pid file."""
    procs: list[subprocess.Popen[bytes]] = []

    def _runner(run: Run, code: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, cwd=run.dir)
        procs.append(proc)
        (run.dir / "runner.pid").write_text(f"{proc.pid}\n")
        return proc

    yield _runner
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


class LeaseKeeper:
    """Renews a lease file the way the client does (atomic rewrite), until stopped."""

    def __init__(self, path: Path, content: str = '{"run_id": "r0test", "seq": 0}', every: float = 0.1) -> None:
        self.path, self.content, self.every = path, content, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(self.content)
            os.replace(tmp, self.path)
            self._stop.wait(self.every)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


SLEEPER = "import time; time.sleep(60)"
#: a runner that checkpoints on SIGTERM: records when it got the signal, then exits
CHECKPOINTER = """
import signal, sys, time
def on_term(signum, frame):
    open("got_sigterm", "w").write(repr(time.time()))
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
open("runner_ready", "w").write("1")
time.sleep(60)
"""


# ---- the rules ------------------------------------------------------------------------------------------


def test_lease_lapses_without_runner_destroys_with_the_instance_token(start, provider) -> None:
    run = start()
    assert run.proc.wait(timeout=10) == 0
    assert len(provider.deletes) == 1
    call = provider.deletes[0]
    assert call.path == "/api/v0/instances/4242/"
    assert call.auth == f"Bearer {TOKEN}"
    assert json.loads(call.body) == {}
    (decision,) = run.events("decision")
    assert decision["reason"] == "lease_lapsed_no_training"
    assert decision["action"] == "http"
    assert run.names()[-3:] == ["destroy_attempt", "destroyed", "exit"]
    # the start record carries the config, the token never appears anywhere in the log
    assert run.events("start")[0]["config"]["destroy"]["token"] == "***"
    assert TOKEN not in (run.dir / "watchdog.log").read_text()


def test_lease_kept_alive_means_no_destroy_and_sigterm_disarms(start, provider) -> None:
    run = start()
    with LeaseKeeper(run.lease):
        time.sleep(3)  # three lease TTLs
        assert run.proc.poll() is None
        status = json.loads((run.dir / "watchdog.status.json").read_text())
        assert status["runner"]["state"] == "not_started"
        assert status["lease_age_s"] < 1.0
        run.proc.send_signal(signal.SIGHUP)  # the SSH session that started it went away: ignored
        time.sleep(0.5)
        assert run.proc.poll() is None
        run.proc.send_signal(signal.SIGTERM)  # how a local run disarms it
        assert run.proc.wait(timeout=5) == 0
    assert provider.acts == []
    assert run.names()[-2:] == ["signal", "stopped"]
    assert "lease_lapsed" not in run.names()


def test_deadline_destroys_despite_fresh_lease_after_sigterm_to_the_runner(start, provider, runners) -> None:
    run = start(deadline=time.time() + 2.0, term_grace_s=5.0)
    with LeaseKeeper(run.lease):
        runner = runners(run, CHECKPOINTER)
        wait_for(lambda: (run.dir / "runner_ready").exists(), what="runner ready")
        assert run.proc.wait(timeout=15) == 0
    sigterm_at = float((run.dir / "got_sigterm").read_text())
    assert runner.wait(timeout=5) == 0  # it exited through its checkpoint handler
    assert len(provider.deletes) == 1
    assert provider.deletes[0].t > sigterm_at
    assert provider.deletes[0].auth == f"Bearer {TOKEN}"
    (decision,) = run.events("decision")
    assert decision["reason"] == "deadline"
    names = run.names()
    assert names.index("runner_sigterm") < names.index("destroy_attempt")
    # the runner exited well within term_grace_s: the watchdog did not sit out the whole grace
    assert provider.deletes[0].t - sigterm_at < 3.0


def test_lease_lapse_during_training_waits_for_the_runner_then_the_grace(start, provider, runners) -> None:
    # the exit file marks the end (the launcher's monitor writes it as the runner exits), so it comes last
    finisher = """
import time
time.sleep(2.5)
open("exited_at", "w").write(repr(time.time()))
open("runner.exit", "w").write("0")
"""
    run = start(lease_ttl_s=0.5, artifact_grace_s=1.5)
    runners(run, finisher)
    assert run.proc.wait(timeout=15) == 0
    exited_at = float((run.dir / "exited_at").read_text())
    assert len(provider.deletes) == 1
    assert provider.deletes[0].t >= exited_at + 1.5  # no destroy while training ran, then the full grace
    lapsed = run.events("lease_lapsed")
    assert lapsed and lapsed[0]["runner"] == "running"
    ended = [e for e in run.events("runner_state") if e["state"] == "ended"]
    assert ended and ended[0]["exit_code"] == "0"
    assert run.events("grace_started")[0]["grace_s"] == 1.5
    assert run.events("decision")[0]["reason"] == "artifact_grace_expired"


def test_renewing_the_lease_cancels_the_grace_countdown(start, provider) -> None:
    run = start(lease_ttl_s=0.5, artifact_grace_s=1.5)
    (run.dir / "runner.pid").write_text("999999\n")  # a runner that has already exited
    (run.dir / "runner.exit").write_text("0\n")
    wait_for(lambda: run.events("grace_started"), what="grace to start")
    with LeaseKeeper(run.lease):  # `gpurun attach` comes back
        wait_for(lambda: run.events("grace_cancelled"), what="grace to be cancelled")
        time.sleep(2.5)  # longer than the grace: nothing happens while the client is present
        assert provider.acts == []
        assert run.proc.poll() is None
    # the client leaves again: a fresh, full countdown, then the destroy
    assert run.proc.wait(timeout=10) == 0
    assert len(run.events("grace_started")) == 2
    assert run.events("grace_cancelled")[0]["reason"] == "lease renewed"
    assert provider.deletes[0].t >= run.events("grace_started")[1]["t"] + 1.5
    assert run.events("decision")[0]["reason"] == "artifact_grace_expired"


def test_provider_errors_are_retried_until_confirmed(start, provider) -> None:
    provider.script = [(500, '{"error": "boom"}'), (502, "bad gateway"), (200, '{"success": true}')]
    run = start(lease_ttl_s=0.3)
    assert run.proc.wait(timeout=10) == 0
    assert len(provider.deletes) == 3
    assert all(c.auth == f"Bearer {TOKEN}" for c in provider.deletes)
    attempts = run.events("destroy_attempt")
    assert [(a["status"], a["outcome"]) for a in attempts] == [(500, "retry"), (502, "retry"), (200, "confirmed")]
    assert run.events("destroyed")[0]["attempts"] == 3
    assert "fallback" not in run.names()


def test_404_counts_as_destroyed(start, provider) -> None:
    provider.script = [(404, '{"success": false, "error": "not_found", "msg": "Instance not found"}')]
    run = start(lease_ttl_s=0.3)
    assert run.proc.wait(timeout=10) == 0
    assert len(provider.deletes) == 1
    assert run.events("destroyed")[0]["status"] == 404


def test_a_200_that_says_it_failed_is_not_a_destroy(start, provider) -> None:
    provider.script = [(200, '{"success": false, "msg": "try again"}')]
    run = start(lease_ttl_s=0.3)
    assert run.proc.wait(timeout=10) == 0
    assert [a["outcome"] for a in run.events("destroy_attempt")] == ["retry", "confirmed"]


def test_a_page_that_is_not_json_proves_nothing(start, provider) -> None:
    """A proxy's or captive portal's HTML page with a 200 or a 404 is not the provider saying the machine is gone."""
    provider.script = [(200, "<html>welcome to the hotel wifi</html>"), (404, "<html>not found</html>")]
    run = start(lease_ttl_s=0.3)
    assert run.proc.wait(timeout=10) == 0
    outcomes = [(a["status"], a["outcome"]) for a in run.events("destroy_attempt")]
    assert outcomes == [(200, "retry"), (404, "retry"), (200, "confirmed")]


def test_every_fast_attempt_failing_falls_back_loudly_and_keeps_retrying(start, provider, runners, tmp_path) -> None:
    marker = tmp_path / "shutdown-ran"
    fake_shutdown = [sys.executable, "-c", f"open({str(marker)!r}, 'w').write('halt')"]
    provider.script = [(503, "")] * 5
    run = start(deadline=time.time() + 1.0, destroy_attempts=3, fallback_command=fake_shutdown, term_grace_s=0.2)
    # a runner that ignores SIGTERM: only the SIGKILL of the fallback/stop stops it
    runner = runners(run, "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)")
    assert run.proc.wait(timeout=15) == 0
    assert runner.wait(timeout=5) == -signal.SIGKILL
    assert marker.read_text() == "halt"
    outcomes = [a["outcome"] for a in run.events("destroy_attempt")]
    assert outcomes == ["retry"] * 5 + ["confirmed"]
    names = run.names()
    assert names.index("fallback") > [i for i, n in enumerate(names) if n == "destroy_attempt"][2]
    (fallback,) = run.events("fallback")
    assert fallback["level"] == "critical"
    assert "STILL BILLS" in fallback["message"]
    assert run.events("fallback_command")[0]["rc"] == 0


def test_token_refused_goes_straight_to_the_fallback(start, provider) -> None:
    provider.script = [(403, '{"msg": "forbidden"}')]
    run = start(lease_ttl_s=0.3, destroy_attempts=10)
    assert run.proc.wait(timeout=10) == 0
    names = run.names()
    assert names.count("destroy_attempt") == 2
    assert names.index("destroy_refused") < names.index("fallback") < names.index("destroyed")


def test_a_refused_request_falls_back_to_the_next_one_in_the_recipe(start, provider) -> None:
    """RunPod's shape: REST DELETE refused for the pod key, then the GraphQL mutation, the id JSON-quoted inside it."""
    provider.script = [(403, '{"title": "Forbidden", "status": 403}'), (200, '{"data": {"podTerminate": null}}')]
    destroy = rest_then_graphql_recipe(provider.url, instance_id="pod-abc", token=TOKEN)
    run = start(destroy=destroy, lease_ttl_s=0.3)
    assert run.proc.wait(timeout=10) == 0
    (rest, graphql) = provider.acts
    assert (rest.method, rest.path, rest.auth) == ("DELETE", "/v2/pods/pod-abc", f"Bearer {TOKEN}")
    assert (graphql.method, graphql.path, graphql.auth) == ("POST", "/graphql", f"Bearer {TOKEN}")
    assert 'podTerminate(input: {podId: "pod-abc"})' in json.loads(graphql.body)["query"]
    assert rest.body == b"" and json.loads(graphql.body) == {
        "query": 'mutation { podTerminate(input: {podId: "pod-abc"}) }'
    }
    assert run.events("destroyed")[0]["attempts"] == 1
    assert "fallback" not in run.names()


def test_a_later_request_runs_only_on_its_outcome(start, provider) -> None:
    """A retryable answer to the first request is retried as a whole; the "when refused" request is not sent."""
    provider.script = [(503, "")]
    run = start(destroy=rest_then_graphql_recipe(provider.url, instance_id="pod-abc", token=TOKEN), lease_ttl_s=0.3)
    assert run.proc.wait(timeout=10) == 0
    assert [c.method for c in provider.acts] == ["DELETE", "DELETE"]
    assert [a["outcome"] for a in run.events("destroy_attempt")] == ["retry", "confirmed"]


def test_placeholders_are_filled_safely(start, provider) -> None:
    """The id is percent-encoded in URLs and JSON-quoted in bodies: an odd id breaks neither the JSON nor the path."""
    destroy = {
        "kind": "http",
        "instance_id": 'a/b "c"',
        "token": TOKEN,
        "attempts": [{"method": "POST", "url": provider.url + "/end/{instance_id}", "body": {"id": "{instance_id_json}",
                                                                                             "raw": "{instance_id}"}}],
    }  # fmt: skip
    run = start(destroy=destroy, lease_ttl_s=0.3)
    assert run.proc.wait(timeout=10) == 0
    (call,) = provider.acts
    assert call.path == "/end/a%2Fb%20%22c%22"
    assert json.loads(call.body) == {"id": '"a/b \\"c\\""', "raw": 'a/b "c"'}
    (check,) = run.events("credential_checked")
    assert check["status"] == "n/a"  # a recipe without a check: nothing read


def test_kill_kind_kills_the_runner_process_group_and_calls_nobody(start, provider, runners) -> None:
    parent = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
open("child.pid", "w").write(str(child.pid))
time.sleep(60)
"""
    run = start(destroy={"kind": "kill"}, deadline=time.time() + 1.5)
    runner = runners(run, parent)
    child_pid = int(wait_for(lambda: (run.dir / "child.pid").exists() and (run.dir / "child.pid").read_text()))
    assert run.proc.wait(timeout=10) == 0
    assert runner.wait(timeout=5) == -signal.SIGTERM  # SIGTERM to the runner first
    wait_for(lambda: not process_alive(child_pid), timeout=5, what="the runner's child to die")  # then its group
    assert provider.acts == []
    assert run.events("decision")[0]["action"] == "kill"
    assert run.events("runner_sigkill")[0]["group"] is True
    assert "destroy_attempt" not in run.names()


def test_a_runner_outside_its_own_group_is_killed_alone(start, provider) -> None:
    # the runner shares the test's process group: killing the group would take pytest down with it
    runner = subprocess.Popen([sys.executable, "-c", SLEEPER])
    try:
        run = start(destroy={"kind": "kill"}, deadline=time.time() + 0.5, term_grace_s=0.5)
        (run.dir / "runner.pid").write_text(str(runner.pid))
        assert run.proc.wait(timeout=10) == 0
        assert runner.wait(timeout=5) == -signal.SIGTERM
        assert run.events("runner_sigkill")[0]["group"] is False
    finally:
        runner.kill()
        runner.wait()


def test_garbled_lease_and_pid_files_do_not_crash_it(start, provider) -> None:
    run = start(lease_ttl_s=0.5, artifact_grace_s=0.5)
    (run.dir / "runner.pid").write_text("not a pid \x00\xff")
    with LeaseKeeper(run.lease, content="{{{ half-written \x00"):
        time.sleep(2)
        assert run.proc.poll() is None  # the garbage still renews the lease by its mtime
        assert provider.acts == []
    assert run.proc.wait(timeout=10) == 0
    assert run.events("lease_garbled")
    assert run.events("pid_file_garbled")
    assert "error" not in run.names()
    assert run.events("decision")[0]["reason"] == "artifact_grace_expired"


def test_a_lease_naming_another_run_does_not_count(start, provider) -> None:
    run = start(lease_ttl_s=0.5)
    with LeaseKeeper(run.lease, content='{"run_id": "r-some-other-run"}'):
        assert run.proc.wait(timeout=10) == 0
    assert run.events("lease_foreign")[0]["names"] == "r-some-other-run"
    assert run.events("decision")[0]["reason"] == "lease_lapsed_no_training"


def test_a_lease_file_dated_in_the_future_still_lapses(start, provider) -> None:
    run = start(lease_ttl_s=0.8)
    run.lease.write_text('{"run_id": "r0test", "seq": 1}')
    tomorrow = time.time() + 86_400
    os.utime(run.lease, (tomorrow, tomorrow))  # a skewed clock or a stray `touch -d`: only changes renew
    assert run.proc.wait(timeout=10) == 0
    assert run.events("decision")[0]["reason"] == "lease_lapsed_no_training"


def test_it_survives_its_own_exceptions(start, provider, tmp_path) -> None:
    (tmp_path / "run" / "status-is-a-dir").mkdir(parents=True)  # every status write raises
    run = start(lease_ttl_s=1.0, status_file="status-is-a-dir")
    assert run.proc.wait(timeout=10) == 0
    errors = run.events("error")
    assert errors and "Traceback" in errors[0]["traceback"]
    assert len(provider.deletes) == 1


def test_gpu_idle_while_the_runner_runs_kills_and_destroys(start, provider, runners, tmp_path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    util = tmp_path / "util.txt"
    util.write_text("0\n93\n")  # two GPUs, one busy
    fake = bin_dir / "nvidia-smi"
    fake.write_text(f"#!/bin/sh\ncat {util}\n")
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    run = start(env=env, idle_after_s=0.8, idle_threshold_pct=5, term_grace_s=2.0)
    with LeaseKeeper(run.lease):
        runner = runners(run, CHECKPOINTER)
        time.sleep(1.5)  # busy: nothing happens
        assert run.proc.poll() is None
        assert "idle_started" not in run.names()
        util.write_text("0\n3\n")  # the dataloader hangs: every GPU idle
        assert run.proc.wait(timeout=10) == 0
    assert (run.dir / "got_sigterm").exists()
    assert runner.wait(timeout=5) == 0
    assert run.events("idle_started")[0]["utilisation"] == 3.0
    assert run.events("decision")[0]["reason"] == "gpu_idle"
    assert len(provider.deletes) == 1
    assert "idle_detection_off" not in run.names()


def test_without_nvidia_smi_idle_detection_is_off_and_logged(start, provider, runners, tmp_path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    run = start(env=dict(os.environ, PATH=str(empty)), idle_after_s=0.2, lease_ttl_s=60)
    runners(run, SLEEPER)
    time.sleep(1.0)
    assert run.proc.poll() is None
    assert "nvidia-smi not found" in run.events("idle_detection_off")[0]["reason"]
    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(timeout=5) == 0
    assert provider.acts == []


def test_a_second_copy_exits_at_once(start, provider) -> None:
    first = start(lease_ttl_s=60)
    config = first.dir / "watchdog.json"
    second = subprocess.run(
        [sys.executable, "-I", "-S", str(WATCHDOG), "--config", str(config)], capture_output=True, timeout=10
    )
    assert second.returncode == 0
    assert first.proc.poll() is None
    (held,) = first.events("already_running")
    assert held["holder"] == str(first.proc.pid)


# ---- config and the stdlib-only promise ----------------------------------------------------------------


def test_bad_config_is_refused_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "watchdog.json"
    config.write_text(json.dumps({"version": 1, "run_id": "r1", "destroy": {"kind": "http"}, "lease_tll_s": 3}))
    result = subprocess.run(
        [sys.executable, "-I", "-S", str(WATCHDOG), "--config", str(config)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "lease_tll_s" in result.stderr
    config.write_text(json.dumps({"version": 1, "run_id": "r1", "destroy": delete_recipe("http://x", token="t")}))
    result = subprocess.run(
        [sys.executable, "-I", "-S", str(WATCHDOG), "--config", str(config)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "destroy.instance_id" in result.stderr


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"attempts": []}, "destroy.attempts"),
        ({"attempts": [{"method": "DELETE", "url": "ftp://x/{instance_id}"}]}, "destroy.attempts[0].url"),
        ({"attempts": [{"method": "DELETE", "url": "http://x", "when": "refused"}]}, "destroy.attempts[0].when"),
        ({"attempts": [{"method": "DELETE", "url": "http://x"}, {"method": "POST", "url": "http://y"}]}, "[1].when"),
        ({"attempts": [{"method": "DELETE", "url": "http://x", "headers": {}}]}, "unknown key"),
        ({"check": {"url": "http://x", "when": "retry"}}, "destroy.check.when"),
        ({"url": "http://x"}, "unknown key(s) for kind http"),
    ],
)
def test_a_bad_recipe_is_refused_naming_the_key(tmp_path: Path, change: dict[str, Any], needle: str) -> None:
    config = tmp_path / "watchdog.json"
    destroy = {**delete_recipe("http://x", instance_id="1", token="t"), **change}
    config.write_text(json.dumps({"version": 1, "run_id": "r1", "destroy": destroy}))
    result = subprocess.run(
        [sys.executable, "-I", "-S", str(WATCHDOG), "--config", str(config), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert needle in result.stderr


def test_check_prints_the_normalised_config_without_the_token(tmp_path: Path) -> None:
    config = tmp_path / "watchdog.json"
    destroy = delete_recipe("https://provider.example", instance_id=7, token_env="CONTAINER_API_KEY")
    config.write_text(json.dumps({"version": 1, "run_id": "r1", "destroy": destroy, "deadline": 1e9}))
    env = dict(os.environ, CONTAINER_API_KEY=TOKEN)
    result = subprocess.run(
        [sys.executable, "-S", str(WATCHDOG), "--config", str(config), "--check"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    url = "https://provider.example/api/v0/instances/7/"
    assert shown["destroy"] == {
        "kind": "http",
        "instance_id": "7",
        "token": "***",
        "check": {"method": "GET", "url": url, "body": None, "when": ""},
        "attempts": [{"method": "DELETE", "url": url, "body": "{}", "when": ""}],
    }
    assert shown["lease_file"] == str(tmp_path / "lease")
    assert shown["artifact_grace_s"] == 1800
    assert TOKEN not in result.stdout


@pytest.mark.parametrize("path", [WATCHDOG, BOXPROC], ids=["watchdog", "boxproc"])
def test_imports_only_the_standard_library_and_parses_as_python_38(path: Path) -> None:
    source = path.read_text()
    tree = ast.parse(source, feature_version=(3, 8))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports"
            imported.add((node.module or "").split(".")[0])
    assert imported - {"__future__"} <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)
    assert "gpurun" not in imported


def test_the_watchdog_knows_no_provider() -> None:
    """Vendor facts live with the providers (the recipe); the watchdog's code names none of them."""
    code = ast.unparse(_without_docstrings(ast.parse(WATCHDOG.read_text())))
    for needle in ("vast", "runpod", "/api/v0/", "/pods/", "podTerminate", "console.", ".io"):
        assert needle not in code.lower(), needle
    assert "vast" not in WATCHDOG.read_text().lower() and "runpod" not in WATCHDOG.read_text().lower()


def _without_docstrings(tree: ast.Module) -> ast.Module:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
        ):
            node.body = body[1:] or [ast.Pass()]  # type: ignore[attr-defined]
    return tree


def test_runs_on_python_38(start, provider) -> None:
    interpreter = python38()
    if interpreter is None:
        pytest.skip("no Python 3.8 here (set GPURUN_TEST_PYTHON38)")
    provider.script = [(503, "")]
    run = start(python=interpreter, lease_ttl_s=0.3)
    assert run.proc.wait(timeout=10) == 0, run.stderr()
    assert run.events("start")[0]["python"].startswith("3.8.")
    assert [a["outcome"] for a in run.events("destroy_attempt")] == ["retry", "confirmed"]


# ---- armed at container start, adopted by the client ----------------------------------------------------


def test_a_relative_deadline_counts_from_the_watchdogs_start(start, provider) -> None:
    """A boot config cannot know the box's clock: deadline_in_s is measured from the watchdog's own start."""
    run = start(deadline_in_s=0.5, lease_ttl_s=60)
    with LeaseKeeper(run.lease):
        assert run.proc.wait(timeout=10) == 0
    (decision,) = run.events("decision")
    assert decision["reason"] == "deadline" and len(provider.deletes) == 1


def test_the_instance_and_its_key_can_come_from_the_containers_environment(start, provider) -> None:
    destroy = delete_recipe(provider.url, instance_id_env="CONTAINER_ID", token_env="CONTAINER_API_KEY")
    env = {**os.environ, "CONTAINER_ID": "777", "CONTAINER_API_KEY": TOKEN}
    run = start(destroy=destroy, env=env, lease_ttl_s=0.3)
    assert run.proc.wait(timeout=10) == 0
    (call,) = provider.deletes
    assert call.path == "/api/v0/instances/777/" and call.auth == f"Bearer {TOKEN}"


def test_the_credential_is_checked_once_at_start_without_destroying(start, provider) -> None:
    run = start(lease_ttl_s=60)
    wait_for(lambda: run.events("credential_checked"), what="the credential check")
    (check,) = run.events("credential_checked")
    assert check["status"] == "ok" and check["http_status"] == 200
    status = wait_for(lambda: _status(run).get("credential"), what="the status file")
    assert status["status"] == "ok"
    gets = [c for c in provider.calls if c.method == "GET"]
    assert [c.path for c in gets] == ["/api/v0/instances/4242/"] and gets[0].auth == f"Bearer {TOKEN}"
    assert provider.deletes == []


def test_a_refused_credential_is_reported_in_the_status(start, provider) -> None:
    provider.read_status = 401
    run = start(lease_ttl_s=60)
    status = wait_for(lambda: _status(run).get("credential"), what="the status file")
    assert status["status"] == "refused" and status["http_status"] == 401


def test_a_rewritten_config_is_adopted_by_the_running_watchdog(start, provider) -> None:
    """What the client does when it connects to a box whose watchdog started with the container: it rewrites the
    config; the same process reloads it within about a second, and the new lease TTL rules from then on."""
    run = start(lease_ttl_s=60, poll_s=5.0)  # a slow poll: the reload must not wait for it
    pid = wait_for(lambda: _status(run).get("pid"), what="the first status")
    config = json.loads((run.dir / "watchdog.json").read_text())
    new = {**config, "lease_ttl_s": 0.3, "poll_s": 0.1}
    (run.dir / "watchdog.json.tmp").write_text(json.dumps(new))
    os.replace(run.dir / "watchdog.json.tmp", run.dir / "watchdog.json")
    reloaded_at = time.time()
    assert run.proc.wait(timeout=10) == 0  # the short TTL lapsed, with no runner: destroyed
    (reload,) = run.events("config_reloaded")
    assert "lease_ttl_s" in reload["changed"] and reload["t"] - reloaded_at < 2.5
    assert [e["pid"] for e in run.events("start")] == [pid]  # one watchdog all along
    assert len(provider.deletes) == 1


def test_a_broken_rewrite_is_rejected_and_the_old_config_stays(start, provider) -> None:
    run = start(lease_ttl_s=0.8)
    (run.dir / "watchdog.json").write_text('{"version": 1, "run_id": "r0test", "lease_ttl_s": "soon"}')
    assert run.proc.wait(timeout=10) == 0
    assert run.events("config_rejected") and not run.events("config_reloaded")
    assert run.events("decision")[0]["reason"] == "lease_lapsed_no_training"  # the old TTL still ruled


def _status(run: Run) -> dict[str, Any]:
    try:
        return json.loads((run.dir / "watchdog.status.json").read_text())
    except (OSError, ValueError):
        return {}
