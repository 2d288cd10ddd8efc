"""Per-trait Together operators, one module per step: upload -> launch -> wait (sensor) -> download."""

from trait_lora.provider.operators.base import TogetherJobFailed
from trait_lora.provider.operators.download import TogetherDownloadOperator
from trait_lora.provider.operators.launch import TogetherLaunchOperator
from trait_lora.provider.operators.upload import TogetherUploadOperator
from trait_lora.provider.operators.wait import TogetherFineTuneSensor

__all__ = [
    "TogetherDownloadOperator",
    "TogetherFineTuneSensor",
    "TogetherJobFailed",
    "TogetherLaunchOperator",
    "TogetherUploadOperator",
]
