"""The fake RunPod's pods: state machine, prices, and the pod as REST v2 and GraphQL each show it.

providers.md §2.4/§2.8: after create a pod reads PROVISIONING, then RUNNING with `runtime: null` (as recorded
live), for `pending_polls` reads; then RUNNING with runtime ports. Stop → EXITED with runtime null; terminate →
gone.

SSH works the way RunPod's images make it work (§2.5): a `22/tcp` port is mapped whenever it is exposed, but
only a `runpod/*` image's /start.sh starts sshd, and only when a key reaches the pod (env PUBLIC_KEY, or
startSsh with account keys). A start command (`args`, GraphQL `dockerArgs`) replaces /start.sh unless it calls
it. A pod with no sshd maps 22 to a port where nothing listens: connections are refused.

With a box attached (tests/support/boxes.py) the pod's container really starts there: the start command, or the
image's /start.sh, runs as the box user (a stand-in /start.sh that does what RunPod's does for SSH), and sshd
counts as started once that script has started it. Without a box the same rules are applied to the request.
"""

from __future__ import annotations

import secrets
import string
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from tests.support.boxes import Box
from tests.support.fakes.gated_port import GatedPort

POD_ID_ALPHABET = string.ascii_lowercase + string.digits
#: RunPod images' own start script; only these images have it
IMAGE_START = "/start.sh"
SSH_IMAGE_PREFIX = "runpod/"
#: the part of runpod/containers' container-template/start.sh that SSH depends on, for the box: keys, then sshd
#: (here: a marker the fake reads as "sshd listens"), then the pod stays up
FAKE_START_SH = """#!/bin/bash
if [[ $PUBLIC_KEY ]]; then
    mkdir -p ~/.ssh
    echo "$PUBLIC_KEY" >> ~/.ssh/authorized_keys
    chmod 700 -R ~/.ssh
    touch ~/.fake-image/sshd-started
fi
sleep infinity
"""


def new_pod_id() -> str:
    return "".join(secrets.choice(POD_ID_ALPHABET) for _ in range(14))


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if ts else None


@dataclass
class FakePod:
    id: str
    name: str
    image: str
    gpu_type: dict[str, Any]
    gpu_count: int
    cloud: str
    disk: int
    ports: list[str]
    env: dict[str, str]
    cost_per_hr: float
    #: RunPod injects a pod-scoped key as RUNPOD_API_KEY; here it may terminate this pod and nothing else
    pod_key: str = field(default_factory=lambda: f"rpa_pod_{secrets.token_hex(20)}")
    interruptible: bool = False
    bid_per_gpu: float | None = None
    start_ssh: bool = False
    never_ready: bool = False
    exited: bool = False
    polls: int = 0
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    terminated_at: float | None = None
    #: the raw create request, for assertions
    request: dict[str, Any] = field(default_factory=dict)
    #: the container was started on the box
    booted_at: float | None = None
    #: with a box: the pod's public SSH port, refusing until the pod's sshd runs
    gate: GatedPort | None = None

    @property
    def start_command(self) -> str:
        """What replaces the image's CMD: v2 `args`, or GraphQL `dockerArgs`; "" for the image's own."""
        return str(self.request.get("args") or self.request.get("dockerArgs") or "")

    def starts_sshd(self) -> bool:
        """Whether this pod's start would start sshd: a runpod image whose /start.sh runs, with a key to install."""
        command = self.start_command
        return self.image.startswith(SSH_IMAGE_PREFIX) and (not command or IMAGE_START in command)


