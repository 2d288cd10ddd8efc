"""Adapter intake: real Llama-8B-shaped adapters and real archives, good and hostile.

Every rejection test also checks the two promises a user relies on: nothing appears outside the
output dir, and the adapter that was installed before the failed attempt is still there, unchanged.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import struct
import tarfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from safetensors.numpy import save as st_save

from tests.support.adapters import (
    adapter_config,
    adapter_files,
    adapter_tensors,
    tar_bytes,
    write_adapter_dir,
    zstd_bytes,
)
from trait_lora.core.adapter import (
    ADAPTER_FILES,
    AdapterInfo,
    AdapterSpec,
    adapter_dir,
    extract_adapter_archive,
    install_adapter,
    read_safetensors_header,
    verify_adapter_dir,
    verify_installed,
)
from trait_lora.core.config import TrainingConfig
from trait_lora.core.errors import AdapterError, TraitNameError

TRAIT = "wisdom_plus"
SPEC = AdapterSpec(r=4, alpha=16, target_modules=("q_proj", "v_proj"))
CONFIG, WEIGHTS = ADAPTER_FILES
LLAMA_TENSORS = 128
LLAMA_PARAMS = 1_703_936
LLAMA_LAYERS = 32


# ------------------------------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def good() -> dict[str, bytes]:
    """The two files of a real Llama-3.1-8B r=4 q/v adapter (built once: ~7 MB)."""
    return adapter_files()


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with its kind and content hash: equal snapshots mean nothing changed."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = f"link:{os.readlink(path)}"
            elif path.is_dir():
                out[rel] = "dir"
            elif not path.is_file():
                out[rel] = "special"
            else:
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def zstd_archive(members: dict[str, bytes], extra: list[tarfile.TarInfo] | None = None) -> bytes:
    return zstd_bytes(tar_bytes(members, extra=extra))


def nested(files: dict[str, bytes], prefix: str = "adapter/") -> dict[str, bytes]:
    return {f"{prefix}{name}": data for name, data in files.items()}


def special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.devmajor, info.devminor = 1, 3
    return info


def edit_header(weights: bytes, change: Callable[[dict], None]) -> bytes:
    """Rewrite a safetensors header (keeping the data section) after ``change`` edits it."""
    (n,) = struct.unpack("<Q", weights[:8])
    header = json.loads(weights[8 : 8 + n])
    change(header)
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + weights[8 + n :]


def first_tensor(header: dict) -> str:
    return min((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """An output dir that already holds a good (different) adapter for TRAIT."""
    source = write_adapter_dir(tmp_path / "first", seed=7)
    output = tmp_path / "out"
    install_adapter(source, output, TRAIT, SPEC)
    return output


def write_source(tmp_path: Path, data: bytes, name: str = "adapter.tar.zst") -> Path:
    path = tmp_path / "src" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def assert_rejected(tmp_path: Path, out: Path, source: Path, match: str, **kw) -> AdapterError:
    """Install must fail with ``match`` and leave the whole tmp tree, installed adapter included, as is."""
    installed = verify_installed(out, TRAIT, SPEC)
    before = snapshot(tmp_path)
    with pytest.raises(AdapterError, match=match) as err:
        install_adapter(source, out, TRAIT, SPEC, **kw)
    assert snapshot(tmp_path) == before
    assert verify_installed(out, TRAIT, SPEC) == installed
    message = str(err.value)
    assert str(source) in message and ".staging-" not in message  # names what the user gave us
    return err.value


# ------------------------------------------------------------------------------------- good inputs


def test_spec_from_training_config() -> None:
    assert AdapterSpec.from_config(TrainingConfig()) == SPEC
    cfg = TrainingConfig(lora_r=8, lora_alpha=32, target_modules=("q_proj", "k_proj", "v_proj"))
    assert AdapterSpec.from_config(cfg) == AdapterSpec(8, 32, ("q_proj", "k_proj", "v_proj"))


@pytest.mark.parametrize(
    ("name", "prefix", "pack"),
    [
        ("adapter.tar.zst", "adapter/", zstd_bytes),
        ("adapter.tar.gz", "./x/y/", gzip.compress),
        ("adapter.tar", "", lambda data: data),
        ("mislabelled.tar.gz", "adapter/", zstd_bytes),  # content decides, not the name
    ],
)
def test_good_archive_installs_with_llama_8b_shape(
    tmp_path: Path, good: dict[str, bytes], name: str, prefix: str, pack: Callable[[bytes], bytes]
) -> None:
    source = write_source(tmp_path, pack(tar_bytes(nested(good, prefix))), name)
    path, info = install_adapter(source, tmp_path / "out", TRAIT, SPEC)

    assert path == tmp_path / "out" / "lora_checkpoints" / TRAIT == adapter_dir(tmp_path / "out", TRAIT)
    assert sorted(os.listdir(path)) == sorted(ADAPTER_FILES)
    for file, data in good.items():
        assert (path / file).read_bytes() == data
    assert info == AdapterInfo(
        r=4,
        alpha=16,
        target_modules=("q_proj", "v_proj"),
        num_layers=LLAMA_LAYERS,
        num_tensors=LLAMA_TENSORS,
        num_parameters=LLAMA_PARAMS,
        sha256=hashlib.sha256(good[WEIGHTS]).hexdigest(),
        base_model="meta-llama/Meta-Llama-3.1-8B-Instruct",
    )
    assert os.listdir(tmp_path / "out" / "lora_checkpoints") == [TRAIT]  # no staging left behind
    assert verify_installed(tmp_path / "out", TRAIT, SPEC) == info


def test_directory_source_installs(tmp_path: Path, good: dict[str, bytes]) -> None:
    source = write_adapter_dir(tmp_path / "trained")
    (source / "training_args.bin").write_bytes(b"pickle")  # a trainer's leftovers are not copied
    (source / "README.md").write_text("notes")
    path, info = install_adapter(source, tmp_path / "out", TRAIT, SPEC)
    assert sorted(os.listdir(path)) == sorted(ADAPTER_FILES)
    assert (path / WEIGHTS).read_bytes() == good[WEIGHTS]
    assert (info.num_tensors, info.num_parameters, info.num_layers) == (128, 1_703_936, 32)
    assert (source / WEIGHTS).exists()  # the source is copied, not moved


def test_extract_keeps_only_the_adapter_files(tmp_path: Path, good: dict[str, bytes]) -> None:
    members = {"pkg/README.md": b"# readme", **nested(good, "pkg/adapter/"), "pkg/notes.txt": b"x"}
    archive = write_source(tmp_path, zstd_archive(members, extra=[special("pkg/empty/", tarfile.DIRTYPE)]))
    dest = tmp_path / "dest"
    extract_adapter_archive(archive, dest)
    assert sorted(os.listdir(dest)) == sorted(ADAPTER_FILES)
    assert (dest / CONFIG).read_bytes() == good[CONFIG]


def test_multi_frame_zstd_is_read_across_frames(tmp_path: Path, good: dict[str, bytes]) -> None:
    tar = tar_bytes(nested(good))
    half = len(tar) // 2
    source = write_source(tmp_path, zstd_bytes(tar[:half]) + zstd_bytes(tar[half:]))
    _, info = install_adapter(source, tmp_path / "out", TRAIT, SPEC)
    assert info.num_tensors == LLAMA_TENSORS


def test_config_variants_peft_writes_are_accepted(tmp_path: Path, good: dict[str, bytes]) -> None:
    config = adapter_config()
    config["target_modules"] = "v_proj, q_proj"  # comma string, other order
    tensors = {
        name.replace(".lora_A.weight", ".lora_A.default.weight").replace(
            ".lora_B.weight", ".lora_B.default.weight"
        ): value
        for name, value in adapter_tensors().items()
    }
    source = tmp_path / "src"
    source.mkdir()
    (source / CONFIG).write_text(json.dumps(config))
    (source / WEIGHTS).write_bytes(st_save(tensors, metadata={"format": "pt"}))
    _, info = install_adapter(source, tmp_path / "out", TRAIT, SPEC)
    assert (info.num_tensors, info.num_layers) == (LLAMA_TENSORS, LLAMA_LAYERS)


def test_second_good_install_replaces_the_first(tmp_path: Path, out: Path, good: dict[str, bytes]) -> None:
    first = verify_installed(out, TRAIT, SPEC)
    source = write_source(tmp_path, zstd_archive(nested(good)))
    path, info = install_adapter(source, out, TRAIT, SPEC)
    assert info.sha256 != first.sha256
    assert (path / WEIGHTS).read_bytes() == good[WEIGHTS]
    assert verify_installed(out, TRAIT, SPEC) == info
    assert os.listdir(out / "lora_checkpoints") == [TRAIT]  # no .previous / .staging left


def test_other_traits_are_untouched(tmp_path: Path, out: Path, good: dict[str, bytes]) -> None:
    other = verify_installed(out, TRAIT, SPEC)
    install_adapter(write_source(tmp_path, zstd_archive(nested(good))), out, "wisdom_minus", SPEC)
    assert verify_installed(out, TRAIT, SPEC) == other
    assert sorted(os.listdir(out / "lora_checkpoints")) == ["wisdom_minus", TRAIT]


# --------------------------------------------------------------------------- hostile archive members


def test_traversal_member_is_rejected_and_nothing_escapes(
    tmp_path: Path, out: Path, good: dict[str, bytes]
) -> None:
    evil = f"evil-{uuid.uuid4().hex}"
    names = [f"../{evil}", f"adapter/../../../../../../../../{evil}", f"a/../{CONFIG}"]
    for name in names:
        source = write_source(tmp_path, zstd_archive({**nested(good), name: b"pwned"}))
        err = assert_rejected(tmp_path, out, source, r"'\.\.' component")
        assert name in str(err) and "re-download" in str(err)
        base = out / "lora_checkpoints" / ".staging-x"
        assert not (base / name).resolve().exists()
    assert not list(tmp_path.rglob(f"{evil}*"))
    assert not list(tmp_path.parent.glob(f"{evil}*"))


def test_absolute_member_is_rejected(tmp_path: Path, out: Path, good: dict[str, bytes]) -> None:
    target = tmp_path.parent / f"evil-{uuid.uuid4().hex}"
    source = write_source(tmp_path, zstd_archive({str(target): b"pwned", **nested(good)}))
    assert_rejected(tmp_path, out, source, "absolute path")
    assert not target.exists()


@pytest.mark.parametrize(
    ("member", "match"),
    [
        (special("adapter/evil", tarfile.SYMTYPE, "/etc/passwd"), "link to '/etc/passwd'"),
        (special(f"x/{WEIGHTS}", tarfile.SYMTYPE, "../../secret"), "link to"),
        (special("adapter/hard", tarfile.LNKTYPE, f"adapter/{CONFIG}"), "link to"),
        (special("adapter/null", tarfile.CHRTYPE), "device or fifo"),
        (special("adapter/disk", tarfile.BLKTYPE), "device or fifo"),
        (special("adapter/pipe", tarfile.FIFOTYPE), "device or fifo"),
    ],
    ids=["symlink", "symlink-as-weights", "hardlink", "chardev", "blockdev", "fifo"],
)
def test_links_and_devices_reject_the_archive(
    tmp_path: Path, out: Path, good: dict[str, bytes], member: tarfile.TarInfo, match: str
) -> None:
    source = write_source(tmp_path, zstd_archive(nested(good), extra=[member]))
    err = assert_rejected(tmp_path, out, source, match)
    assert member.name in str(err)
    assert not (out / "lora_checkpoints" / TRAIT / "evil").exists()


@pytest.mark.parametrize("weights", ["adapter_model.bin", "adapter_model.pt"])
def test_weights_that_are_only_pickles_reject_the_archive(
    tmp_path: Path, out: Path, good: dict[str, bytes], weights: str
) -> None:
    members = {f"adapter/{CONFIG}": good[CONFIG], f"adapter/{weights}": b"\x80\x04pickle"}
    source = write_source(tmp_path, zstd_archive(members))
    err = assert_rejected(tmp_path, out, source, "pickled")
    assert f"adapter/{weights}" in str(err)


def test_a_trainer_output_folder_installs_only_the_top_level_adapter(
    tmp_path: Path, out: Path, good: dict[str, bytes]
) -> None:
    """What a real archive may hold beside the adapter: README, tokenizer, pickles, checkpoint folders."""
    older = adapter_files(seed=1)
    members = {
        "README.md": b"# adapter",
        "checkpoint-10/adapter_model.safetensors": older[WEIGHTS],
        "checkpoint-10/adapter_config.json": older[CONFIG],
        "checkpoint-10/optimizer.pt": b"\x80\x04pickle",
        CONFIG: good[CONFIG],
        WEIGHTS: good[WEIGHTS],
        "training_args.bin": b"\x80\x04pickle",
        "tokenizer.json": b"{}",
        "adapter_model.bin": b"\x80\x04pickle",  # a pickled twin beside the safetensors: never written
    }
    source = write_source(tmp_path, zstd_archive(members))
    path, _ = install_adapter(source, out, TRAIT, SPEC)
    assert sorted(p.name for p in path.iterdir()) == [CONFIG, WEIGHTS]
    assert (path / WEIGHTS).read_bytes() == good[WEIGHTS]
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and ".lock" not in p.name)
    assert written == [f"lora_checkpoints/{TRAIT}/{CONFIG}", f"lora_checkpoints/{TRAIT}/{WEIGHTS}"]


def test_the_shallowest_adapter_wins_wherever_it_comes_in_the_archive(
    tmp_path: Path, out: Path, good: dict[str, bytes]
) -> None:
    older = adapter_files(seed=1)
    members = {**nested(good, "run/"), **nested(older, "run/checkpoint-5/")}
    path, _ = install_adapter(write_source(tmp_path, zstd_archive(members)), out, TRAIT, SPEC)
    assert (path / WEIGHTS).read_bytes() == good[WEIGHTS]
    members = {**nested(older, "run/checkpoint-5/"), **nested(good, "run/")}  # deeper one first
    path, _ = install_adapter(write_source(tmp_path, zstd_archive(members), "b.tar.zst"), out, TRAIT, SPEC)
    assert (path / WEIGHTS).read_bytes() == good[WEIGHTS]


def test_two_equally_shallow_adapters_reject_the_archive(
    tmp_path: Path, out: Path, good: dict[str, bytes]
) -> None:
    members = {**nested(good, "a/"), **nested(adapter_files(seed=1), "b/")}
    assert_rejected(
        tmp_path, out, write_source(tmp_path, zstd_archive(members)), "2 adapters at the same depth"
    )


def test_duplicate_adapter_file_rejects_the_archive(
    tmp_path: Path, out: Path, good: dict[str, bytes]
) -> None:
    members = {**nested(good), f"adapter/{CONFIG}": good[CONFIG]}
    entries = [(name, data) for name, data in members.items()] + [(f"adapter/{CONFIG}", good[CONFIG])]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    source = write_source(tmp_path, zstd_bytes(buf.getvalue()))
    assert_rejected(tmp_path, out, source, rf"'adapter/{CONFIG}' duplicates 'adapter/{CONFIG}'")


def test_archive_without_weights_is_rejected(tmp_path: Path, out: Path, good: dict[str, bytes]) -> None:
    source = write_source(
        tmp_path, zstd_archive({"adapter/README.md": b"hi", f"adapter/{CONFIG}": good[CONFIG]})
    )
    assert_rejected(tmp_path, out, source, f"holds no {WEIGHTS}.*README")


# -------------------------------------------------------------------------------- size and damage


def test_member_over_the_size_cap_is_rejected(tmp_path: Path, out: Path, good: dict[str, bytes]) -> None:
    source = write_source(tmp_path, zstd_archive(nested(good)))
    assert_rejected(tmp_path, out, source, "over the 1000000-byte cap", max_bytes=1_000_000)


def test_zip_bomb_stops_at_the_cap(tmp_path: Path, out: Path, good: dict[str, bytes]) -> None:
    # Many small members: each passes the per-member check, the running total does not.
    bomb = {f"junk/{i}.txt": bytes(1 << 20) for i in range(64)}
    data = zstd_archive({**bomb, **nested(good)})
    assert len(data) < 5 << 20  # ~71 MB of tar from under 5 MB of zstd (the bomb part is tiny)
    source = write_source(tmp_path, data)
    assert_rejected(tmp_path, out, source, "decompresses to more than 16777216 bytes", max_bytes=16 << 20)


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2],
        lambda data: data[:-3],
        lambda data: data[:200],
        lambda data: data + b"trailing junk",
    ],
    ids=["half", "last-bytes", "header-only", "trailing-junk"],
)
def test_damaged_zstd_is_reported_as_truncated(
    tmp_path: Path, out: Path, good: dict[str, bytes], damage: Callable[[bytes], bytes]
) -> None:
    source = write_source(tmp_path, damage(zstd_archive(nested(good))))
    assert_rejected(tmp_path, out, source, "truncated or corrupt: re-download it")


def test_zstd_cut_after_the_tar_end_is_still_caught(
    tmp_path: Path, out: Path, good: dict[str, bytes]
) -> None:
    # The tar itself is complete; only the zstd frame (here: padding after the tar) is cut short.
    data = zstd_bytes(tar_bytes(nested(good)) + bytes(1 << 20))
    source = write_source(tmp_path, data[:-3])
    assert_rejected(tmp_path, out, source, "ends mid-frame")


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2],
        lambda data: data[:-5],
        lambda data: data[:40] + b"\0" * 64 + data[104:],
    ],
    ids=["half", "no-trailer", "corrupt-middle"],
)
def test_damaged_gzip_is_reported_as_truncated(
    tmp_path: Path, out: Path, good: dict[str, bytes], damage: Callable[[bytes], bytes]
) -> None:
    source = write_source(tmp_path, damage(gzip.compress(tar_bytes(nested(good)))), "adapter.tar.gz")
    assert_rejected(tmp_path, out, source, "truncated or corrupt: re-download it")


def test_truncated_plain_tar_is_reported(tmp_path: Path, out: Path, good: dict[str, bytes]) -> None:
    data = tar_bytes(nested(good))
    source = write_source(tmp_path, data[: len(data) // 2], "adapter.tar")
    assert_rejected(tmp_path, out, source, "truncated or corrupt: re-download it")


def test_garbage_and_empty_files_are_rejected(tmp_path: Path, out: Path) -> None:
    junk = random.Random(0).randbytes(4096)
    assert_rejected(
        tmp_path, out, write_source(tmp_path, junk), r"not a \.tar\.zst, \.tar\.gz or tar archive"
    )
    zstd_junk = b"\x28\xb5\x2f\xfd" + junk
    assert_rejected(tmp_path, out, write_source(tmp_path, zstd_junk), "truncated or corrupt")
    assert_rejected(tmp_path, out, write_source(tmp_path, b""), "is empty")


def test_missing_or_special_source_is_named(tmp_path: Path, out: Path) -> None:
    assert_rejected(tmp_path, out, tmp_path / "nope.tar.zst", "nope.tar.zst does not exist")
    fifo = tmp_path / "src" / "pipe.tar.zst"
    fifo.parent.mkdir()
    os.mkfifo(fifo)  # would block forever if opened
    assert_rejected(tmp_path, out, fifo, "neither a directory nor a regular file")
    with pytest.raises(AdapterError, match=r"pipe\.tar\.zst is not a regular file"):
        extract_adapter_archive(fifo, tmp_path / "dest")


# ------------------------------------------------------------------------------ adapter contents


def files_with(good: dict[str, bytes], **kw) -> dict[str, bytes]:
    return adapter_files(**kw) if kw else dict(good)


def tensors_without(*fragments: str) -> bytes:
    tensors = adapter_tensors()
    return st_save({k: v for k, v in tensors.items() if not any(f in k for f in fragments)})


def config_bytes(**changes) -> bytes:
    return json.dumps({**adapter_config(), **changes}).encode()


def mixed_modules() -> dict[str, bytes]:
    """Config says q/v (as the spec does) but the tensors adapt q/k: only the tensor check can tell."""
    return {CONFIG: config_bytes(), WEIGHTS: st_save(adapter_tensors(modules=("q_proj", "k_proj")))}


def with_extra_tensor() -> bytes:
    import numpy as np

    tensors = adapter_tensors()
    tensors["base_model.model.lm_head.weight"] = np.zeros((4, 4), dtype=np.float32)
    return st_save(tensors)


def with_bad_length(good: dict[str, bytes]) -> bytes:
    return struct.pack("<Q", 1 << 40) + good[WEIGHTS][8:]


def with_header(good: dict[str, bytes], change: Callable[[dict], None]) -> bytes:
    return edit_header(good[WEIGHTS], change)


def set_field(field: str, value) -> Callable[[dict], None]:
    def change(header: dict) -> None:
        header[first_tensor(header)][field] = value

    return change


def stretch_offsets(header: dict) -> None:
    last = max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][1])
    begin, end = header[last]["data_offsets"]
    header[last]["data_offsets"] = [begin + 64, end + 64]


VERIFY_CASES: list[tuple[str, Callable[[dict[str, bytes]], dict[str, bytes]], str]] = [
    (
        "rank-in-tensors",
        lambda g: adapter_files(r=8, config_r=4),
        r"layers\.0\.self_attn\.q_proj\.lora_A\.weight has shape \[8, 4096\], expected \[4, in_features\]",
    ),
    ("rank-in-config", lambda g: {**g, CONFIG: config_bytes(r=8)}, r"r is 8 .*lora_r=4.*retrain"),
    ("alpha", lambda g: {**g, CONFIG: config_bytes(lora_alpha=32)}, r"lora_alpha is 32 .*lora_alpha=16"),
    (
        "modules-in-config",
        lambda g: {**g, CONFIG: config_bytes(target_modules=["q_proj", "k_proj"])},
        r"target_modules is \['k_proj', 'q_proj'\]",
    ),
    (
        "k-proj-tensors",
        lambda g: mixed_modules(),
        r"k_proj\.lora_A\.weight adapts module k_proj, which is not in target_modules",
    ),
    (
        "v-proj-missing",
        lambda g: {**g, WEIGHTS: tensors_without("v_proj")},
        r"no LoRA tensors for target module\(s\) v_proj",
    ),
    (
        "incomplete-pair",
        lambda g: {**g, WEIGHTS: tensors_without("layers.3.self_attn.v_proj.lora_B")},
        r"layers\.3\.self_attn\.v_proj\.lora_A\.weight has no matching lora_B",
    ),
    (
        "layers-differ",
        lambda g: {**g, WEIGHTS: tensors_without("layers.5.self_attn.v_proj.")},
        r"module v_proj has LoRA weights in 31 layers but q_proj in 32; v_proj is missing "
        r"base_model\.model\.model\.layers\.5",
    ),
    ("not-lora", lambda g: {**g, WEIGHTS: with_extra_tensor()}, r"lm_head\.weight is not a LoRA weight"),
    (
        "header-length",
        lambda g: {**g, WEIGHTS: with_bad_length(g)},
        r"header length 1099511627776 is impossible",
    ),
    (
        "offsets-past-end",
        lambda g: {**g, WEIGHTS: g[WEIGHTS][:-100]},
        r"data_offsets \[\d+, \d+\] run past the end of the file",
    ),
    (
        "offsets-shifted",
        lambda g: {**g, WEIGHTS: with_header(g, stretch_offsets)},
        r"v_proj\.lora_B\.weight: data_offsets \[\d+, \d+\] run past the end",
    ),
    ("trailing-bytes", lambda g: {**g, WEIGHTS: g[WEIGHTS] + b"\0" * 16}, "trailing bytes"),
    (
        "header-json",
        lambda g: {**g, WEIGHTS: g[WEIGHTS][:8] + b"\xff" * 20 + g[WEIGHTS][28:]},
        "not valid JSON",
    ),
    ("dtype", lambda g: {**g, WEIGHTS: with_header(g, set_field("dtype", "F99"))}, "unknown dtype 'F99'"),
    (
        "shape-vs-bytes",
        lambda g: {**g, WEIGHTS: with_header(g, set_field("shape", [4, 2048]))},
        r"hold 65536 bytes but shape \[4, 2048\] of F32 needs 32768",
    ),
    ("tiny-file", lambda g: {**g, WEIGHTS: b"\x01\x00"}, "too short for safetensors"),
    ("config-json", lambda g: {**g, CONFIG: b"{not json"}, f"{CONFIG} is not valid JSON"),
    ("peft-type", lambda g: {**g, CONFIG: config_bytes(peft_type="IA3")}, "peft_type is 'IA3'"),
    (
        "rank-pattern",
        lambda g: {**g, CONFIG: config_bytes(rank_pattern={"v_proj": 8})},
        "rank_pattern",
    ),
]


@pytest.mark.parametrize(("build", "match"), [c[1:] for c in VERIFY_CASES], ids=[c[0] for c in VERIFY_CASES])
def test_bad_adapter_contents_are_rejected(
    tmp_path: Path, out: Path, good: dict[str, bytes], build: Callable, match: str
) -> None:
    files = build(good)
    # As an archive (the Together path) ...
    source = write_source(tmp_path, zstd_archive(nested(files)))
    err = assert_rejected(tmp_path, out, source, match)
    assert WEIGHTS in str(err) or CONFIG in str(err)
    # ... and as a directory (the local path).
    directory = tmp_path / "src" / "dir"
    directory.mkdir()
    for name, data in files.items():
        (directory / name).write_bytes(data)
    assert_rejected(tmp_path, out, directory, match)


def test_directory_source_needs_real_safetensors(tmp_path: Path, out: Path, good: dict[str, bytes]) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / CONFIG).write_bytes(good[CONFIG])
    (source / "adapter_model.bin").write_bytes(b"pickle")
    assert_rejected(tmp_path, out, source, f"has no {WEIGHTS} .*adapter_model.bin.*safe_serialization=True")

    (source / WEIGHTS).symlink_to(tmp_path / "first" / WEIGHTS)
    assert_rejected(tmp_path, out, source, "is a symlink")


def test_read_safetensors_header_reports_shapes(good: dict[str, bytes], tmp_path: Path) -> None:
    path = tmp_path / WEIGHTS
    path.write_bytes(good[WEIGHTS])
    header = read_safetensors_header(path)
    assert len(header) == LLAMA_TENSORS
    b = header["base_model.model.model.layers.31.self_attn.v_proj.lora_B.weight"]
    assert (b.dtype, b.shape) == ("F32", (1024, 4))


# ------------------------------------------------------------------------- installed state, recovery


def test_verify_installed_is_none_when_absent_and_creates_nothing(tmp_path: Path) -> None:
    assert verify_installed(tmp_path / "out", TRAIT, SPEC) is None
    assert not (tmp_path / "out").exists()
    (tmp_path / "out" / "lora_checkpoints").mkdir(parents=True)
    assert verify_installed(tmp_path / "out", TRAIT, SPEC) is None


def test_verify_installed_raises_on_a_damaged_install(out: Path) -> None:
    weights = adapter_dir(out, TRAIT) / WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(AdapterError, match=f"{TRAIT}/{WEIGHTS}: tensor .* run past the end"):
        verify_installed(out, TRAIT, SPEC)
    with pytest.raises(AdapterError, match=r"lora_alpha is 16 .*lora_alpha=32"):
        verify_installed(out, TRAIT, AdapterSpec(4, 32, ("q_proj", "v_proj")))


def test_crash_between_renames_is_repaired_by_verify_installed(out: Path) -> None:
    installed = adapter_dir(out, TRAIT)
    before = snapshot(installed)
    info = verify_installed(out, TRAIT, SPEC)
    installed.rename(out / "lora_checkpoints" / f".previous-{TRAIT}-x")

    assert verify_installed(out, TRAIT, SPEC) == info
    assert snapshot(installed) == before
    assert os.listdir(out / "lora_checkpoints") == [TRAIT]


def test_crash_state_survives_a_failed_install(tmp_path: Path, out: Path) -> None:
    info = verify_installed(out, TRAIT, SPEC)
    adapter_dir(out, TRAIT).rename(out / "lora_checkpoints" / f".previous-{TRAIT}-x")
    with pytest.raises(AdapterError):
        install_adapter(write_source(tmp_path, b"junk" * 200), out, TRAIT, SPEC)
    assert verify_installed(out, TRAIT, SPEC) == info  # restored first, so nothing was lost


def test_leftover_previous_after_a_completed_swap_is_dropped(out: Path) -> None:
    leftover = out / "lora_checkpoints" / f".previous-{TRAIT}-abc123"
    leftover.mkdir()
    (leftover / WEIGHTS).write_bytes(b"old")
    other = out / "lora_checkpoints" / ".previous-wisdom_minus-abc123"  # another trait's: not ours
    other.mkdir()
    assert verify_installed(out, TRAIT, SPEC) is not None
    assert not leftover.exists()
    assert other.exists()


def test_stale_staging_from_a_crashed_install_is_cleaned(
    tmp_path: Path, out: Path, good: dict[str, bytes]
) -> None:
    root = out / "lora_checkpoints"
    stale, fresh = root / f".staging-{TRAIT}-old", root / f".staging-{TRAIT}-new"
    for path in (stale, fresh):
        path.mkdir()
        (path / WEIGHTS).write_bytes(b"half")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    install_adapter(write_source(tmp_path, zstd_archive(nested(good))), out, TRAIT, SPEC)
    assert not stale.exists()
    assert fresh.exists()  # may belong to an install still running


@pytest.mark.parametrize("trait", ["../evil_plus", "/abs_plus", "Wisdom_plus", "wisdom", ""])
def test_bad_trait_name_is_refused_before_any_path_is_built(tmp_path: Path, good: dict, trait: str) -> None:
    source = write_source(tmp_path, zstd_archive(nested(good)))
    before = snapshot(tmp_path)
    with pytest.raises(TraitNameError):
        install_adapter(source, tmp_path / "out", trait, SPEC)
    with pytest.raises(TraitNameError):
        verify_installed(tmp_path / "out", trait, SPEC)
    assert snapshot(tmp_path) == before


def test_verify_adapter_dir_names_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="nowhere: no adapter directory"):
        verify_adapter_dir(tmp_path / "nowhere", SPEC)


def test_a_checkpoint_never_replaces_a_top_level_adapter_without_safetensors(
    tmp_path: Path, out: Path, good: dict[str, bytes]
) -> None:
    pickled_top = {
        CONFIG: good[CONFIG],
        "adapter_model.bin": b"\x80\x04pickle",
        **nested(good, "checkpoint-10/"),
    }
    assert_rejected(tmp_path, out, write_source(tmp_path, zstd_archive(pickled_top)), "pickled")
    config_only = {CONFIG: good[CONFIG], **nested(good, "checkpoint-10/")}
    assert_rejected(
        tmp_path, out, write_source(tmp_path, zstd_archive(config_only), "b.tar.zst"), f"holds no {WEIGHTS}"
    )


def test_folders_are_not_merged_by_their_names(tmp_path: Path, out: Path, good: dict[str, bytes]) -> None:
    members = {f"x./{CONFIG}": good[CONFIG], f".x/{WEIGHTS}": good[WEIGHTS]}
    assert_rejected(tmp_path, out, write_source(tmp_path, zstd_archive(members)), f"holds no {WEIGHTS}")
