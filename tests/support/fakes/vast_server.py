"""A fake Vast.ai API on 127.0.0.1 that behaves like providers.md §1 (and §1.12 in particular).

Offers are searched with the real query language and consumed when rented; an instance goes
null → loading → running over `pending_polls` GETs and then shows an SSH endpoint that tests point at the
real sshd fixture (direct: public_ipaddr + ports["22/tcp"], only for a `*direc*` runtype on a host with
ports; proxy: ssh_host/ssh_port). Each instance gets an instance API key that may read its own instance and
destroy it, nothing else. Every request and every destroy is recorded for assertions.

With a box attached (`attach_box`, tests/support/boxes.py) instances are real: when one starts, the fake does what
Vast's SSH launch mode does in the container: installs the account's SSH keys for the login user, then runs
the `onstart` script with the instance's environment (the create's `env`, plus CONTAINER_ID and
CONTAINER_API_KEY); destroying the instance ends every process on the box. An interruptible instance can be outbid
(`preempt`, `preempt_at_step`): stopped, its processes ended, its disk kept. Without a box, keys that reach a
machine go to `key_sinks` (the shared sshd fixture) and nothing runs.
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.boxes import Box
from tests.support.fakes.http_base import FakeServer, RecordedRequest, Response
from tests.support.fakes.preemption import preempt_when_step
from tests.support.fakes.vast_catalog import default_vast_offers
from tests.support.fakes.vast_query import QueryError, _compare, priced, search

HOURS = 3600.0


@dataclass
class DestroyRecord:
    instance_id: str
    #: "account" (the user's key), "instance" (the instance's own key, e.g. the watchdog) or "host" (it failed)
    by: str
    at: float = field(default_factory=time.time)


@dataclass
class FakeVastInstance:
    id: str
    offer: dict[str, Any]
    body: dict[str, Any]
    api_key: str
    direct: bool
    label: str | None
    is_bid: bool = False
    bid: float | None = None
    outbid: bool = False
    stopped: bool = False
    never_ready: bool = False
    polls: int = 0
    created_at: float = field(default_factory=time.time)
    running_since: float | None = None
    compute_seconds: float = 0.0
    destroyed_at: float | None = None
    #: its container was started on the box (onstart ran)
    booted_at: float | None = None
    #: the host (index into `FakeVast.hosts`) its container runs on, once booted
    host: int | None = None


def _err(status: int, error: str, msg: str) -> Response:
    return Response(status, {"success": False, "error": error, "msg": msg})


class FakeVast(FakeServer):
    """The fake. `base_url` is what GPURUN_VAST_URL should be set to."""

    def __init__(
        self,
        offers: list[dict[str, Any]] | None = None,
        *,
        api_key: str | None = None,
        pending_polls: int = 2,
        ssh_endpoint: tuple[str, int] = ("127.0.0.1", 22),
        proxy_endpoint: tuple[str, int] | None = None,
    ) -> None:
        super().__init__(api_key or f"vast-test-{secrets.token_hex(16)}")
        self.offers: dict[str, dict[str, Any]] = {}
        for offer in default_vast_offers() if offers is None else offers:
            self.add_offer(offer)
        self.instances: dict[str, FakeVastInstance] = {}
        self.destroyed: list[DestroyRecord] = []
        self.ssh_keys: list[dict[str, Any]] = []
        #: GETs of an instance that still show it provisioning (null, then loading)
        self.pending_polls = pending_polls
        #: answer GET /ssh/ as {"ssh_keys": [...]} instead of the documented bare array
        self.wrap_ssh_key_list = False
        self._ssh = ssh_endpoint
        self._proxy = proxy_endpoint
        self._gone: set[str] = set()
        self._never_ready: set[str] = set()
        self._never_ready_all = False
        #: offer id → the actual_status its instances report forever (a host gone "offline", an undocumented state)
        self._stuck_status: dict[str, str] = {}
        self._ids = itertools.count(27_001_234)
        self._key_ids = itertools.count(101)
        #: the box instances run on (None: an SSH endpoint only)
        self.box: Box | None = None
        #: every box instances may run on, with its sshd: an instance boots on the first box no live instance holds
        self.hosts: list[tuple[Box, tuple[str, int]]] = []
        #: start the container at this poll (None: at the poll that shows it running)
        self.boot_after_polls: int | None = None
        #: instances preempted (outbid), in order
        self.preempted: list[str] = []

    @property
    def base_url(self) -> str:
        return self.root_url

    # -- seeding and injection -----------------------------------------------------------------------------
    def add_offer(self, offer: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.offers[str(offer["id"])] = offer
        return offer

    def set_ssh_endpoint(self, host: str, port: int) -> None:
        """Where running instances' SSH points (direct, and the proxy too unless set apart)."""
        with self.lock:
            self._ssh = (host, int(port))

    def attach_box(self, box: Box, host: str, port: int) -> None:
        """Instances run on `box`, reached over its sshd at host:port."""
        with self.lock:
            self.box = box
            self._ssh = (host, int(port))
            self.hosts = [(box, self._ssh)]

    def add_box(self, box: Box, host: str, port: int) -> None:
        """One more machine: instances boot on the first box that no live instance holds (a fleet needs two)."""
        with self.lock:
            self.hosts.append((box, (host, int(port))))

    def set_proxy_endpoint(self, host: str, port: int) -> None:
        with self.lock:
            self._proxy = (host, int(port))

    def inject_capacity_gone(self, offer_id: int | str) -> None:
        """Creating this offer fails as if the host could not start it (410 with cancel_unavail)."""
        with self.lock:
            self._gone.add(str(offer_id))

    def never_ready(self, offer_id: int | str | None = None) -> None:
        """Instances of this offer (of every offer when None) stay "loading" forever."""
        with self.lock:
            if offer_id is None:
                self._never_ready_all = True
            else:
                self._never_ready.add(str(offer_id))

    def preempt(self, instance_id: int | str) -> None:
        """Outbid (providers.md §1.11): Vast stops an interruptible instance. It reports actual_status and
        cur_state "stopped" while intended_status stays "running" (the renter's target: Vast restarts it if the bid
        wins again); compute billing stops, the disk stays and is still billed; the container's processes end."""
        with self.lock:
            inst = self.instances[str(instance_id)]
            inst.outbid = True
            if inst.running_since:
                inst.compute_seconds += time.time() - inst.running_since
                inst.running_since = None
            box = self.box if inst.booted_at is not None else None
            self.preempted.append(inst.id)
        if box is not None:
            box.stop()

    def take_away(self, instance_id: int | str) -> None:
        """The host fails for good: Vast lists the instance no more, and everything on it is gone."""
        self._destroy(str(instance_id), by="host")

    def preempt_at_step(self, step: int, *, ready: Callable[[], bool] | None = None) -> None:
        """Preempt the interruptible instance running on the box once its runner logs training step `step` (and
        `ready()` holds)."""

        def target() -> tuple[Path, str] | None:
            with self.lock:
                bids = [i.id for i in self.instances.values()
                        if i.is_bid and i.booted_at and not i.outbid and i.destroyed_at is None]  # fmt: skip
                return (self.box.runs, bids[0]) if self.box is not None and bids else None

        preempt_when_step(target, step, self.preempt, ready)

    def report_status(self, offer_id: int | str, status: str) -> None:
        """Instances of this offer report `actual_status` = `status` from their first poll on."""
        with self.lock:
            self._stuck_status[str(offer_id)] = status

    # -- what tests read -----------------------------------------------------------------------------------
    def instance_key(self, instance_id: str | int) -> str:
        return self.instances[str(instance_id)].api_key

    def live_instances(self) -> list[str]:
        with self.lock:
            return [i.id for i in self.instances.values() if i.destroyed_at is None]

    @property
    def destroyed_ids(self) -> list[str]:
        with self.lock:
            return [record.instance_id for record in self.destroyed]

    def charges(self, instance_id: str | int) -> float:
        """Dollars billed so far: storage for as long as it existed, compute while it ran (per second)."""
        with self.lock:
            inst = self.instances[str(instance_id)]
            end = inst.destroyed_at or time.time()
            compute = inst.compute_seconds + ((end - inst.running_since) if inst.running_since else 0.0)
            storage = float(inst.offer.get("storage_total_cost") or 0.0)
            return storage * (end - inst.created_at) / HOURS + float(inst.offer["dph_base"]) * compute / HOURS

    # -- HTTP ----------------------------------------------------------------------------------------------
    def authorise(self, request: RecordedRequest) -> str | None:
        token = self.bearer(request)
        via = "account"
        if token is None and "api_key" in request.query:
            token, via = request.query["api_key"], "query-param"  # the legacy CLI's way; recorded, still accepted
        if token and token == self.api_key:
            return via
        with self.lock:
            for inst in self.instances.values():
                if token and token == inst.api_key and inst.destroyed_at is None:
                    return f"instance:{inst.id}"
        return None

    def route(self, request: RecordedRequest) -> Response:
        path = request.path.rstrip("/") or "/"
        request.auth = self.authorise(request)
        if request.auth is None:
            return _err(401, "auth_error", "Invalid user key")
        method = request.method
        if request.auth.startswith("instance:"):
            # an instance key may read and destroy its own instance and do nothing else
            own = request.auth.split(":", 1)[1]
            if method == "DELETE" and path == f"/api/v0/instances/{own}":
                return self._destroy(own, by="instance")
            if method == "GET" and path == f"/api/v0/instances/{own}":
                return self._show(own, count_poll=False)
            return _err(403, "permission_denied", "This key is scoped to one instance and may only destroy it")
        body = request.body if isinstance(request.body, dict) else {}
        if path == "/api/v0/bundles" and method in ("POST", "GET"):
            if method == "GET":
                try:
                    body = json.loads(request.query.get("q", "{}"))
                except ValueError:
                    return _err(400, "invalid_args", "q is not JSON")
            return self._search(body)
        if path == "/api/v0/search/asks" and method == "PUT":
            return self._search(body.get("q", {}))
        if (m := re.fullmatch(r"/api/v0/asks/(\d+)", path)) and method == "PUT":
            return self._create(m.group(1), body)
        if m := re.fullmatch(r"/api/v0/instances/(\d+)", path):
            if method == "GET":
                return self._show(m.group(1))
            if method == "PUT":
                return self._manage(m.group(1), body)
            if method == "DELETE":
                return self._destroy(m.group(1), by="account")
        if (m := re.fullmatch(r"/api/v0/instances/(\d+)/ssh", path)) and method == "POST":
            return self._attach_key(m.group(1), body)
        if path == "/api/v0/instances" and method == "GET":
            views = [self._view(i) for i in self._live()]
            return Response(200, {"instances_found": len(views), "instances": views})
        if path == "/api/v1/instances" and method == "GET":
            return self._list_v1(request.query)
        if (m := re.fullmatch(r"/api/v0/ssh/(\d+)", path)) and method == "DELETE":
            with self.lock:
                before = len(self.ssh_keys)
                self.ssh_keys[:] = [k for k in self.ssh_keys if str(k["id"]) != m.group(1)]
                if len(self.ssh_keys) == before:
                    return _err(400, "no_ssh_key", "No ssh key provided")
            return Response(200, {"success": True})
        if path == "/api/v0/ssh":
            if method == "GET":
                keys = [{**k, "key": k["public_key"]} for k in self.ssh_keys]
                return Response(200, {"ssh_keys": keys} if self.wrap_ssh_key_list else keys)
            if method == "POST":
                return self._add_key(body)
        if path == "/api/v0/users/current" and method == "GET":
            return Response(200, {"id": 123456, "email": "tests@example.com", "balance": 25.0, "credit": 25.0})
        return _err(404, "not_found", f"no route for {method} {request.path}")

    def _search(self, query: Any) -> Response:
        with self.lock:
            offers = list(self.offers.values())
        try:
            return Response(200, {"offers": search(offers, query)})
        except QueryError as exc:
            return _err(400, "invalid_args", str(exc))

    def _create(self, offer_id: str, body: dict[str, Any]) -> Response:
        with self.lock:
            offer = self.offers.get(offer_id)
            if offer is None:
                return _err(
                    404, "no_such_ask", f"error 404/3603: no_such_ask Instance type by id {offer_id} is not available."
                )
            problem = self._validate_create(body)
            if problem:
                return _err(400, "invalid_args", f"error 400/3467: Invalid args: {problem}")
            price = body.get("price")
            is_bid = price is not None
            cancel_unavail = body.get("cancel_unavail", not is_bid)
            if offer_id in self._gone and cancel_unavail:
                return _err(
                    410, "no_such_ask", f"error 410/3907: no_such_ask Instance type {offer_id} is no longer available."
                )
            disk = float(body["disk"])
            view = priced(offer, allocated_storage=disk, pricing="on-demand")
            if is_bid:
                view["dph_base"] = float(price)
                view["dph_total"] = float(price) + view["storage_total_cost"]
            del self.offers[offer_id]  # offers are single-use
            instance_id = str(next(self._ids))
            runtype = str(body.get("runtype") or "ssh")
            inst = FakeVastInstance(
                id=instance_id,
                offer=view,
                body=body,
                api_key=secrets.token_hex(32),
                direct="direc" in runtype and int(offer.get("direct_port_count") or 0) >= 1,
                label=body.get("label"),
                is_bid=is_bid,
                bid=float(price) if is_bid else None,
                outbid=is_bid and float(price) < float(offer.get("min_bid") or 0),
                # without cancel_unavail a host that cannot start leaves a stopped, storage-billing instance
                stopped=offer_id in self._gone,
                never_ready=self._never_ready_all or offer_id in self._never_ready,
            )
            self.instances[instance_id] = inst
        if self.box is None:  # with a box, the onstart script itself installs the key when the container starts
            self.deliver_key((body.get("env") or {}).get("GPURUN_SSH_PUBLIC_KEY"))
        return Response(200, {"success": True, "new_contract": int(instance_id), "instance_api_key": inst.api_key})

    @staticmethod
    def _validate_create(body: dict[str, Any]) -> str | None:
        if not isinstance(body.get("image"), str) or not body["image"]:
            return "'image' is required"
        disk = body.get("disk")
        if isinstance(disk, bool) or not isinstance(disk, (int, float)) or disk < 8:
            return "'disk' must be a number of GB, at least 8"
        if "env" in body and not isinstance(body["env"], dict):
            return "'env' must be an object of variables"
        if len(str(body.get("label") or "")) > 256:
            return "'label' is longer than 256 characters"
        if len(str(body.get("onstart") or "")) > 4048:
            return "'onstart' is longer than 4048 characters"
        price = body.get("price")
        if price is not None and (not isinstance(price, (int, float)) or not 0.001 <= price <= 128):
            return "'price' must be between 0.001 and 128"
        return None

    def _live(self) -> list[FakeVastInstance]:
        with self.lock:
            return [i for i in self.instances.values() if i.destroyed_at is None]

    def _status(self, inst: FakeVastInstance) -> str | None:
        if (stuck := self._stuck_status.get(str(inst.offer.get("id")))) is not None:
            return stuck
        if inst.stopped or inst.outbid:
            return "stopped"
        if inst.polls <= self.pending_polls or inst.never_ready:
            return None if inst.polls <= 1 else "loading"
        return "running"

    def _view(self, inst: FakeVastInstance) -> dict[str, Any]:
        status = self._status(inst)
        offer = inst.offer
        running = status == "running"
        if running and inst.running_since is None:
            inst.running_since = time.time()
        ssh = self.hosts[inst.host][1] if inst.host is not None else self._ssh
        proxy = self._proxy or ssh
        body = inst.body
        return {
            "id": int(inst.id),
            "machine_id": offer.get("machine_id"),
            "host_id": offer.get("host_id"),
            "actual_status": status,
            "intended_status": "stopped" if inst.stopped else "running",
            # outbid: the machine contract is stopped, the renter's intent is still "running"
            "cur_state": "stopped" if inst.stopped or inst.outbid else "running",
            "next_state": "stopped" if inst.stopped else "running",
            "status_msg": f"success, running {body.get('image')}/ssh" if running else "Pulling image",
            "label": inst.label,
            "image_uuid": body.get("image"),
            "image_runtype": f"ssh {body.get('runtype') or 'ssh'}",
            "extra_env": [[k, v] for k, v in (body.get("env") or {}).items()],
            "onstart": body.get("onstart"),
            "ssh_host": proxy[0] if running else None,
            "ssh_idx": "5" if running else None,
            "ssh_port": proxy[1] if running else None,
            "public_ipaddr": ssh[0] if running else None,
            "ports": {"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(ssh[1])}]} if running and inst.direct else None,
            "direct_port_count": offer.get("direct_port_count"),
            "start_date": inst.created_at,
            "num_gpus": offer.get("num_gpus"),
            "gpu_name": offer.get("gpu_name"),
            "gpu_ram": offer.get("gpu_ram"),
            "gpu_totalram": offer.get("gpu_total_ram"),
            "disk_space": float(body.get("disk") or 0),
            "inet_up": offer.get("inet_up"),
            "inet_down": offer.get("inet_down"),
            "inet_up_cost": offer.get("inet_up_cost"),
            "inet_down_cost": offer.get("inet_down_cost"),
            "dph_base": offer.get("dph_base"),
            "storage_cost": offer.get("storage_cost"),
            "storage_total_cost": offer.get("storage_total_cost"),
            "dph_total": offer.get("dph_total"),
            "min_bid": offer.get("min_bid"),
            "is_bid": inst.is_bid,
            "reliability2": offer.get("reliability2"),
            "geolocation": offer.get("geolocation"),
            "verification": offer.get("verification"),
            "cuda_max_good": offer.get("cuda_max_good"),
        }

    def _show(self, instance_id: str, *, count_poll: bool = True) -> Response:
        with self.lock:
            inst = self.instances.get(instance_id)
            if inst is None or inst.destroyed_at is not None:
                return Response(200, {"instances": None})  # gone or not ours: null under the plural key
            if count_poll:
                inst.polls += 1
                self._maybe_boot(inst)
            return Response(200, {"instances": self._view(inst)})

    def _maybe_boot(self, inst: FakeVastInstance) -> None:
        """Start the container on the box: Vast's key setup for the login user, then `onstart` in the background
        with the instance's environment."""
        due = self.pending_polls + 1 if self.boot_after_polls is None else self.boot_after_polls
        if not self.hosts or inst.booted_at is not None or inst.stopped or inst.outbid or inst.polls < due:
            return
        if inst.never_ready and self.boot_after_polls is None:
            return  # the image never finished pulling
        held = {o.host for o in self.instances.values() if o.destroyed_at is None and o.booted_at is not None}
        free = [index for index in range(len(self.hosts)) if index not in held]
        if not free:
            return  # every machine is taken: the container waits, as on a host without capacity
        inst.host = free[0]
        box, ssh = self.hosts[inst.host]
        inst.booted_at = time.time()
        keys = [str(k["public_key"]) for k in self.ssh_keys]
        box.write(".ssh/authorized_keys", "".join(f"{k}\n" for k in [*box.authorized_keys(), *keys]), mode=0o600)
        box.write("onstart.sh", str(inst.body.get("onstart") or ""), mode=0o700)
        env = {k: str(v) for k, v in (inst.body.get("env") or {}).items() if not str(k).startswith("-")}
        env.update(CONTAINER_ID=inst.id, CONTAINER_API_KEY=inst.api_key, VAST_TCP_PORT_22=str(ssh[1]))
        box.start("bash ~/onstart.sh", env)

    def _manage(self, instance_id: str, body: dict[str, Any]) -> Response:
        with self.lock:
            inst = self.instances.get(instance_id)
            if inst is None or inst.destroyed_at is not None:
                return _err(404, "no_such_instance", f"Instance {instance_id} not found")
            if "label" in body:
                inst.label = str(body["label"])
            if body.get("state") == "stopped" and not inst.stopped:
                if inst.running_since:
                    inst.compute_seconds += time.time() - inst.running_since
                    inst.running_since = None
                inst.stopped = True
            elif body.get("state") == "running":
                inst.stopped = False
        return Response(200, {"success": True})

    def _destroy(self, instance_id: str, *, by: str) -> Response:
        with self.lock:
            inst = self.instances.get(instance_id)
            if inst is None or inst.destroyed_at is not None:
                return _err(404, "not_found", "Instance not found")
            inst.destroyed_at = time.time()
            if inst.host is not None and inst.booted_at is not None:
                # the machine goes with everything running on it (before the record: tests wait on the record,
                # then look at the remains)
                self.hosts[inst.host][0].destroy()
            self.destroyed.append(DestroyRecord(instance_id, by))
        return Response(200, {"success": True})

    def _list_v1(self, query: dict[str, str]) -> Response:
        try:
            limit = min(int(query.get("limit", "25")), 25)
            start = int(query.get("after_token") or 0)
            filters = json.loads(query.get("select_filters") or "{}")
        except ValueError:
            return _err(400, "invalid_args", "bad limit, after_token or select_filters")
        with self.lock:
            views = [self._view(i) for i in self._live()]
        try:
            views = [
                v
                for v in views
                if all(_compare(op, v.get(k), w) for k, ops in filters.items() for op, w in ops.items())
            ]
        except (QueryError, AttributeError) as exc:
            return _err(400, "invalid_args", str(exc))
        page = views[start : start + limit]
        more = start + limit < len(views)
        labels: dict[str, int] = {}
        for view in views:
            labels[view["label"] or ""] = labels.get(view["label"] or "", 0) + 1
        return Response(
            200,
            {
                "success": True,
                "instances_found": len(page),
                "total_instances": len(views),
                "label_counts": labels,
                "next_token": str(start + limit) if more else None,
                "instances": page,
            },
        )

    def _add_key(self, body: dict[str, Any]) -> Response:
        key = str(body.get("ssh_key") or "").strip()
        if not key:
            return _err(400, "no_ssh_key", "No ssh key provided")
        with self.lock:
            record = {
                "id": next(self._key_ids),
                "user_id": 123456,
                "public_key": key,
                "created_at": "2026-08-20T12:00:00Z",
                "deleted_at": None,
            }
            self.ssh_keys.append(record)
        return Response(200, {"success": True, "key": record})

    def _attach_key(self, instance_id: str, body: dict[str, Any]) -> Response:
        with self.lock:
            if instance_id not in self.instances or self.instances[instance_id].destroyed_at is not None:
                return _err(404, "no_such_instance", "Instance not found")
        if not body.get("ssh_key"):
            return _err(400, "no_ssh_key", "No ssh key provided")
        return Response(200, {"success": True, "msg": "SSH key attached successfully"})
