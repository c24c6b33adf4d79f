"""The README, the docs and CI agree with the code."""

import re
import subprocess
import sys
from pathlib import Path

from slowed_plugin import SLowEDConfig

ROOT = Path(__file__).resolve().parents[1]


def test_readme_config_reference_is_generated_from_help_strings():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- config-reference:start -->\n(.*?)\n<!-- config-reference:end -->", readme, re.S)
    assert block is not None
    assert block.group(1) == SLowEDConfig.markdown_reference()


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


def test_cli_runs_quickstart_end_to_end(tmp_path, capsys):
    from slowed_plugin.cli import main

    assert main(["quickstart", "--epochs", "1", "--out", str(tmp_path), "--tau", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "SLowED: Slow Tuning tau=0.1" in out and "SLowED metrics as the trainer logged them" in out
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()


def test_cli_rejects_bad_value_before_any_model(tmp_path, capsys):
    from slowed_plugin.cli import main

    assert main(["quickstart", "--mask-ratio", "1.5", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("slowed: error: `mask_ratio` must be") and "1.5" in err and "\n" not in err
    assert not (tmp_path / "tiny-model").exists()
