"""``FlashDiTPipeline``: class-conditional sampling from a FlashDiT transformer, in latent space through
a diffusers ``AutoencoderKL`` or directly in pixel space, at any resolution the model's grid allows."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    ImagePipelineOutput,
)
from diffusers.image_processor import VaeImageProcessor
from diffusers.loaders.lora_pipeline import SanaLoraLoaderMixin  # diffusers' loader for a transformer-only pipeline
from diffusers.utils import constants as diffusers_constants
from filelock import FileLock
from huggingface_hub import hf_hub_download

from . import flow, official, schedulers
from .errors import ConversionError, UserError
from .models.transformer import FlashDiTTransformer2DModel
from .outputs import save_dir_atomically
from .settings import NOT_GIVEN, SamplingSettings
from .utils import DTYPES, default_device

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
MAX_SIDE = 16384  # pixels per side: larger requests fail fast instead of trying to allocate the noise


def check_side(name: str, value) -> None:
    """``height``/``width`` must be a positive int no larger than ``MAX_SIDE`` (None: the default size)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}={value} must be a positive integer number of pixels")
    if value > MAX_SIDE:
        raise ValueError(f"{name}={value} is larger than the largest supported side, {MAX_SIDE} pixels")


def imagenet_id2label() -> dict[int, str]:
    """The 1000 ImageNet-1k class names (torchvision's spelling), id -> name."""
    text = resources.files("flashdit").joinpath("imagenet_classes.json").read_text()
    return {int(k): v for k, v in json.loads(text).items()}


# A saved pipeline carries this module so that plain diffusers can load it the way custom pipelines on the Hub
# load: ``DiffusionPipeline.from_pretrained(dir, trust_remote_code=True)``. It only imports the installed package.
REMOTE_CODE_MODULE = "pipeline_flashdit"
REMOTE_CODE = '''"""FlashDiTPipeline for ``DiffusionPipeline.from_pretrained(path, trust_remote_code=True)``.

The class is the installed FlashDiT package's (``pip install flashdit``); this file only imports it.
"""

from flashdit.pipeline import FlashDiTPipeline

__all__ = ["FlashDiTPipeline"]
'''
_DOWNLOAD_KWARGS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision", "variant")


def _carries_own_remote_code(folder: Path) -> bool:
    """Whether ``folder``'s custom-code module is exactly the one :meth:`FlashDiTPipeline.save_pretrained` writes
    (then loading it runs nothing but ``import flashdit``)."""
    module = folder / f"{REMOTE_CODE_MODULE}.py"
    return module.is_file() and module.read_text() == REMOTE_CODE


def _modules_cache_lock() -> FileLock:
    """An inter-process lock on diffusers' dynamic-modules cache. Loading a pipeline with a custom-code module
    copies that module into the cache (truncating the copy there first) and then imports the copy, so processes
    loading at once (``accelerate launch`` ranks) can import another's half-written file; holding this lock makes
    each copy-and-import whole."""
    cache = Path(diffusers_constants.HF_MODULES_CACHE)
    cache.mkdir(parents=True, exist_ok=True)
    return FileLock(cache / "flashdit.lock")


