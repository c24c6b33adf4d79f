"""The README, the docs and CI agree with the code."""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from slowed_plugin import SLowEDConfig
from slowed_plugin.monitor.settings import CONFIG_KEYS

ROOT = Path(__file__).resolve().parents[1]
QLORA_RECIPES = ("qlora-8gb.yaml", "qlora-12gb.yaml", "qlora-24gb.yaml")


@pytest.fixture(scope="module")
def docs_tool():
    """scripts/docs.py, the one generator and rewriter of the docs' generated blocks."""
    spec = importlib.util.spec_from_file_location("slowed_docs_tool", ROOT / "scripts" / "docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _block(docs_tool, relative: str, name: str) -> str:
    text = (ROOT / relative).read_text(encoding="utf-8")
    match = re.search(re.escape(docs_tool.begin(name)) + r"\n(.*?)\n" + re.escape(docs_tool.end(name)), text, re.S)
    assert match is not None, f"{relative}: {name} markers missing"
    return match.group(1)


def test_generated_docs_are_up_to_date(docs_tool):
    assert docs_tool.run(check=True) == [], "regenerate: .venv/bin/python scripts/docs.py"


def test_docs_check_names_a_stale_block_and_a_rewrite_fixes_it(docs_tool, tmp_path, capsys):
    for relative, _ in docs_tool.BLOCKS:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / relative, tmp_path / relative)
    for recipe in (ROOT / "recipes").glob("*.yaml"):
        shutil.copy(recipe, tmp_path / "recipes" / recipe.name)
    doc = tmp_path / "docs" / "axolotl.md"
    original = doc.read_text(encoding="utf-8")
    doc.write_text(original.replace("| `slowed.tau` | required |", "| `slowed.tau` | `1` |"), encoding="utf-8")

    assert docs_tool.main(["--check", "--root", str(tmp_path)]) == 1
    assert capsys.readouterr().out.strip() == "stale docs/axolotl.md: keys"
    assert doc.read_text(encoding="utf-8") != original  # --check writes nothing
    assert docs_tool.main(["--root", str(tmp_path)]) == 0
    assert doc.read_text(encoding="utf-8") == original
    assert docs_tool.main(["--check", "--root", str(tmp_path)]) == 0


def test_key_tables_render_every_key_and_default_one_way(docs_tool):
    readme = _block(docs_tool, "README.md", "keys").splitlines()
    axolotl = _block(docs_tool, "docs/axolotl.md", "keys").splitlines()
    # One rendering: the Axolotl table is the README's with `slowed.` in front of each key.
    assert [row.replace("| `slowed.", "| `", 1) for row in axolotl] == readme
    rows = {row.split(" | ")[0].strip("| `"): row for row in readme[2:]}
    assert list(rows) == list(SLowEDConfig.keys())
    for key, help_text in SLowEDConfig.help().items():
        assert help_text.replace("|", "\\|") in rows[key]
    assert rows["tau"].startswith("| `tau` | required |")
    assert rows["mask_ratio"].startswith("| `mask_ratio` | required |")
    assert rows["mask_scope"].startswith("| `mask_scope` | `sequence` |")
    assert rows["safety_monitor"].startswith("| `safety_monitor` | `null` |")  # YAML, not Python's None
    # A bare `|` (as in ||ΔW||_F) would split a cell: every row has exactly its three cells.
    assert all(len(re.split(r"(?<!\\)\|", row)) == 5 for row in readme)


def test_monitor_key_table_is_generated_from_the_monitor_help(docs_tool):
    rows = _block(docs_tool, "docs/evaluation.md", "monitor-keys").splitlines()[2:]
    assert [row.split(" | ")[0].strip("| `") for row in rows] == list(CONFIG_KEYS)
    assert all(CONFIG_KEYS[key].replace("|", "\\|") in row for key, row in zip(CONFIG_KEYS, rows, strict=True))


def test_memory_table_is_generated_and_says_estimate(docs_tool):
    block = _block(docs_tool, "recipes/README.md", "memory")
    assert "estimates, not measurements" in (ROOT / "recipes" / "README.md").read_text(encoding="utf-8")
    assert all(f"`{name}`" in block for name in QLORA_RECIPES)


