"""The base model brought to the trainer: a local folder, a Hugging Face repo, or an S3 folder.

``parse_model_ref`` reads what a user wrote, ``resolve`` pins it once per run (the Hub commit, or a
digest of the S3 listing; and proves the token may download it), ``materialize`` gives a local folder
with exactly that version, downloading or copying it into a cache only the first time. No Airflow or
torch here: the worker (``discover``, the local trainer's task) and a trainer pod both call these,
each passing the token and endpoint it got (an Airflow connection; a pod's Secret). The token is only
ever a parameter: no record, log line or error message holds it.
"""

from __future__ import annotations

import os
from pathlib import Path

from trait_lora.models.refs import (
    DEFAULT_HF_CONN_ID,
    ModelDeliveryError,
    ModelKind,
    ModelRef,
    PinnedModel,
    S3Object,
    check_pin,
    parse_model_ref,
)

__all__ = [
    "DEFAULT_HF_CONN_ID",
    "ModelDeliveryError",
    "ModelKind",
    "ModelRef",
    "PinnedModel",
    "S3Object",
    "materialize",
    "parse_model_ref",
    "resolve",
]


def resolve(
    ref: ModelRef | str,
    *,
    token: str | None = None,
    endpoint: str | None = None,
    conn_id: str = DEFAULT_HF_CONN_ID,
) -> PinnedModel:
    """Pin ``ref``: a Hub repo to the commit its revision names now (one ``model_info`` and one HEAD
    of a file, so a gated repo, a wrong token, a missing repo or revision fail here, naming
    ``conn_id``); an S3 folder to a digest of its listing; a local folder to itself (no pin).

    ``token``: the Hub token (None: anonymous, never a token saved on this machine); ``endpoint``:
    a Hub mirror or proxy (None: huggingface_hub's, i.e. HF_ENDPOINT or the Hub)."""
    parsed = parse_model_ref(ref) if isinstance(ref, str) else ref
    if parsed.kind is ModelKind.HUB:
        from trait_lora.models.hub import resolve_hub

        return resolve_hub(parsed, token=token, endpoint=endpoint, conn_id=conn_id)
    if parsed.kind is ModelKind.S3:
        from trait_lora.models.s3 import resolve_s3

        return resolve_s3(parsed)
    return PinnedModel(parsed)


def materialize(
    pinned: PinnedModel,
    cache_dir: str | os.PathLike[str],
    *,
    token: str | None = None,
    endpoint: str | None = None,
    conn_id: str = DEFAULT_HF_CONN_ID,
) -> Path:
    """A local folder holding exactly the pinned model, for ``from_pretrained``.

    Hub: the commit's snapshot in ``cache_dir`` (huggingface_hub's cache layout), with no request at
    all when it is already complete there. S3: ``cache_dir/s3/<digest>``, copied whole then renamed
    into place, reused while the digest is unchanged. Local: the folder, which must exist here."""
    check_pin(pinned)
    ref = pinned.ref
    cache = Path(os.path.expanduser(os.fspath(cache_dir)))
    if ref.kind is ModelKind.HUB:
        from trait_lora.models.hub import materialize_hub

        return materialize_hub(pinned, cache, token=token, endpoint=endpoint, conn_id=conn_id)
    if ref.kind is ModelKind.S3:
        from trait_lora.models.s3 import materialize_s3

        return materialize_s3(pinned, cache)
    assert ref.path is not None
    if not ref.path.is_dir():
        raise ModelDeliveryError(
            f"base model folder {ref.path} does not exist on this machine; give a folder that does, a "
            "Hugging Face repo id or an s3:// folder"
        )
    return ref.path
