#!/usr/bin/env python3
"""gpurun's dead-man switch: destroys its own instance when the client is gone, the budget runs out, or the GPU hangs.

Started FIRST, detached, in the run's folder, with the box process helper `boxproc.py` beside it:

    nohup python3 watchdog.py --config watchdog.json >/dev/null 2>>watchdog.stderr </dev/null &

Where the provider runs a boot script it is started when the container starts, before any SSH (the provider's
onstart / start command writes it, its helper and a boot config from the instance's environment; gpurun/job/boot.py
builds that), with a lease bound and a relative deadline. When the client connects it ADOPTS the running watchdog:
it rewrites the config file (the exact deadline, the run's lease timing) and renews the lease; the watchdog notices
the changed file within a second and reloads it. Where nothing ran at boot (SSH hosts, this machine), the client
starts it over SSH the same way. It calls setsid itself; gpurun/job/watchdog.py builds the start line and the config.

It knows no provider: what "destroy" means comes with the config, as a recipe of HTTP requests that the provider's
adapter in gpurun builds (`self_destroy`). STDLIB ONLY, Python 3.8+: it runs on whatever python3 the image has,
before anything is installed. It never imports gpurun. `python3 watchdog.py --config FILE --check` validates a
config and prints it normalised.

Config file (JSON, "version": 1). Relative paths are relative to the config file's folder; times are seconds.

    key                 meaning                                                           default
    version             1                                                                 required
    run_id              the gpurun run id; a lease file that names another run is ignored  required
    destroy             what "destroy" means on this machine, one of:                     required
        {"kind": "kill"}    stop the runner, destroy nothing (where nothing bills: SSH hosts, this machine)
        {"kind": "http", "instance_id": "i-123", "token": "...",
         "check": {"method": "GET", "url": "https://api.example.com/v1/machines/{instance_id}"},
         "attempts": [
             {"method": "DELETE", "url": "https://api.example.com/v1/machines/{instance_id}", "body": {}},
             {"method": "POST", "url": "https://api.example.com/graphql", "when": "refused",
              "body": {"query": "mutation { end(id: {instance_id_json}) }"}}]}
            One destroy attempt = the "attempts" in order: the first always, each later one only when the one
            before ended with its "when" ("refused" or "retry"); the last one made decides (see Destroy below).
            A request: "method"; "url", in which {instance_id} becomes the id (percent-encoded); "body", any JSON
            value, sent as JSON with {instance_id} and {instance_id_json} (the id as a JSON string, quotes and
            all) replaced inside its strings. Without "body" a GET sends none and other methods an empty one.
            Every request carries "Authorization: Bearer <token>". "check" (optional) is the credential check.
        "token_env": "NAME" may replace "token", and "instance_id_env": "NAME" may replace "instance_id" (read
        from this process's environment, else from the container's, /proc/1/environ, since SSH sessions do not
        inherit it): that is how a boot config names an instance it cannot know in advance.
        The token must be INSTANCE-SCOPED (the key a provider gives the machine itself), never the user's own key.
    deadline            unix time (this machine's clock) when the budget is spent; null = none   null
    deadline_in_s       ... or seconds after this watchdog started (a boot config cannot know the     null
                        box's clock); with both, the earlier one counts
    lease_file          rewritten by the client every minute: each change of it is a renewal      "lease"
                        (content, if JSON with "run_id", must name this run; other content is ignored)
    lease_ttl_s         the lease lapses this long after its last renewal (or after start)        300
    runner_pid_file     the runner's pid, a bare integer; the runner leads its own process group  "runner.pid"
                        (its exit code is in the exit file boxproc.py derives from it: runner.exit)
    artifact_grace_s    how long an ended run waits for `gpurun attach` once the client is gone   1800
    idle_after_s        GPU below idle_threshold_pct this long while the runner runs = hung       600
    idle_threshold_pct  utilisation (max over GPUs) below which the GPU counts as idle            5
    nvidia_smi          the nvidia-smi executable (PATH lookup); absent = idle rule off (logged)  "nvidia-smi"
    term_grace_s        after SIGTERM, how long the runner may take to checkpoint and exit        60
    poll_s              seconds between checks                                                   15
    log_file            JSON-lines log of every decision, with reasons                            "watchdog.log"
    lock_file           single-instance lock (flock), holds the watchdog's pid                    "watchdog.pid"
    status_file         the current view (lease age, runner, grace end), rewritten each poll
                                                                                           "watchdog.status.json"
    http_timeout_s      per destroy request                                                      30
    destroy_attempts    fast attempts before the fallback (slow retries go on afterwards)         6
    destroy_backoff_s   first pause between attempts, doubled each time ...                      2
    destroy_backoff_max_s  ... up to this                                                        60
    fallback_command    run when the fast attempts all failed; null = none                ["shutdown", "-h", "now"]

Rules, checked every poll_s; the first that matches acts (the logged reason in brackets), then the watchdog exits:
    1. deadline passed [deadline]         -> stop the runner (SIGTERM = "checkpoint now", term_grace_s), destroy
    2. runner running, GPU idle for idle_after_s [gpu_idle]  -> stop the runner, destroy
    3. lease fresh                        -> nothing (the client is present; it fetches and destroys)
    4. lease lapsed, runner running       -> nothing yet: training finishes first
    5. lease lapsed, runner never started [lease_lapsed_no_training] -> destroy
    6. lease lapsed, runner ended (done, crashed, or an unreadable pid file) -> wait artifact_grace_s for
       `gpurun attach` (a renewed lease cancels the countdown), then destroy [artifact_grace_expired]
"Destroy" with kind "kill" means: stop the runner (SIGTERM to its pid, then SIGKILL to its process group).

Runner protocol (boxproc.py keeps it): the runner leads its own session and process group, its pid is in
runner_pid_file, and its exit code lands in the exit file when it exits. It runs while no exit code is recorded and
it, or anything in its group, is alive (zombies do not count). SIGTERM to the runner's pid means "save a checkpoint
and exit now"; after term_grace_s its whole process group gets SIGKILL. The group is killed only when the runner
leads it, so a runner sharing a group with anything else (a user's shell) never takes that down.

Config reload: the config file is watched (about once a second); a changed file that parses replaces the running
config (timers and the runner's state carry over; the lease TTL, grace and deadline apply from then on), and is
logged as config_reloaded; one that does not parse is logged as config_rejected and ignored.

Credential check: at start and whenever the destroy recipe changes, its "check" request (one authenticated read of
its own instance) proves the token is accepted, without destroying anything. The result ("ok", "refused",
"unreachable", or "n/a" for kind kill or a recipe without a check) is logged as credential_checked and shown in the
status file, which the client reads when it adopts the watchdog.

Destroy: the recipe's requests with the instance token, retried with backoff on 5xx, 429 and network errors until
the provider confirms (2xx with a JSON or empty body, or 404 = already gone). If the fast attempts fail, or the
provider refuses the token (other 4xx), the fallback runs: kill the runner, run fallback_command, log loudly (a
stopped instance still bills its disk at most providers), and keep retrying every destroy_backoff_max_s until
it works.

Log events (one JSON object per line: {"t", "event", "run_id", ...}): start (with the config, token blanked),
config_reloaded, config_rejected, credential_checked, already_running, idle_detection_off, lease_lapsed,
lease_renewed, lease_missing, lease_garbled, lease_foreign, runner_state, pid_file_garbled, idle_started,
idle_cleared, gpu_query_failed, grace_started, grace_cancelled, decision (with the reason and the destroy kind),
runner_sigterm, runner_sigkill, destroy_attempt, destroyed, destroy_refused, fallback, fallback_command, error
(with traceback), signal, stopped, exit.

Signals: SIGHUP is ignored (it survives the SSH session that started it); SIGTERM/SIGINT stop it between checks
(that is how a local run disarms it). A second copy finds the lock held and exits at once.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Any

CONFIG_VERSION = 1
EXIT_BAD_CONFIG = 2
USER_AGENT = "gpurun-watchdog/1"


def _load_boxproc() -> Any:
    """The box process helper, boxproc.py, from this file's own folder (it is always shipped beside it)."""
    name = "gpurun_boxproc"  # gpurun's client loads it under the same name: one module object in one process
    if name in sys.modules:
        return sys.modules[name]
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "boxproc.py")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[name] = module
    return module


