"""The platform choice of the CLIs, and XLA flags added before JAX makes its first backend.

XLA reads `XLA_FLAGS` when JAX creates its first backend, not at `import jax` (checked: a flag
added after `import ahn_jax` still takes effect), so `add_xla_flags` works at any point before the
first computation or `jax.devices()` (the tests add 8 fake CPU devices this way).
`JAX_PLATFORMS`, by contrast, is read at `import jax`: after that only
`jax.config.update("jax_platforms", ...)` changes it (before the first backend too).

Every `python -m ahn_jax.X` calls `configure_platform()` first: on a host without a TPU or GPU it
runs on the CPU (JAX_PLATFORMS=cpu: jax[tpu]'s libtpu, installed but without a chip, would print
initialisation errors before JAX falls back to the CPU). A user's own JAX_PLATFORMS wins.

One XLA:CPU flag is added at `import ahn_jax` (`avoid_known_crashes`): YNN_REDUCE_WORKAROUND. The
deadlock that three flags once worked around came from XLA:CPU's LAPACK triangular solve, which no
kernel calls now (docs/kernels.md, "Known issue").
"""

from __future__ import annotations

import os
import sys

# How JAX itself finds accelerators without initialising them (jax/_src/hardware_utils.py): TPU
# chips by their PCI ids (Google's vendor id also covers the gVNIC network card of every GCE VM,
# so the device ids matter), NVIDIA and AMD GPUs by their device files.
_GOOGLE_PCI_VENDOR = "0x1ae0"
_TPU_PCI_DEVICES = ("0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076")
_GPU_DEVICE_FILES = ("/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg", "/dev/kfd")
_PCI_DEVICES = "/sys/bus/pci/devices"
# libtpu, loaded on a host without a chip only to compile for a TPU topology
# (ahn_jax.compile_check), prints initialisation errors unless told what host it is on. These
# describe the host, not the topology compiled for (checked: the same memory report for v5p-8
# with and without them).
LIBTPU_WITHOUT_TPU = {
    "TPU_SKIP_MDS_QUERY": "1",  # no GCE metadata server to ask
    "TPU_ACCELERATOR_TYPE": "v5litepod-4",
    "TPU_WORKER_HOSTNAMES": "localhost",
    # libtpu's lockfile keeps a second process off a chip; without one there is nothing to
    # protect, and two compile checks (or one beside the tests) aborted with a lockfile error
    "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
}


# jaxlib 0.10.2 (and 0.11.0) crashes while *running* an f32 multiply + reduce of rank 7 with a
# size-1 dimension when XLA:CPU hands the reduction to YNNPACK (SIGSEGV in slinky::can_fuse, or a
# hang, depending on the CPU: jax-ml/jax#40412 and #39257; fixed in XNNPACK after those releases).
# The delta rule's backward forms such a reduction when a sequence fits in one chunk: on a 2-core
# AMD EPYC the kernel tests died with it. Without YNN reductions XLA emits its own loops.
YNN_REDUCE_WORKAROUND = "--xla_cpu_experimental_ynn_fusion_type=-reduce"


def avoid_known_crashes() -> None:
    """Add YNN_REDUCE_WORKAROUND to XLA_FLAGS (a value the user set for that flag is kept). Called
    at `import ahn_jax`; without effect where JAX has already made its CPU backend."""
    add_xla_flags(YNN_REDUCE_WORKAROUND)


def with_flags(xla_flags: str, flags) -> str:
    """`xla_flags` with each of `flags` appended whose name (the part before "=") it lacks: a value
    already set, by the user for example, is kept."""
    for flag in flags:
        if flag.split("=")[0] not in {given.split("=")[0] for given in xla_flags.split()}:
            xla_flags = f"{xla_flags} {flag}".strip()
    return xla_flags


def add_xla_flags(*flags: str) -> None:
    """Add `flags` to the environment's XLA_FLAGS (see `with_flags`); call before JAX makes its
    first backend."""
    os.environ["XLA_FLAGS"] = with_flags(os.environ.get("XLA_FLAGS", ""), flags)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _has_tpu() -> bool:
    # /dev/accel*: TPU v2-v4 VMs; numbered /dev/vfio groups: v5e/v5p/v6e (a plain host with the
    # vfio module has /dev/vfio/vfio only)
    dev = os.listdir("/dev") if os.path.isdir("/dev") else []
    if any(name.startswith("accel") for name in dev):
        return True
    if os.path.isdir("/dev/vfio") and any(name.isdigit() for name in os.listdir("/dev/vfio")):
        return True
    pci = os.listdir(_PCI_DEVICES) if os.path.isdir(_PCI_DEVICES) else []
    return any(
        _read(f"{_PCI_DEVICES}/{device}/vendor") == _GOOGLE_PCI_VENDOR
        and _read(f"{_PCI_DEVICES}/{device}/device") in _TPU_PCI_DEVICES
        for device in pci
    )


def _has_gpu() -> bool:
    return any(os.path.exists(path) for path in _GPU_DEVICE_FILES)


def platform_environment(
    environ, *, tpu: bool, gpu: bool, compiles_for_tpu: bool = False
) -> dict[str, str]:
    """The environment variables to set, given the environment and the host's accelerators:
    JAX_PLATFORMS=cpu where it is unset and there is neither a TPU nor a GPU (with one, JAX picks
    it itself); and, for a tool that `compiles_for_tpu` on a host without one, LIBTPU_WITHOUT_TPU.
    Set values are kept."""
    changes = {}
    if not environ.get("JAX_PLATFORMS", "") and not (tpu or gpu):
        changes["JAX_PLATFORMS"] = "cpu"
    if compiles_for_tpu and not tpu:
        changes |= {k: v for k, v in LIBTPU_WITHOUT_TPU.items() if k not in environ}
    return changes


def configure_platform(*, compiles_for_tpu: bool = False) -> dict[str, str]:
    """Set `platform_environment`'s values for this host in os.environ (for this process and the
    ones it starts) and, where `import jax` has already read JAX_PLATFORMS, in JAX's config;
    returns them. Call before JAX makes its first backend (each entry point's `__main__` block)."""
    changes = platform_environment(
        os.environ, tpu=_has_tpu(), gpu=_has_gpu(), compiles_for_tpu=compiles_for_tpu
    )
    os.environ.update(changes)
    jax = sys.modules.get("jax")
    if "JAX_PLATFORMS" in changes and jax is not None:
        jax.config.update("jax_platforms", changes["JAX_PLATFORMS"])
    return changes
