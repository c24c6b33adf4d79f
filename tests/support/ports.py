"""A free TCP port for a torchrun rendezvous: fixed ports collide when two suites share a machine."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port the OS had free a moment ago (bound to port 0, then released for the launcher to take)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(processes: int = 2) -> list[str]:
    """``python -m torch.distributed.run`` on this machine with ``processes`` ranks and a free rendezvous port."""
    import sys

    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)] + [
        "--master_port",
        str(free_port()),
    ]