boxproc = _load_boxproc()

DEFAULTS: dict[str, Any] = {
    "deadline": None,
    "deadline_in_s": None,
    "lease_file": "lease",
    "lease_ttl_s": 300.0,
    "runner_pid_file": "runner.pid",
    "artifact_grace_s": 1800.0,
    "idle_after_s": 600.0,
    "idle_threshold_pct": 5.0,
    "nvidia_smi": "nvidia-smi",
    "term_grace_s": 60.0,
    "poll_s": 15.0,
    "log_file": "watchdog.log",
    "lock_file": "watchdog.pid",
    "status_file": "watchdog.status.json",
    "http_timeout_s": 30.0,
    "destroy_attempts": 6,
    "destroy_backoff_s": 2.0,
    "destroy_backoff_max_s": 60.0,
    "fallback_command": ["shutdown", "-h", "now"],
}
_PATH_KEYS = ("lease_file", "runner_pid_file", "log_file", "lock_file", "status_file")
_NUMBER_KEYS: tuple[str, ...] = ("lease_ttl_s", "artifact_grace_s", "idle_after_s", "term_grace_s", "poll_s")
_NUMBER_KEYS += ("http_timeout_s", "destroy_backoff_s", "destroy_backoff_max_s", "idle_threshold_pct")
_DESTROY_KEYS = {
    "http": {"instance_id", "instance_id_env", "token", "token_env", "check", "attempts"},
    "kill": set(),
}
_REQUEST_KEYS = {"method", "url", "body", "when"}
#: the outcomes a later attempt may follow (see _classify)
_WHEN = ("refused", "retry")


