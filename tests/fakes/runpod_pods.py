"""The fake RunPod's pods: state machine, prices, and the pod as REST v2 and GraphQL each show it.

providers.md §2.4/§2.8: after create a pod reads PROVISIONING, then RUNNING with `runtime: null` (as recorded
live), for `pending_polls` reads; then RUNNING with runtime ports. Port 22 appears (on the configured SSH
endpoint, normally the sshd fixture) only if `22/tcp` is exposed AND a key reaches the pod (env PUBLIC_KEY,
or startSsh with account keys): no key, no SSH. Stop → EXITED with runtime null; terminate → gone.
"""

from __future__ import annotations

import secrets
import string
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

POD_ID_ALPHABET = string.ascii_lowercase + string.digits


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


class PodViews:
    """Rendering pods; mixed into the server, which owns `pending_polls`, the SSH endpoint and account keys."""

    pending_polls: int
    ssh_block: bool
    _ssh: tuple[str, int, str]
    account_keys: list[str]

    def pod_status(self, pod: FakePod) -> tuple[str, bool]:
        """(v2 status, whether the container is up)."""
        if pod.exited:
            return "EXITED", False
        if pod.polls <= self.pending_polls or pod.never_ready:
            return ("PROVISIONING" if pod.polls <= 1 else "RUNNING"), False
        if pod.started_at is None:
            pod.started_at = time.time()
        return "RUNNING", True

    def ssh_reachable(self, pod: FakePod) -> bool:
        has_key = bool(pod.env.get("PUBLIC_KEY")) or (pod.start_ssh and bool(self.account_keys))
        return "22/tcp" in pod.ports and has_key

    def _runtime_ports(self, pod: FakePod) -> list[dict[str, Any]]:
        host, port, _ = self._ssh
        ports = []
        for index, spec in enumerate(pod.ports):
            number, _, kind = spec.partition("/")
            if number == "22" and kind == "tcp":
                if self.ssh_reachable(pod):
                    ports.append({"private": 22, "public": port, "type": "tcp", "ip": host, "public_ip": True})
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
            direct = up and self.ssh_reachable(pod)
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
