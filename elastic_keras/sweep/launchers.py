"""Launchers of a sweep: `local` (one run after another in this process) and `ray`
(each run a Ray task holding a share of a GPU, on this machine or a cluster).

Whatever launches it, a run directory is trained by one worker at a time (its lock,
rundir.py); a failing run fails alone and its one-line message is gathered.
"""

import os
import platform
import time

from elastic_keras.errors import ElasticKerasError
from elastic_keras.runs.names import run_dir_for
from elastic_keras.runs.rundir import RunBusy, RunDir

LAUNCHERS = ("local", "ray")


def train_one(cfg, runs_root, allow_cpu, log, wait):
    """Train one config; returns ("finished" | "done before" | "busy" | "failed", message)."""
    from elastic_keras.files import os_error_line
    from elastic_keras.runs.train import train

    # Everything that reads the run's files is inside: a corrupt file fails this run alone
    # (FIDELITY.md R11).
    try:
        run = RunDir(run_dir_for(cfg, runs_root))
        was_finished = run.exists and run.finished
        train(cfg, runs_root=runs_root, log=log, allow_cpu=allow_cpu, wait=wait)
    except RunBusy as e:
        return "busy", str(e)
    except ElasticKerasError as e:
        return "failed", str(e)
    except OSError as e:
        return "failed", os_error_line(e)
    return ("done before" if was_finished else "finished"), ""


def local_launcher(configs, runs_root="runs", allow_cpu=False, log=print):
    """Every run, one after another in this process. A run another worker holds is left
    for later, then waited for (it may have died: its successor here takes it over).
    Returns [(name, message)] of the failed runs."""
    from elastic_keras.training.progress import SweepClock

    clock, failures = SweepClock(len(configs), log=log), []
    pending = list(enumerate(configs, 1))
    for wait in (False, True):
        later = []
        for index, cfg in pending:
            clock.started(cfg["name"], index)
            start = time.time()
            outcome, message = train_one(cfg, runs_root, allow_cpu, log, wait)
            if outcome == "busy":
                log(f"=== {cfg['name']} is being trained by another worker ({message}); later")
                later.append((index, cfg))
                continue
            if outcome == "failed":
                failures.append((cfg["name"], message))
            clock.ended_run(cfg["name"], time.time() - start, outcome,
                            trained=outcome == "finished")
        pending = later
    return failures


def seed_groups(configs):
    """[[the seeds of one config], ...] in order of first appearance (names: runs.names)."""
    from elastic_keras.runs.names import split_seed

    groups: dict[str, list] = {}
    for cfg in configs:
        groups.setdefault(split_seed(cfg["name"])[0], []).append(cfg)
    return list(groups.values())


def together_launcher(configs, runs_root="runs", allow_cpu=False, log=print):
    """JAX: the seeds of each config trained together in one program (FIDELITY.md B9); a
    config of one seed, or with multi-way backpropagation, goes to the local launcher.
    Returns [(names, message)] of the failures."""
    from elastic_keras.runs.together import train_seeds_together

    failures = []
    for group in seed_groups(configs):
        if len(group) == 1 or group[0]["train"]["backprop"] != "joint":
            failures += local_launcher(group, runs_root, allow_cpu, log)
            continue
        names = ", ".join(c["name"] for c in group)
        log(f"=== {names}: {len(group)} seeds together in one program")
        try:
            train_seeds_together(group, runs_root=runs_root, log=log, allow_cpu=allow_cpu)
        except RunBusy as e:  # another worker holds one of them: one by one, waiting
            log(f"=== {e}; training these seeds one by one")
            failures += local_launcher(group, runs_root, allow_cpu, log)
        except ElasticKerasError as e:
            failures.append((names, str(e)))
    return failures


