"""VQ-HBR (paper §2.3): learns the ECG vocabulary by reconstructing heartbeats.

encoder ECGFormer -> task head -> (padding zeroed) -> EMA cosine quantizer ->
decoder ECGFormer fed the unit-norm codes -> head back to T samples per word.
Its frozen `word_ids` gives the targets of masked pre-training.
"""

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx, struct

from heartlang_jax.configs import typed as typed_config
from heartlang_jax.configs.typed import NON_NEGATIVE, POSITIVE, RATE, field
from heartlang_jax.models.ecgformer import ECGFormer, ECGFormerConfig
from heartlang_jax.models.quantizer import EmaCodebookQuantizer, QuantizerOutput

_DENSE_INIT = nnx.initializers.truncated_normal(stddev=0.02)


@typed_config.checked
class VQHBRConfig:
    """Encoder/decoder sizes and the codebook (released code: K=8192, d=128)."""

    # A config file's blocks leave out what the program derives (see ECGFormerConfig.DERIVED).
    encoder: ECGFormerConfig = field(derived=ECGFormerConfig.DERIVED)
    # Its token_len must equal code_dim: the decoder reads codes as words (derived when read from a config).
    decoder: ECGFormerConfig = field(derived=ECGFormerConfig.DERIVED)
    num_codes: int = field(default=8192, check=POSITIVE)
    code_dim: int = field(default=128, check=POSITIVE)
    decay: float = field(default=0.99, check=RATE)
    kmeans_iters: int = field(default=10, check=POSITIVE)
    # Restart a code unused for this many consecutive steps; 0 = never (released code).
    dead_code_patience: int = field(default=0, check=NON_NEGATIVE)
    # Codebook/commitment terms over the code dimension: "mean" as the released code's
    # F.mse_loss, "sum" as the paper's squared l2 norm (code_dim times stronger).
    commitment_weighting: Literal["mean", "sum"] = "mean"

    @classmethod
    def derive_fields(cls, values: dict) -> dict:
        """A config's decoder block reads words of code_dim samples."""
        code_dim = values.get("code_dim", cls.code_dim)
        return {**values, "decoder": dataclasses.replace(values["decoder"], token_len=code_dim)}

    def problems(self):
        if self.decoder.token_len != self.code_dim:
            yield "decoder.token_len", f"must equal code_dim ({self.code_dim}), got {self.decoder.token_len}"


class TaskHead(nnx.Module):
    """Linear -> Tanh -> Linear, as the released encode/decode task layers."""

    def __init__(self, din: int, dout: int, dtype: jnp.dtype, *, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(din, din, dtype=dtype, kernel_init=_DENSE_INIT, rngs=rngs)
        self.fc2 = nnx.Linear(din, dout, dtype=dtype, kernel_init=_DENSE_INIT, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(jnp.tanh(self.fc1(x))).astype(jnp.float32)


@struct.dataclass
class VQHBROutput:
    reconstruction: jax.Array  # [B, L, T] float32
    indices: jax.Array  # [B, L] int32 (0 at padding, see VQHBR)
    quantizer: QuantizerOutput


class VQHBR(nnx.Module):
    """Vector-quantized heartbeat reconstruction.

    Padding words (lead id 0) have their encoder output set to 0 before
    quantization, so all code similarities tie and their index is 0: padding
    positions of `indices` / `word_ids` are always 0 and must be ignored.
    (The released code zeroes the backbone features of all-zero words before
    the task head instead, so its padding ids are those of the head's bias;
    real words get the same ids either way.)
    """

    def __init__(self, config: VQHBRConfig, *, rngs: nnx.Rngs):
        self.config = config
        enc, dec = config.encoder, config.decoder
        self.encoder = ECGFormer(enc, rngs=rngs)
        self.encode_head = TaskHead(enc.hidden_dim, config.code_dim, enc.compute_dtype, rngs=rngs)
        self.quantizer = EmaCodebookQuantizer(
            config.num_codes,
            config.code_dim,
            decay=config.decay,
            kmeans_iters=config.kmeans_iters,
            dead_code_patience=config.dead_code_patience,
            loss_weighting=config.commitment_weighting,
            rngs=rngs,
        )
        self.decoder = ECGFormer(dec, rngs=rngs)
        self.decode_head = TaskHead(dec.hidden_dim, enc.token_len, dec.compute_dtype, rngs=rngs)

    def encode(self, words: jax.Array, lead_ids: jax.Array, time_ids: jax.Array) -> jax.Array:
        """words [B, L, T] -> pre-quantization vectors [B, L, d], 0 at padding."""
        h = self.encoder(words, lead_ids, time_ids)
        h = h[:, self.encoder.num_prefix_tokens :]  # [B, L, D]
        z = self.encode_head(h)  # [B, L, d]
        return jnp.where((lead_ids != 0)[..., None], z, 0.0)

    def decode(self, codes: jax.Array, lead_ids: jax.Array, time_ids: jax.Array) -> jax.Array:
        """Unit-norm codes [B, L, d] -> reconstructed words [B, L, T] float32."""
        h = self.decoder(codes, lead_ids, time_ids)
        return self.decode_head(h[:, self.decoder.num_prefix_tokens :])

    def word_ids(self, words: jax.Array, lead_ids: jax.Array, time_ids: jax.Array) -> jax.Array:
        """Codebook indices [B, L] int32 without updating anything (call eval())."""
        return self.quantizer.encode(self.encode(words, lead_ids, time_ids))

    def __call__(
        self, words: jax.Array, lead_ids: jax.Array, time_ids: jax.Array, *, update_codebook: bool
    ) -> VQHBROutput:
        z = self.encode(words, lead_ids, time_ids)  # [B, L, d]
        quantized = self.quantizer(z, lead_ids != 0, update=update_codebook)
        reconstruction = self.decode(quantized.quantized, lead_ids, time_ids)
        return VQHBROutput(reconstruction=reconstruction, indices=quantized.indices, quantizer=quantized)


def vqhbr_loss(output: VQHBROutput, words: jax.Array, lead_ids: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """L_V = MSE over real words' samples + codebook + commitment terms.

    Returns the scalar loss and metrics to log (loss, rec_loss, codebook_loss,
    commitment_loss, perplexity, num_used). Under EMA the codebook term has no
    trainable gradient; only the commitment term reaches the encoder.
    """
    real = (lead_ids != 0).astype(jnp.float32)  # [B, L]
    sq_err = jnp.square(output.reconstruction - words.astype(jnp.float32))
    per_word = jnp.mean(sq_err, axis=-1)  # [B, L]
    rec_loss = jnp.sum(per_word * real) / jnp.maximum(jnp.sum(real), 1.0)
    q = output.quantizer
    loss = rec_loss + q.codebook_loss + q.commitment_loss
    return loss, {
        "loss": loss,
        "rec_loss": rec_loss,
        "codebook_loss": q.codebook_loss,
        "commitment_loss": q.commitment_loss,
        "perplexity": q.perplexity,
        "num_used": q.num_used,
    }
