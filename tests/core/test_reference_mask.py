"""The static reference mask against the reference selection on the initial model's own logits."""

import copy
import math

import pytest
import torch

from slowed_plugin.core.masking import select_low_entropy, target_segments, token_entropy
from slowed_plugin.core.reference_mask import reference_masked_labels
from slowed_plugin.trainer.reference_dataset import apply_reference_mask, reference_mask_fn


@pytest.fixture(scope="module")
def model(llama_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32)
    # A random tiny model predicts nearly uniformly; sharpen its head so entropies are well apart.
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(40)
    return model


def make_examples(vocab, lengths=(9, 14, 5, 11), seed=0):
    g = torch.Generator().manual_seed(seed)
    examples = []
    for n in lengths:
        ids = torch.randint(4, vocab, (n,), generator=g).tolist()
        examples.append({"input_ids": ids, "labels": [-100] * 3 + ids[3:]})
    return examples


def expected_labels(model, examples, ratio):
    """Reference: each example alone through the model, entropies from full logits, reference selection."""
    out = []
    model.eval()
    for example in examples:
        ids = torch.tensor([example["input_ids"]])
        with torch.no_grad():
            entropy = token_entropy(model(input_ids=ids).logits)[:, :-1]
        labels = torch.tensor([example["labels"]])
        targets = labels[:, 1:]
        dropped = select_low_entropy(entropy, targets != -100, ratio, target_segments(targets, "sequence"))
        new = labels.clone()
        new[:, 1:][dropped] = -100
        out.append(new[0].tolist())
    return out


@pytest.mark.parametrize("batch_size", [1, 3])
def test_matches_reference_selection(model, batch_size):
    examples = make_examples(model.config.vocab_size)
    got = reference_masked_labels(model, examples, 0.4, batch_size=batch_size, chunk_size=4)
    assert got == expected_labels(model, examples, 0.4)
    for example, labels in zip(examples, got, strict=True):
        n = sum(label != -100 for label in example["labels"][1:])
        assert sum(label != -100 for label in labels[1:]) == n - math.floor(0.4 * n)
        kept = [a for a, b in zip(example["labels"], labels, strict=True) if b != -100]
        assert kept == [b for b in labels if b != -100]  # only ever sets -100, never changes a token
    assert model.training is False  # left as it was (eval here)


def test_inputs_are_not_modified_and_training_mode_is_restored(model):
    examples = make_examples(model.config.vocab_size)
    before = [dict(e, labels=list(e["labels"])) for e in examples]
    model.train()
    try:
        reference_masked_labels(model, examples, 0.3)
        assert model.training
    finally:
        model.eval()
    assert examples == before


def test_adapters_are_disabled(model):
    from peft import LoraConfig, get_peft_model

    examples = make_examples(model.config.vocab_size, seed=1)
    base = reference_masked_labels(model, examples, 0.5)
    peft_model = get_peft_model(
        copy.deepcopy(model), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    )
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 5.0)  # a trained adapter that changes the predictions
    assert expected_labels(peft_model, examples, 0.5) != base  # the adapter does change the mask
    assert reference_masked_labels(peft_model, examples, 0.5) == base


def test_packed_rows_are_masked_example_by_example(model):
    examples = make_examples(model.config.vocab_size, lengths=(7, 12, 6))
    packed = {
        "input_ids": sum((e["input_ids"] for e in examples), []),
        "labels": sum((e["labels"] for e in examples), []),
        "seq_lengths": [len(e["input_ids"]) for e in examples],
    }
    alone = reference_masked_labels(model, examples, 0.5)
    assert reference_masked_labels(model, [packed], 0.5) == [sum(alone, [])]
    by_position = {k: v for k, v in packed.items() if k != "seq_lengths"}
    by_position["position_ids"] = sum((list(range(len(e["input_ids"]))) for e in examples), [])
    assert reference_masked_labels(model, [by_position], 0.5) == [sum(alone, [])]


def test_edge_cases(model):
    examples = make_examples(model.config.vocab_size)
    assert reference_masked_labels(model, examples, 0.0) == [e["labels"] for e in examples]
    no_labels = [{"input_ids": e["input_ids"]} for e in examples]
    got = reference_masked_labels(model, no_labels, 0.3)
    assert all(labels[0] == ids["input_ids"][0] for labels, ids in zip(got, no_labels, strict=True))
    assert reference_masked_labels(model, [{"input_ids": [5], "labels": [5]}], 0.5) == [[5]]
    with pytest.raises(ValueError, match="mask_scope='sequence'"):
        reference_masked_labels(model, examples, 0.3, scope="batch")
    with pytest.raises(ValueError, match="entries for"):
        reference_masked_labels(model, [{"input_ids": [5, 6], "labels": [5]}], 0.3)


def test_dataset_map_helper(model):
    from datasets import Dataset

    examples = make_examples(model.config.vocab_size)
    dataset = Dataset.from_list(examples)
    masked = apply_reference_mask(model, dataset, 0.4, batch_size=2)
    assert masked["labels"] == reference_masked_labels(model, examples, 0.4)
    assert masked["input_ids"] == dataset["input_ids"]
    fn = reference_mask_fn(model, 0.4)
    assert fn(dataset[:2])["labels"] == masked["labels"][:2]