def test_memory_table_prints_from_any_directory(tmp_path):
    command = [sys.executable, "-m", "slowed_plugin.axolotl.memory"]
    out = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert all(f"`{name}`" in out for name in QLORA_RECIPES), out
    bad = subprocess.run([*command, "--recipes", str(tmp_path / "none")], cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode == 2 and "`--recipes` must be a folder of recipe YAML files" in bad.stderr


def test_memory_estimate_counts_the_loss_slowed_computes():
    from slowed_plugin.axolotl.memory import ARCHITECTURES, GIB, LOSS_CHUNK, estimate
    from slowed_plugin.core.hidden_states_loss import DEFAULT_CHUNK_SIZE

    assert LOSS_CHUNK == DEFAULT_CHUNK_SIZE
    qwen = ARCHITECTURES["Qwen/Qwen2.5-1.5B-Instruct"]
    short, long = (estimate(qwen, seq, 2, 64, quantized=True) for seq in (1024, 8192))
    # From hidden states: one chunk of bf16 logits, plus the last hidden states and their gradient.
    assert short.loss == pytest.approx((2 * 256 * qwen.vocab + 2 * 2048 * qwen.hidden) / GIB)
    assert long.loss - short.loss == pytest.approx(2 * (8192 - 1024) * 2 * qwen.hidden / GIB)
    on_logits = estimate(qwen, 1024, 2, 64, quantized=True, loss_path="logits")
    assert on_logits.loss == pytest.approx(4 * 2048 * qwen.vocab / GIB)  # bf16 logits and their gradient
    # Evaluation runs the untouched forward: full logits, their fp32 copy and fp32 log-probabilities.
    evaluated = estimate(qwen, 1024, 2, 64, quantized=True, eval_batch_size=1)
    assert evaluated.eval_loss == pytest.approx(10 * 1024 * qwen.vocab / GIB)
    assert evaluated.total >= short.total and short.eval_loss is None


def test_readme_starts_with_the_two_commands_and_ci_runs_the_second():
    readme = (ROOT / "README.md").read_text()
    fence = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in fence.strip().splitlines()]
    assert commands == ["scripts/demo.sh", "scripts/test.sh"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "\nscripts/test.sh\n" in ci


def test_import_stays_light():
    code = "import sys, slowed_plugin; print(sorted(m for m in sys.modules if m.split('.')[0] in ('trl', 'axolotl')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_command_line_parser_imports_no_framework():
    """`slowed --help` builds every sub-command's parser: their modules import the frameworks only in `run`."""
    code = (
        "import sys; from slowed_plugin.cli import build_parser; build_parser(); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'trl', 'axolotl', 'datasets'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.slow
def test_cli_runs_quickstart_end_to_end(tmp_path):
    # A subprocess, as a user runs it: the SLowED logger writes to the real stderr, beside the trainer's progress bar.
    command = [sys.executable, "-m", "slowed_plugin.cli", "quickstart", "--epochs", "1", "--out", str(tmp_path)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([*command, "--tau", "0.1"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out, err = done.stdout, done.stderr
    assert "SLowED metrics as the trainer logged them" in out
    assert (out + err).count("SLowED: Slow Tuning tau=0.1") == 1, out + err  # the start line once
    # The end line starts a line of its own, not glued onto the progress bar's last state (`...s/it]SLowED: ...`).
    pieces = [piece for piece in re.split(r"[\r\n]", err) if "SLowED: trained weights satisfy" in piece]
    assert len(pieces) == 1 and pieces[0].startswith("SLowED: trained weights satisfy"), err[-2000:]
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()


def test_cli_rejects_bad_value_before_any_model(tmp_path, capsys):
    from slowed_plugin.cli import main

    assert main(["quickstart", "--mask-ratio", "1.5", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("slowed: error: `mask_ratio` must be") and "1.5" in err and "\n" not in err
    assert not (tmp_path / "tiny-model").exists()


def _readme_block(after: str) -> list[str]:
    """The commands of the first ```bash block after ``after`` in the README, comments dropped."""
    text = (ROOT / "README.md").read_text(encoding="utf-8").split(after, 1)[1]
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]


@pytest.mark.slow  # the model build, `slowed inspect` and a short `slowed eval safety`, as a user runs them: ~1 min
def test_readme_try_it_commands_run_as_written_on_the_tiny_model(tmp_path):
    commands = _readme_block("To try both without a download")
    assert commands[0].startswith("python -m slowed_plugin.axolotl.tiny_assets slowed-tiny")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    done = subprocess.run(
        " && ".join(commands), shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "dropped" in done.stdout and re.search(r"^safety ratio \S+ \(\d+/2\)", done.stdout, re.M), done.stdout
