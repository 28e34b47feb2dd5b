"""TPU topologies as Cloud TPU names them, and their chips as libtpu describes them, from a host
without a TPU (`python -m ahn_jax.compile_check`)."""

from __future__ import annotations

from jax.experimental import topologies

from ahn_jax.config import ConfigError

# Cloud TPU slice names -> the topology descriptions libtpu accepts (it takes e.g. "v5p:2x2x1", not
# "v5p-8"; launch/README.md). v4/v5p names count TensorCores (2 per chip) over a 3D torus of
# chips; v5e (v5litepod) and v6e names count chips on a 2D torus; shapes as Cloud TPU provisions
# them.
_TORUS_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
             256: "4x8x8", 512: "8x8x8"}  # fmt: skip
_TORUS_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
             256: "16x16"}  # fmt: skip
TOPOLOGY_ALIASES = {
    **{f"{gen}-{2 * chips}": f"{gen}:{shape}" for gen in ("v4", "v5p")
       for chips, shape in _TORUS_3D.items()},
    **{f"{name}-{chips}": f"{gen}:{shape}" for gen, name in (("v5e", "v5e"), ("v5e", "v5litepod"),
                                                                ("v6e", "v6e"))
       for chips, shape in _TORUS_2D.items()},
}  # fmt: skip
# HBM per chip, bytes (Cloud TPU documentation).
HBM_BYTES = {"v4": 32 * 2**30, "v5p": 95 * 2**30, "v5e": 16 * 2**30, "v6e": 32 * 2**30}


def topology_devices(name: str):
    description = TOPOLOGY_ALIASES.get(name, name)
    try:
        topology = _topology(description)
    except Exception as e:  # noqa: BLE001 - libtpu's message is the useful part
        if "lockfile" in str(e):  # libtpu serves one process at a time (on a TPU host)
            raise ConfigError(
                "libtpu is in use by another process on this TPU host (a training run?): run "
                "the check when it ends, or from a host without a TPU"
            ) from e
        if "TPU support not installed" in str(e):  # jax without libtpu: no topology is known
            raise ConfigError(
                "compiling for a TPU needs libtpu, which `make demo`'s install leaves out: "
                "pip install -e '.[tpu]' (or the test extra)"
            ) from e
        raise ConfigError(
            f"--topology {name!r} is not a TPU topology libtpu knows ({e}); try a Cloud TPU "
            "slice name (v4-8 .. v4-1024, v5p-8 .. v5p-1024, v5litepod-1 .. v5litepod-256 or "
            "v5e-N, v6e-1 .. v6e-256) or a description like 'v5p:2x2x1'"
        ) from e
    return description, list(topology.devices)


def _topology(description: str):
    try:
        return topologies.get_topology_desc(description, platform="tpu")
    except Exception as e:  # noqa: BLE001 - retried below, or re-raised for the caller to name
        # a slice smaller than libtpu's default host (2x2x1 chips: v5e-1, v6e-1) is one chip
        # on a host of its own
        if "chips_per_host_bounds" not in str(e):
            raise
        return topologies.get_topology_desc(
            description, platform="tpu", chips_per_host_bounds=(1, 1, 1)
        )
