"""The one generation pipeline: a checkpoint's model, objective, VAE, text encoder and null condition, loaded once,
turning (conditions, seeds, sampler settings) into uint8 images. Serve, `ditscale sample` and FID evaluation all
call it, so an image depends only on its inputs, never on which of them asked (the diffusers `Pipeline` idea).

Seeding rule (one per image, whatever the batch): image i with seed s_i starts from x_T = randn(shape) drawn on the
CPU from `torch.Generator().manual_seed(s_i)` (so CPU and GPU runs start from the same noise), and a stochastic
sampler (ddpm, ddim with eta > 0, sde ...) draws its per-step noise from a second generator seeded with
`sampler_seed(s_i)`, an independent stream derived from s_i: the first injected noise never repeats x_T.
Callers choose the per-image seeds: the service and `ditscale sample` use `seed + i`, evaluation
`eval_seed * 1_000_003 + i` (jobs/evaluation).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ditcore.checkpoint import load_checkpoint
from ditcore.config import from_dict
from ditcore.guidance_distill import GUIDANCE_KEY, is_distilled
from ditcore.objectives import ObjectiveConfig, sampling_fn
from ditcore.samplers import sample
from pipelines.infra import storage
from pipelines.latents.manifest import Manifest

# Seeds every entry point accepts (sample, the HTTP service, the pyfunc): image i of a request uses seed + i.
MAX_SEED = 2**32 - 1

# splitmix64 increment: maps a seed to a far-away seed, so the sampler's noise stream is not the x_T stream.
_SAMPLER_STREAM = 0x9E3779B97F4A7C15


def sampler_seed(seed: int) -> int:
    """Seed of image `seed`'s stochastic-sampler stream: derived from it, independent of its initial noise."""
    z = (int(seed) + _SAMPLER_STREAM) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF


