"""romana-publisher: renders and reloads BIRD configuration (placeholder, being built)."""


def main() -> None:
    raise SystemExit("romana-publisher: not built yet")
