"""`romana-token`: creates romanad's API token Secret once, so no one has to.

The Secret (``romana-api-token`` in ``romana-system``, key ``token``) is mounted by
romanad, the listeners, the agents and the publishers; until it exists their pods wait in
ContainerCreating. The manifests run this command as a Job (deploy/base/token.yaml) whose
Role allows exactly what it does here: ``get`` of that one Secret and ``create`` of
secrets (Kubernetes cannot restrict ``create`` to a name).

- The Secret exists (whatever it holds): it is left alone. Re-running the Job, or a
  Secret an operator made by hand (a token shared with tools outside the cluster), never
  changes the token the running daemons use. A Secret without a usable ``token`` key is
  reported (exit 1), not repaired: replacing it is the operator's decision.
- It does not exist: it is created with 32 random bytes, hex-encoded. A create that loses
  a race with another run (409 AlreadyExists) is success: that run's token stands.

The token is never printed or logged.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import secrets
import sys
from pathlib import Path

import httpx2
from lightkube import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret

from romana.buildinfo import add_version_option
from romana.errors import InvalidRequest
from romana.kube.connect import connect, load_config

DEFAULT_NAMESPACE = "romana-system"
DEFAULT_NAME = "romana-api-token"
KEY = "token"  # the file name in the mounted Secret: /etc/romana/token/token
RANDOM_BYTES = 32


class TokenSecretError(Exception):
    """The Secret cannot be read, created, or holds no usable token (the message says which)."""


def new_token() -> str:
    """32 random bytes as 64 hex digits: text that survives a file, a header and a shell."""
    return secrets.token_hex(RANDOM_BYTES)


def usable(secret: Secret) -> bool:
    """Whether ``secret`` holds a non-empty ``token`` that the daemons can read as text."""
    encoded = (secret.data or {}).get(KEY)
    if not encoded:
        return False
    try:
        return bool(base64.b64decode(encoded, validate=True).decode().strip())
    except (binascii.Error, UnicodeDecodeError):
        return False


async def ensure(
    kubeconfig: Path | None, namespace: str = DEFAULT_NAMESPACE, name: str = DEFAULT_NAME
) -> str:
    """Make sure the Secret exists; returns ``"created"`` or ``"exists"``."""
    client = connect(load_config(kubeconfig))
    try:
        try:
            found = await client.get(Secret, name, namespace=namespace)
        except ApiError as exc:
            if exc.status.code != 404:
                raise TokenSecretError(
                    f"cannot read Secret {namespace}/{name}: {exc.status.message}"
                ) from exc
        else:
            if not usable(found):
                raise TokenSecretError(
                    f"Secret {namespace}/{name} exists but has no usable {KEY!r} key "
                    "(romanad and the agents read that key); delete the Secret to have a "
                    "new one made, or put a token in it"
                )
            return "exists"
        secret = Secret(
            metadata=ObjectMeta(
                name=name,
                namespace=namespace,
                labels={"app.kubernetes.io/part-of": "romana"},
            ),
            type="Opaque",
            data={KEY: base64.b64encode(new_token().encode()).decode()},
        )
        try:
            await client.create(secret)  # the namespace is in its metadata
        except ApiError as exc:
            if exc.status.code == 409:  # another run created it first: its token stands
                return "exists"
            raise TokenSecretError(
                f"cannot create Secret {namespace}/{name}: {exc.status.message}"
            ) from exc
        return "created"
    finally:
        await client.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="romana-token",
        description="Create romanad's API token Secret if it does not exist (idempotent; "
        "an existing Secret is left alone; the token is never printed).",
    )
    add_version_option(parser)
    parser.add_argument("--namespace", default=DEFAULT_NAMESPACE)
    parser.add_argument("--name", default=DEFAULT_NAME, help="the Secret's name")
    parser.add_argument(
        "--kubeconfig", type=Path, help="default: $KUBECONFIG, in-cluster, ~/.kube/config"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        outcome = asyncio.run(ensure(args.kubeconfig, args.namespace, args.name))
    except (TokenSecretError, InvalidRequest) as exc:
        sys.exit(f"romana-token: {exc}")
    except (httpx2.TransportError, OSError) as exc:  # the Job's restarts retry it
        sys.exit(f"romana-token: cannot reach the Kubernetes API server: {exc}")
    if outcome == "created":
        print(f"romana-token: created Secret {args.namespace}/{args.name} (key {KEY!r})")
    else:
        print(f"romana-token: Secret {args.namespace}/{args.name} exists; left as it is")


if __name__ == "__main__":
    main()
