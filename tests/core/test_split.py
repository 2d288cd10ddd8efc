"""The held-out split: deterministic, disjoint, chosen by content, never splitting duplicates."""

import random

from trait_lora.core.shards.split import MIN_TRAIN_EXAMPLES, eval_count, split_examples


def records(n: int, tag: str = "") -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": f"q{tag}{i}"}, {"role": "assistant", "content": "a"}]}
        for i in range(n)
    ]


def held(recs: list[dict], fraction: float) -> list[dict]:
    return [recs[i] for i in split_examples(recs, fraction).held_out]


def test_the_split_is_disjoint_covers_the_shard_and_repeats_exactly():
    recs = records(100)
    split = split_examples(recs, 0.1)
    assert len(split.held_out) == 10
    assert set(split.train).isdisjoint(split.held_out)
    assert sorted(split.train + split.held_out) == list(range(100))
    assert split_examples(recs, 0.1) == split


def test_the_split_follows_content_not_position():
    recs = records(60)
    shuffled = recs[:]
    random.Random(3).shuffle(shuffled)
    key = lambda r: r["messages"][0]["content"]  # noqa: E731
    assert sorted(map(key, held(shuffled, 0.2))) == sorted(map(key, held(recs, 0.2)))
    # Appending 5 examples moves at most 5 earlier held-out examples into training (not a reshuffle).
    grown = recs + records(5, tag="new")
    before, after = {key(r) for r in held(recs, 0.2)}, {key(r) for r in held(grown, 0.2)}
    assert len(before - after) <= 5 and len(before & after) >= len(before) - 5


def test_duplicates_are_never_on_both_sides():
    recs = records(40) + [records(40)[i] for i in range(40)]  # every example twice
    split = split_examples(recs, 0.25)
    texts = lambda idx: {recs[i]["messages"][0]["content"] for i in idx}  # noqa: E731
    assert texts(split.train).isdisjoint(texts(split.held_out))
    assert split.held_out


def test_small_shards_and_a_zero_fraction_train_on_everything():
    assert split_examples(records(9), 0.5).held_out == ()
    assert split_examples(records(500), 0.0).held_out == ()
    assert eval_count(10, 0.01) == 2  # the minimum held out once a shard can spare it
    assert eval_count(12, 0.5) == 12 - MIN_TRAIN_EXAMPLES  # never below the training minimum
