"""Cosine-similarity vector quantizer with an EMA codebook (SPEC §4).

Follows the normalized-EMA quantizer of the released code (from LaBraM /
BEiT v2) in the style of big_vision's uvim vit.py: vectors and codes are
l2-normalized, the nearest code is the one of highest cosine similarity, the
codebook moves by an EMA of the mean normalized vector assigned to each code
and is renormalized, and codes unused in a batch keep their vector. Spherical
k-means on the first training batch initializes it.

Optionally (`dead_code_patience` > 0, off in the released code) a code that no
real word chose for that many consecutive updates is restarted on a random
real vector of the batch, as in Jukebox and SoundStream: when the encoder's
outputs drift faster than the EMA follows (short runs, high learning rates),
codes left behind would otherwise never be chosen again. Patience counts steps
rather than thresholding the EMA cluster size, which at decay 0.99 takes
hundreds of steps to notice a dead code.

The codebook lives in `CodebookVariable`s, not `nnx.Param`s, so an optimizer
built with wrt=nnx.Param never touches it and gradients never flow into it.
All statistics are sums over the whole (global) batch, so under jit over a
sharded batch they are cross-device sums by construction.
"""

import jax
import jax.numpy as jnp
from flax import nnx, struct


class CodebookVariable(nnx.Variable):
    """Quantizer state updated by EMA / k-means, never by the optimizer."""


@struct.dataclass
class QuantizerOutput:
    """What one quantizer call returns; losses and stats count real words only."""

    quantized: jax.Array  # [..., d] straight-through: forward = code, grad = l2(z)
    indices: jax.Array  # [...] int32 nearest code (also set for masked-out entries)
    codebook_loss: jax.Array  # [] mean over words of ||sg(l2 z) - v||^2 (/ d with "mean")
    commitment_loss: jax.Array  # [] mean over words of ||l2 z - sg(v)||^2 (/ d with "mean")
    perplexity: jax.Array  # [] exp(entropy of the batch code-usage distribution)
    num_used: jax.Array  # [] int32 distinct codes used in the batch
    # [K] int32 per-code usage this batch; sum over an epoch to count dead codes.
    counts: jax.Array


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """x / max(||x||, eps) along the last axis; zero vectors stay zero, grad finite."""
    sq = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))


def _assign(vectors: jax.Array, codebook: jax.Array) -> jax.Array:
    """Nearest code by cosine similarity: [N, d] x [K, d] -> [N] int32."""
    sims = jnp.dot(vectors, codebook.T, precision=jax.lax.Precision.HIGHEST)
    return jnp.argmax(sims, axis=-1).astype(jnp.int32)


def _code_stats(
    vectors: jax.Array, indices: jax.Array, weights: jax.Array, num_codes: int, eps: float
) -> tuple[jax.Array, jax.Array]:
    """Per-code weighted count [K] and l2-normalized mean [K, d] of its vectors.

    The mean of a code with count 0 is 0; callers keep the old vector there.
    """
    counts = jax.ops.segment_sum(weights, indices, num_segments=num_codes)  # [K]
    sums = jax.ops.segment_sum(vectors * weights[:, None], indices, num_segments=num_codes)  # [K, d]
    return counts, l2_normalize(sums / jnp.maximum(counts, 1.0)[:, None], eps)


def spherical_kmeans(
    key: jax.Array, vectors: jax.Array, mask: jax.Array, num_codes: int, num_iters: int, eps: float = 1e-6
) -> tuple[jax.Array, jax.Array]:
    """k-means with cosine similarity over the rows of `vectors` where `mask`.

    Starts from randomly chosen real vectors (cycled if there are fewer real
    vectors than codes, as the released code samples with replacement). An
    empty cluster keeps its previous mean.

    Args:
        key: PRNG key for the initial choice.
        vectors: [N, d] l2-normalized vectors.
        mask: [N] bool, which rows take part.
        num_codes: K.
        num_iters: Lloyd iterations.
        eps: normalization floor.

    Returns:
        means [K, d] l2-normalized and counts [K] float32 of the last assignment.
    """
    weights = mask.astype(jnp.float32)  # [N]
    scores = jnp.where(mask, jax.random.uniform(key, mask.shape), 2.0)
    order = jnp.argsort(scores)  # real rows first, in random order
    num_real = jnp.maximum(jnp.sum(mask.astype(jnp.int32)), 1)
    means = vectors[order[jnp.arange(num_codes) % num_real]]  # [K, d]

    def step(_, carry):
        means, _ = carry
        indices = _assign(vectors, means)
        counts, new = _code_stats(vectors, indices, weights, num_codes, eps)
        means = jnp.where(counts[:, None] > 0, new, means)
        return means, counts

    return jax.lax.fori_loop(0, num_iters, step, (means, jnp.zeros((num_codes,), jnp.float32)))


LOSS_WEIGHTINGS = ("mean", "sum")


