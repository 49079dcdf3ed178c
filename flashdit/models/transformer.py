"""FlashDiT: a LightningDiT-style class-conditional diffusion transformer whose self-attention is the
Iwin mixer (IW-MSA + depthwise conv, no position embedding), as a diffusers model.

The network maps ``(x_t, t, y)`` to the flow velocity; the flow maths lives in ``flashdit.flow``.
The same class builds the baselines: ``mixer="attention"`` with a position embedding is DiT or
LightningDiT, ``"window"`` is plain window attention, ``"conv"`` the depthwise convolution alone.
"""

from __future__ import annotations

import copy
from typing import Annotated, Literal

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.attention import AttentionMixin
from diffusers.models.attention_dispatch import AttentionBackendName, _check_attention_backend_requirements
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin, get_parameter_dtype
from diffusers.utils import logging
from einops import rearrange
from torch import nn

from ..typed import Bool, Count, Float, Gt, Interval, OddKernel, signature_dataclass, validate
from .embeddings import LabelEmbedder, TimestepEmbedder, rope_tables_2d, sincos_pos_embed_2d
from .linear import CPU_LINEAR_BACKENDS, TokenLinear
from .mixer import KERNEL_SIZE, WINDOW_SIZE, IwinMixer, WindowAttention, WindowAttnProcessor, check_window_processor
from .norms import RMSNorm

MIXERS = ("iwin", "window", "attention", "conv")
MODULATIONS = ("adaln-zero", "flashdit-official")
CONV_INITS = ("pytorch", "xavier")
POS_EMBEDS = ("none", "sincos", "rope", "sincos+rope")

logger = logging.get_logger(__name__)

# LightningDiT's sizes (depth, width, heads) at patch 1 and 2; "FlashDiT-XL/1" is the paper's model.
_WIDTHS = {
    "S": dict(depth=12, hidden_size=384, num_heads=6),
    "B": dict(depth=12, hidden_size=768, num_heads=12),
    "L": dict(depth=24, hidden_size=1024, num_heads=16),
    "XL": dict(depth=28, hidden_size=1152, num_heads=16),
    "1p0B": dict(depth=24, hidden_size=1536, num_heads=24),
    "1p6B": dict(depth=28, hidden_size=1792, num_heads=28),
}
FLASHDIT_SIZES: dict[str, dict] = {
    f"FlashDiT-{name}/{patch}": dict(width, patch_size=patch) for name, width in _WIDTHS.items() for patch in (1, 2)
}


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class SwiGLU(nn.Module):
    """``w3(silu(a) · b)`` with ``[a, b] = w12(x)`` (LightningDiT's SwiGLUFFN)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w12 = TokenLinear(dim, 2 * hidden)
        self.w3 = TokenLinear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(nn.functional.silu(a) * b)


class PatchEmbed(nn.Module):
    """Non-overlapping ``p×p`` patches to tokens: ``(B, C, H, W) -> (B, H/p, W/p, D)``."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the residual stream must be dense channels-last: every later op inherits its strides
        return self.proj(x).permute(0, 2, 3, 1).contiguous()


class FlashDiTBlock(nn.Module):
    """LightningDiT block with the Iwin mixer in place of attention (RMSNorm, SwiGLU, adaLN).

    ``modulation="adaln-zero"`` (FlashDiT as in the paper, LightningDiT): six vectors from the
    conditioning, ``x += g1 · mixer(modulate(norm1(x), s1, c1))``, ``x += g2 · mlp(modulate(norm2(x), s2, c2))``,
    all zero at init so each block starts as the identity.

    ``modulation="flashdit-official"`` (the official FlashDiT release): seven vectors, the attention and convolution
    branches gated apart around one: ``x += (1 + g_conv) · conv + (1 + g_msa) · attn``,
    ``x += (1 + g_mlp) · mlp``; zero-initialised, so the branches are on at init.
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, mixer: nn.Module, modulation: str):
        super().__init__()
        self.modulation = modulation
        self.norm1 = RMSNorm(hidden_size)
        self.mixer = mixer
        self.norm2 = RMSNorm(hidden_size)
        self.mlp = SwiGLU(hidden_size, int(2 / 3 * int(hidden_size * mlp_ratio)))
        n = 7 if modulation == "flashdit-official" else 6
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, n * hidden_size))

    def forward(
        self, x: torch.Tensor, c: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        # (B, n·D) -> n vectors (B, 1, 1, D) broadcast over the (B, H, W, D) grid
        mod = self.adaLN_modulation(c)[:, None, None].chunk(7 if self.modulation == "flashdit-official" else 6, dim=-1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod[:6]
        h = modulate(self.norm1(x), shift_msa, scale_msa)
        if self.modulation == "flashdit-official":
            attn, conv = self.mixer.branches(h, rope)
            x = x + (1 + mod[6]) * conv + (1 + gate_msa) * attn
            return x + (1 + gate_mlp) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        x = x + gate_msa * self.mixer(h, rope)
        return x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    """adaLN (shift, scale) then a linear map to ``p·p·C_out`` per token."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = RMSNorm(hidden_size)
        self.linear = TokenLinear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c)[:, None, None].chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