class ConfigError(ValueError):
    """The config file is unusable; the message names the key."""


@dataclass
class HttpCall:
    """One HTTP request of a destroy recipe, with the instance id filled in."""

    method: str
    url: str
    #: the exact text sent (JSON); None: no body at all
    body: str | None = None
    #: for a later attempt: the outcome of the one before that makes it run
    when: str = ""


@dataclass
class Destroy:
    kind: str
    instance_id: str = ""
    token: str = field(default="", repr=False)
    check: HttpCall | None = None
    attempts: list[HttpCall] = field(default_factory=list)


@dataclass
class Config:
    run_id: str
    destroy: Destroy
    deadline: float | None
    deadline_in_s: float | None
    lease_file: str
    lease_ttl_s: float
    runner_pid_file: str
    artifact_grace_s: float
    idle_after_s: float
    idle_threshold_pct: float
    nvidia_smi: str
    term_grace_s: float
    poll_s: float
    log_file: str
    lock_file: str
    status_file: str
    http_timeout_s: float
    destroy_attempts: int
    destroy_backoff_s: float
    destroy_backoff_max_s: float
    fallback_command: list[str] | None
    version: int = CONFIG_VERSION

    def public(self) -> dict[str, Any]:
        """The config as a dict with the token blanked, for logs and --check."""
        data = asdict(self)
        if data["destroy"].get("token"):
            data["destroy"]["token"] = "***"
        return data


def _number(data: dict[str, Any], key: str) -> float:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value < 0:
        raise ConfigError(f"{key}: expected a number >= 0, got {value!r}")
    return float(value)


def _fill(value: Any, instance_id: str) -> Any:
    """`value` with the placeholders replaced inside its strings (keys too), structure kept."""
    if isinstance(value, str):
        return value.replace("{instance_id_json}", json.dumps(instance_id)).replace("{instance_id}", instance_id)
    if isinstance(value, list):
        return [_fill(item, instance_id) for item in value]
    if isinstance(value, dict):
        return {_fill(key, instance_id): _fill(item, instance_id) for key, item in value.items()}
    return value


def _parse_request(raw: Any, where: str, instance_id: str, *, method: str | None = None) -> HttpCall:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected an object with method and url, got {raw!r}")
    unknown = set(raw) - _REQUEST_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s): {sorted(unknown)}")
    verb = raw.get("method", method)
    if not isinstance(verb, str) or not verb.isalpha():
        raise ConfigError(f"{where}.method: expected an HTTP method, got {verb!r}")
    url = raw.get("url")
    if not isinstance(url, str) or not url.startswith(("https://", "http://")):
        raise ConfigError(f"{where}.url: expected an http(s) URL, got {url!r}")
    url = url.replace("{instance_id}", urllib.parse.quote(instance_id, safe=""))
    # No body: a read sends none; a DELETE or POST an empty one (Content-Length: 0), as the providers' DELETEs
    # have always been sent.
    body: str | None = None if verb.upper() == "GET" else ""
    if "body" in raw:
        body = json.dumps(_fill(raw["body"], instance_id))
    when = raw.get("when", "")
    if when not in ("", *_WHEN):
        raise ConfigError(f"{where}.when: expected one of {'|'.join(_WHEN)}, got {when!r}")
    return HttpCall(verb.upper(), url, body, when)