class EmaCodebookQuantizer(nnx.Module):
    """Maps vectors to the nearest of K unit-norm codes; trains the codes by EMA.

    `loss_weighting` reduces the codebook and commitment terms over the code dimension:
    "mean" as the released code (`F.mse_loss`, an element mean: (2 - 2 cos) / d per word) or
    "sum" as the paper's squared l2 norm (2 - 2 cos per word, d times stronger). Either way
    the terms are averaged over the real words.
    """

    def __init__(
        self,
        num_codes: int,
        code_dim: int,
        *,
        decay: float = 0.99,
        kmeans_iters: int = 10,
        dead_code_patience: int = 0,
        loss_weighting: str = "mean",
        eps: float = 1e-6,
        rngs: nnx.Rngs,
    ):
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"loss_weighting must be one of {LOSS_WEIGHTINGS}, got {loss_weighting!r}.")
        self.loss_weighting = loss_weighting
        self.num_codes = num_codes
        self.code_dim = code_dim
        self.decay = decay
        self.dead_code_patience = dead_code_patience
        self.kmeans_iters = kmeans_iters
        self.eps = eps
        init = jax.random.normal(rngs.params(), (num_codes, code_dim))
        self.codebook = CodebookVariable(l2_normalize(init, eps))  # [K, d]
        self.cluster_size = CodebookVariable(jnp.zeros((num_codes,), jnp.float32))
        self.initialized = CodebookVariable(jnp.array(False))
        # Consecutive updates in which no real word chose each code.
        self.unused_steps = CodebookVariable(jnp.zeros((num_codes,), jnp.int32))
        # Key of the k-means start and of dead-code restarts; raw uint32 data (not a typed key) so
        # checkpoints stay plain arrays.
        self.codebook_key = CodebookVariable(jax.random.key_data(rngs.params()))

    def encode(self, z: jax.Array) -> jax.Array:
        """z [..., d] -> nearest code indices [...] int32, no update."""
        flat = l2_normalize(z.astype(jnp.float32), self.eps).reshape(-1, self.code_dim)
        return _assign(flat, self.codebook[...]).reshape(z.shape[:-1])

    def lookup(self, indices: jax.Array) -> jax.Array:
        """indices [...] -> unit-norm codes [..., d]."""
        return jnp.take(self.codebook[...], indices, axis=0)

    def __call__(self, z: jax.Array, mask: jax.Array, *, update: bool) -> QuantizerOutput:
        """Quantizes z [..., d] (raw encoder output); mask [...] marks real words.

        With update=True the codebook is first initialized by k-means on this
        batch if it never was, then moved by one EMA step; outputs and losses use
        the codebook as it was before the EMA step.
        """
        shape = z.shape[:-1]
        zn = l2_normalize(z.astype(jnp.float32), self.eps)  # [..., d]
        flat = zn.reshape(-1, self.code_dim)  # [N, d]
        flat_sg = jax.lax.stop_gradient(flat)
        real = mask.reshape(-1)  # [N]
        weights = real.astype(jnp.float32)  # [N]

        if update:
            self._maybe_initialize(flat_sg, real)
        codebook = self.codebook[...]  # [K, d]
        indices = _assign(flat_sg, codebook)  # [N]
        codes = jnp.take(codebook, indices, axis=0)  # [N, d]
        counts, means = _code_stats(flat_sg, indices, weights, self.num_codes, self.eps)
        if update:
            self._ema_update(counts, means)
            if self.dead_code_patience > 0:
                self._restart_dead_codes(counts, flat_sg, real)

        num_real = jnp.maximum(jnp.sum(weights), 1.0)
        reduce = jnp.mean if self.loss_weighting == "mean" else jnp.sum

        def masked_mean(per_word):  # [N] -> []
            return jnp.sum(per_word * weights) / num_real

        codebook_loss = masked_mean(reduce(jnp.square(flat_sg - codes), axis=-1))
        commitment_loss = masked_mean(reduce(jnp.square(flat - jax.lax.stop_gradient(codes)), axis=-1))

        probs = counts / num_real  # [K]
        entropy = -jnp.sum(jnp.where(probs > 0, probs * jnp.log(probs), 0.0))
        quantized = flat + jax.lax.stop_gradient(codes - flat)  # straight-through
        return QuantizerOutput(
            quantized=quantized.reshape(zn.shape),
            indices=indices.reshape(shape),
            codebook_loss=codebook_loss,
            commitment_loss=commitment_loss,
            perplexity=jnp.exp(entropy),
            num_used=jnp.sum(counts > 0).astype(jnp.int32),
            counts=counts.astype(jnp.int32),
        )

    def _maybe_initialize(self, vectors: jax.Array, real: jax.Array):
        """k-means init on the first batch; a no-op (lax.cond) once initialized."""
        key = jax.random.wrap_key_data(self.codebook_key[...])

        def kmeans_init(_):
            return spherical_kmeans(key, vectors, real, self.num_codes, self.kmeans_iters, self.eps)

        def keep(_):
            return self.codebook[...], self.cluster_size[...]

        codebook, cluster_size = jax.lax.cond(self.initialized[...], keep, kmeans_init, None)
        self.codebook[...] = codebook
        self.cluster_size[...] = cluster_size
        self.initialized[...] = jnp.array(True)

    def _ema_update(self, counts: jax.Array, means: jax.Array):
        """One EMA step toward each used code's normalized mean vector [K, d]."""
        old = self.codebook[...]  # [K, d]
        target = jnp.where(counts[:, None] > 0, means, old)
        new = self.decay * old + (1.0 - self.decay) * target
        self.codebook[...] = l2_normalize(new, self.eps)
        self.cluster_size[...] = self.decay * self.cluster_size[...] + (1.0 - self.decay) * counts

    def _restart_dead_codes(self, counts: jax.Array, vectors: jax.Array, real: jax.Array):
        """Moves each code unused for `dead_code_patience` updates onto a random real vector."""
        unused = jnp.where(counts > 0, 0, self.unused_steps[...] + 1)  # [K]
        dead = unused >= self.dead_code_patience  # [K]
        key, sample_key = jax.random.split(jax.random.wrap_key_data(self.codebook_key[...]))
        self.codebook_key[...] = jax.random.key_data(key)
        logits = jnp.where(real, 0.0, -jnp.inf)  # uniform over real words
        picks = jax.random.categorical(sample_key, logits, shape=(self.num_codes,))  # [K]
        self.codebook[...] = jnp.where(dead[:, None], vectors[picks], self.codebook[...])
        self.unused_steps[...] = jnp.where(dead, 0, unused)
