"""One build of the Axolotl recipes' tiny assets per session, shared by every module here (each used to build its
own: tiny_assets.build ran in 8 modules)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory) -> Callable[[Path], dict[str, str]]:
    """``place(folder)``: ``folder/slowed-tiny`` (what ``recipes/tiny-cpu.yaml`` reads), a link to the session's one
    build of every family; returns ``tiny_assets.build``'s paths as seen through the link. Training only reads it
    (datasets are prepared under each run's own ``dataset_prepared_path``)."""
    from slowed_plugin.axolotl.tiny_assets import build

    root = tmp_path_factory.mktemp("axolotl-assets") / "slowed-tiny"
    paths = build(root, families=("llama", "qwen2", "bloom"))

    def place(folder: Path) -> dict[str, str]:
        link = Path(folder) / "slowed-tiny"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(root, target_is_directory=True)
        return {key: str(link / Path(path).relative_to(root)) for key, path in paths.items()}

    return place
