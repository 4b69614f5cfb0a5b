"""Request bodies of the REST API. Unknown fields are refused (typo protection)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

Name = Field(min_length=1, max_length=253)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AddressRequest(_Body):
    name: str = Name
    host: str = Name
    tenant: str = Field(default="", max_length=253)
    segment: str = Field(default="", max_length=253)
    ip: str | None = Field(default=None, description="Ask for this specific address.")


class HostRequest(_Body):
    name: str = Name
    ip: str = Field(min_length=7, max_length=15)
    tags: dict[str, str] = Field(default_factory=dict, description="Node labels.")


class BlackoutRequest(_Body):
    cidr: str = Field(min_length=9, max_length=18)
