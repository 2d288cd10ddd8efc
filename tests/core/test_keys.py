import hashlib

from trait_lora.core.hashing import sha256_file
from trait_lora.core.jobs.keys import SUFFIX_MAX, job_key, job_suffix, job_tag


def test_sha256_file_matches_hashlib_across_chunk_boundaries(tmp_path):
    data = bytes(range(256)) * 9000  # spans several 1 MiB-ish reads with a small chunk
    path = tmp_path / "x.jsonl"
    path.write_bytes(data)
    assert sha256_file(path, chunk=4097) == hashlib.sha256(data).hexdigest()


def test_job_key_depends_on_shard_config_and_nonce():
    a = job_key("s1", "c1")
    assert a == job_key("s1", "c1")
    assert len({a, job_key("s2", "c1"), job_key("s1", "c2"), job_key("s1", "c1", "run-1")}) == 4


def test_suffix_fits_together_limit_and_keeps_the_whole_tag():
    key = job_key("s", "c")
    long_trait = "a" * 60 + "_minus"
    for trait in ("joy_plus", long_trait, "x_y_z_plus"):
        suffix = job_suffix(trait, key)
        assert len(suffix) <= SUFFIX_MAX
        assert suffix.endswith("-" + job_tag(key))
    assert job_suffix("joy_plus", key).startswith("joy-plus-")
    # Two long traits that share a prefix still get distinct suffixes via the tag.
    assert job_suffix(long_trait, key) != job_suffix(long_trait, job_key("s", "other"))