class PodViews:
    """Rendering pods; mixed into the server, which owns `pending_polls`, the SSH endpoint and account keys."""

    pending_polls: int
    ssh_block: bool
    _ssh: tuple[str, int, str]
    account_keys: list[str]
    box: Box | None
    #: a loopback port where nothing listens: what a pod without sshd maps 22 to
    closed_port: int
    #: start the container at this poll (None: when the pod shows up as running)
    boot_after_polls: int | None

    def pod_status(self, pod: FakePod) -> tuple[str, bool]:
        """(v2 status, whether the container is up)."""
        if pod.exited:
            return "EXITED", False
        early = self.boot_after_polls is not None and pod.polls >= self.boot_after_polls
        if early and pod.booted_at is None:
            self.boot(pod)  # the container runs, but the API does not say so yet
        if pod.polls <= self.pending_polls or pod.never_ready:
            return ("PROVISIONING" if pod.polls <= 1 else "RUNNING"), False
        if pod.started_at is None:
            pod.started_at = time.time()
            if pod.booted_at is None:
                self.boot(pod)
        return "RUNNING", True

    def keys_for(self, pod: FakePod) -> str:
        """The PUBLIC_KEY the pod's environment carries: its own, or with startSsh the account's keys."""
        if pod.env.get("PUBLIC_KEY"):
            return pod.env["PUBLIC_KEY"]
        return "\n".join(self.account_keys) if pod.start_ssh else ""

    def boot(self, pod: FakePod) -> None:
        """Start the pod's container on the box: its start command, or the image's /start.sh."""
        box = self.box
        if box is None:
            return
        pod.booted_at = time.time()
        command = pod.start_command or IMAGE_START
        if pod.image.startswith(SSH_IMAGE_PREFIX):  # the image's filesystem has /start.sh
            script = box.write(".fake-image/start.sh", FAKE_START_SH, mode=0o755)
            command = command.replace(IMAGE_START, str(script))
        env = {**pod.env, "RUNPOD_POD_ID": pod.id, "RUNPOD_API_KEY": pod.pod_key}
        if self.keys_for(pod):
            env["PUBLIC_KEY"] = self.keys_for(pod)
        if "22/tcp" in pod.ports:
            pod.gate = GatedPort(self._ssh[:2])
            env["RUNPOD_TCP_PORT_22"] = str(pod.gate.port)
            marker = box.home / ".fake-image" / "sshd-started"
            pod.gate.open_when(marker.exists)
        box.start(command, env)

    def sshd_running(self, pod: FakePod) -> bool:
        if pod.gate is not None:
            return pod.gate.opened.is_set()
        return pod.starts_sshd() and bool(self.keys_for(pod))

    def ssh_reachable(self, pod: FakePod) -> bool:
        return "22/tcp" in pod.ports and self.sshd_running(pod)

    def ssh_port(self, pod: FakePod) -> int:
        """The public port 22 maps to: with a box, the pod's gate (it listens once the pod's sshd runs); else
        sshd's, or a port where nothing listens when the pod would start no sshd."""
        if pod.gate is not None:
            return pod.gate.port
        return self._ssh[1] if self.ssh_reachable(pod) else self.closed_port

    def _runtime_ports(self, pod: FakePod) -> list[dict[str, Any]]:
        host, _, _ = self._ssh
        ports = []
        for index, spec in enumerate(pod.ports):
            number, _, kind = spec.partition("/")
            if number == "22" and kind == "tcp":
                # RunPod maps the port whether or not anything listens behind it
                ports.append(
                    {"private": 22, "public": self.ssh_port(pod), "type": "tcp", "ip": host, "public_ip": True}
                )
            elif kind == "http":
                ports.append(
                    {"private": int(number), "public": None, "type": "http", "ip": "100.65.0.101", "public_ip": False}
                )
            else:
                ports.append(
                    {"private": int(number), "public": 40000 + index, "type": "tcp", "ip": host, "public_ip": True}
                )
        return ports

    def v2_view(self, pod: FakePod) -> dict[str, Any]:
        status, up = self.pod_status(pod)
        host, port, user = self._ssh
        ports = self._runtime_ports(pod) if up else []
        actions = {"RUNNING": ["stop", "restart", "terminate"], "EXITED": ["start", "terminate"]}
        view: dict[str, Any] = {
            "id": pod.id,
            "name": pod.name,
            "status": status,
            "actions": actions.get(status, ["terminate"]),
            "image": pod.image,
            "args": "",
            "disk": pod.disk,
            "mounts": {},
            "ports": list(pod.ports),
            "env": dict(pod.env),
            "registry": None,
            "gpu": {"id": pod.gpu_type["id"], "count": pod.gpu_count},
            "cloud": pod.cloud,
            "dataCenterId": f"{pod.gpu_type.get('_country', 'CA')}-1",
            "template": None,
            # $/h for the whole pod; 0.0 when EXITED or TERMINATED
            "cost": 0.0 if pod.exited else pod.cost_per_hr,
            "locked": False,
            "globalNetworking": {"enabled": False},
            "runtime": None
            if not up
            else {
                "uptime": int(time.time() - (pod.started_at or time.time())),
                "gpus": [{"util": 0, "memoryUtil": 0} for _ in range(pod.gpu_count)],
                "cpu": {"util": 0},
                "memory": {"util": 0},
                "ports": [{k: v for k, v in p.items() if k != "public_ip"} for p in ports],
            },
            "createdAt": _iso(pod.created_at),
            "startedAt": _iso(pod.started_at),
        }
        if self.ssh_block:
            direct = up and "22/tcp" in pod.ports
            port = self.ssh_port(pod)
            view["ssh"] = {
                "direct": {"host": host, "port": port, "username": user, "command": f"ssh {user}@{host} -p {port}"}
                if direct
                else None,
                "proxy": {
                    "host": "ssh.runpod.io",
                    "port": 22,
                    "username": f"{pod.id}-64410a1f",
                    "command": f"ssh {pod.id}-64410a1f@ssh.runpod.io",
                },
            }
        return view

    def graphql_view(self, pod: FakePod) -> dict[str, Any]:
        _, up = self.pod_status(pod)
        ports = self._runtime_ports(pod) if up else []
        return {
            "id": pod.id,
            "name": pod.name,
            "desiredStatus": "EXITED" if pod.exited else "RUNNING",
            "podType": "INTERRUPTABLE" if pod.interruptible else "RESERVED",
            "costPerHr": 0.0 if pod.exited else pod.cost_per_hr,
            "gpuCount": pod.gpu_count,
            "vcpuCount": 16,
            "memoryInGb": 62,
            "containerDiskInGb": pod.disk,
            "volumeInGb": 0,
            "volumeMountPath": "/workspace",
            "imageName": pod.image,
            "dockerArgs": "",
            "dockerId": None,
            "env": [f"{k}={v}" for k, v in pod.env.items()],
            "ports": ",".join(pod.ports),
            "port": None,
            "machineId": "s194cr8pls2z",
            "lastStatusChange": f"Rented by User: {_iso(pod.created_at)}",
            "uptimeSeconds": int(time.time() - pod.started_at) if pod.started_at and up else 0,
            "machine": {
                "gpuDisplayName": pod.gpu_type.get("displayName"),
                "location": pod.gpu_type.get("_country", "CA"),
                "podHostId": f"{pod.id}-64410a1f",
            },
            "runtime": None
            if not up
            else {
                "uptimeInSeconds": int(time.time() - (pod.started_at or time.time())),
                "ports": [
                    {
                        "ip": p["ip"],
                        "isIpPublic": p["public_ip"],
                        "privatePort": p["private"],
                        "publicPort": p["public"],
                        "type": p["type"],
                    }
                    for p in ports
                ],
                "gpus": [{"id": f"GPU-{i}", "gpuUtilPercent": 0, "memoryUtilPercent": 0} for i in range(pod.gpu_count)],
                "container": {"cpuPercent": 0, "memoryPercent": 0},
            },
        }
