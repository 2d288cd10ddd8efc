"""A Hub repo pinned to a commit and downloaded into a cache, through the real ``huggingface_hub`` client.

Pinning happens once per run (``discover``) so that every trait trains on the same commit even if
the repo's branch moves meanwhile; the check that the token may download the files happens there
too, so a gated repo or a wrong token fails the run before anything trains. ``huggingface_hub`` is
imported inside the functions: the DAG processor never pays for it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from trait_lora.models.refs import ModelDeliveryError, ModelKind, ModelRef, PinnedModel

log = logging.getLogger(__name__)

# Weight formats and copies the trainer never reads: Llama-3.1's ``original/`` alone is another 16 GB.
SKIPPED = (
    "original/*",
    "*.pth",
    "*.pt",
    "*.msgpack",
    "*.h5",
    "*.ot",
    "*.onnx",
    "onnx/*",
    "*.gguf",
    "*.tflite",
    "coreml/*",
    "openvino/*",
)
SKIPPED_BESIDE_SAFETENSORS = ("*.bin",)  # pickled PyTorch weights, when safetensors are there too
PREFERRED_PROBE = "config.json"


def _endpoint(endpoint: str | None) -> str:
    """The Hub or mirror to ask: ``endpoint`` (a connection's host; https:// when it names none), else
    huggingface_hub's own (HF_ENDPOINT, else the Hub)."""
    from huggingface_hub import constants

    if endpoint and "://" not in endpoint:
        endpoint = f"https://{endpoint}"
    return (endpoint or constants.ENDPOINT).rstrip("/")


def _token(token: str | None) -> str | bool:
    """No token means anonymous: never a token saved on this machine that the connection did not give."""
    return token if token else False


def resolve_hub(ref: ModelRef, *, token: str | None, endpoint: str | None, conn_id: str) -> PinnedModel:
    """The commit ``ref`` names now, after proving the token may download its files."""
    from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url

    assert ref.kind is ModelKind.HUB
    where = _endpoint(endpoint)
    api = HfApi(endpoint=where, token=_token(token))
    try:
        info = api.model_info(ref.repo_id, revision=ref.revision)
        files = [s.rfilename for s in info.siblings or ()]
        if not info.sha or PREFERRED_PROBE not in files:
            listed = ", ".join(files[:8]) or "none"
            raise ModelDeliveryError(
                f"base model {ref.text} at {where} has no config.json (files: {listed}): it is not a "
                "transformers model; name a repo that is"
            )
        # model_info answers for a gated repo without access; its files do not: ask for one of them.
        url = hf_hub_url(ref.repo_id, PREFERRED_PROBE, revision=info.sha, endpoint=where)
        get_hf_file_metadata(url, token=_token(token), endpoint=where)
    except ModelDeliveryError:
        raise
    except Exception as exc:
        raise hub_error(exc, ref, conn_id=conn_id, endpoint=where, has_token=bool(token)) from None
    skip = SKIPPED + (SKIPPED_BESIDE_SAFETENSORS if any(f.endswith(".safetensors") for f in files) else ())
    log.info("base model %s resolved to commit %s at %s", ref.text, info.sha, where)
    return PinnedModel(ref, info.sha, skip=skip)


def materialize_hub(
    pinned: PinnedModel, cache_dir: Path, *, token: str | None, endpoint: str | None, conn_id: str
) -> Path:
    """The snapshot folder of the pinned commit in ``cache_dir``: from the cache without a single
    request when it is complete there, else downloaded (only the files still missing)."""
    from huggingface_hub import snapshot_download

    ref = pinned.ref
    kwargs: dict[str, Any] = {
        "revision": pinned.pin,
        "cache_dir": str(cache_dir),
        "ignore_patterns": list(pinned.skip) or None,
    }
    try:
        folder = snapshot_download(ref.repo_id, local_files_only=True, **kwargs)
        log.info("base model %s: cached at %s", pinned.label, folder)
        return Path(folder)
    except Exception:  # not there, or incomplete: download what is missing
        pass
    where = _endpoint(endpoint)
    log.info("base model %s: downloading from %s into %s", pinned.label, where, cache_dir)
    try:
        folder = snapshot_download(ref.repo_id, token=_token(token), endpoint=where, **kwargs)
    except Exception as exc:
        raise hub_error(exc, ref, conn_id=conn_id, endpoint=where, has_token=bool(token)) from None
    return Path(folder)


def hub_error(
    exc: BaseException, ref: ModelRef, *, conn_id: str, endpoint: str, has_token: bool
) -> Exception:
    """The client's exception as one a user can act on, naming the connection and the model.

    Built from the exception's type and the Hub's status and message only: nothing of the request
    (whose headers carry the token) is kept, and the original is not chained."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    conn = f"Airflow connection {conn_id!r}"
    model = f"base model {ref.text}"
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    said = _server_message(response)
    if isinstance(exc, GatedRepoError):
        if not has_token:
            return ModelDeliveryError(
                f"{model} is a gated repo at {endpoint} and {conn} has no token: set the connection's "
                "password to a Hugging Face token of an account that accepted the model's licence"
            )
        return ModelDeliveryError(
            f"{model} is a gated repo at {endpoint} and the token of {conn} has no access to it: accept "
            f"the licence at {endpoint}/{ref.repo_id} with the token's account (or use another token)"
        )
    if status == 401 and not isinstance(exc, RepositoryNotFoundError):
        return ModelDeliveryError(
            f"{model}: {endpoint} refused the token of {conn} (401{': ' + said if said else ''}): set the "
            "connection's password to a valid Hugging Face token"
        )
    if isinstance(exc, RepositoryNotFoundError):
        hint = "" if has_token else f" ({conn} has no token: a private repo needs one)"
        return ModelDeliveryError(
            f"{model}: repository {ref.repo_id} not found at {endpoint}, or private and not visible to "
            f"the token of {conn}{hint}; check base_model (a local folder must exist on this machine)"
        )
    if isinstance(exc, RevisionNotFoundError):
        return ModelDeliveryError(
            f"{model}: revision {ref.revision!r} does not exist in {ref.repo_id} at {endpoint}; name a "
            "branch, tag or commit id that does"
        )
    if isinstance(exc, (OfflineModeIsEnabled, LocalEntryNotFoundError)):
        return ModelDeliveryError(
            f"{model}: cannot download from {endpoint} in this process (HF_HUB_OFFLINE is set, or the Hub "
            f"is unreachable and the model is not in the cache): unset HF_HUB_OFFLINE, check the network "
            f"and the host of {conn}, or give a local folder"
        )
    if isinstance(exc, HfHubHTTPError):
        return ModelDeliveryError(
            f"{model}: {endpoint} answered {status}{': ' + said if said else ''}; check the host of {conn} "
            "or retry later"
        )
    return ModelDeliveryError(
        f"{model}: cannot reach {endpoint} ({type(exc).__name__}); check the network and the host of {conn}"
    )


def _server_message(response: Any) -> str:
    """The Hub's own one-line reason (``X-Error-Message``), never the request."""
    try:
        text = str(response.headers.get("X-Error-Message") or "")
    except Exception:
        return ""
    return text.splitlines()[0][:200] if text else ""