def _parse_destroy(raw: Any, environ: dict[str, str]) -> Destroy:
    if not isinstance(raw, dict) or raw.get("kind") not in _DESTROY_KEYS:
        raise ConfigError(f"destroy: expected an object with kind {'|'.join(_DESTROY_KEYS)}, got {raw!r}")
    kind = raw["kind"]
    unknown = set(raw) - _DESTROY_KEYS[kind] - {"kind"}
    if unknown:
        raise ConfigError(f"destroy: unknown key(s) for kind {kind}: {sorted(unknown)}")
    if kind == "kill":
        return Destroy(kind="kill")
    instance_id = raw.get("instance_id")
    if instance_id in (None, "") and raw.get("instance_id_env"):
        instance_id = environ.get(str(raw["instance_id_env"]), "")
        if not instance_id:
            raise ConfigError(f"destroy.instance_id_env: ${raw['instance_id_env']} is not set")
    if isinstance(instance_id, bool) or not isinstance(instance_id, (str, int)) or not str(instance_id):
        raise ConfigError(f"destroy.instance_id: required for kind {kind}")
    instance_id = str(instance_id)
    token = raw.get("token") or ""
    if not token and raw.get("token_env"):
        token = environ.get(str(raw["token_env"]), "")
        if not token:
            raise ConfigError(f"destroy.token_env: ${raw['token_env']} is not set")
    if not isinstance(token, str) or not token:
        raise ConfigError("destroy.token: an instance-scoped token (or token_env) is required")
    steps = raw.get("attempts")
    if not isinstance(steps, list) or not steps:
        raise ConfigError("destroy.attempts: a non-empty list of requests is required")
    attempts = [_parse_request(step, f"destroy.attempts[{i}]", instance_id) for i, step in enumerate(steps)]
    if attempts[0].when:
        raise ConfigError("destroy.attempts[0].when: the first request always runs")
    for i, attempt in enumerate(attempts[1:], 1):
        if not attempt.when:
            raise ConfigError(f"destroy.attempts[{i}].when: required after the first request ({'|'.join(_WHEN)})")
    check = None
    if raw.get("check") is not None:
        check = _parse_request(raw["check"], "destroy.check", instance_id, method="GET")
        if check.when:
            raise ConfigError("destroy.check.when: not for the check")
    return Destroy(kind, instance_id, token, check, attempts)


