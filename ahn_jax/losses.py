"""Losses over logits. (The tiled KL of self-distillation joins these with the training issue.)"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def next_token_cross_entropy(logits_BTV: jax.Array, tokens_BT: jax.Array) -> jax.Array:
    """Mean cross-entropy (nats/token) of predicting tokens[:, t+1] from logits[:, t]."""
    log_probs = jax.nn.log_softmax(logits_BTV[:, :-1].astype(jnp.float32), axis=-1)
    targets = tokens_BT[:, 1:, None]
    return -jnp.mean(jnp.take_along_axis(log_probs, targets, axis=-1))
