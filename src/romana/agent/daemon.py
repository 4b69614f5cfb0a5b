"""romana-agent: keeps a host's kernel routes in sync with romanad (placeholder, being built)."""


def main() -> None:
    raise SystemExit("romana-agent: not built yet")
