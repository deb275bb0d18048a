"""`tfpipeline evaluate`, `compare` and `predict` (being written)."""


def register(commands) -> None:
    """Add `evaluate`, `compare` and `predict` to the top-level subparsers."""