def make_launcher(name="local", gpus_per_run=None, cpus_per_run=1.0, profile="paper",
                  allow_cpu=False, together=None):
    """The launcher called by `reproduce`: fn(configs, runs_root, allow_cpu, log) -> failures.
    `together`: under JAX, the local launcher trains the seeds of a config in one program
    (None: where JAX sees an accelerator; on XLA's CPU backend it is slower: B9)."""
    if name not in LAUNCHERS:
        raise ElasticKerasError(f"unknown launcher {name!r}; valid: {', '.join(LAUNCHERS)}")
    if gpus_per_run is not None and (gpus_per_run <= 0 or gpus_per_run > 1 and gpus_per_run % 1):
        raise ElasticKerasError(f"--gpus-per-run must be a share in (0, 1] or a whole number, "
                                f"got {gpus_per_run}")
    if name == "local":
        if gpus_per_run is not None:
            raise ElasticKerasError("--gpus-per-run applies to --launcher ray")

        def local(configs, runs_root="runs", allow_cpu=False, log=print):
            from elastic_keras.backend.environment import (
                accelerators, backend, check_accelerator, import_keras_quietly)

            import_keras_quietly()  # the runs train here (FIDELITY.md R13)
            check_accelerator(profile, allow_cpu)  # once, before any run
            if backend() == "jax" and (bool(accelerators()) if together is None else together):
                return together_launcher(configs, runs_root, allow_cpu, log)
            return local_launcher(configs, runs_root, allow_cpu, log)
        return local

    def ray(configs, runs_root="runs", allow_cpu=False, log=print):
        return ray_launcher(configs, runs_root, allow_cpu, log, gpus_per_run, cpus_per_run,
                            profile)
    return ray


# The `ray` launcher: each unfinished run is a Ray task holding a share of a GPU or CPUs.
# `ray.init()` starts a local Ray, or joins the cluster RAY_ADDRESS names; the workers of a
# cluster must share the runs folder (one lock per run directory: rundir.py).

def _train_task(cfg, runs_root, allow_cpu, gpu_share):
    """One run in a fresh Ray worker process (max_calls=1): its GPU memory share first."""
    if gpu_share:
        from elastic_keras.backend.environment import share_gpu_memory

        share_gpu_memory(min(gpu_share, 1.0))
    from elastic_keras.backend.environment import import_keras_quietly

    import_keras_quietly()
    print(f"=== {cfg['name']} started on {platform.node()}", flush=True)
    start = time.time()
    outcome, message = train_one(cfg, runs_root, allow_cpu, print, wait=True)
    return cfg["name"], outcome, message, time.time() - start


def ray_launcher(configs, runs_root, allow_cpu, log, gpus_per_run=None, cpus_per_run=1.0,
                 profile="paper"):
    """Run every config as a Ray task; returns [(name, message)] of the failed runs."""
    try:
        import ray
    except ImportError:
        raise ElasticKerasError("--launcher ray needs Ray: pip install 'elastic-keras[ray]' "
                                "(make: `make install-ray`)") from None
    env = {k: os.environ[k] for k in ("KERAS_BACKEND", "TF_CPP_MIN_LOG_LEVEL") if k in os.environ}
    ray.init(address=os.environ.get("RAY_ADDRESS") or None, include_dashboard=False,
             log_to_driver=True, runtime_env={"env_vars": env}, ignore_reinit_error=True)
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        share = gpus_per_run if gpus_per_run is not None else (1.0 if gpus else 0.0)
        if share and not gpus:
            raise ElasticKerasError("--gpus-per-run asks for GPUs and the Ray cluster has none")
        if profile == "paper" and not gpus and not allow_cpu:
            raise ElasticKerasError("the paper profile needs GPUs and the Ray cluster has none; "
                                    "pass --allow-cpu to run anyway")
        task = ray.remote(num_gpus=share, num_cpus=cpus_per_run, max_calls=1)(_train_task)
        slots = int(min(ray.cluster_resources().get("CPU", 1) / cpus_per_run,
                        gpus / share if share else float("inf"))) or 1
        log(f"=== ray: {len(configs)} runs as tasks of {share or 0:g} GPU and "
            f"{cpus_per_run:g} CPU, {slots} at a time on {ray.cluster_resources()}")
        from elastic_keras.training.progress import SweepClock

        clock = SweepClock(len(configs), parallel=slots, log=log)
        names = {task.remote(cfg, os.path.abspath(runs_root), allow_cpu, share): cfg["name"]
                 for cfg in configs}
        pending, failures, started = list(names), [], time.time()
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                name, outcome, message, seconds = ray.get(done[0])
            except ray.exceptions.RayError as e:  # the worker itself died (memory, signal)
                name, outcome, seconds = names[done[0]], "failed", time.time() - started
                message = f"the Ray task failed: {str(e).strip().splitlines()[-1]}"
            if outcome == "failed":
                failures.append((name, message))
            clock.ended_run(name, seconds, outcome, trained=outcome == "finished")
        return failures
    finally:
        ray.shutdown()
