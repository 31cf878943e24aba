"""HeartLang models: the ECGFormer backbone and the modules of each stage."""

from heartlang_jax.models.classifier import EcgClassifier, classifier_bce_loss
from heartlang_jax.models.ecgformer import ECGFormer, ECGFormerConfig
from heartlang_jax.models.masked_lm import (
    MaskedEcgModel,
    masked_lm_loss,
    masked_positions,
    num_mask_positions,
    sample_mask,
)
from heartlang_jax.models.quantizer import (
    CodebookVariable,
    EmaCodebookQuantizer,
    QuantizerOutput,
    l2_normalize,
    spherical_kmeans,
)
from heartlang_jax.models.rope import apply_rope, rope_angles
from heartlang_jax.models.vqhbr import VQHBR, VQHBRConfig, VQHBROutput, vqhbr_loss

__all__ = [
    "VQHBR",
    "CodebookVariable",
    "ECGFormer",
    "ECGFormerConfig",
    "EcgClassifier",
    "EmaCodebookQuantizer",
    "MaskedEcgModel",
    "QuantizerOutput",
    "VQHBRConfig",
    "VQHBROutput",
    "apply_rope",
    "classifier_bce_loss",
    "l2_normalize",
    "masked_lm_loss",
    "masked_positions",
    "num_mask_positions",
    "rope_angles",
    "sample_mask",
    "spherical_kmeans",
    "vqhbr_loss",
]
