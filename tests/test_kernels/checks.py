"""fla's comparison metric for kernels: RMS-relative error, passing outright at max-abs <= 1e-6."""

import jax.numpy as jnp
import numpy as np

FP32_TOL = 1e-5


def assert_close(actual, expected, tol=FP32_TOL, name=""):
    actual = np.asarray(jnp.asarray(actual, jnp.float32))
    expected = np.asarray(jnp.asarray(expected, jnp.float32))
    assert actual.shape == expected.shape, (name, actual.shape, expected.shape)
    assert np.all(np.isfinite(actual)), f"{name}: non-finite values"
    if np.max(np.abs(actual - expected), initial=0.0) <= 1e-6:
        return
    rel = np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-30)
    assert rel <= tol, f"{name}: RMS-relative error {rel:.2e} > {tol:.0e}"