# diffusers' attention projection names (LoRA target_modules in its training scripts) -> this model's modules
DIFFUSERS_LORA_NAMES = {n: "mixer.attn.qkv" for n in ("to_q", "to_k", "to_v")} | {"to_out.0": "mixer.attn.proj"}


class FlashDiTTransformer2DModel(ModelMixin, AttentionMixin, ConfigMixin, PeftAdapterMixin):
    """Class-conditional diffusion transformer on a 2-D latent (or pixel) grid of any size.

    Args:
        sample_size: the training grid side in latent pixels; the pipeline's default size. The model
            itself runs on any ``H×W`` that ``patch_size`` divides.
        patch_size: patch side p (1, 2 or 4 in practice).
        in_channels: input channels (32 for VA-VAE f16d32, 4 for SD-VAE, 1 or 3 in pixel space).
        out_channels: output channels; defaults to ``in_channels``.
        hidden_size: width D.
        depth: number of blocks.
        num_heads: attention heads; ``hidden_size`` must be a multiple.
        mlp_ratio: SwiGLU hidden is ``int(2/3 · int(mlp_ratio · D))``.
        num_classes: classes; the label ``num_classes`` is the null class used for guidance.
        class_dropout_prob: probability of replacing a label by the null class in training.
        mixer: ``"iwin"`` (interleaved windows), ``"window"`` (plain windows), ``"attention"``
            (global attention) or ``"conv"`` (depthwise convolution only).
        window_size: window side M for the windowed mixers (clamped to the grid).
        kernel_size: depthwise-conv kernel K, added in parallel to the attention of any mixer;
            ``None`` removes it (``mixer="attention", kernel_size=None`` is plain DiT attention).
        pos_embed: ``"none"`` (FlashDiT), ``"sincos"`` (DiT), ``"rope"`` or ``"sincos+rope"`` (LightningDiT).
        qk_norm: RMSNorm on queries and keys.
        qkv_bias: bias on the qkv projection.
        modulation: ``"adaln-zero"`` (default) or ``"flashdit-official"``, the official FlashDiT release's seven-way
            modulation with separately gated attention and convolution (see :class:`FlashDiTBlock`).
        conv_init: depthwise-conv weights: ``"pytorch"`` (PyTorch's default Kaiming-uniform, bias uniform) or
            ``"xavier"`` (Xavier-uniform, zero bias, as the official FlashDiT release; about 4.6x smaller at
            width 128, so the convolution no longer dominates the attention branch at init).

    Layerwise casting (``model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn,
    compute_dtype=torch.bfloat16)``) stores the linear, convolution and embedding weights of the blocks and the final
    layer in ``storage_dtype`` and computes in ``compute_dtype``; the patch, timestep and label embeddings and the
    norms (``_skip_layerwise_casting_patterns``) keep the model's own dtype, as diffusers' DiT and SD3 keep theirs.
    The output is in ``compute_dtype``.

    ``torch.compile(model, fullgraph=True)`` traces the whole forward without graph breaks, with or without
    gradients; ``model.compile_repeated_blocks(fullgraph=True)`` compiles only the repeated :class:`FlashDiTBlock`
    (``_repeated_blocks``), which compiles once for all of them.

    Diffusers' attention-processor API: ``attn_processors`` maps each attention module
    (``"blocks.{i}.mixer.attn.processor"``) to its :class:`~flashdit.models.mixer.WindowAttnProcessor`;
    ``set_attn_processor`` takes one (or a subclass) for all of them or a dict of them by those names, and refuses
    diffusers' processors, which compute its ``Attention`` layers, not these windows; ``set_default_attn_processor``
    restores the default. The attention kernel is chosen with ``set_attention_backend``.
    ``fuse_qkv_projections`` and ``unfuse_qkv_projections`` do nothing: the qkv projection is one fused Linear.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["FlashDiTBlock"]
    # diffusers' regional compilation (compile_repeated_blocks) compiles each block, one graph for all of them
    _repeated_blocks = ["FlashDiTBlock"]
    # precision-critical layers that layerwise casting leaves alone: the patch embedding, the timestep and label
    # embeddings (the conditioning every modulation reads) and every RMSNorm (norm1/2, q/k_norm, norm_final)
    _skip_layerwise_casting_patterns = ["x_embedder", "t_embedder", "y_embedder", "norm"]

    @register_to_config
    def __init__(
        self,
        sample_size: Count = 16,
        patch_size: Count = 1,
        in_channels: Count = 32,
        out_channels: Count | None = None,
        hidden_size: Count = 1152,
        depth: Count = 28,
        num_heads: Count = 16,
        mlp_ratio: Annotated[Float, Gt(0)] = 4.0,
        num_classes: Count = 1000,
        class_dropout_prob: Annotated[Float, Interval(ge=0, le=1)] = 0.1,  # 1: every label dropped (unconditional)
        mixer: Literal[MIXERS] = "iwin",
        window_size: Count = WINDOW_SIZE,
        kernel_size: OddKernel | None = KERNEL_SIZE,
        pos_embed: Literal[POS_EMBEDS] = "none",
        qk_norm: Bool = False,
        qkv_bias: Bool = True,
        modulation: Literal[MODULATIONS] = "adaln-zero",
        conv_init: Literal[CONV_INITS] = "pytorch",
    ):
        # the signature is the one declaration of every option, its type and its range (the recipe's model: section
        # is derived from it: flashdit.config.ModelConfig); a bad value is one line naming the option
        options = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        validate(TransformerOptions, options, "model")
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size={hidden_size} must be a positive multiple of num_heads={num_heads}")
        if modulation == "flashdit-official" and (mixer == "conv" or kernel_size is None):
            raise ValueError(
                'modulation="flashdit-official" gates attention and convolution apart: it needs both branches'
            )
        if mixer == "conv" and kernel_size is None:
            raise ValueError('mixer="conv" needs a kernel_size')
        if mixer == "conv" and "rope" in pos_embed:
            raise ValueError(f'pos_embed={pos_embed!r} rotates attention queries/keys; mixer="conv" has none')
        self.out_channels = out_channels or in_channels
        self.use_sincos = "sincos" in pos_embed
        self.use_rope = "rope" in pos_embed
        head_dim = hidden_size // num_heads
        if self.use_rope and head_dim % 4:
            raise ValueError(f"pos_embed={pos_embed!r} needs head_dim divisible by 4, got {head_dim}")
        if self.use_sincos and hidden_size % 4:
            raise ValueError(f"pos_embed={pos_embed!r} needs hidden_size divisible by 4, got {hidden_size}")

        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        self.blocks = nn.ModuleList(
            [FlashDiTBlock(hidden_size, num_heads, mlp_ratio, self._make_mixer(), modulation) for _ in range(depth)]
        )
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.gradient_checkpointing = False
        self.initialize_weights()

    def _make_mixer(self) -> IwinMixer:
        cfg = self.config
        return IwinMixer(
            cfg.hidden_size,
            cfg.num_heads,
            window_size=None if cfg.mixer == "attention" else cfg.window_size,
            kernel_size=cfg.kernel_size,
            qkv_bias=cfg.qkv_bias,
            qk_norm=cfg.qk_norm,
            interleaved=cfg.mixer == "iwin",
            attention=cfg.mixer != "conv",
        )

    @classmethod
    def from_size(cls, name: str, **kwargs) -> FlashDiTTransformer2DModel:
        """A model of a registry size, e.g. ``from_size("FlashDiT-XL/1", in_channels=32)``."""
        if name not in FLASHDIT_SIZES:
            raise ValueError(f"unknown model size {name!r}; choose one of {sorted(FLASHDIT_SIZES)}")
        return cls(**{**FLASHDIT_SIZES[name], **kwargs})

    def initialize_weights(self) -> None:
        # linear layers: Xavier-uniform weights, zero bias (DiT)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        # patch embedding: Xavier-uniform as a linear map over each flattened patch
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        # depthwise convs: PyTorch's default (set at construction) or Xavier-uniform with zero bias (official release)
        if self.config.conv_init == "xavier":
            for block in self.blocks:
                if block.mixer.conv is not None:
                    nn.init.xavier_uniform_(block.mixer.conv.conv.weight)
                    nn.init.zeros_(block.mixer.conv.conv.bias)
        # label table and timestep MLP: N(0, 0.02)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        # adaLN-Zero: every modulation starts at zero, so each block is the identity (with
        # modulation="flashdit-official" the gates are 1 + 0: the branches start on, as in the official code)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        # output layer: zero, so the initial prediction is exactly 0
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def _check_inputs(
        self, hidden_states: torch.Tensor, timestep: torch.Tensor | float, class_labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        if hidden_states.ndim != 4 or hidden_states.shape[1] != cfg.in_channels:
            raise ValueError(
                f"hidden_states must be (B, {cfg.in_channels}, H, W) for this model, got {tuple(hidden_states.shape)}"
            )
        B, _, H, W = hidden_states.shape
        p = cfg.patch_size
        if H % p or W % p:
            raise ValueError(f"height and width ({H}x{W}) must be multiples of patch_size={p}")
        timestep = torch.as_tensor(timestep, device=hidden_states.device)
        if timestep.ndim == 0:
            timestep = timestep.expand(B)
        if timestep.shape != (B,):
            raise ValueError(f"timestep must be a scalar or shape ({B},), got {tuple(timestep.shape)}")
        class_labels = torch.as_tensor(class_labels, device=hidden_states.device)
        if class_labels.shape != (B,) or class_labels.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"class_labels must be an integer tensor of shape ({B},), got {class_labels.dtype} "
                f"{tuple(class_labels.shape)}"
            )
        if not torch.compiler.is_compiling():
            bad = (class_labels < 0) | (class_labels > cfg.num_classes)
            if bad.any():
                raise ValueError(
                    f"class_labels {class_labels[bad].tolist()} outside [0, {cfg.num_classes}] "
                    f"({cfg.num_classes} is the null class)"
                )
        return timestep, class_labels.long()

    def set_attention_backend(self, backend: str) -> None:
        """Run every attention (IW-MSA windows, global attention) through diffusers' attention dispatch with
        ``backend`` (``"native"``, ``"flash"``, ``"sage"``, ``"_native_math"``, ...; see
        ``diffusers.models.attention_dispatch.AttentionBackendName``); its requirements are checked now. Without
        a backend set, the model calls PyTorch's ``scaled_dot_product_attention`` directly (and ignores
        diffusers' ``attention_backend`` context manager and ``DIFFUSERS_ATTN_BACKEND``)."""
        allowed = [b.value for b in AttentionBackendName]
        if not isinstance(backend, str) or backend.lower() not in allowed:
            raise ValueError(f"attention backend {backend!r} is not one of {allowed}")
        backend = AttentionBackendName(backend.lower())
        _check_attention_backend_requirements(backend)
        for module in self.modules():
            if isinstance(module, WindowAttention):
                module.attention_backend = backend

    def reset_attention_backend(self) -> None:
        """Back to PyTorch's ``scaled_dot_product_attention``."""
        for module in self.modules():
            if isinstance(module, WindowAttention):
                module.attention_backend = None

    def set_attn_processor(self, processor: WindowAttnProcessor | dict[str, WindowAttnProcessor]) -> None:
        """Run every attention with ``processor``, or each with its own from a dict keyed as :attr:`attn_processors`.

        Args:
            processor: a :class:`~flashdit.models.mixer.WindowAttnProcessor` (or a subclass), or a dict with one for
                each key of :attr:`attn_processors`.

        Raises:
            ValueError: for a processor of another class (diffusers' ``AttnProcessor`` family computes its
                ``Attention`` layers, not window attention) or a dict whose keys are not those of
                :attr:`attn_processors`; nothing is changed then.
        """
        modules = {f"{name}.processor": m for name, m in self.named_modules() if isinstance(m, WindowAttention)}
        if isinstance(processor, dict):
            missing, unknown = sorted(set(modules) - set(processor)), sorted(set(processor) - set(modules))
            if missing or unknown:
                raise ValueError(
                    f"set_attn_processor's dict must have the keys of attn_processors ({len(modules)}): "
                    f"missing {missing[:3]}, unknown {unknown[:3]}"
                )
            for key, value in processor.items():
                check_window_processor(value, f"processor[{key!r}]")
            for key, module in modules.items():
                module.set_processor(processor[key])
            return
        check_window_processor(processor, "processor")
        for module in modules.values():
            module.set_processor(processor)

    def set_default_attn_processor(self) -> None:
        """Back to the default :class:`~flashdit.models.mixer.WindowAttnProcessor` in every attention. The attention
        kernel is not changed (``reset_attention_backend`` returns to SDPA)."""
        self.set_attn_processor(WindowAttnProcessor())

    def fuse_qkv_projections(self) -> None:
        """Nothing to do: FlashDiT's attention already projects queries, keys and values with one fused Linear
        (``qkv``), the layout its checkpoints store; diffusers' fusion concatenates separate ``to_q``/``to_k``/``to_v``
        layers, which this model does not have."""
        logger.info("fuse_qkv_projections: the qkv projection of FlashDiT's attention is already one fused Linear")

    def unfuse_qkv_projections(self) -> None:
        """Nothing to do: the fused qkv Linear is the model's own layout, there are no separate projections to
        return to."""
        logger.info("unfuse_qkv_projections: FlashDiT's attention has only its fused qkv Linear; nothing to undo")

    def add_adapter(self, adapter_config, adapter_name: str = "default") -> None:
        """PEFT's ``add_adapter``. The target names of diffusers' LoRA training scripts, ``to_q`` / ``to_k`` / ``to_v``
        (one fused ``qkv`` here) and ``to_out.0`` (``proj``), adapt this model's attention projections."""
        targets = adapter_config.target_modules
        if isinstance(targets, (list, set, tuple)) and any(t in DIFFUSERS_LORA_NAMES for t in targets):
            adapter_config = copy.copy(adapter_config)
            adapter_config.target_modules = {DIFFUSERS_LORA_NAMES.get(t, t) for t in targets}
        super().add_adapter(adapter_config, adapter_name)

    def set_cpu_linear_backend(self, backend: str) -> None:
        """How the token-wise linear layers (qkv, projection, MLP, output) run float32 on the CPU: ``"onednn"``
        (default) as 1×1 convolutions on oneDNN's kernels, ``"blas"`` as ``F.linear`` on PyTorch's BLAS. Same
        weights and float32 arithmetic either way; GPUs, bf16 autocast and ``torch.compile`` always use
        ``F.linear`` (see ``flashdit.models.linear``)."""
        if backend not in CPU_LINEAR_BACKENDS:
            raise ValueError(f"cpu linear backend {backend!r} is not one of {list(CPU_LINEAR_BACKENDS)}")
        for module in self.modules():
            if isinstance(module, TokenLinear):
                module.cpu_backend = backend

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor | float,
        class_labels: torch.Tensor,
        return_dict: bool = True,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        """Predict the flow velocity ``v = x1 - x0`` (t=0 noise, t=1 data).

        Args:
            hidden_states: ``(B, in_channels, H, W)``, H and W multiples of ``patch_size``.
            timestep: ``(B,)`` float t in [0, 1], or a scalar for the whole batch.
            class_labels: ``(B,)`` int in ``[0, num_classes]``; ``num_classes`` is the null class.
            return_dict: return a ``Transformer2DModelOutput`` rather than a tuple.
        Returns:
            ``sample``: ``(B, out_channels, H, W)``.
        """
        timestep, class_labels = self._check_inputs(hidden_states, timestep, class_labels)
        B, _, H, W = hidden_states.shape
        p = self.config.patch_size
        h, w = H // p, W // p

        # 1. embed patches, timestep and label. Each input goes in the dtype its layer computes in, and the residual
        #    stream and the conditioning leave in the blocks' compute dtype: under layerwise casting the stored
        #    weights are in the storage dtype, and the skipped embeddings may keep a wider dtype than the blocks.
        dtype = get_parameter_dtype(self.blocks[0].adaLN_modulation)
        x = self.x_embedder(hidden_states.to(get_parameter_dtype(self.x_embedder))).to(dtype)  # (B, h, w, D)
        if self.use_sincos:
            x = x + sincos_pos_embed_2d(self.config.hidden_size, h, w).to(x)
        rope = None
        if self.use_rope:
            rope = rope_tables_2d(self.config.hidden_size // self.config.num_heads, h, w, device=x.device)
        c = (self.t_embedder(timestep) + self.y_embedder(class_labels)).to(dtype)  # (B, D)

        # 2. blocks
        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = self._gradient_checkpointing_func(block, x, c, rope)
            else:
                x = block(x, c, rope)

        # 3. final layer and unpatchify: (B, h, w, p·p·C) -> (B, C, h·p, w·p)
        x = self.final_layer(x, c)
        out = rearrange(x, "B h w (p q C) -> B C (h p) (w q)", p=p, q=p)
        if not return_dict:
            return (out,)
        return Transformer2DModelOutput(sample=out)


# the transformer's options as a dataclass (its signature: types, ranges, defaults), checked at construction and the
# source of the recipe's model: section
TransformerOptions = signature_dataclass(FlashDiTTransformer2DModel.__init__, "TransformerOptions")
