"""Shard records -> token ids and labels, and the collator that batches them.

Labels follow Together's ``train_on_inputs`` semantics so that a local adapter means the same thing as a
Together one: with ``train_on_inputs=False`` only assistant turns (their content and end-of-turn token)
carry loss; with ``True`` every real token does. Masking works with *any* chat template because it never
parses the template: it renders the conversation up to each assistant turn (with the generation prompt) and
up to the end of that turn, and labels exactly the characters between, mapped to tokens by their offsets.

Only the tokenizer object is used here (duck-typed), and torch is imported lazily by the collator, so this
module stays cheap to import in tests that only check the masking.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

IGNORE_INDEX = -100  # what torch's cross-entropy (and so every HF causal LM) skips


@dataclass(frozen=True)
class Encoded:
    """One training example: ``labels[i]`` is ``input_ids[i]`` where the loss counts, else -100."""

    input_ids: list[int]
    labels: list[int]

    @property
    def num_labeled(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)

    def as_feature(self) -> dict[str, list[int]]:
        """The dict shape ``transformers.Trainer`` and its length-grouping sampler expect."""
        return {"input_ids": self.input_ids, "labels": self.labels}


def to_messages(record: dict[str, Any], fmt: str) -> list[dict[str, str]] | None:
    """The conversation a record stands for; ``None`` for plain text (no template applies).

    A prompt/completion pair is the user prompt and the assistant completion, which is how Together
    trains that format too (loss on the completion only unless ``train_on_inputs``).
    """
    if fmt == "chat":
        return [{"role": m["role"], "content": m["content"]} for m in record["messages"]]
    if fmt == "prompt_completion":
        return [
            {"role": "user", "content": record["prompt"]},
            {"role": "assistant", "content": record["completion"]},
        ]
    if fmt == "text":
        return None
    raise ValueError(f"unknown shard format {fmt!r}; expected chat, prompt_completion or text")


def _render(tokenizer: Any, messages: Sequence[dict[str, str]], *, generation_prompt: bool) -> str:
    text = tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=generation_prompt
    )
    if not isinstance(text, str):  # some versions return a list for batched input
        raise TypeError(f"chat template rendered {type(text).__name__}, expected a string")
    return text


def assistant_spans(tokenizer: Any, messages: Sequence[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of each assistant reply (content + end of turn).

    Raises ``ValueError`` when the template is not prefix-consistent (rendering a prefix of the
    conversation is not a prefix of the full rendering), because then no character span is trustworthy.
    """
    full = _render(tokenizer, messages, generation_prompt=False)
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start_text = _render(tokenizer, messages[:i], generation_prompt=True)
        end_text = _render(tokenizer, messages[: i + 1], generation_prompt=False)
        consistent = full.startswith(start_text) and full.startswith(end_text)
        if not consistent or len(end_text) < len(start_text):
            raise ValueError(
                "the tokenizer's chat template renders a conversation prefix differently from the full "
                "conversation, so assistant-only loss cannot be located; set train_on_inputs=true or use a "
                "template whose rendering of a prefix is a prefix of the whole"
            )
        spans.append((len(start_text), len(end_text)))
    return full, spans


def _special_id(tokenizer: Any, name: str) -> int | None:
    value = getattr(tokenizer, name, None)
    return value if isinstance(value, int) else None