def initial_noise(seeds: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    """x_T [len(seeds), *shape]: row i is randn(shape) from a CPU generator seeded with seeds[i]."""
    rows = [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(rows)  # [B,*shape]


@functools.lru_cache(maxsize=4)
def cached_vae(path: str, device: str = "cpu", revision: str | None = None, subfolder: str | None = None) -> Any:
    """A data set's VAE (safetensors only), loaded once per process: inference never changes it, and evaluating
    many checkpoints of one data set must not reload it each time."""
    from pipelines.encoders.vae import load_vae

    return load_vae(path, device=device, revision=revision, subfolder=subfolder, require_safetensors=True)


# The guidance scale `ditscale sample`, the HTTP service and the MLflow model use when a request gives none.
DEFAULT_GUIDANCE = 4.0


@dataclass
class SamplerSettings:
    """How to integrate: sampler name, steps, classifier-free guidance scale and the sampler's options."""

    sampler: str = "dpmpp-2m"
    steps: int = 20
    guidance: float = 1.0
    time_grid: str = "default"
    guidance_interval: tuple[float, float] | None = None
    eta: float = 0.0
    steer: dict | None = None  # {"concept", "alpha", "layer"?}: concept steering (ditcore/steering.py)


class GenerationError(ValueError):
    """The request does not fit the loaded model (prompt for a class model, label out of range, ...)."""


NEEDS_LEARNED_VARIANCE = "sampler 'ddpm-learned' needs a checkpoint trained with objective.learn_sigma=true"


def sampler_problem(checkpoint_uri: str, config: dict, sampler: str, guidance: float) -> str | None:
    """Why the checkpoint at `checkpoint_uri`, whose config.json is `config`, cannot run `sampler` at `guidance`, or
    None: what `GenerationPipeline.check_sampler` refuses, found without loading the weights (for commands that
    check before starting sampling tasks)."""
    if sampler == "ddpm-learned" and not (config.get("objective") or {}).get("learn_sigma"):
        return NEEDS_LEARNED_VARIANCE
    if sampler == "dpmsolver-v3":
        from pipelines.checkpoint_extras import missing_ems

        return missing_ems(checkpoint_uri, guidance)
    return None


class GenerationPipeline:
    """A loaded checkpoint with everything needed to draw images from it; build with `from_checkpoint`."""

    def __init__(
        self,
        checkpoint_uri: str,
        *,
        device: str | torch.device | None = None,
        use_ema: bool = True,
        text_encoder: bool = True,
        dtype: str = "auto",
        compile: bool = False,
        drop_text: Sequence[str] = (),
    ) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # dtype "auto": bf16 autocast of the model on CUDA (TF32 matmuls for what stays fp32), fp32 elsewhere.
        if dtype not in ("auto", "fp32", "bf16"):
            raise GenerationError(f"dtype must be 'auto', 'fp32' or 'bf16', got {dtype!r}")
        self.bf16 = dtype == "bf16" or (dtype == "auto" and self.device.type == "cuda")
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.checkpoint_uri = str(checkpoint_uri)
        with storage.local_copy_scope(self.checkpoint_uri) as local:  # a download is removed once loaded
            ckpt = load_checkpoint(local, use_ema=use_ema, device=str(self.device))
        self.model = ckpt.model.to(self.device).eval()
        self.config: dict = ckpt.config
        self.state: dict = ckpt.state or {}
        try:
            self.objective = from_dict(ObjectiveConfig, self.config.get("objective") or {}, where="objective")
        except ValueError as exc:
            raise GenerationError(f"{self.checkpoint_uri}/config.json: {exc}") from exc
        # The one place a checkpoint's model + objective become the denoiser the samplers integrate (EDM
        # preconditioning, learn_sigma channels, the prediction type): ditcore.objectives.sampling_fn.
        net = torch.compile(self.model) if compile else self.model  # compile: serving's optional torch.compile
        self.model_fn, self.prediction = sampling_fn(net, self.objective)
        # sampler "ddpm-learned" integrates the learned variance: all 2C channels of a learn_sigma model.
        self.variance_fn = (
            sampling_fn(net, self.objective, keep_variance=True)[0] if self.objective.learn_sigma else None
        )
        # Steering hooks a block of the eager model; a compiled graph never looks at hooks added after it was
        # traced (dynamo skips nn.Module hook guards), so a steered request would come back unsteered. Steered
        # requests run these eager functions.
        self._eager_fns = (self.model_fn, self.variance_fn)
        if compile:
            self._eager_fns = (
                sampling_fn(self.model, self.objective)[0],
                sampling_fn(self.model, self.objective, keep_variance=True)[0] if self.objective.learn_sigma else None,
            )
        # A guidance-distilled student takes w as an input: one model call per step, no unconditional half.
        self.distilled = is_distilled(self.model)
        mc = self.model.config
        self.latent_shape = (int(self.model.in_channels), int(mc.input_size), int(mc.input_size))
        self.conditioning = "text" if "text_emb" in tuple(self.model.cond_keys) else "class"
        self.num_classes = int(mc.num_classes) if self.conditioning == "class" else None
        data = self.config.get("data") or {}
        self.manifest_uri: str | None = data.get("manifest")
        self.manifest: Manifest | None = Manifest.read(self.manifest_uri) if self.manifest_uri else None
        self.pixel_space = self._is_pixel_space(data)
        self.vae = None if self.pixel_space else self._load_vae(data)
        self.image_size = self.latent_shape[1] if self.pixel_space else self._image_size()
        self.text_encoder = None
        self.null_text: dict[str, torch.Tensor] | None = None
        self._text_cache: dict[str, dict[str, torch.Tensor]] = {}
        if self.conditioning == "text":
            self._load_null_text()  # guidance needs it even where prompts come pre-embedded (evaluation)
            if text_encoder:
                self._load_text(tuple(drop_text))

    @classmethod
    def from_checkpoint(cls, uri: str, **kwargs: Any) -> "GenerationPipeline":
        """Load a checkpoint directory (local or s3://) and the encoders its data set names."""
        return cls(uri, **kwargs)

    # ---- loading --------------------------------------------------------------------------------------

    def data_uri(self, what: str) -> str:
        """The checkpoint's data set (config.json data.manifest); GenerationError naming `what` needs it when the
        checkpoint records none."""
        if not self.manifest_uri:
            raise GenerationError(
                f"{self.checkpoint_uri}: records no data set (config.json data.manifest); {what} needs its latents"
            )
        return self.manifest_uri

    def _is_pixel_space(self, data: dict) -> bool:
        if data.get("space") is not None:
            return data["space"] == "pixel"
        if self.manifest is not None:  # a pixel-space data set (precompute `vae: null`): no VAE, image channels
            v = self.manifest.vae
            return not v.path and v.downsample == 1 and v.latent_channels in (1, 3)
        return self.latent_shape[0] in (1, 3)

    def _load_vae(self, data: dict) -> Any:
        if self.manifest is None or not self.manifest.vae.path:
            raise GenerationError(
                f"{self.checkpoint_uri}: a latent model ({self.latent_shape[0]} channels) but its "
                f"data manifest ({self.manifest_uri or 'none in config.json data.manifest'}) names "
                "no VAE to decode latents"
            )
        rec = self.manifest.vae
        self.scaling_factor = float(data.get("scaling_factor", rec.scaling_factor))
        self.shift_factor = float(data.get("shift_factor", rec.shift_factor) or 0.0)
        return cached_vae(rec.path, str(self.device), rec.revision, rec.subfolder)

    def _image_size(self) -> int:
        assert self.manifest is not None
        return int(self.manifest.image_size or self.latent_shape[1] * self.manifest.vae.downsample)

    def _load_text(self, drop: tuple[str, ...] = ()) -> None:
        from pipelines.encoders.text import TextEncoderError, load_text_encoder, load_text_encoders

        if self.manifest is None or self.manifest.text is None:
            raise GenerationError(
                f"{self.checkpoint_uri}: a text-conditioned model but its data manifest has no text encoder record"
            )
        rec = self.manifest.text
        if rec.encoders:  # several encoders joined; `drop` ones are not loaded, their part is their null slice
            try:
                self.text_encoder = load_text_encoders(
                    [
                        {
                            k: r[k]
                            for k in (
                                "name",
                                "encoder",
                                "max_length",
                                "subfolder",
                                "tokenizer_subfolder",
                                "revision",
                                "join",
                                "pooled",
                            )
                        }
                        for r in rec.layouts()
                    ],
                    drop=drop,
                    layout=rec.layouts(),
                    null=self.null_text,
                    device=self.device,
                    require_safetensors=True,
                )
            except TextEncoderError as exc:
                raise GenerationError(str(exc)) from exc
            return
        if drop:
            raise GenerationError(f"drop_text: {list(drop)}: the data set has one text encoder, nothing to drop")
        spec = {
            "encoder": rec.encoder,
            "max_length": rec.max_length,
            "subfolder": rec.subfolder,
            "revision": rec.revision,
        }
        # Default (auto) dtype, as in precompute, so prompts embed the way the training captions did.
        self.text_encoder = load_text_encoder(spec, device=self.device, require_safetensors=True)

    def _load_null_text(self) -> None:
        from pipelines.latents.reader import load_null_text

        null = load_null_text(self.manifest_uri) if self.manifest_uri else None
        self.null_text = {k: v.float() if v.is_floating_point() else v for k, v in null.items()} if null else None

    # ---- conditions -----------------------------------------------------------------------------------

    def label_conditions(self, labels: Sequence[int]) -> tuple[dict, dict]:
        """(cond, uncond) for class labels; uncond is the null class (index num_classes)."""
        if self.conditioning != "class":
            raise GenerationError("label: this model is text-conditioned; give prompts instead")
        bad = [y for y in labels if not 0 <= int(y) < int(self.num_classes)]
        if bad:
            raise GenerationError(f"label: {bad[0]} is out of range [0, {self.num_classes})")
        y = torch.tensor([int(v) for v in labels], dtype=torch.long)
        return {"y": y}, {"y": torch.full_like(y, int(self.num_classes))}

    def encode_prompt(self, prompt: str) -> dict[str, torch.Tensor]:
        """Text embedding of one prompt, encoded alone (never depends on batch padding), cached."""
        if self.text_encoder is None:
            raise GenerationError("prompt: this model is class-conditioned (or loaded without its text encoder)")
        hit = self._text_cache.get(prompt)
        if hit is None:
            too_long = self.text_encoder.length_error(prompt)
            if too_long:
                # The model was trained on max_length tokens; a silently truncated prompt would draw something else.
                raise GenerationError(f"prompt: {too_long}; shorten it")
            with torch.inference_mode():
                out = self.text_encoder.encode([prompt])
            hit = {k: torch.as_tensor(np.asarray(v))[0] for k, v in out.items()}
            hit = {k: v.float() if v.is_floating_point() else v for k, v in hit.items()}
            if len(self._text_cache) > 1024:  # bounded: prompts are user input
                self._text_cache.clear()
            self._text_cache[prompt] = hit
        return hit

    def prompt_conditions(
        self, prompts: Sequence[str], negative_prompts: Sequence[str | None] | None = None
    ) -> tuple[dict, dict]:
        """(cond, uncond) for prompts; uncond is each negative prompt, else the data set's null embedding."""
        conds = [self.encode_prompt(p) for p in prompts]
        null = self.null_text if self.null_text is not None else self.encode_prompt("")
        negs = list(negative_prompts) if negative_prompts is not None else [None] * len(prompts)
        unconds = [self.encode_prompt(n) if n else null for n in negs]

        def stack(items: list[dict]) -> dict:
            return {k: torch.stack([it[k] for it in items]) for k in ("text_emb", "text_mask", "text_pooled")}

        return stack(conds), stack(unconds)

    def null_conditions(self, batch: int) -> dict[str, torch.Tensor]:
        """The unconditional input for `batch` images (null class or empty-prompt embedding)."""
        if self.conditioning == "class":
            return {"y": torch.full((batch,), int(self.num_classes), dtype=torch.long)}
        null = self.null_text if self.null_text is not None else self.encode_prompt("")
        return {k: v.unsqueeze(0).expand(batch, *v.shape) for k, v in null.items()}

    # ---- generation -----------------------------------------------------------------------------------

    @torch.inference_mode()
    def latents(
        self,
        cond: dict[str, torch.Tensor],
        seeds: Sequence[int],
        settings: SamplerSettings,
        uncond: dict[str, torch.Tensor] | None = None,  # None: the null condition, when settings guide
    ) -> torch.Tensor:
        """Model-space samples [B,C,h,w] for per-image `cond` rows and `seeds` (see the module's seeding rule)."""
        n = len(seeds)
        if any(v.shape[0] != n for v in cond.values()):
            raise GenerationError(f"conditions hold {[tuple(v.shape) for v in cond.values()]} rows for {n} seeds")
        self.check_sampler(settings.sampler, settings.guidance)
        noise = initial_noise(seeds, self.latent_shape).to(self.device)  # [B,C,h,w]
        generators = [torch.Generator(device=self.device).manual_seed(sampler_seed(s)) for s in seeds]
        guided = settings.guidance != 1.0 and not self.distilled
        if self.distilled and settings.guidance_interval is not None:
            raise GenerationError(
                f"guidance_interval: {list(settings.guidance_interval)} cannot apply to a guidance-distilled "
                "checkpoint: it takes the guidance scale as an input at every step, with no unguided half to fall "
                "back on; leave guidance_interval out"
            )
        if guided and uncond is None:
            uncond = self.null_conditions(n)
        if self.distilled:
            cond = {**cond, GUIDANCE_KEY: torch.full((n,), float(settings.guidance))}
        to_dev = lambda c: {k: v.to(self.device) for k, v in c.items()}  # noqa: E731
        ems = self._ems(settings.guidance) if settings.sampler == "dpmsolver-v3" else None
        with self._steering(settings.steer):
            return self._sample(noise, settings, to_dev(cond), to_dev(uncond) if guided else None, generators, ems)

    def _sample(self, noise, settings: SamplerSettings, cond, uncond, generators, ems) -> torch.Tensor:
        guided = uncond is not None
        # bf16 autocast covers the model calls; the solver's state and arithmetic stay fp32.
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            x0 = self._solve(noise, settings, cond, uncond, generators, ems, guided)
        return x0.float()

    def check_sampler(self, sampler: str, guidance: float) -> None:
        """Raise GenerationError when this checkpoint cannot run `sampler` (at `guidance`), before any sampling: the
        checks of `sampler_problem`, and the dpmsolver-v3 statistics loaded (once per file) so a corrupt file is
        named too."""
        if sampler == "ddpm-learned" and self.variance_fn is None:
            raise GenerationError(NEEDS_LEARNED_VARIANCE)
        if sampler == "dpmsolver-v3":
            self._ems(guidance)

    def _solve(self, noise, settings: SamplerSettings, cond, uncond, generators, ems, guided: bool) -> torch.Tensor:
        model_fn, variance_fn = self._eager_fns if settings.steer else (self.model_fn, self.variance_fn)
        return sample(
            variance_fn if settings.sampler == "ddpm-learned" else model_fn,
            noise,
            process=self.objective.process,
            prediction=self.prediction,
            sampler=settings.sampler,
            steps=settings.steps,
            time_grid=settings.time_grid,
            cond=cond,
            uncond=uncond,
            guidance=settings.guidance if guided else 1.0,
            guidance_interval=settings.guidance_interval,
            generators=generators,
            eta=settings.eta,
            ems=ems,
        )

    def _ems(self, guidance: float):
        """DPM-Solver-v3 statistics stored beside the checkpoint (`ditscale ems`), loaded once per guidance."""
        from pipelines.checkpoint_extras import ems_name, load_ems

        # Keyed by the file, not the float: guidances 4.0, 4.000001, ... read the same statistics, and a server must
        # not hold one copy per distinct value a client sends (the cache holds at most one per file on disk).
        cache, key = self.__dict__.setdefault("_ems_cache", {}), ems_name(guidance)
        if key not in cache:
            try:
                cache[key] = load_ems(self.checkpoint_uri, guidance, self.latent_shape)
            except FileNotFoundError as exc:  # a request for statistics nobody computed: say how to make them
                raise GenerationError(str(exc)) from exc
            # a damaged or misfitting file (StoredFileError) passes on: the deployment's fault, not the request's
        return cache[key]

    def concepts(self) -> tuple[dict[str, torch.Tensor], int] | None:
        """(concept directions, their block) stored beside the checkpoint (`ditscale concepts`), or None."""
        if self.__dict__.get("_concepts") is None:  # none yet is asked again: `ditscale concepts` may write them
            from pipelines.checkpoint_extras import load_concepts

            self._concepts = load_concepts(self.checkpoint_uri)  # a damaged file: StoredFileError
        return self._concepts

    def _steering(self, steer: dict | None):
        """Context that adds alpha * v[concept] to a block's hidden state (a no-op without `steer`)."""
        import contextlib

        from ditcore.steering import MAX_ALPHA, Steer, steering, transformer_blocks

        if not steer:
            return contextlib.nullcontext()
        try:
            st = steer if isinstance(steer, Steer) else Steer.from_dict(dict(steer))
        except (TypeError, ValueError) as exc:
            raise GenerationError(f"steer: {exc}") from exc
        found = self.concepts()
        if found is None:
            raise GenerationError(f"steer: {self.checkpoint_uri} has no concept directions; run `ditscale concepts`")
        directions, layer = found
        if st.concept not in directions:
            raise GenerationError(
                f"steer.concept: unknown concept {st.concept!r}; known: {', '.join(sorted(directions))}"
            )
        if not abs(st.alpha) <= MAX_ALPHA:
            raise GenerationError(f"steer.alpha: {st.alpha} is outside [-{MAX_ALPHA:g}, {MAX_ALPHA:g}]")
        n_blocks = len(transformer_blocks(self.model))
        if st.layer is not None and not 0 <= st.layer < n_blocks:
            raise GenerationError(f"steer.layer: {st.layer} is out of range [0, {n_blocks})")
        from pipelines.checkpoint_extras import CONCEPTS_FILE, StoredFileError

        # directions of another model: the deployment's fault (StoredFileError), not the request's
        stored = f"{CONCEPTS_FILE} beside {self.checkpoint_uri}"
        if st.layer is None and not 0 <= layer < n_blocks:
            raise StoredFileError(f"{stored}: its layer {layer} is out of range [0, {n_blocks}) for this model")
        width, direction = int(self.model.config.hidden_size), directions[st.concept]
        if tuple(direction.shape) != (width,):
            raise StoredFileError(
                f"{stored}: concept {st.concept!r} has shape {list(direction.shape)}, this model's width is {width}; "
                "run `ditscale concepts` again for this checkpoint"
            )
        return steering(self.model, directions[st.concept], st.alpha, layer if st.layer is None else st.layer)

    @torch.inference_mode()
    def decode(self, x0: torch.Tensor) -> np.ndarray:
        """Model-space samples [B,C,h,w] -> uint8 images [B,H,W,3]."""
        if self.vae is None:
            img = ((x0.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # [B,C,H,W] pixels in [-1,1]
            if img.shape[1] == 1:
                img = img.expand(-1, 3, -1, -1)  # grayscale -> RGB
            return img.permute(0, 2, 3, 1).cpu().numpy()  # [B,H,W,3]
        from pipelines.encoders.vae import decode_to_images

        return np.asarray(decode_to_images(self.vae, x0, self.scaling_factor, self.shift_factor))

    def generate(
        self,
        cond: dict[str, torch.Tensor],
        seeds: Sequence[int],
        settings: SamplerSettings,
        uncond: dict[str, torch.Tensor] | None = None,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """uint8 images [B,H,W,3] for per-image conditions and seeds, sampled `batch_size` at a time."""
        seeds = [int(s) for s in seeds]
        step = batch_size or max(1, len(seeds))
        out = []
        for start in range(0, len(seeds), step):
            sl = slice(start, start + step)
            c = {k: v[sl] for k, v in cond.items()}
            u = {k: v[sl] for k, v in uncond.items()} if uncond is not None else None
            out.append(self.decode(self.latents(c, seeds[sl], settings, u)))
        return np.concatenate(out) if out else np.zeros((0, self.image_size, self.image_size, 3), np.uint8)

    def generate_labels(
        self, labels: Sequence[int], seeds: Sequence[int], settings: SamplerSettings, batch_size: int | None = None
    ) -> np.ndarray:
        """Images for class labels (one per seed), sampled `batch_size` at a time (all at once by default)."""
        cond, uncond = self.label_conditions(labels)
        return self.generate(cond, seeds, settings, uncond, batch_size)

    def generate_prompts(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        settings: SamplerSettings,
        negative_prompts: Sequence[str | None] | None = None,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Images for text prompts (one per seed), sampled `batch_size` at a time (all at once by default)."""
        cond, uncond = self.prompt_conditions(prompts, negative_prompts)
        return self.generate(cond, seeds, settings, uncond, batch_size)


def image_grid(images: np.ndarray, cols: int | None = None) -> np.ndarray:
    """[B,H,W,3] uint8 -> one [rows*H, cols*W, 3] image (cols = ceil(sqrt(B)) by default)."""
    b, h, w, c = images.shape
    cols = cols or math.ceil(math.sqrt(b))
    rows = math.ceil(b / cols)
    grid = np.zeros((rows * h, cols * w, c), dtype=np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, cols)
        grid[r * h : (r + 1) * h, col * w : (col + 1) * w] = img
    return grid
