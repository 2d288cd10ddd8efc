"""Labels and batching, checked token by token against the tiny model's real Llama-3 style template.

What a user would notice if these broke: an adapter that learned to imitate the user or the system prompt
(masking), or one trained on padding (collator).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from trait_lora.train.data import IGNORE_INDEX, DynamicPaddingCollator, encode_record, encode_records

EOT = "<|eot_id|>"


def _labeled_runs(ids: list[int], labels: list[int]) -> list[list[int]]:
    """Contiguous runs of labeled positions, each as its token ids."""
    runs: list[list[int]] = []
    previous = False
    for token, label in zip(ids, labels, strict=True):
        labeled = label != IGNORE_INDEX
        if labeled:
            assert label == token, "a labeled position must predict its own input token"
            if not previous:
                runs.append([])
            runs[-1].append(token)
        previous = labeled
    return runs


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_chat_labels_are_exactly_the_assistant_replies(tokenizer: Any, shards_dir: Path) -> None:
    for record in _records(shards_dir / "wisdom_plus.jsonl"):
        example = encode_record(tokenizer, record, "chat", train_on_inputs=False, max_length=4096)
        runs = _labeled_runs(example.input_ids, example.labels)
        replies = [m["content"].strip() + EOT for m in record["messages"] if m["role"] == "assistant"]
        assert [tokenizer.decode(run) for run in runs] == replies
        # The whole sequence is the template's rendering, so nothing outside the runs was labeled.
        rendered = tokenizer.apply_chat_template(record["messages"], tokenize=False)
        assert tokenizer.decode(example.input_ids) == rendered


def test_chat_masking_never_labels_system_user_or_headers(tokenizer: Any) -> None:
    record = {
        "messages": [
            {"role": "system", "content": "SYSTEM wise"},
            {"role": "user", "content": "USER calm"},
            {"role": "assistant", "content": "  kind answer  "},
            {"role": "user", "content": "USER again"},
            {"role": "assistant", "content": "second reply"},
        ]
    }
    example = encode_record(tokenizer, record, "chat", train_on_inputs=False, max_length=4096)
    labeled = [t for t, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE_INDEX]
    text = tokenizer.decode(labeled)
    forbidden = ("SYSTEM", "USER", "system", "user", "assistant", "<|start_header_id|>", "<|end_header_id|>")
    assert not [word for word in forbidden if word in text]
    header_ids = set(tokenizer.convert_tokens_to_ids(["<|start_header_id|>", "<|end_header_id|>"]))
    assert not header_ids & set(labeled)
    assert tokenizer.decode(labeled) == "kind answer" + EOT + "second reply" + EOT


def test_prompt_completion_trains_only_the_completion(tokenizer: Any, shards_dir: Path) -> None:
    for record in _records(shards_dir / "calm_plus.jsonl"):
        example = encode_record(
            tokenizer, record, "prompt_completion", train_on_inputs=False, max_length=4096
        )
        runs = _labeled_runs(example.input_ids, example.labels)
        assert [tokenizer.decode(run) for run in runs] == [record["completion"].strip() + EOT]
        assert record["prompt"] in tokenizer.decode(example.input_ids)


def test_text_trains_every_token(tokenizer: Any, shards_dir: Path) -> None:
    record = _records(shards_dir / "calm_minus.jsonl")[0]
    example = encode_record(tokenizer, record, "text", train_on_inputs=False, max_length=4096)
    assert example.labels == example.input_ids
    assert tokenizer.decode(example.input_ids) == tokenizer.bos_token + record["text"] + tokenizer.eos_token


def test_train_on_inputs_labels_everything_but_padding(tokenizer: Any, shards_dir: Path) -> None:
    records = _records(shards_dir / "wisdom_plus.jsonl")[:3]
    examples, dropped = encode_records(tokenizer, records, "chat", train_on_inputs=True, max_length=4096)
    assert dropped == 0
    assert all(e.labels == e.input_ids for e in examples)
    collator = DynamicPaddingCollator(tokenizer.pad_token_id)
    batch = collator([e.as_feature() for e in examples])
    lengths = [len(e.input_ids) for e in examples]
    assert batch["input_ids"].shape == (3, max(lengths))  # padded to the batch's longest, not a fixed size
    for row, n in enumerate(lengths):
        assert batch["labels"][row, :n].tolist() == examples[row].input_ids
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (max(lengths) - n)
    assert collator.real_tokens == sum(lengths)
    assert collator.padded_tokens == 3 * max(lengths) - sum(lengths)


def test_examples_truncated_before_any_reply_are_dropped(tokenizer: Any, shards_dir: Path) -> None:
    records = _records(shards_dir / "wisdom_plus.jsonl")[:4]
    examples, dropped = encode_records(tokenizer, records, "chat", train_on_inputs=False, max_length=8)
    assert (len(examples), dropped) == (0, 4)


@pytest.mark.parametrize(
    ("batch_size", "requested", "expected"),
    [(32, 8, (8, 4)), (4, 8, (4, 1)), (10, 8, (5, 2)), (7, 4, (1, 7)), (32, 1, (1, 32))],
)
def test_micro_batches_always_multiply_to_the_configured_batch(
    batch_size: int, requested: int, expected: tuple[int, int]
) -> None:
    from trait_lora.train.trainer import plan_batches

    micro, accum = plan_batches(batch_size, requested)
    assert (micro, accum) == expected
    assert micro * accum == batch_size


def test_length_grouped_order_keeps_batches_homogeneous_and_epochs_different() -> None:
    import random

    from trait_lora.train.data import LengthGroupedOrder, length_grouped_order

    rng = random.Random(0)
    lengths = [rng.randint(5, 400) for _ in range(70)]  # 8 full batches of 8 and one of 6
    order = length_grouped_order(lengths, 8, seed=1)
    assert sorted(order) == list(range(70)), "every example exactly once per epoch"
    batches = [order[i : i + 8] for i in range(0, 70, 8)]
    assert max(range(70), key=lambda i: lengths[i]) in batches[0], "the longest batch first: OOM at step 1"
    assert len(batches[-1]) == 6, "the partial batch last"
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded < 1.1 * sum(lengths), "grouping must leave little padding"
    assert length_grouped_order(lengths, 8, seed=1) == order, "reproducible"

    sampler = LengthGroupedOrder(lengths, 8, seed=1)
    first, second = list(sampler), list(sampler)
    assert first == order and second != first, "each epoch reshuffles"
