"""GraphQL resolvers of the fake RunPod (mixed into `FakeRunpod`): dispatch on the root field.

Inline arguments and `variables` both work (graphql_lite); errors come back as HTTP 200
`{"errors": [{"message", "path"}], "data": {field: null}}`, as RunPod does (providers.md §2.2, §2.8).
"""

from __future__ import annotations

from typing import Any

from tests.support.fakes.graphql_lite import GraphQLSyntaxError, Operation, parse_operation
from tests.support.fakes.http_base import RecordedRequest, Response
from tests.support.fakes.runpod_pods import FakePod

#: input fields of the create mutations, as the SDK and runpodctl send them (unknown fields are GraphQL errors)
DEPLOY_FIELDS = {
    "cloudType", "gpuTypeId", "gpuCount", "name", "imageName", "containerDiskInGb", "volumeInGb",
    "volumeMountPath", "ports", "env", "startSsh", "supportPublicIp", "minVcpuCount", "minMemoryInGb",
    "dockerArgs", "dataCenterId", "templateId", "networkVolumeId", "minDownload", "minUpload", "countryCode",
    "allowedCudaVersions", "containerRegistryAuthId", "minCudaVersion", "stopAfter", "terminateAfter",
    "compliance", "startJupyter", "deployCost",
}  # fmt: skip
RENT_FIELDS = DEPLOY_FIELDS | {"bidPerGpu"}


class GraphQLFailure(Exception):
    """Becomes one entry of the `errors` list."""


