"""`slowed inspect` on a known model: the tokens it marks and the entropies it prints are checked
against a reference computed here in float64 from the model's logits, with the selection rule
written out independently (lowest entropies first, ties to the earlier position)."""

from __future__ import annotations

import json
import math
import re
from html.parser import HTMLParser

import pytest
import torch

from slowed_plugin.inspector import encode_example, inspect_examples, render_html, render_terminal

pytestmark = pytest.mark.usefixtures("one_thread")


def _reference(model, tokenizer, row, mask_ratio):
    """(target positions, their entropies, dropped positions) for one example, computed by hand."""
    ids, labels = encode_example(tokenizer, row)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    logp = logits.log_softmax(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    targets = [i for i in range(1, len(ids)) if labels[i] != -100]
    entropies = {i: float(entropy[i - 1]) for i in targets}  # token i is predicted by the logits at i - 1
    k = math.floor(mask_ratio * len(targets))
    dropped = sorted(sorted(targets, key=lambda i: (entropies[i], i))[:k])
    return targets, entropies, dropped


@pytest.fixture(scope="module")
def llama(llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(llama_dir), AutoTokenizer.from_pretrained(llama_dir)


def test_prompt_completion_encoding_trains_on_completion_only(llama, cot_rows):
    _, tokenizer = llama
    row = cot_rows[0]
    ids, labels = encode_example(tokenizer, row)
    prompt_len = len(tokenizer(row["prompt"])["input_ids"])
    assert labels[:prompt_len] == [-100] * prompt_len
    assert labels[prompt_len:] == ids[prompt_len:] and ids[-1] == tokenizer.eos_token_id
    ids, labels = encode_example(tokenizer, {"text": "7 + 5 = 12"})
    assert labels == ids
    messages = [{"role": "user", "content": "what is 5 + 5 ?"}, {"role": "assistant", "content": "10"}]
    ids, labels = encode_example(tokenizer, {"messages": messages})
    assert ids == tokenizer.apply_chat_template(messages, tokenize=True)["input_ids"]
    with pytest.raises(ValueError, match="needs `prompt` and `completion`"):
        encode_example(tokenizer, {"question": "x"})


@pytest.mark.parametrize("mask_ratio", [0.0, 0.3, 0.75])
def test_inspect_matches_reference(llama, cot_rows, mask_ratio):
    model, tokenizer = llama
    rows = cot_rows[:3]
    examples = inspect_examples(model, tokenizer, rows, mask_ratio)
    for row, ex in zip(rows, examples, strict=True):
        targets, entropies, dropped = _reference(model, tokenizer, row, mask_ratio)
        assert [i for i, t in enumerate(ex.is_target) if t] == targets
        assert [i for i, d in enumerate(ex.dropped) if d] == dropped
        assert ex.n_dropped == math.floor(mask_ratio * len(targets))
        for i in targets:
            assert ex.entropy[i] == pytest.approx(entropies[i], abs=1e-4)
        assert "".join(ex.tokens).replace(" ", "") == tokenizer.decode(ex.token_ids).replace(" ", "")


def test_cli_terminal_and_html(llama_dir, llama, cot_rows, tmp_path, capsys):
    from slowed_plugin.cli import main

    model, tokenizer = llama
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in cot_rows[:5]))
    html_path = tmp_path / "mask.html"
    code = main(
        ["inspect", "--model", llama_dir, "--data", str(data), "--examples", "2", "--start", "1"]
        + ["--mask-ratio", "0.3", "--color", "never", "--html", str(html_path)]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "\x1b[" not in out
    for number, row in enumerate(cot_rows[1:3], 1):
        targets, entropies, dropped = _reference(model, tokenizer, row, 0.3)
        header = re.search(rf"example {number}: (\d+) target tokens, (\d+) dropped = floor\(0.3 x (\d+)\)", out)
        assert header and int(header[1]) == len(targets) and int(header[2]) == len(dropped)
        # Each table row: position, token, entropy (4 decimals), kept/dropped.
        section = out.split(f"example {number}:")[1].split("example ")[0]
        table = {
            int(m[1]): (float(m[2]), m[3])
            for m in re.finditer(r"^\s+(\d+)\s+.*?\s+(\d+\.\d{4})\s+(kept|dropped)$", section, re.M)
        }
        assert sorted(table) == targets
        for i in targets:
            assert table[i][0] == pytest.approx(entropies[i], abs=1e-4)
            assert table[i][1] == ("dropped" if i in dropped else "kept")
        inline = section.splitlines()[1]
        assert inline.count("[-") == len(dropped)
    assert out.rstrip().endswith(f"HTML written to {html_path}")

    class Counter(HTMLParser):
        dropped = kept = 0

        def handle_starttag(self, tag, attrs):
            cls = dict(attrs).get("class", "")
            if tag == "ruby" and "dropped" in cls:
                self.dropped += 1
            elif tag == "ruby" and "kept" in cls:
                self.kept += 1

    page = html_path.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page
    counter = Counter()
    counter.feed(page)
    expected = [_reference(model, tokenizer, r, 0.3) for r in cot_rows[1:3]]
    legend = 1  # one kept and one dropped sample in the legend
    assert counter.dropped - legend == sum(len(d) for _, _, d in expected)
    assert counter.kept - legend == sum(len(t) - len(d) for t, _, d in expected)


def test_terminal_colours_and_html_escaping(llama):
    model, tokenizer = llama
    examples = inspect_examples(model, tokenizer, [{"text": "7 + 5 = 12 . answer : 12"}], 0.5, "batch")
    coloured = render_terminal(examples, 0.5, "batch", color=True)
    assert (
        coloured.count("\x1b[31m\x1b[9m") == examples[0].n_dropped == 5
    )  # floor(0.5 * 10): 11 tokens, the first is no target
    examples[0].tokens[1] = "<b>&"
    page = render_html(examples, 0.5, "batch", title="t <x>")
    assert "&lt;b&gt;&amp;" in page and "<b>&" not in page and "t &lt;x&gt;" in page


def test_cli_errors(llama_dir, capsys):
    from slowed_plugin.cli import main

    assert main(["inspect", "--model", llama_dir, "--mask-ratio", "1.5"]) == 2
    assert "mask_ratio" in capsys.readouterr().err
    assert main(["inspect", "--model", llama_dir, "--data", "nope.jsonl"]) == 2
    assert "nope.jsonl does not exist" in capsys.readouterr().err


def test_cli_default_data_is_the_bundled_sample(llama_dir, cot_rows, capsys):
    from slowed_plugin.cli import main

    assert main(["inspect", "--model", llama_dir, "--examples", "1", "--color", "never", "--no-table"]) == 0
    out = capsys.readouterr().out
    assert "example 1:" in out and "example 2:" not in out
    assert cot_rows[0]["prompt"].split()[0] in out


def test_sharegpt_rows_encode_like_messages_as_trl_converts_them(llama):
    _, tokenizer = llama
    messages = [{"role": "user", "content": "what is 5 + 5 ?"}, {"role": "assistant", "content": "10"}]
    sharegpt = {"conversations": [{"from": m["role"], "value": m["content"]} for m in messages]}
    assert encode_example(tokenizer, sharegpt) == encode_example(tokenizer, {"messages": messages})
    assert sharegpt["conversations"][0] == {"from": "user", "value": "what is 5 + 5 ?"}  # the row is left as given