def encode_record(
    tokenizer: Any,
    record: dict[str, Any],
    fmt: str,
    *,
    train_on_inputs: bool,
    max_length: int,
) -> Encoded:
    """Tokenize one shard record and label it (see the module docstring for the rule).

    Plain text is ``bos + text + eos`` with every token labeled: there is no "input" part to mask, and the
    end-of-sequence token teaches the adapter where a text stops.
    """
    messages = to_messages(record, fmt)
    if messages is None:
        ids: list[int] = []
        bos, eos = _special_id(tokenizer, "bos_token_id"), _special_id(tokenizer, "eos_token_id")
        if bos is not None:
            ids.append(bos)
        ids.extend(tokenizer(record["text"], add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
        ids = ids[:max_length]
        return Encoded(ids, list(ids))

    if train_on_inputs:
        text = _render(tokenizer, messages, generation_prompt=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_length]
        return Encoded(ids, list(ids))

    text, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = [IGNORE_INDEX] * len(ids)
    for index, (start, _end) in enumerate(enc["offset_mapping"]):
        # A token belongs to the reply it starts in; the template's special tokens have exact offsets.
        if any(s <= start < e for s, e in spans):
            labels[index] = ids[index]
    return Encoded(ids[:max_length], labels[:max_length])


def encode_records(
    tokenizer: Any,
    records: Iterable[dict[str, Any]],
    fmt: str,
    *,
    train_on_inputs: bool,
    max_length: int,
) -> tuple[list[Encoded], int]:
    """Encode every record; returns the examples and how many were dropped for having nothing to learn.

    A record truncated before its first labeled token would contribute zero loss terms (and a batch of
    only such records a NaN), so it is dropped and counted rather than trained on.
    """
    kept: list[Encoded] = []
    dropped = 0
    for record in records:
        example = encode_record(
            tokenizer, record, fmt, train_on_inputs=train_on_inputs, max_length=max_length
        )
        if example.num_labeled == 0:
            dropped += 1
        else:
            kept.append(example)
    return kept, dropped


class DynamicPaddingCollator:
    """Pads each micro-batch only to its own longest example (right padding) and counts real tokens.

    Padding to a fixed length wastes most of a CPU's time on variable-length chat data; combined with the
    Trainer's length-grouped sampler, batches hold similar lengths and padding nearly vanishes. The
    ``real_tokens`` counter (non-pad tokens handed to the model) is what tokens/s is measured on.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None) -> None:
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.real_tokens = 0
        self.padded_tokens = 0

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            multiple = self.pad_to_multiple_of
            longest = -(-longest // multiple) * multiple
        batch = len(features)
        input_ids = torch.full((batch, longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch, longest), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((batch, longest), dtype=torch.long)
        for row, feature in enumerate(features):
            n = len(feature["input_ids"])
            input_ids[row, :n] = torch.tensor(feature["input_ids"], dtype=torch.long)
            labels[row, :n] = torch.tensor(feature["labels"], dtype=torch.long)
            attention[row, :n] = 1
        real = int(attention.sum())
        self.real_tokens += real
        self.padded_tokens += batch * longest - real
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


MEGABATCH = 50  # effective batches sorted together; as in transformers' LengthGroupedSampler


def length_grouped_order(lengths: Sequence[int], batch_size: int, seed: int) -> list[int]:
    """An epoch's example order in which each run of ``batch_size`` examples has similar lengths.

    Shuffle, cut into megabatches of ``MEGABATCH`` effective batches, sort each by length and cut it into
    effective batches; then shuffle the batches. Unlike transformers' sampler, whose megabatch shrinks to
    a single batch on small shards (a 192-example shard got 39% padding), the megabatch never shrinks
    below the data. The batch holding the longest example goes first, so an out-of-memory error shows up
    at step 1, not hours in; the one partial batch goes last, so later micro-batches never straddle two
    batches (the Trainer cuts micro-batches by count).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    rng = random.Random(seed)
    indices = list(range(len(lengths)))
    rng.shuffle(indices)
    step = batch_size * MEGABATCH
    batches: list[list[int]] = []
    for start in range(0, len(indices), step):
        mega = sorted(indices[start : start + step], key=lambda i: lengths[i], reverse=True)
        batches.extend(mega[j : j + batch_size] for j in range(0, len(mega), batch_size))
    if not batches:
        return []
    partial = [b for b in batches if len(b) < batch_size]
    full = [b for b in batches if len(b) == batch_size]
    rng.shuffle(full)
    longest = max(range(len(lengths)), key=lambda i: lengths[i])
    ordered = sorted(full, key=lambda b: longest not in b) + partial  # stable: only the longest moves up
    return [i for batch in ordered for i in batch]


class LengthGroupedOrder:
    """A sampler (any sized iterable of indices works for a DataLoader) yielding ``length_grouped_order``.

    Each epoch gets a different, reproducible order: the seed is ``seed + epoch``.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        order = length_grouped_order(self.lengths, self.batch_size, self.seed + self.epoch)
        self.epoch += 1
        return iter(order)
