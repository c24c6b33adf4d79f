"""The ``slowed`` command for a user whose install lacks an extra, and its default quietness.

Each command runs in a subprocess whose imports of the blocked packages fail, as on an install without
the extra that brings them (a meta-path finder raising ``ModuleNotFoundError`` stands in for the missing
package, for ``import`` and ``importlib.util.find_spec`` alike).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY_RECIPE = ROOT / "recipes" / "tiny-cpu.yaml"

RUN_BLOCKED = """
import sys
BLOCKED = set(sys.argv[1].split(",")) - {""}

class Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Missing())
from slowed_plugin.cli import main
sys.exit(main(sys.argv[2:]))
"""


def slowed(*args: str, blocked: tuple[str, ...] = (), env: dict[str, str] | None = None, cwd: Path | None = None):
    full_env = {k: v for k, v in os.environ.items() if k != "SLOWED_VERBOSE"}
    full_env.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run(
        [sys.executable, "-c", RUN_BLOCKED, ",".join(blocked), *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd or ROOT,
        timeout=300,
    )


MISSING = {
    "demo without matplotlib": (
        ("demo", "--quick"),
        ("matplotlib",),
        "slowed demo needs matplotlib: pip install 'slowed-plugin[demo]'",
    ),
    "demo without trl and matplotlib": (
        ("demo", "--quick"),
        ("matplotlib", "trl"),
        "slowed demo needs matplotlib and trl: pip install 'slowed-plugin[demo]'",
    ),
    "quickstart without trl": (
        ("quickstart",),
        ("trl",),
        "slowed quickstart needs trl: pip install 'slowed-plugin[trl]'",
    ),
    "inspect without trl": (
        ("inspect", "--model", "does-not-matter"),
        ("trl",),
        "slowed inspect needs trl: pip install 'slowed-plugin[trl]'",
    ),
    "check without axolotl": (
        ("check", str(TINY_RECIPE)),
        ("axolotl",),
        "slowed check needs axolotl: pip install 'slowed-plugin[axolotl]'",
    ),
}


@pytest.mark.parametrize("case", list(MISSING))
def test_a_command_without_its_extra_exits_2_with_one_line_naming_the_extra(case, tmp_path):
    args, blocked, line = MISSING[case]
    done = slowed(*args, blocked=blocked, cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip() == line, done.stderr
    assert done.stdout == ""
    assert list(tmp_path.iterdir()) == []  # no work done: `slowed demo` writes ./slowed-demo


def test_commands_without_extras_run_on_the_bare_install(tmp_path):
    blocked = ("trl", "axolotl", "matplotlib", "bitsandbytes")
    done = slowed("recipes", blocked=blocked)
    assert done.returncode == 0 and "tiny-cpu" in done.stdout, done.stderr
    done = slowed("eval", "safety", "--model", "m", "--prompts", "p.csv", "--out", "o", "--limit", "0", blocked=blocked)
    assert done.returncode == 2 and done.stderr.strip() == "slowed eval safety: --limit must be >= 1, got 0.", (
        done.stderr
    )


def test_slowed_check_as_a_library_names_the_missing_axolotl_not_a_misspelling(tmp_path):
    code = RUN_BLOCKED.replace(
        "from slowed_plugin.cli import main\nsys.exit(main(sys.argv[2:]))",
        "from slowed_plugin.axolotl.check import check_recipes\nsys.exit(check_recipes(sys.argv[2:]))",
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "axolotl", str(TINY_RECIPE)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "axolotl is not installed (pip install 'slowed-plugin[axolotl]')" in done.stdout
    assert "Did you mean" not in done.stdout and "cannot be loaded" not in done.stdout


# ---------------------------------------------------------------------------------------------- quiet by default

NOISE = (
    "torchao/_C",  # Failed to load .../torchao/_C_*.so
    "register_constant() on Enum subclasses is deprecated",
    "Skipping publisher trust check for 'kernels-community",
    "Failed to load CPU gemm_4bit_forward from kernels-community",
)


@pytest.mark.slow  # two full `slowed check` processes with axolotl imported (~30 s)
def test_slowed_check_hides_known_import_noise_unless_verbose():
    quiet = slowed("check", str(TINY_RECIPE))
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    assert not [fragment for fragment in NOISE if fragment in quiet.stderr], quiet.stderr
    loud = slowed("check", "--verbose", str(TINY_RECIPE))
    env_loud = slowed("check", str(TINY_RECIPE), env={"SLOWED_VERBOSE": "1"})
    assert loud.returncode == 0 and env_loud.returncode == 0
    assert loud.stdout == quiet.stdout == env_loud.stdout
    # This environment's torchao/bitsandbytes make the noise; where they do, --verbose lets it through.
    for fragment in NOISE:
        assert (fragment in loud.stderr) == (fragment in env_loud.stderr), fragment
    if importlib.util.find_spec("torchao") is not None:
        assert any(fragment in loud.stderr for fragment in NOISE), loud.stderr


def test_the_filters_drop_only_the_known_messages():
    import logging
    import warnings

    from slowed_plugin.quiet import silence_import_noise

    silence_import_noise()
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    handler = Keep()
    for name in ("torchao", "torch.utils._pytree", "bitsandbytes.backends.cpu.ops"):
        logging.getLogger(name).addHandler(handler)
    try:
        logging.getLogger("torchao").warning("Failed to load /x/torchao/_C_mxfp8.so: Could not load this library")
        logging.getLogger("torchao").warning("Failed to load checkpoint foo")  # a real torchao warning stays
        logging.getLogger("torch.utils._pytree").warning(
            "<enum 'X'> is an Enum subclass ... register_constant() on Enum subclasses is deprecated and ..."
        )
        logging.getLogger("torch.utils._pytree").warning("some other pytree warning")
        logging.getLogger("bitsandbytes.backends.cpu.ops").warning(
            "Failed to load CPU gemm_4bit_forward from kernels-community: offline"
        )
    finally:
        for name in ("torchao", "torch.utils._pytree", "bitsandbytes.backends.cpu.ops"):
            logging.getLogger(name).removeHandler(handler)
    assert seen == ["Failed to load checkpoint foo", "some other pytree warning"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        silence_import_noise()
        warnings.warn(
            "Skipping publisher trust check for 'kernels-community/x' because offline", UserWarning, stacklevel=1
        )
        warnings.warn("a real UserWarning", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["a real UserWarning"]
