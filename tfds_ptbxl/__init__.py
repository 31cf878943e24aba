"""TFDS dataset builders of heartlang_jax."""