class FlashDiTPipeline(DiffusionPipeline, SanaLoraLoaderMixin):
    """Class-conditional image generation with a FlashDiT transformer.

    Args:
        transformer: the velocity model.
        scheduler: the sampler: a diffusers flow-matching scheduler (``FlowMatchEulerDiscreteScheduler``,
            ``FlowMatchHeunDiscreteScheduler``, or ``DPMSolverMultistepScheduler`` / ``UniPCMultistepScheduler`` with
            ``prediction_type="flow_prediction"`` and ``use_flow_sigmas=True``). The pipeline drives it through
            ``set_timesteps`` and ``step``; its time grid follows ``num_inference_steps`` and ``timestep_shift``.
            The ``"sde"`` sampler is the pipeline's own loop (:func:`flashdit.flow.sample`) and uses no scheduler.
        vae: a diffusers ``AutoencoderKL`` for latent models, or None for pixel-space models.
        id2label: class id -> name (``"name, synonym, ..."`` allowed); defaults to the ImageNet-1k names
            when the model has 1000 classes.
        latents_mean: per-channel mean of the training latents; with ``latents_std`` decoding uses
            ``z·std + mean`` (LightningDiT).
        latents_std: per-channel std of the training latents.
        scaling_factor: scalar latent scale instead (``z / scaling_factor``, SD-VAE's 0.18215); when
            neither is given, latents are decoded as they are.
        sampling: :class:`~flashdit.settings.SamplingSettings` values stored with the pipeline (a subset;
            the rest take the defaults). Without any, a call samples without guidance (scale 1.0).

    LoRA adapters on the transformer work as in diffusers' transformer-only pipelines: ``load_lora_weights``,
    ``set_adapters``, ``fuse_lora`` / ``unfuse_lora``, ``disable_lora`` / ``enable_lora``, ``unload_lora_weights`` and
    ``save_lora_weights`` (needs peft). The adapter targets are the transformer's own module names: ``qkv`` and
    ``proj`` in attention (one fused qkv projection: there is no ``to_q`` / ``to_k`` / ``to_v``), ``w12`` and ``w3``
    in the SwiGLU MLP.
    """

    model_cpu_offload_seq = "transformer->vae"
    _optional_components = ["vae"]
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        transformer: FlashDiTTransformer2DModel,
        scheduler: FlowMatchEulerDiscreteScheduler,
        vae: AutoencoderKL | None = None,
        id2label: dict | None = None,
        latents_mean: list[float] | None = None,
        latents_std: list[float] | None = None,
        scaling_factor: float | None = None,
        sampling: dict | None = None,
    ):
        super().__init__()
        if isinstance(scheduler, (FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler)):
            # carried in its config, so that DPMSolverMultistepScheduler / UniPCMultistepScheduler.from_config(
            # pipe.scheduler.config) integrate a flow too (the FlowMatch schedulers ignore these keys)
            missing = {k: v for k, v in schedulers.FLOW_CONFIG.items() if scheduler.config.get(k) != v}
            if missing:
                scheduler.register_to_config(**missing)
        self.register_modules(transformer=transformer, scheduler=scheduler, vae=vae)
        self._built_with = scheduler  # a scheduler assigned later is the sampler (resolve_sampler)
        num_classes = transformer.config.num_classes
        if id2label is None and num_classes == 1000:
            id2label = imagenet_id2label()
        id2label = {int(k): str(v) for k, v in (id2label or {}).items()}
        bad = sorted(k for k in id2label if not 0 <= k < num_classes)
        if bad:
            raise ValueError(f"id2label has ids {bad[:5]} outside the model's classes [0, {num_classes})")
        channels = transformer.config.in_channels
        for name, stat in (("latents_mean", latents_mean), ("latents_std", latents_std)):
            if stat is not None and len(stat) != channels:
                raise ValueError(f"{name} has {len(stat)} values; the transformer has {channels} channels")
        if (latents_mean is None) != (latents_std is None):
            raise ValueError("latents_mean and latents_std must be given together")
        if latents_mean is not None and scaling_factor is not None:
            raise ValueError("give either latents_mean/latents_std or scaling_factor, not both")
        if latents_std is not None and min(latents_std) <= 0:
            raise ValueError("latents_std must be positive")
        SamplingSettings.from_dict(sampling)  # validate now, not at the first call
        self.register_to_config(
            id2label={str(k): v for k, v in sorted(id2label.items())},
            latents_mean=list(map(float, latents_mean)) if latents_mean is not None else None,
            latents_std=list(map(float, latents_std)) if latents_std is not None else None,
            scaling_factor=scaling_factor,
            sampling=dict(sampling or {}),
        )
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    # ----------------------------------------------------------------------------------------
    # saving and loading: diffusers' own, plus the custom-pipeline module

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs):
        """diffusers' ``save_pretrained``, plus ``pipeline_flashdit.py`` so that
        ``DiffusionPipeline.from_pretrained(dir, trust_remote_code=True)`` finds the class (with push_to_hub too)."""
        Path(save_directory).mkdir(parents=True, exist_ok=True)
        (Path(save_directory) / f"{REMOTE_CODE_MODULE}.py").write_text(REMOTE_CODE)
        if self.scheduler is not self._built_with:  # a swapped scheduler is the pipeline's sampler from now on
            sampling = {**self.config.sampling, "sampler": schedulers.sampler_name(self.scheduler)}
            self.register_to_config(sampling=sampling)
            self._built_with = self.scheduler
        return super().save_pretrained(save_directory, *args, **kwargs)

    def to_json_string(self) -> str:
        data = json.loads(super().to_json_string())
        data["_class_name"] = [REMOTE_CODE_MODULE, type(self).__name__]  # diffusers' custom-pipeline convention
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs):
        """diffusers' ``from_pretrained``. A directory saved by this class needs no ``trust_remote_code``: its
        custom-pipeline module is checked to be exactly the one-line import this package writes; any other
        custom code still needs the caller's ``trust_remote_code=True``."""
        path = pretrained_model_name_or_path
        if "trust_remote_code" not in kwargs:
            if not Path(path).is_dir() and _HUB_ID.match(str(path)):  # fetch the files (nothing runs) to check them
                path = cls.download(
                    str(path), trust_remote_code=True, **{k: kwargs[k] for k in _DOWNLOAD_KWARGS if k in kwargs}
                )
            if Path(path).is_dir() and _carries_own_remote_code(Path(path)):
                kwargs["trust_remote_code"] = True
        with _modules_cache_lock(), schedulers.quiet_config_warnings():
            pipe = super().from_pretrained(path, **kwargs)
        check_weights_finite(pipe, str(pretrained_model_name_or_path))
        return pipe

    @classmethod
    def from_single_file(
        cls,
        pretrained_model_link_or_path: str | os.PathLike,
        kind: str | None = None,
        vae: AutoencoderKL | str | os.PathLike | None = None,
        latents_stats: str | os.PathLike | tuple[Sequence[float], Sequence[float]] | None = None,
        epochs: int | None = None,
        sample_size: int = 16,
        num_heads: int | None = None,
        window_size: int = 8,
        vae_config: dict | None = None,
        vae_ignore_prefixes: tuple[str, ...] = official.VAVAE_TRAINING_ONLY,
        torch_dtype: torch.dtype | None = None,
        **kwargs,
    ) -> FlashDiTPipeline:
        """A pipeline from one official ``.pt`` checkpoint, diffusers' ``from_single_file``: the FlashDiT release or
        LightningDiT (``kind``, else told from the keys), with the authors' sampling settings stored.

        Args:
            pretrained_model_link_or_path: a local file, ``https://huggingface.co/<repo>/blob/<revision>/<file>`` or
                ``<owner>/<repo>/<file>`` (downloaded with ``cache_dir``, ``token``, ``revision``,
                ``local_files_only`` from ``kwargs``).
            vae: an ``AutoencoderKL``, a diffusers AutoencoderKL directory, or a VA-VAE ``.pt`` (converted with
                ``vae_config`` and ``vae_ignore_prefixes``); None for a latent-only pipeline.
            latents_stats: ``latents_stats.pt`` or ``(mean, std)`` per latent channel.
            epochs: LightningDiT's release (64 or 800), when the checkpoint does not record it.
            sample_size, num_heads, window_size: the latent grid, heads for widths outside the size registry, and the
                FlashDiT window (8 in the official release).
        """
        path = _single_file(pretrained_model_link_or_path, kwargs)
        checkpoint = official.load_checkpoint(path)
        state = official.checkpoint_tensors(checkpoint, path)
        kind = kind or official.detect_kind(state)
        if kind is None:
            raise ConversionError(
                f"{path} is neither an official FlashDiT nor a LightningDiT checkpoint by its keys; pass kind="
                "'flashdit' or kind='lightningdit' to convert it as one"
            )
        transformer = official.convert_transformer(state, kind, sample_size, num_heads, window_size)
        key = (
            "flashdit"
            if kind == "flashdit"
            else f"lightningdit-{official.lightningdit_release(checkpoint, epochs, path)}"
        )
        del checkpoint, state  # a training checkpoint's optimizer state is twice the model
        if vae is not None and not isinstance(vae, AutoencoderKL):
            vae_path = Path(vae)
            if vae_path.is_dir():
                vae = AutoencoderKL.from_pretrained(vae_path)
            else:
                vae = official.convert_vae(official.load_state_dict(vae_path), vae_config, tuple(vae_ignore_prefixes))
        if latents_stats is not None and not isinstance(latents_stats, (tuple, list)):
            latents_stats = official.load_latent_stats(latents_stats)
        pipe = cls(
            transformer,
            FlowMatchEulerDiscreteScheduler(),
            vae=vae,
            id2label=imagenet_id2label() if transformer.config.num_classes == 1000 else None,
            latents_mean=list(latents_stats[0]) if latents_stats else None,
            latents_std=list(latents_stats[1]) if latents_stats else None,
            sampling=official.AUTHORS_SAMPLING[key],
        )
        return pipe.to(torch_dtype) if torch_dtype is not None else pipe

    def load_lora_weights(self, pretrained_model_name_or_path_or_dict, adapter_name: str | None = None, **kwargs):
        """Add a LoRA adapter to the transformer (needs peft): a directory, hub id or state dict in diffusers' pipeline
        format (keys ``transformer.*``, as :meth:`save_lora_weights` and diffusers' training scripts write them), or
        the transformer's own format (no prefix, as ``transformer.save_lora_adapter`` writes it)."""
        kwargs.setdefault("use_safetensors", True)
        state, metadata = self.lora_state_dict(
            pretrained_model_name_or_path_or_dict, return_lora_metadata=True, **kwargs
        )
        prefix = f"{self.transformer_name}."
        if state and not any(k.startswith(prefix) for k in state):
            state = {prefix + k: v for k, v in state.items()}
        if not all("lora" in k for k in state):
            raise UserError("not a LoRA state dict: every key must name a lora_A / lora_B weight")
        self.load_lora_into_transformer(state, self.transformer, adapter_name=adapter_name, metadata=metadata)

    # ----------------------------------------------------------------------------------------
    # labels

    @property
    def id2label(self) -> dict[int, str]:
        return {int(k): v for k, v in self.config.id2label.items()}

    @property
    def labels(self) -> dict[str, list[int]]:
        """Every name and synonym (comma-separated in ``id2label``), lower-cased -> the class ids it names (more
        than one where names collide, e.g. ImageNet's "crane": the bird and the machine)."""
        out: dict[str, list[int]] = {}
        for idx, names in self.id2label.items():
            for name in names.split(","):
                ids = out.setdefault(name.strip().lower(), [])
                if idx not in ids:
                    ids.append(idx)
        return out

    def get_label_ids(self, label: str | Sequence[str]) -> list[int]:
        """Class ids of one name or a list of names (synonyms count, as in diffusers' DiT ``id2label``).

        A name is matched with its case first, then without: ``"Cardigan"`` is the corgi, ``"cardigan"`` the
        sweater. A name that still names several classes is an error listing them.

        Raises:
            ValueError: for a name that is not a class of this pipeline, or that names more than one.
        """
        names = [label] if isinstance(label, str) else list(label)
        table = self.labels
        missing = [n for n in names if n.strip().lower() not in table]
        if missing:
            known = ", ".join(list(table)[:8])
            raise ValueError(f"unknown class name(s) {missing}; known names include: {known}, ...")
        return [self._one_label_id(n.strip(), table[n.strip().lower()]) for n in names]

    def _one_label_id(self, name: str, ids: list[int]) -> int:
        if len(ids) > 1:  # the exact spelling may still decide
            ids = [i for i in ids if name in (n.strip() for n in self.id2label[i].split(","))] or ids
        if len(ids) > 1:
            named = "; ".join(f"{i} ({self.id2label[i]})" for i in ids)
            raise ValueError(f"class name {name!r} names {len(ids)} classes: {named}; pass the id or another name")
        return ids[0]

    def _label_tensor(self, class_labels, device: torch.device) -> torch.Tensor:
        if isinstance(class_labels, torch.Tensor):
            if class_labels.ndim == 2 and class_labels.shape[1] == 1:  # (B, 1), as DiTPipeline takes them
                class_labels = class_labels[:, 0]
            class_labels = class_labels.tolist()
        if isinstance(class_labels, (int, str)):
            class_labels = [class_labels]
        # one-element lists ([[1], [1]]) stand for their element, as in DiTPipeline
        class_labels = [c[0] if isinstance(c, (list, tuple)) and len(c) == 1 else c for c in class_labels]
        if not class_labels:
            raise ValueError("class_labels is empty")
        ids = [self.get_label_ids(c)[0] if isinstance(c, str) else c for c in class_labels]
        n = self.transformer.config.num_classes
        bad = [c for c in ids if not isinstance(c, int) or isinstance(c, bool) or not 0 <= c < n]
        if bad:
            raise ValueError(f"class_labels {bad} are not class ids in [0, {n}) or class names")
        return torch.tensor(ids, dtype=torch.long, device=device)

    # ----------------------------------------------------------------------------------------
    # state during a call (diffusers' callback protocol)

    @property
    def guidance_scale(self) -> float:
        """The guidance scale of the running call; a step-end callback may change ``pipe._guidance_scale``."""
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale != 1.0

    @property
    def num_timesteps(self) -> int:
        """Integration steps of the running (or last) call."""
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        """Set ``pipe._interrupt = True`` in a callback to skip the remaining steps."""
        return self._interrupt

    # ----------------------------------------------------------------------------------------
    # latents

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Model-space latents ``(B, C, h, w)`` -> images in [-1, 1] ``(B, 3|C, H, W)``."""
        if self.vae is None:
            return latents
        cfg = self.config
        if cfg.latents_mean is not None:
            shape = (1, -1, 1, 1)
            mean = torch.tensor(cfg.latents_mean, device=latents.device, dtype=latents.dtype).view(shape)
            std = torch.tensor(cfg.latents_std, device=latents.device, dtype=latents.dtype).view(shape)
            latents = latents * std + mean
        elif cfg.scaling_factor is not None:
            latents = latents / cfg.scaling_factor
        return self.vae.decode(latents.to(self.vae.dtype)).sample

    def _resolve_size(self, height: int | None, width: int | None) -> tuple[int, int]:
        factor = self.vae_scale_factor * self.transformer.config.patch_size
        default = self.transformer.config.sample_size * self.vae_scale_factor
        height = default if height is None else height
        width = default if width is None else width
        for name, value in (("height", height), ("width", width)):
            check_side(name, value)
            if value % factor:
                raise ValueError(
                    f"{name}={value} must be a positive multiple of {factor} "
                    f"(VAE factor {self.vae_scale_factor} x patch size {self.transformer.config.patch_size})"
                )
        return height, width

    def check_inputs(self, output_type: str, num_images_per_prompt, callback_tensor_inputs) -> None:
        """The call's arguments that need no model, checked before any work."""
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}")
        n = num_images_per_prompt
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"num_images_per_prompt={n!r} must be a positive integer")
        if set(callback_tensor_inputs or ["latents"]) - set(self._callback_tensor_inputs):
            raise ValueError(f"callback_on_step_end_tensor_inputs must be among {self._callback_tensor_inputs}")

    def prepare_latents(self, shape: tuple, generator, latents: torch.Tensor | None, device) -> torch.Tensor:
        """The initial noise (float32 whatever the model dtype): drawn per image, or checked when given."""
        if isinstance(generator, list) and len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for {shape[0]} images; pass one per image or one")
        if latents is None:
            return flow.per_sample_noise(torch.empty(shape, device=device), generator)
        if tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape} for these labels and size, got {tuple(latents.shape)}")
        if not torch.isfinite(latents).all():
            raise ValueError("latents contain NaN or infinite values")
        return latents.to(device=device, dtype=torch.float32)

    def _guided_velocity(self, settings: SamplingSettings, labels: torch.Tensor, autocast: bool):
        """``v(x, t)`` with classifier-free guidance; the scale is read at every call (callbacks may change it), and
        every call is counted in :attr:`num_model_evaluations`."""
        device = labels.device
        use_autocast = autocast and device.type == "cuda" and self.transformer.dtype == torch.float32

        def model(x, t, y):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_autocast):
                return self.transformer(x.to(self.transformer.dtype), t, y).sample.float()

        def velocity(x, t):
            guidance = flow.Guidance(self._guidance_scale, settings.guidance_interval, settings.cfg_channels)
            self._model_evaluations += 2 if guidance.active(float(t[0])) else 1
            return guidance.velocity(model, x, t, labels, self.transformer.config.num_classes)

        return velocity

    def resolve_sampler(self, sampler=NOT_GIVEN):
        """The sampler of a call and the scheduler that runs it: ``(name, scheduler or None for "sde")``.

        ``sampler`` given to the call wins; otherwise a scheduler assigned to ``pipe.scheduler`` since the pipeline was
        built is the sampler (diffusers' one-line swap), and so is the pipeline's own scheduler when no sampler is
        stored; otherwise the stored ``sampler`` setting, run by ``pipe.scheduler`` when it is that sampler's
        scheduler, or by one made from its config for the call.
        """
        stored = self.config.sampling.get("sampler")
        if sampler is NOT_GIVEN and (self.scheduler is not self._built_with or stored is None):
            return schedulers.sampler_name(self.scheduler), self.scheduler
        name = stored if sampler is NOT_GIVEN else sampler
        if name == "sde":
            return name, None
        if type(self.scheduler) is schedulers.SCHEDULERS.get(name):
            schedulers.sampler_name(self.scheduler)  # configured to integrate a flow, or an error saying how
            return name, self.scheduler
        return name, schedulers.scheduler_for(name, self.scheduler.config)

    @property
    def num_model_evaluations(self) -> int:
        """Transformer evaluations per image in the running (or last) call; a guided one counts twice."""
        return self._model_evaluations

    def integrate(self, latents, velocity, settings: SamplingSettings, scheduler, generator, callback, sigmas=None):
        """From noise (t = 0) to data (t = 1): ``scheduler``'s steps (Euler on the pipeline's own time grid), or
        FlashDiT's SDE sampler when ``scheduler`` is None; ``sigmas``, a call's own grid. ``callback(i, t, x)`` sees
        each evaluation's flow time."""
        n, shift = settings.num_inference_steps, settings.timestep_shift
        if scheduler is None:
            times = flow.time_grid(n, shift) if sigmas is None else torch.tensor([1 - s for s in sigmas] + [1.0])
            self._num_timesteps = len(times) - 1
        else:
            times = schedulers.set_timesteps(scheduler, n, shift, latents.device, sigmas)
            self._num_timesteps = len(times)
        with self.progress_bar(total=self._num_timesteps) as progress:

            def on_step(i: int, t: float, x: torch.Tensor) -> torch.Tensor:
                progress.update()
                return callback(i, t, x)

            if scheduler is None:
                stop = lambda: self.interrupt  # noqa: E731
                return flow.sample(velocity, latents, times, "sde", generator, on_step=on_step, stop=stop)
            for i, (timestep, t) in enumerate(zip(scheduler.timesteps, times)):
                if self.interrupt:
                    break
                v = velocity(latents, torch.full((latents.shape[0],), t, device=latents.device))
                latents = on_step(i, t, schedulers.step(scheduler, v, timestep, latents, generator))
        return latents

    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | str | Sequence[int | str] | torch.Tensor,
        guidance_scale: float | None = NOT_GIVEN,
        num_inference_steps: int | None = NOT_GIVEN,
        height: int | None = None,
        width: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        guidance_interval: tuple[float, float] | None = NOT_GIVEN,
        timestep_shift: float | None = NOT_GIVEN,
        sampler: str | None = NOT_GIVEN,
        cfg_channels: int | None = NOT_GIVEN,
        timesteps: Sequence[float] | None = None,
        sigmas: Sequence[float] | None = None,
        num_images_per_prompt: int = 1,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[DiffusionPipeline, int, float, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        autocast: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Generate one image per class label (every setting in detail: docs/sampling.md).

        Args:
            class_labels: class ids, class names, or a mix; one image each (DiT's ``[[1], [2]]`` and ``(B, 1)`` too).
            guidance_scale, num_inference_steps, guidance_interval, timestep_shift, sampler, cfg_channels: the
                :class:`~flashdit.settings.SamplingSettings`; left out (or None), the pipeline's stored value, then
                the default. ``sampler`` left out: a scheduler assigned to ``pipe.scheduler`` since loading, else the
                stored sampler. ``cfg_channels=None`` guides every channel whatever the pipeline stores.
            sigmas, timesteps: a grid of the call's own, as in diffusers (noise levels from near 1 down, or the
                same times 1000), instead of ``num_inference_steps`` and ``timestep_shift``; Euler, UniPC and SDE.
            height, width: output size in pixels, any positive multiple of VAE factor x patch size, non-square
                allowed; defaults to the training size.
            generator: one generator, or one per image: image ``i`` then depends only on ``generator[i]``.
            latents: initial noise ``(B, C, h, w)`` instead of drawing it.
            num_images_per_prompt: images per label; image ``i`` of label ``k`` is output ``k·n + i``.
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``.
            callback_on_step_end: ``fn(pipe, i, t, {"latents": ...}) -> dict`` after model evaluation ``i`` at flow
                time ``t`` (0 = noise, 1 = data); a returned ``"latents"`` replaces the current ones; it may set
                ``pipe._guidance_scale`` or ``pipe._interrupt``.
            autocast: on CUDA, run an fp32 transformer under bf16 autocast (integration stays fp32).
        Returns:
            ``ImagePipelineOutput(images=...)``, or a tuple ``(images,)``.

        Examples:
            >>> pipe = FlashDiTPipeline.from_pretrained("runs/fashion_mnist/pipeline")
            >>> seeds = [torch.Generator().manual_seed(i) for i in (0, 1)]  # one per image: batch-independent
            >>> images = pipe(class_labels=["Bag", 7], generator=seeds).images
            >>> pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)  # the sampler, in one line
            >>> images = pipe(class_labels=["Bag"], num_inference_steps=8).images
        """
        given = dict(guidance_scale=guidance_scale, num_inference_steps=num_inference_steps, sampler=sampler)
        given |= dict(guidance_interval=guidance_interval, timestep_shift=timestep_shift, cfg_channels=cfg_channels)
        settings, scheduler, grid = self._call_settings(given, sigmas, timesteps)  # checked before any work
        self.check_inputs(output_type, num_images_per_prompt, callback_on_step_end_tensor_inputs)
        device = self._execution_device
        labels = self._label_tensor(class_labels, device).repeat_interleave(num_images_per_prompt)
        latents = self.prepare_latents(self._latent_shape(len(labels), height, width), generator, latents, device)

        def callback(i: int, t: float, x: torch.Tensor) -> torch.Tensor:
            if callback_on_step_end is None:
                return x
            return callback_on_step_end(self, i, t, {"latents": x}).pop("latents", x)

        velocity = self._guided_velocity(settings, labels, autocast)
        latents = self.integrate(latents, velocity, settings, scheduler, generator, callback, grid)
        images = self._to_images(latents, output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    def _call_settings(self, given: dict, sigmas, timesteps):
        """A call's settings (the stored ones under the call's; None stands for "not given", as diffusers callers
        pass it), its scheduler (None for the SDE sampler) and its own grid of sigmas, if any; all checked."""
        cfg_channels = given.pop("cfg_channels")
        given = {k: v for k, v in given.items() if v is not None and v is not NOT_GIVEN}
        settings = SamplingSettings.from_dict(self.config.sampling).updated(**given, cfg_channels=cfg_channels)
        grid = schedulers.custom_sigmas(sigmas, timesteps, self.scheduler.config.get("num_train_timesteps", 1000))
        if grid is not None and "timestep_shift" in given:
            raise UserError("timestep_shift applies to the pipeline's own grid; with sigmas or timesteps, shift them")
        _, scheduler = self.resolve_sampler(settings.sampler if "sampler" in given else NOT_GIVEN)
        if scheduler is not None and grid is None:
            schedulers.effective_shift(scheduler, settings.timestep_shift)
        self._guidance_scale, self._interrupt, self._model_evaluations = settings.guidance_scale, False, 0
        return settings, scheduler, grid

    def _latent_shape(self, batch: int, height: int | None, width: int | None) -> tuple[int, int, int, int]:
        height, width = self._resolve_size(height, width)
        f = self.vae_scale_factor
        return (batch, self.transformer.config.in_channels, height // f, width // f)

    def _to_images(self, latents: torch.Tensor, output_type: str):
        """Sampled latents as the requested output: decoded and post-processed, or the latents themselves."""
        if not torch.isfinite(latents).all():
            raise UserError(
                "sampling produced NaN or inf values: the model's velocity overflowed (check the weights, or lower "
                "guidance_scale); no images are returned"
            )
        if output_type == "latent":
            return latents
        return self.image_processor.postprocess(self.decode_latents(latents).float(), output_type=output_type)


_HUB_FILE = re.compile(r"^(?:https://huggingface\.co/)?([\w.-]+/[\w.-]+)/(?:(?:blob|resolve)/([^/]+)/)?(.+)$")


def _single_file(link_or_path: str | os.PathLike, kwargs: dict) -> Path:
    """A local checkpoint, or one on the Hub (``https://huggingface.co/<repo>/blob/<revision>/<file>`` or
    ``<owner>/<repo>/<file>``) downloaded to the cache."""
    path = Path(link_or_path)
    if path.is_file():
        return path
    match = _HUB_FILE.match(str(link_or_path))
    if match is None or path.exists() or str(link_or_path).startswith((".", "/")):
        raise FileNotFoundError(f"no checkpoint at {link_or_path} (a file, or a Hub file <owner>/<repo>/<file>)")
    repo, revision, filename = match.groups()
    options = {k: kwargs[k] for k in ("cache_dir", "token", "local_files_only", "force_download") if k in kwargs}
    return Path(hf_hub_download(repo, filename, revision=kwargs.get("revision", revision), **options))


def check_weights_finite(pipe: FlashDiTPipeline, source: str) -> None:
    """Refuse a pipeline whose transformer or VAE holds NaN or inf: it would sample black images."""
    for component in ("transformer", "vae"):
        module = getattr(pipe, component, None)
        if module is None:
            continue
        for name, tensor in (*module.named_parameters(), *module.named_buffers()):
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise UserError(
                    f"{source}: {component} weight {name} holds NaN or inf values; this pipeline cannot sample "
                    "(export it again from a good checkpoint)"
                )


def load_pipeline(path: str, device: str | torch.device | None = None, dtype: str = "fp32", flag: str = "--model"):
    """Load a ``FlashDiTPipeline`` from a directory (or a hub id when online) onto a device. Anything that keeps it
    from loading (no such directory, a hub id offline, truncated weights, NaN weights) is one :class:`UserError`
    naming ``flag``."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    local = Path(path)
    if local.exists():
        if not (local / "model_index.json").is_file():
            raise FileNotFoundError(f"{flag} {path} is not a pipeline directory: it has no model_index.json")
    elif not _HUB_ID.match(path):
        raise FileNotFoundError(f"{flag} {path}: no pipeline directory there (and it is not a hub id)")
    try:
        pipe = FlashDiTPipeline.from_pretrained(path)
    except UserError:
        raise
    except Exception as err:  # OSError from the hub, SafetensorError, a corrupt config (JSONDecodeError), ...
        where = "the local directory" if local.exists() else "the Hub (offline, or no such repository?)"
        reason = " ".join(str(err).split())[:300] or type(err).__name__
        raise UserError(f"{flag} {path} could not be loaded from {where}: {type(err).__name__}: {reason}") from None
    pipe = pipe.to(check_device(device) if device is not None else default_device())
    return pipe if dtype == "fp32" else pipe.to(DTYPES[dtype])


def check_device(device: str | torch.device, flag: str = "--device") -> torch.device:
    """``device`` as a ``torch.device`` that exists on this machine."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise UserError(f"{flag} {device!r} is not a device ({' '.join(str(err).split())[:120]})") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise UserError(f"{flag} {device} is not available: this machine has {torch.cuda.device_count()} CUDA devices")
    return device


PIPELINE_ENTRIES = {"model_index.json", "transformer", "scheduler", "vae", f"{REMOTE_CODE_MODULE}.py"}


def export_pipeline(pipe: FlashDiTPipeline, out_dir: str | Path) -> Path:
    """``save_pretrained`` into a temporary directory, then swap it in place of ``out_dir``; a previous
    pipeline there is replaced, anything else refused, and non-finite weights are never written."""
    check_weights_finite(pipe, "the pipeline to export")
    marker = "model_index.json"
    return save_dir_atomically(pipe.save_pretrained, out_dir, PIPELINE_ENTRIES, marker, "FlashDiT pipeline")
