"""Request bodies of the REST API. Unknown fields are refused (typo protection); every
name follows its rule in :mod:`romana.names` (a 422 names the field and the rule)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from romana import names

HostName = Annotated[str, AfterValidator(names.HOST.check)]
AddressName = Annotated[str, AfterValidator(names.ADDRESS.check)]
TenantName = Annotated[str, AfterValidator(names.TENANT.check)]
SegmentName = Annotated[str, AfterValidator(names.SEGMENT.check)]
Labels = Annotated[dict[str, str], AfterValidator(names.check_labels)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NamedPort(_Body):
    """A named container port; ``containerPort`` (the Kubernetes spelling) is accepted."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: Annotated[str, AfterValidator(names.PORT_NAME.check)]
    port: int = Field(ge=1, le=65535, alias="containerPort")
    protocol: Literal["tcp", "udp", "sctp"] = "tcp"

    @field_validator("protocol", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


def _unique_ports(ports: list[NamedPort]) -> list[NamedPort]:
    """One port per name and protocol, as Kubernetes requires: a policy's named port must
    resolve to one number (silently keeping the last one would open the other)."""
    seen: dict[tuple[str, str], int] = {}
    for p in ports:
        first = seen.get((p.name, p.protocol))
        if first is not None:
            raise ValueError(
                f"named port {p.name!r}/{p.protocol} is given twice ({first} and {p.port}); "
                "a name may appear once per protocol"
            )
        seen[(p.name, p.protocol)] = p.port
    return ports


Ports = Annotated[list[NamedPort], Field(max_length=256), AfterValidator(_unique_ports)]


def ports_json(ports: list[NamedPort] | None) -> list[dict[str, object]] | None:
    if ports is None:
        return None
    return [
        {"name": p.name, "port": p.port, "protocol": p.protocol}
        for p in sorted(ports, key=lambda p: (p.name, p.protocol))
    ]


class EndpointMetadata(_Body):
    labels: Labels | None = None
    ports: Ports | None = None


class PodIdentity(_Body):
    """The Kubernetes pod an address is for (who matches pods to addresses goes by it)."""

    namespace: Annotated[str, AfterValidator(names.NAMESPACE.check)]
    name: Annotated[str, AfterValidator(names.OBJECT.check)]
    uid: Annotated[str, AfterValidator(names.POD_UID.check)] = Field(
        default="", description="The pod's UID; empty or left out when not known."
    )


class AddressRequest(_Body):
    name: AddressName = Field(description="Address name (not shaped like an IP).")
    host: HostName
    tenant: TenantName = ""
    segment: SegmentName = ""
    ip: str | None = Field(
        default=None, max_length=15, description="Ask for this specific address."
    )
    labels: Labels | None = Field(default=None, description="The pod's labels (policies).")
    ports: Ports | None = Field(default=None, description="The pod's named container ports.")
    pod: PodIdentity | None = Field(default=None, description="The pod the address is for.")


class HostRequest(_Body):
    name: HostName = Field(description="Node name (RFC 1123, as in Kubernetes).")
    ip: str = Field(min_length=7, max_length=15)
    tags: Labels = Field(default_factory=dict, description="Node labels.")


class BlackoutRequest(_Body):
    cidr: str = Field(min_length=9, max_length=18)
