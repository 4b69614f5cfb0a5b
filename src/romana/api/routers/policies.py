"""romanad's policy API: tenants and endpoint labels, Romana policies, Kubernetes
NetworkPolicies, and the document agents compile their rules from.

Bodies are parsed here, once, into :class:`romana.policy.model.Policy` (a 422 names the
JSON path of what is wrong); the engine only checks conflicts and records facts.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Body
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from romana.api.context import ERRORS, DurableEngine, State, Writer
from romana.api.models import EndpointMetadata, TenantName, ports_json
from romana.errors import InvalidRequest
from romana.ipam.policy_book import StoredPolicy
from romana.names import check_labels
from romana.policy.k8s import NetworkPolicy, policy_key
from romana.policy.model import Policy
from romana.policy.native import LegacyDocument, RomanaPolicy
from romana.responses import (
    AddressJson,
    NetworkPolicyList,
    PolicyJson,
    PolicyList,
    PolicyState,
    TenantJson,
    TenantList,
)

M = TypeVar("M", bound=BaseModel)


def parse_policies(document: Any) -> tuple[list[tuple[Policy, dict[str, Any]]], bool]:
    """(policies with their sources, whether they replace existing ones): a Kubernetes
    NetworkPolicy (replaces), a ``securitypolicies`` wrapper, or one Romana policy."""
    if not isinstance(document, dict):
        raise InvalidRequest("a policy is a JSON object")
    if document.get("kind") == "NetworkPolicy":
        k8s = _validated(NetworkPolicy, document)
        return [(k8s.translate(), k8s.source())], True
    if "securitypolicies" in document:
        wrapper = _validated(LegacyDocument, document)
        given = [p.canonical() for p in wrapper.securitypolicies]
        return [(p.translate(), p.source()) for p in given], False
    native = _validated(RomanaPolicy, document)
    return [(native.translate(), native.source())], False


def policy_json(stored: StoredPolicy) -> PolicyJson:
    kind: Literal["kubernetes", "romana"] = (
        "kubernetes" if stored.key.startswith("k8s:") else "romana"
    )
    return {"id": stored.key, "kind": kind, "policy": stored.policy, "source": stored.source}


router = APIRouter(tags=["policies"], responses=ERRORS)


# -- tenants and endpoints ---------------------------------------------------------------------
@router.get("/tenants")
async def tenants(engine: DurableEngine) -> TenantList:
    return {"revision": engine.revision, "tenants": engine.tenants()}


@router.get("/tenants/{name}")
async def get_tenant(name: str, engine: DurableEngine) -> TenantJson:
    return engine.tenant(_tenant(name))


@router.put("/tenants/{name}")
async def put_tenant(
    name: str, body: Annotated[dict[str, Any], Body()], service: Writer
) -> TenantJson:
    """Replace a tenant's labels: the body is the label map (or ``{"labels": map}``)."""
    tenant = _tenant(name)
    if set(body) == {"labels"} and isinstance(body["labels"], dict):
        body = body["labels"]
    labels = _labels(body)
    engine = service.engine
    return await service.mutate(lambda: engine.label_tenant(tenant, labels))


@router.put("/address/{name}/labels")
async def put_endpoint(name: str, body: EndpointMetadata, service: Writer) -> AddressJson:
    """Replace an endpoint's labels and/or named ports (a field left out is kept)."""
    engine = service.engine

    def relabel() -> AddressJson:
        engine.label_endpoint(name, body.labels, ports_json(body.ports))
        return engine.address(name).to_json()

    return await service.mutate(relabel)


# -- policies ----------------------------------------------------------------------------------
@router.get("/policies")
async def policies(engine: DurableEngine) -> PolicyList:
    return {
        "revision": engine.revision,
        "policies": [policy_json(p) for p in engine.policies()],
    }


@router.post("/policies")
async def add_policies(document: Annotated[Any, Body()], service: Writer) -> PolicyList:
    given, replace = parse_policies(document)
    engine = service.engine

    def add() -> PolicyList:
        engine.add_policies(given, replace)
        return {
            "revision": engine.revision,
            "policies": [policy_json(engine.policy(p.key)) for p, _ in given],
        }

    return await service.mutate(add)


@router.get("/policies/{key}")
async def get_policy(key: str, engine: DurableEngine) -> PolicyJson:
    return policy_json(engine.policy(key))


@router.delete("/policies/{key}")
async def remove_policy(key: str, service: Writer) -> PolicyJson:
    engine = service.engine
    return policy_json(await service.mutate(lambda: engine.remove_policy(key)))


@router.get("/k8s/networkpolicies")
async def k8s_policies(engine: DurableEngine) -> NetworkPolicyList:
    found = [p.source for p in engine.policies() if p.key.startswith("k8s:")]
    return {"revision": engine.revision, "items": found}


@router.post("/k8s/networkpolicies")
async def put_k8s_policy(
    document: Annotated[dict[str, Any], Body()], service: Writer
) -> PolicyJson:
    """Add or replace (same namespace and name) a NetworkPolicy, as Kubernetes has it."""
    k8s = _validated(NetworkPolicy, document)
    policy, source = k8s.translate(), k8s.source()
    engine = service.engine

    def put() -> PolicyJson:
        engine.add_policies([(policy, source)], replace=True)
        return policy_json(engine.policy(policy.key))

    return await service.mutate(put)


@router.delete("/k8s/networkpolicies/{namespace}/{name}")
async def remove_k8s_policy(namespace: str, name: str, service: Writer) -> PolicyJson:
    key = policy_key(namespace, name)
    engine = service.engine
    return policy_json(await service.mutate(lambda: engine.remove_policy(key)))


# -- for agents --------------------------------------------------------------------------------
@router.get("/policy/state")
async def policy_state(engine: DurableEngine, romanad: State) -> PolicyState:
    """Endpoints, tenant labels, hosts and policies at one revision (agents load this,
    then follow the changes feed)."""
    inputs = engine.policy_inputs()
    inputs.store_id = romanad.service.store_id
    return inputs.to_json()


def _validated(model: type[M], document: Any) -> M:
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
        raise RequestValidationError(errors) from None


def _tenant(name: str) -> str:
    return _validated(_TenantPath, {"name": name}).name


def _labels(body: dict[str, Any]) -> dict[str, str]:
    try:
        return check_labels(body)
    except ValueError as exc:
        raise RequestValidationError(
            [{"loc": ("body",), "msg": str(exc), "type": "value_error"}]
        ) from None


class _TenantPath(BaseModel):
    name: TenantName
