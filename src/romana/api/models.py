"""Request bodies of the REST API. Unknown fields are refused (typo protection); every
name follows its rule in :mod:`romana.names` (a 422 names the field and the rule)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from romana import names

HostName = Annotated[str, AfterValidator(names.HOST.check)]
AddressName = Annotated[str, AfterValidator(names.ADDRESS.check)]
TenantName = Annotated[str, AfterValidator(names.TENANT.check)]
SegmentName = Annotated[str, AfterValidator(names.SEGMENT.check)]
Labels = Annotated[dict[str, str], AfterValidator(names.check_labels)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AddressRequest(_Body):
    name: AddressName = Field(description="Address name (not shaped like an IP).")
    host: HostName
    tenant: TenantName = ""
    segment: SegmentName = ""
    ip: str | None = Field(
        default=None, max_length=15, description="Ask for this specific address."
    )


class HostRequest(_Body):
    name: HostName = Field(description="Node name (RFC 1123, as in Kubernetes).")
    ip: str = Field(min_length=7, max_length=15)
    tags: Labels = Field(default_factory=dict, description="Node labels.")


class BlackoutRequest(_Body):
    cidr: str = Field(min_length=9, max_length=18)