class GraphQLResolvers:
    """Needs the server's state: gpu_types, pods, account_keys, lock, and its create/terminate helpers."""

    def graphql(self, request: RecordedRequest, auth: str) -> Response:
        body = request.body if isinstance(request.body, dict) else {}
        try:
            op = parse_operation(str(body.get("query") or ""), body.get("variables") or {})
        except GraphQLSyntaxError as exc:
            return Response(400, {"errors": [{"message": f"Syntax Error: {exc}"}]})
        request.graphql_field = op.field
        if auth.startswith("pod:") and not (op.field == "podTerminate" and self._pod_arg(op) == auth[4:]):
            return Response(403, {"errors": [{"message": "This pod-scoped key may only terminate its own pod"}]})
        resolver = getattr(self, f"_gql_{op.field}", None)
        if resolver is None:
            return self._gql_error(op.field, f'Cannot query field "{op.field}" on type "{op.kind.title()}".')
        try:
            data, errors = resolver(op, auth)
        except GraphQLFailure as exc:
            return self._gql_error(op.field, str(exc))
        payload: dict[str, Any] = {"data": {op.field: data}}
        if errors:
            payload["errors"] = errors
        return Response(200, payload)

    @staticmethod
    def _gql_error(field: str, message: str) -> Response:
        return Response(200, {"errors": [{"message": message, "path": [field]}], "data": {field: None}})

    @staticmethod
    def _input(op: Operation) -> dict[str, Any]:
        value = op.args.get("input")
        return value if isinstance(value, dict) else {}

    def _pod_arg(self, op: Operation) -> str | None:
        pod_id = self._input(op).get("podId")
        return str(pod_id) if pod_id else None

    def _live_pod(self, op: Operation) -> FakePod:
        pod_id = self._pod_arg(op)
        pod = self.pods.get(pod_id or "")
        if pod is None or pod.terminated_at is not None:
            raise GraphQLFailure(f"Pod {pod_id} not found")
        return pod

    # -- queries ---------------------------------------------------------------------------------------------
    def _gql_gpuTypes(self, op: Operation, auth: str) -> tuple[Any, list[dict[str, Any]]]:
        wanted = self._input(op)
        ids = wanted.get("ids") or ([wanted["id"]] if wanted.get("id") else None)
        lowest_args = op.field_args("lowestPrice")
        rows, errors = [], []
        with self.lock:
            types = [t for t in self.gpu_types if ids is None or t["id"] in ids]
        for index, gpu_type in enumerate(types):
            row = {k: v for k, v in gpu_type.items() if not k.startswith("_")}
            if lowest_args is not None:
                lowest_input = lowest_args.get("input")
                if not isinstance(lowest_input, dict) or not isinstance(lowest_input.get("gpuCount"), int):
                    errors.append({"message": "gpuCount is required", "path": ["gpuTypes", index, "lowestPrice"]})
                    row["lowestPrice"] = None
                else:
                    row["lowestPrice"] = self.lowest_price(gpu_type, lowest_input)
            rows.append(row)
        return rows, errors

    def _gql_pod(self, op: Operation, auth: str) -> tuple[Any, list[dict[str, Any]]]:
        with self.lock:
            pod = self.pods.get(self._pod_arg(op) or "")
            if pod is None or pod.terminated_at is not None:
                return None, []
            pod.polls += 1
            return self.graphql_view(pod), []

    def _gql_myself(self, op: Operation, auth: str) -> tuple[Any, list[dict[str, Any]]]:
        with self.lock:
            pods = [self.graphql_view(p) for p in self.pods.values() if p.terminated_at is None]
            return {
                "id": "user_2PyTJrLzeuwfZilRZ7JhCQDuSqo",
                "pubKey": "\n\n".join(self.account_keys),
                "pods": pods,
            }, []

    # -- mutations -------------------------------------------------------------------------------------------
    def _create_from_graphql(self, op: Operation, allowed: set[str], interruptible: bool) -> dict[str, Any]:
        data = self._input(op)
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise GraphQLFailure(f'Field "{unknown[0]}" is not defined by type "{op.field}Input".')
        env_list = data.get("env") or []
        env = {str(item.get("key")): str(item.get("value")) for item in env_list if isinstance(item, dict)}
        ports = [p.strip() for p in str(data.get("ports") or "").split(",") if p.strip()]
        bid = data.get("bidPerGpu")
        if interruptible and not isinstance(bid, (int, float)):
            raise GraphQLFailure("bidPerGpu is required")
        pod = self.create_pod(
            name=str(data.get("name") or "my pod"),
            image=str(data.get("imageName") or ""),
            gpu_type_id=str(data.get("gpuTypeId") or ""),
            gpu_count=data.get("gpuCount", 1),
            cloud=str(data.get("cloudType") or "ALL"),
            disk=int(data.get("containerDiskInGb") or 10),
            ports=ports,
            env=env,
            start_ssh=bool(data.get("startSsh")),
            bid_per_gpu=float(bid) if interruptible else None,
            request=data,
        )
        if isinstance(pod, str):
            raise GraphQLFailure(pod)
        view = self.graphql_view(pod)
        return {k: view[k] for k in ("id", "imageName", "env", "machineId", "desiredStatus", "costPerHr", "machine")}

    def _gql_podFindAndDeployOnDemand(self, op: Operation, auth: str) -> tuple[Any, list[dict[str, Any]]]:
        return self._create_from_graphql(op, DEPLOY_FIELDS, interruptible=False), []

    def _gql_podRentInterruptable(self, op: Operation, auth: str) -> tuple[Any, list[dict[str, Any]]]:
        return self._create_from_graphql(op, RENT_FIELDS, interruptible=True), []

    def _gql_podStop(self, op: Operation, auth: str) -> tuple[Any, list[dict[str, Any]]]:
        with self.lock:
            pod = self._live_pod(op)
            pod.exited = True
            return {"id": pod.id, "desiredStatus": "EXITED"}, []

    def _gql_podResume(self, op: Operation, auth: str) -> tuple[Any, list[dict[str, Any]]]:
        with self.lock:
            pod = self._live_pod(op)
            pod.exited, pod.polls, pod.started_at = False, 0, None
            view = self.graphql_view(pod)
            return {k: view[k] for k in ("id", "desiredStatus", "imageName", "env", "machineId", "machine")}, []

    _gql_podBidResume = _gql_podResume

    def _gql_podTerminate(self, op: Operation, auth: str) -> tuple[Any, list[dict[str, Any]]]:
        pod_id = self._pod_arg(op) or ""
        if not self.terminate_pod(pod_id, by="pod" if auth.startswith("pod:") else "account", via="graphql"):
            raise GraphQLFailure(f"Pod {pod_id} not found")
        return None, []  # podTerminate has no selection set

    def _gql_updateUserSettings(self, op: Operation, auth: str) -> tuple[Any, list[dict[str, Any]]]:
        text = str(self._input(op).get("pubKey") or "")
        with self.lock:
            self.account_keys[:] = [line.strip() for line in text.splitlines() if line.strip()]
            return {"id": "user_2PyTJrLzeuwfZilRZ7JhCQDuSqo", "pubKey": "\n\n".join(self.account_keys)}, []
