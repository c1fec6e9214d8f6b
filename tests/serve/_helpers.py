"""Shared set-up of the Serve tests."""

from __future__ import annotations

from tests.conftest import free_port


def class_checkpoint(root) -> str:
    """A latent class-conditional DiT (10 classes, perturbed so images depend on seed and label) saved under
    root/ckpt beside a 16-row data set that names its tiny VAE; returns the checkpoint path."""
    from tests.jobs._train_helpers import make_eval_dataset, perturbed_model, save_model_checkpoint

    data, _ = make_eval_dataset(root, fid=False, n=16, num_classes=10)
    model = perturbed_model("DiT-T/2", num_classes=10, input_size=8)
    data_cfg = {"manifest": data, "scaling_factor": 0.5, "shift_factor": 0.0}
    return save_model_checkpoint(root / "ckpt", model, data_cfg, state={"step": 1})


def serve_checkpoint(ckpt: str, name: str):
    """Generator for a module-scoped fixture: the app of checkpoint `ckpt` deployed as `name` at / on a fresh local
    2-CPU Ray (one sampler replica on half a CPU, an ingress without auth); yields its base URL, then shuts Serve and
    Ray down."""
    import ray
    from ray import serve

    from serve.app import make_app

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(
            make_app(
                {"checkpoint": ckpt},
                {
                    "Sampler": {"ray_actor_options": {"num_cpus": 0.5}},
                    "Ingress": {"ray_actor_options": {"num_cpus": 0}, "user_config": {"auth_token_env": None}},
                },
            ),
            name=name,
            route_prefix="/",
        )
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()
