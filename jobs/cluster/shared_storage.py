"""Storage that every node of the Ray cluster can reach: a local `checkpoint.storage` or sweep `output` works on one
node, but on a multi-node cluster the workers, restore after a failure and the evaluation actors run on other nodes
and would each see their own disk. Such a path is refused there unless the user states it is a shared filesystem
(`run.shared_filesystem=true`: an NFS / FSx / GCS-fuse mount at the same path on every node)."""

from __future__ import annotations

from ditcore.config import ConfigError
from pipelines.infra import storage


def alive_nodes() -> int:
    """Alive nodes of the Ray cluster this process is connected to (Ray must be initialised)."""
    import ray

    return sum(1 for n in ray.nodes() if n.get("Alive"))


def autoscales() -> bool:
    """Whether the connected cluster has an autoscaler config with node groups: it may add nodes after any check
    of the nodes alive now."""
    from pipelines.infra.ray_runtime import autoscaler_max_resources

    return bool(autoscaler_max_resources())


def check_shared_storage(
    path: str, *, key: str, override: str, shared_filesystem: bool, readers: str = "workers, restore and evaluation"
) -> None:
    """ConfigError when `path` (config key `key`) is local and the cluster has more than one node, or may add
    nodes (an autoscaling cluster that has only its head now: the trials would run on nodes added later), unless
    the `override` switch (`shared_filesystem`) says the path is mounted on every node. s3:// paths always pass.
    `override` is a config key (`set KEY=true`) or a command-line flag starting with `--` (`pass --FLAG`);
    `readers` names what runs on the other nodes."""
    if storage.is_s3(path) or shared_filesystem:
        return
    n = alive_nodes()
    if n > 1 or autoscales():
        nodes = f"has {n} nodes" if n > 1 else "autoscales (it adds nodes for the work)"
        switch = f"pass {override}" if override.startswith("--") else f"set {override}=true"
        raise ConfigError(
            f"{key}={path!r} is a local path but the Ray cluster {nodes}: {readers} "
            f"on other nodes would not see it. Use an s3:// location, or {switch} if {path!r} is a "
            "shared filesystem mounted at the same path on every node"
        )


def check_run_storage(cfg) -> None:
    """The training run's checkpoint.storage against the cluster (connecting to it, or starting a local Ray)."""
    from pipelines.infra.ray_runtime import init_ray

    init_ray()
    check_shared_storage(
        cfg.checkpoint.storage,
        key="checkpoint.storage",
        override="run.shared_filesystem",
        shared_filesystem=cfg.run.shared_filesystem,
    )