def process_environment() -> dict[str, str]:
    """This process's environment over the container's (PID 1's): an SSH session does not see the variables a
    provider sets on the container, such as the instance's own id and its instance-scoped key."""
    environ: dict[str, str] = {}
    try:
        with open("/proc/1/environ", "rb") as handle:
            for item in handle.read().split(b"\0"):
                name, sep, value = item.partition(b"=")
                if sep and name:
                    environ[name.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    except OSError:
        pass  # not Linux, or not allowed: the process environment alone
    environ.update(os.environ)
    return environ


def parse_config(data: Any, base_dir: str = ".", environ: dict[str, str] | None = None) -> Config:
    """Validate a config dict (strict: unknown keys are errors) and fill in defaults."""
    if not isinstance(data, dict):
        raise ConfigError("the config must be a JSON object")
    if data.get("version") != CONFIG_VERSION:
        raise ConfigError(f"version: expected {CONFIG_VERSION}, got {data.get('version')!r}")
    unknown = set(data) - set(DEFAULTS) - {"version", "run_id", "destroy"}
    if unknown:
        raise ConfigError(f"unknown key(s): {sorted(unknown)}")
    if not isinstance(data.get("run_id"), str) or not data["run_id"]:
        raise ConfigError("run_id: required (a non-empty string)")
    merged = dict(DEFAULTS)
    merged.update(data)
    values: dict[str, Any] = {"run_id": merged["run_id"]}
    values["destroy"] = _parse_destroy(merged.get("destroy"), process_environment() if environ is None else environ)
    values["deadline"] = None if merged["deadline"] is None else _number(merged, "deadline")
    values["deadline_in_s"] = None if merged["deadline_in_s"] is None else _number(merged, "deadline_in_s")
    for key in _NUMBER_KEYS:
        values[key] = _number(merged, key)
    if values["poll_s"] <= 0:
        raise ConfigError("poll_s: must be > 0")
    attempts = merged["destroy_attempts"]
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise ConfigError(f"destroy_attempts: expected an integer >= 1, got {attempts!r}")
    values["destroy_attempts"] = attempts
    for key in (*_PATH_KEYS, "nvidia_smi"):
        if not isinstance(merged[key], str) or not merged[key]:
            raise ConfigError(f"{key}: expected a non-empty string, got {merged[key]!r}")
    for key in _PATH_KEYS:
        values[key] = os.path.join(base_dir, merged[key])
    values["nvidia_smi"] = merged["nvidia_smi"]
    command = merged["fallback_command"]
    if command is not None and (not isinstance(command, list) or not all(isinstance(a, str) for a in command)):
        raise ConfigError(f"fallback_command: expected a list of strings or null, got {command!r}")
    values["fallback_command"] = command or None
    return Config(**values)


def load_config(path: str) -> Config:
    return parse_config(_read_json(path), os.path.dirname(os.path.abspath(path)))


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None


def file_signature(path: str) -> tuple[int, int, int] | None:
    """What changes when a file is rewritten (mtime, size, inode); None when it is missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            digest.update(handle.read())
    except OSError:
        return ""
    return digest.hexdigest()


class JsonLog:
    """Append-only JSON-lines log; a failing write never stops the watchdog."""

    def __init__(self, path: str, run_id: str) -> None:
        self.path = path
        self.run_id = run_id

    def write(self, event: str, **fields: Any) -> None:
        record = {"t": round(time.time(), 3), "event": event, "run_id": self.run_id}
        record.update(fields)
        line = json.dumps(record, default=str) + "\n"
        try:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(line)
        except OSError:
            sys.stderr.write(line)


@dataclass
class Runner:
    """What the runner is doing: not_started | running | ended."""

    state: str
    pid: int | None = None
    exit_code: str | None = None


def _read_small(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            return handle.read(4096).decode("utf-8", errors="replace")
    except OSError:
        return None


class Watchdog:
    def __init__(self, cfg: Config, log: JsonLog, config_path: str | None = None) -> None:
        self.cfg = cfg
        self.log = log
        self.config_path = config_path
        self._config_seen = file_signature(config_path) if config_path else None
        self.config_sha = file_sha256(config_path) if config_path else ""
        # Timers run on the monotonic clock, so a wall-clock jump can neither kill a live client's instance nor
        # keep a dead one's alive. The deadline is wall-clock (the client's budget arithmetic); convert it once.
        self.started = time.monotonic()
        self.armed_at = time.time()
        self.deadline = self._deadline(cfg)
        self.credential: dict[str, Any] = {"status": "unchecked"}
        #: monotonic time the lease file was last seen to change
        self.lease_renewed = self.started
        self._lease_seen: tuple[Any, ...] | None = None
        self.lease_fresh = True
        self.grace_since: float | None = None
        self.idle_since: float | None = None
        self.runner = Runner("not_started")
        self.stop_requested = False
        self._noted: dict[str, Any] = {}
        self.gpu_tool = shutil.which(cfg.nvidia_smi)
        if self.gpu_tool is None:
            log.write("idle_detection_off", reason=f"{cfg.nvidia_smi} not found on PATH; the GPU-idle rule is off")

    def _deadline(self, cfg: Config) -> float | None:
        """The monotonic moment the budget is spent: the earlier of the absolute and the relative deadline."""
        found = []
        if cfg.deadline is not None:
            found.append(time.monotonic() + (cfg.deadline - time.time()))
        if cfg.deadline_in_s is not None:
            found.append(self.started + cfg.deadline_in_s)
        return min(found) if found else None

    # ---- the config and the credential -------------------------------------------------------------------

    def config_changed(self) -> bool:
        return self.config_path is not None and file_signature(self.config_path) != self._config_seen

    def maybe_reload(self) -> None:
        """Adopt a rewritten config file (the client adopting a watchdog armed at boot); a bad one is ignored."""
        if not self.config_changed():
            return
        assert self.config_path is not None
        self._config_seen = file_signature(self.config_path)
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            self.log.write("config_rejected", error=str(exc), note="the previous config stays in force")
            return
        if new.run_id != self.cfg.run_id:
            self.log.write("config_rejected", error=f"run_id {new.run_id!r} is not this run's", note="ignored")
            return
        old, self.cfg = self.cfg, new
        self.config_sha = file_sha256(self.config_path)
        self.deadline = self._deadline(new)
        if self.gpu_tool is None or new.nvidia_smi != old.nvidia_smi:
            self.gpu_tool = shutil.which(new.nvidia_smi)
        changed = sorted(k for k, v in new.public().items() if old.public().get(k) != v)
        self.log.write("config_reloaded", changed=changed, config=new.public())
        if new.destroy != old.destroy:
            self.check_credential()

    def check_credential(self) -> None:
        """One authenticated read of our own instance: does the provider accept the token? Destroys nothing."""
        check = self.cfg.destroy.check
        if check is None:
            self.credential = {"status": "n/a"}
        else:
            url = check.url
            status, text, _ = self._request(check.method, url, check.body)
            if status is not None and 200 <= status < 300:
                verdict = "ok"
            elif status in (401, 403):
                verdict = "refused"
            else:
                verdict = "unreachable" if status is None else f"unexpected ({status})"
            self.credential = {"status": verdict, "http_status": status, "url": url}
            if verdict != "ok":
                self.credential["detail"] = text[:200]
        self.log.write("credential_checked", **self.credential)

    # ---- observing ---------------------------------------------------------------------------------------

    def _note_once(self, key: str, value: Any, event: str, **fields: Any) -> None:
        """Log `event` only when `value` changed since the last time `key` was noted (no log spam)."""
        if self._noted.get(key) != value:
            self._noted[key] = value
            self.log.write(event, **fields)

    def lease_age(self, now: float) -> float:
        """Seconds since the lease file last changed (rewritten or touched): a change is the client's renewal.

        Changes are observed, not read from the mtime, so an mtime in the future or a skewed clock proves nothing.
        """
        path = self.cfg.lease_file
        try:
            st = os.stat(path)
        except OSError as exc:
            self._note_once("lease", "missing", "lease_missing", path=path, error=exc.strerror)
            return now - self.lease_renewed
        text = _read_small(path) or ""
        signature = (st.st_mtime_ns, st.st_size, st.st_ino, text)
        if signature != self._lease_seen:
            self._lease_seen = signature
            if self._lease_counts(text, st.st_mtime_ns):
                self.lease_renewed = now
        return now - self.lease_renewed

    def _lease_counts(self, text: str, mtime_ns: int) -> bool:
        """Whether new lease content renews: anything but JSON naming another run (garbage = a half-written one)."""
        if not text.strip():
            return True  # a plain touch
        try:
            doc = json.loads(text)
        except ValueError:
            self._note_once(
                "lease", ("garbled", mtime_ns), "lease_garbled", note="content is not JSON; still a renewal"
            )
            return True
        if isinstance(doc, dict) and doc.get("run_id") not in (None, self.cfg.run_id):
            self._note_once("lease", ("foreign", mtime_ns), "lease_foreign", names=str(doc.get("run_id")))
            return False
        return True

    def read_runner(self) -> Runner:
        text = _read_small(self.cfg.runner_pid_file)
        done = _read_small(boxproc.exit_path(self.cfg.runner_pid_file))
        pid: int | None = None
        if text is not None:
            try:
                pid = int(text.strip())
            except ValueError:
                self._note_once("pidfile", text, "pid_file_garbled", content=text[:80])
            if pid is not None and (pid <= 1 or pid == os.getpid()):
                pid = None  # never signal init, a process group (0, negative) or ourselves
        exit_code = done.strip()[:40] if done is not None else None
        # the helper's rule: running until its exit code is recorded, while it or anything in its group lives
        if pid is not None and done is None and boxproc.group_alive(pid):
            return Runner("running", pid)
        if text is not None or done is not None:
            # launched at some point (a garbled pid file included): its checkpoints may be worth an attach
            return Runner("ended", pid, exit_code)
        return Runner("not_started")

    def gpu_utilisation(self) -> float | None:
        """Max utilisation over the GPUs in percent, or None when unknown."""
        if self.gpu_tool is None:
            return None
        argv = [self.gpu_tool, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError) as exc:
            self._note_once("gpu", repr(exc), "gpu_query_failed", error=repr(exc))
            return None
        values = []
        for line in result.stdout.splitlines():
            try:
                values.append(float(line.strip()))
            except ValueError:
                continue
        if result.returncode != 0 or not values:
            self._note_once("gpu", result.returncode, "gpu_query_failed", rc=result.returncode, out=result.stdout[:200])
            return None
        return max(values)

    def observe(self, now: float) -> tuple[float, Runner]:
        age = self.lease_age(now)
        runner = self.read_runner()
        if runner.state != self.runner.state:
            self.log.write("runner_state", previous=self.runner.state, state=runner.state, pid=runner.pid,
                           exit_code=runner.exit_code)  # fmt: skip
        self.runner = runner
        if runner.state != "running":
            self.idle_since = None
            return age, runner
        util = self.gpu_utilisation()  # unknown (None) neither starts nor breaks an idle streak
        if util is not None and util < self.cfg.idle_threshold_pct and self.idle_since is None:
            self.idle_since = now
            self.log.write("idle_started", utilisation=util, threshold=self.cfg.idle_threshold_pct)
        elif util is not None and util >= self.cfg.idle_threshold_pct and self.idle_since is not None:
            self.idle_since = None
            self.log.write("idle_cleared", utilisation=util)
        return age, runner

    # ---- deciding ----------------------------------------------------------------------------------------

    def decide(self, now: float, lease_age: float, runner: Runner) -> str | None:
        """The rules of the module docstring, in order. Returns the reason to act, or None."""
        cfg = self.cfg
        if self.deadline is not None and now >= self.deadline:
            return "deadline"
        if runner.state == "running" and self.idle_since is not None and now - self.idle_since >= cfg.idle_after_s:
            return "gpu_idle"
        fresh = lease_age < cfg.lease_ttl_s
        if fresh != self.lease_fresh:
            self.lease_fresh = fresh
            self.log.write("lease_renewed" if fresh else "lease_lapsed", age=round(lease_age, 3), runner=runner.state)
        if fresh or runner.state == "running":
            if self.grace_since is not None:
                self.grace_since = None
                self.log.write("grace_cancelled", reason="lease renewed" if fresh else "runner running")
            return None
        if runner.state == "not_started":
            return "lease_lapsed_no_training"
        if self.grace_since is None:
            self.grace_since = now
            self.log.write("grace_started", ends_at=time.time() + cfg.artifact_grace_s, grace_s=cfg.artifact_grace_s)
        if now - self.grace_since >= cfg.artifact_grace_s:
            return "artifact_grace_expired"
        return None

    # ---- acting ------------------------------------------------------------------------------------------

    def nap(self, seconds: float) -> None:
        """Sleep between checks; wake early when asked to stop or when the config file is rewritten."""
        end = time.monotonic() + seconds
        next_look = time.monotonic() + 1.0
        while not self.stop_requested and time.monotonic() < end:
            time.sleep(min(0.2, max(0.0, end - time.monotonic())))
            if time.monotonic() >= next_look:
                next_look = time.monotonic() + 1.0
                if self.config_changed():
                    return

    def stop_runner(self, grace_s: float) -> None:
        """SIGTERM the runner's pid ("checkpoint and exit"), wait up to grace_s, then SIGKILL its process group."""
        runner = self.read_runner()
        if runner.state != "running" or runner.pid is None:
            return

        def note(what: str, **fields: Any) -> None:
            self.log.write(f"runner_{what}", **fields)

        boxproc.terminate(runner.pid, grace_s, leader_first=True, notify=note)

    def _request(self, method: str, url: str, body: str | None) -> tuple[int | None, str, float | None]:
        request = urllib.request.Request(url, data=None if body is None else body.encode("utf-8"), method=method)
        request.add_header("Authorization", f"Bearer {self.cfg.destroy.token}")
        if body is not None:
            request.add_header("Content-Type", "application/json")
        request.add_header("User-Agent", USER_AGENT)
        try:
            with urllib.request.urlopen(request, timeout=self.cfg.http_timeout_s) as response:
                return response.status, response.read(2000).decode("utf-8", "replace"), None
        except urllib.error.HTTPError as exc:
            retry_after: float | None = None
            with contextlib.suppress(TypeError, ValueError):
                retry_after = float(exc.headers.get("Retry-After", ""))
            return exc.code, exc.read(2000).decode("utf-8", "replace"), retry_after
        except (OSError, ValueError) as exc:  # URLError, timeouts, resets, bad URL
            return None, repr(exc), None

    @staticmethod
    def _classify(status: int | None, text: str) -> str:
        """confirmed | retry | refused, from one HTTP answer. Unknown is never 'confirmed': the providers answer
        in JSON (or with an empty body), so an HTML page (a proxy's, a captive portal's) proves nothing."""
        try:
            doc = json.loads(text) if text.strip() else {}
        except ValueError:
            doc = None
        if status is not None and (status == 404 or 200 <= status < 300) and doc is None:
            return "retry"
        if status == 404:
            return "confirmed"  # already gone (providers' destroy is idempotent)
        if status is not None and 200 <= status < 300:
            if isinstance(doc, dict) and doc.get("success") is False:
                return "retry"  # a 200 that says it failed is not a destroy
            if isinstance(doc, dict) and doc.get("errors"):  # GraphQL errors come with HTTP 200
                message = json.dumps(doc["errors"]).lower()
                return "confirmed" if "not found" in message or "does not exist" in message else "retry"
            return "confirmed"
        if status is None or status in (408, 425, 429) or status >= 500:
            return "retry"
        return "refused"

    def destroy_once(self) -> tuple[str, int | None, str, float | None]:
        """One pass through the recipe's attempts: the first request, then each next one while the last outcome is
        the one it waits for (an API that refuses the instance key for one call may take it for another)."""
        outcome, status, url, retry_after = "retry", None, "", None
        for index, step in enumerate(self.cfg.destroy.attempts):
            if index and outcome != step.when:
                break
            url = step.url
            status, text, retry_after = self._request(step.method, url, step.body)
            outcome = self._classify(status, text)
        return outcome, status, url, retry_after if outcome == "retry" else None

    def fallback(self) -> None:
        self.log.write(
            "fallback",
            level="critical",
            message="could not destroy this instance through the provider API: killing the runner and shutting "
            "the machine down. A STOPPED instance STILL BILLS its disk storage at most providers until it is "
            "destroyed: run `gpurun down RUN` (or destroy it in the provider's console). Destroy retries go on.",
        )
        self.stop_runner(0.0)
        if self.cfg.fallback_command:
            try:
                result = subprocess.run(self.cfg.fallback_command, capture_output=True, text=True, timeout=60)
                self.log.write("fallback_command", argv=self.cfg.fallback_command, rc=result.returncode,
                               output=(result.stdout + result.stderr)[-500:])  # fmt: skip
            except (OSError, subprocess.SubprocessError) as exc:
                self.log.write("fallback_command", argv=self.cfg.fallback_command, error=repr(exc))

    def destroy(self) -> None:
        """The recipe until the provider confirms; the fallback after the fast attempts, then slow retries forever."""
        delay = self.cfg.destroy_backoff_s
        attempt = 0
        fell_back = False
        while True:
            attempt += 1
            outcome, status, url, retry_after = self.destroy_once()
            self.log.write("destroy_attempt", attempt=attempt, status=status, outcome=outcome, url=url)
            if outcome == "confirmed":
                self.log.write("destroyed", attempts=attempt, status=status)
                return
            if outcome == "refused" and not fell_back:
                self.log.write(
                    "destroy_refused", status=status, hint="the instance token may not destroy; see fallback"
                )
            if not fell_back and (outcome == "refused" or attempt >= self.cfg.destroy_attempts):
                fell_back = True
                self.fallback()
                delay = self.cfg.destroy_backoff_max_s
            pause = retry_after if retry_after is not None else delay
            time.sleep(min(max(pause, 0.0), self.cfg.destroy_backoff_max_s))
            delay = min(delay * 2, self.cfg.destroy_backoff_max_s)

    def act(self, reason: str) -> None:
        self.log.write("decision", reason=reason, action=self.cfg.destroy.kind, runner=self.runner.state,
                       pid=self.runner.pid)  # fmt: skip
        # Only the deadline leaves time to checkpoint; a hung runner or none at all gets the same treatment,
        # because SIGTERM is harmless and the grace ends as soon as the runner exits.
        self.stop_runner(self.cfg.term_grace_s)
        if self.cfg.destroy.kind != "kill":
            self.destroy()

    # ---- the loop ----------------------------------------------------------------------------------------

    def write_status(self, now: float, lease_age: float) -> None:
        wall = time.time()
        grace_left = None if self.grace_since is None else self.grace_since + self.cfg.artifact_grace_s - now
        status = {
            "t": wall,
            "run_id": self.cfg.run_id,
            "lease_age_s": round(lease_age, 3),
            "lease_ttl_s": self.cfg.lease_ttl_s,
            "runner": asdict(self.runner),
            "deadline": self.cfg.deadline,
            "deadline_left_s": None if self.deadline is None else round(self.deadline - now, 3),
            "armed_at": self.armed_at,
            "config_sha256": self.config_sha,
            "credential": self.credential,
            "grace_ends_at": None if grace_left is None else wall + grace_left,
            "idle_for_s": None if self.idle_since is None else round(now - self.idle_since, 3),
            "pid": os.getpid(),
        }
        tmp = self.cfg.status_file + ".tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(status, handle)
        os.replace(tmp, self.cfg.status_file)

    def run(self) -> int:
        while not self.stop_requested:
            try:
                self.maybe_reload()
                now = time.monotonic()
                lease_age, runner = self.observe(now)
                reason = self.decide(now, lease_age, runner)
                if reason is not None:
                    self.act(reason)
                    self.log.write("exit", reason=reason)
                    return 0
                self.write_status(now, lease_age)
            except Exception as exc:  # survive anything: a crashed watchdog is a leaked instance
                self._note_once("error", repr(exc), "error", error=repr(exc), traceback=traceback.format_exc()[-2000:])
            self.nap(self.cfg.poll_s)
        self.log.write("stopped", note="stopped by signal; nothing destroyed")
        return 0


def acquire_lock(path: str) -> int | None:
    """flock the lock file and write our pid into it; None if another watchdog holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="gpurun dead-man switch (see the module docstring)")
    parser.add_argument("--config", required=True)
    parser.add_argument("--check", action="store_true", help="validate the config, print it, exit")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        sys.stderr.write(f"watchdog: bad config: {exc}\n")
        return EXIT_BAD_CONFIG
    if args.check:
        sys.stdout.write(json.dumps(cfg.public(), indent=2) + "\n")
        return 0
    log = JsonLog(cfg.log_file, cfg.run_id)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # outlive the SSH session that started us
    with contextlib.suppress(OSError):  # fails harmlessly if we already lead a process group
        os.setsid()  # leave the starter's session and process group
    lock_fd = acquire_lock(cfg.lock_file)
    if lock_fd is None:
        log.write("already_running", holder=(_read_small(cfg.lock_file) or "").strip())
        return 0
    watchdog = Watchdog(cfg, log, os.path.abspath(args.config))

    def on_signal(signum: int, _frame: Any) -> None:
        watchdog.log.write("signal", signal=signal.Signals(signum).name)
        watchdog.stop_requested = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.write("start", pid=os.getpid(), python=sys.version.split()[0], config=cfg.public())
    watchdog.check_credential()
    return watchdog.run()


if __name__ == "__main__":
    sys.exit(main())
