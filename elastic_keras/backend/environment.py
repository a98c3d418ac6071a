"""Where a run runs: backend, accelerator, library versions, GPU memory (per backend: B1)."""

import os
import platform
import shutil
import subprocess
import sys
from contextlib import contextmanager
from importlib import metadata

from elastic_keras.errors import ElasticKerasError

_LIBRARIES = {"tensorflow": ("tensorflow",), "jax": ("jax", "jaxlib"), "torch": ("torch",)}


def backend():
    """The Keras backend in use (KERAS_BACKEND, default tensorflow)."""
    import keras

    return keras.backend.backend()


def accelerators():
    """The accelerators the backend can use, e.g. ['GPU:0 NVIDIA H100 80GB HBM3']; [] on CPU."""
    name = backend()
    if name == "tensorflow":
        import tensorflow as tf

        found = []
        for i, d in enumerate(tf.config.list_physical_devices("GPU")):
            details = tf.config.experimental.get_device_details(d)
            found.append(f"GPU:{i} {details.get('device_name', d.name)}")
        return found
    if name == "jax":
        import jax

        return [f"{d.platform.upper()}:{d.id} {d.device_kind}" for d in jax.devices()
                if d.platform != "cpu"]
    if name == "torch":
        import torch

        return [f"GPU:{i} {torch.cuda.get_device_name(i)}"
                for i in range(torch.cuda.device_count())]
    return []


def nvidia_gpus():
    """GPUs the NVIDIA driver lists (`nvidia-smi -L`), whatever the backend sees."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line for line in out.stdout.splitlines() if line.startswith("GPU")]


def device():
    """One line naming what the run computes on: the accelerators, else the CPU."""
    found = accelerators()
    return ", ".join(found) if found else f"CPU ({os.cpu_count()} cores, no accelerator)"


def versions(extra=()):
    """Versions of the libraries a result depends on (and of the packages `extra`)."""
    names = ("elastic-keras", "keras", *_LIBRARIES.get(backend(), ()), "numpy", *extra)
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    found["python"] = platform.python_version()
    return found


def describe():
    """Backend, device, versions and host of this process, as recorded in a run directory
    (what changes with the backend: FIDELITY.md B2)."""
    return {"backend": backend(), "device": device(), "versions": versions(),
            "host": platform.node()}


def header(env):
    """The progress header line: backend, device and the versions that matter."""
    v = env["versions"]
    libs = ", ".join(f"{k} {v[k]}" for k in v if k not in ("python", "elastic-keras") and v[k])
    return f"backend {env['backend']} on {env['device']} ({libs})"


def check_accelerator(profile, allow_cpu):
    """Stop a `paper` run that sees no accelerator, before any data or weights are loaded
    (FIDELITY.md B4).

    110 epochs over 40,000 images at 224 px take hours on a GPU and months on a CPU; a
    run never falls back to the CPU silently.
    """
    if profile != "paper" or allow_cpu or accelerators():
        return
    name = backend()
    gpus = nvidia_gpus()
    why = (f"{len(gpus)} NVIDIA GPU(s) are present but Keras' {name} backend does not see "
           f"them: reinstall with GPU support (`make install`, which picks "
           f"{'tensorflow[and-cuda]' if name == 'tensorflow' else name + ' with CUDA'})"
           if gpus else f"Keras' {name} backend sees no GPU")
    raise ElasticKerasError(
        f"the paper profile needs an accelerator and {why}; on a CPU it would take months. "
        "To run anyway pass --allow-cpu (make: ALLOW_CPU=1); for a quick CPU run use "
        "--profile smoke.")


def share_gpu_memory(fraction):
    """Let this process take only its share of GPU memory, for several runs on one GPU.

    JAX preallocates 75% of the GPU by default: it gets XLA_PYTHON_CLIENT_MEM_FRACTION
    (set before JAX starts). TensorFlow takes the whole GPU by default: it gets memory
    growth. Call before the backend touches the GPU.
    """
    if not 0 < fraction <= 1:
        raise ElasticKerasError(f"GPU memory fraction must be in (0, 1], got {fraction!r}")
    os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.95 * fraction:.3f}"
    if os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow":
        import tensorflow as tf

        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)


@contextmanager
def _stderr_silenced():
    """Point file descriptor 2 at /dev/null (C++ libraries log there directly)."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_keras_quietly():
    """Import Keras (and its backend) without the start-up lines TensorFlow's C++ core
    writes to stderr whatever TF_CPP_MIN_LOG_LEVEL says, so that an error message is
    the one line a user sees. An import error is still raised."""
    if "keras" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with _stderr_silenced():
        import keras  # noqa: F401
