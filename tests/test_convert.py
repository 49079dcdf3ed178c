"""Converters: official-layout state dicts (built here from the published architectures) against
independent re-implementations of the official forward passes, written in this file."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flashdit import FlashDiTPipeline
from flashdit.cli import run
from flashdit.convert import (
    AUTHORS_SAMPLING,
    ConversionError,
    convert_transformer,
    convert_vae,
    load_latent_stats,
    load_state_dict,
)
from flashdit.convert import main as convert_main

D, HEADS, DEPTH, C, CLASSES = 32, 2, 2, 4, 10
HIDDEN = int(2 / 3 * int(D * 4.0))  # SwiGLU width


# ------------------------------------------------------------------ official layouts (shapes only)


def official_state(kind, patch=1, seed=0, num_classes=CLASSES, in_ch=C, grid=16):
    g = torch.Generator().manual_seed(seed)

    def w(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    n_mod = 7 if kind == "flashdit" else 6
    s = {
        "x_embedder.proj.weight": w(D, in_ch, patch, patch),
        "x_embedder.proj.bias": w(D),
        "t_embedder.mlp.0.weight": w(D, 256),
        "t_embedder.mlp.0.bias": w(D),
        "t_embedder.mlp.2.weight": w(D, D),
        "t_embedder.mlp.2.bias": w(D),
        "y_embedder.embedding_table.weight": w(num_classes + 1, D),
        "final_layer.norm_final.weight": 1 + w(D),
        "final_layer.linear.weight": w(patch * patch * in_ch, D),
        "final_layer.linear.bias": w(patch * patch * in_ch),
        "final_layer.adaLN_modulation.1.weight": w(2 * D, D),
        "final_layer.adaLN_modulation.1.bias": w(2 * D),
    }
    for i in range(DEPTH):
        b = f"blocks.{i}."
        s.update(
            {
                b + "norm1.weight": 1 + w(D),
                b + "norm2.weight": 1 + w(D),
                b + "attn.qkv.weight": w(3 * D, D),
                b + "attn.qkv.bias": w(3 * D),
                b + "attn.proj.weight": w(D, D),
                b + "attn.proj.bias": w(D),
                b + "mlp.w12.weight": w(2 * HIDDEN, D),
                b + "mlp.w12.bias": w(2 * HIDDEN),
                b + "mlp.w3.weight": w(D, HIDDEN),
                b + "mlp.w3.bias": w(D),
                b + "adaLN_modulation.1.weight": w(n_mod * D, D),
                b + "adaLN_modulation.1.bias": w(n_mod * D),
            }
        )
        if kind == "flashdit":
            s[b + "dwconv.depthwise.weight"] = w(D, 1, 3, 3)
            s[b + "dwconv.depthwise.bias"] = w(D)
    if kind == "lightningdit":
        s["pos_embed"] = torch.from_numpy(mae_sincos(D, grid // patch)).float()[None]
        cos, sin = eva_rope(D // HEADS // 2, grid // patch)
        s["feat_rope.freqs_cos"], s["feat_rope.freqs_sin"] = cos, sin
    return s


def mae_sincos(dim, n):
    """DiT/MAE 2-D sin-cos table (numpy, meshgrid(w, h) order)."""

    def one(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2) / (d / 2.0))
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], 1)

    grid = np.stack(np.meshgrid(np.arange(n, dtype=np.float32), np.arange(n, dtype=np.float32)))
    return np.concatenate([one(dim // 2, grid[0]), one(dim // 2, grid[1])], 1)


def eva_rope(dim, n, theta=10000):
    """EVA VisionRotaryEmbeddingFast tables, (n·n, 2·dim)."""
    freqs = 1.0 / theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim)
    f = torch.einsum("i,f->if", torch.arange(n).float(), freqs).repeat_interleave(2, -1)  # (n, dim)
    full = torch.cat([f[:, None, :].expand(n, n, dim), f[None, :, :].expand(n, n, dim)], -1)
    return full.cos().reshape(n * n, -1), full.sin().reshape(n * n, -1)


# ------------------------------------------------------------------ independent reference forwards


def rms(x, weight):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * weight


def mha(x, qkv_w, qkv_b, proj_w, proj_b, rope=None):
    B, N, _ = x.shape
    q, k, v = (x @ qkv_w.T + qkv_b).view(B, N, 3, HEADS, D // HEADS).permute(2, 0, 3, 1, 4)
    if rope is not None:
        cos, sin = rope

        def rot(t):
            t2 = t.reshape(*t.shape[:-1], -1, 2)
            return torch.stack([-t2[..., 1], t2[..., 0]], -1).flatten(-2)

        q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
    att = (q @ k.transpose(-1, -2) / math.sqrt(D // HEADS)).softmax(-1)
    return (att @ v).transpose(1, 2).reshape(B, N, D) @ proj_w.T + proj_b


def paper_rearrange(x, hg, wg):  # the paper's Algorithm 1
    B, H, W, Cc = x.shape
    x = x.reshape(B, -1, hg, W, Cc).transpose(1, 2).reshape(B, -1, W, Cc)
    return x.reshape(B, H, -1, wg, Cc).transpose(2, 3).reshape(B, H, -1, Cc)


def paper_restore(x, hg, wg):
    B, H, W, Cc = x.shape
    x = x.reshape(B, H, wg, -1, Cc).transpose(2, 3).reshape(B, H, -1, Cc)
    return x.reshape(B, hg, -1, W, Cc).transpose(1, 2).reshape(B, -1, W, Cc)


def embed(s, x, t, y, patch):
    tok = F.conv2d(x, s["x_embedder.proj.weight"], s["x_embedder.proj.bias"], stride=patch)
    tok = tok.flatten(2).transpose(1, 2)
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half) / half)
    tf = torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)], -1)
    temb = F.silu(tf @ s["t_embedder.mlp.0.weight"].T + s["t_embedder.mlp.0.bias"])
    temb = temb @ s["t_embedder.mlp.2.weight"].T + s["t_embedder.mlp.2.bias"]
    return tok, temb + s["y_embedder.embedding_table.weight"][y]


def final(s, x, c, patch, h, w):
    shift, scale = (
        F.silu(c) @ s["final_layer.adaLN_modulation.1.weight"].T + s["final_layer.adaLN_modulation.1.bias"]
    ).chunk(2, -1)
    x = rms(x, s["final_layer.norm_final.weight"]) * (1 + scale[:, None]) + shift[:, None]
    x = x @ s["final_layer.linear.weight"].T + s["final_layer.linear.bias"]
    x = x.reshape(x.shape[0], h, w, patch, patch, -1)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], -1, h * patch, w * patch)


def swiglu(s, b, x):
    a, g = (x @ s[b + "mlp.w12.weight"].T + s[b + "mlp.w12.bias"]).chunk(2, -1)
    return (F.silu(a) * g) @ s[b + "mlp.w3.weight"].T + s[b + "mlp.w3.bias"]


def official_flashdit_forward(s, x, t, y, window=8, patch=1):
    """The Iwin repo's FlashDiT block equations: interleave (Algorithm 1), window attention, depthwise
    conv, ``x + (1+g_conv)·conv + (1+g_msa)·attn``, ``x + (1+g_mlp)·mlp``."""
    B, _, H, W = x.shape
    h, w = H // patch, W // patch
    x, c = embed(s, x, t, y, patch)
    for i in range(DEPTH):
        b = f"blocks.{i}."
        mod = (F.silu(c) @ s[b + "adaLN_modulation.1.weight"].T + s[b + "adaLN_modulation.1.bias"]).chunk(7, -1)
        sh1, sc1, g1, sh2, sc2, g2, gc = (m[:, None] for m in mod)
        xc = rms(x, s[b + "norm1.weight"]) * (1 + sc1) + sh1
        grid = xc.view(B, h, w, D)
        conv = (
            F.conv2d(
                grid.permute(0, 3, 1, 2),
                s[b + "dwconv.depthwise.weight"],
                s[b + "dwconv.depthwise.bias"],
                padding=1,
                groups=D,
            )
            .permute(0, 2, 3, 1)
            .reshape(B, h * w, D)
        )
        hg, wg = h // window, w // window
        r = paper_rearrange(grid, hg, wg)
        win = (
            r.view(B, h // window, window, w // window, window, D).permute(0, 1, 3, 2, 4, 5).reshape(-1, window**2, D)
        )
        out = mha(
            win, s[b + "attn.qkv.weight"], s[b + "attn.qkv.bias"], s[b + "attn.proj.weight"], s[b + "attn.proj.bias"]
        )
        out = out.view(B, h // window, w // window, window, window, D).permute(0, 1, 3, 2, 4, 5).reshape(B, h, w, D)
        attn = paper_restore(out, hg, wg).reshape(B, h * w, D)
        x = x + (1 + gc) * conv + (1 + g1) * attn
        x = x + (1 + g2) * swiglu(s, b, rms(x, s[b + "norm2.weight"]) * (1 + sc2) + sh2)
    return final(s, x, c, patch, h, w)


def official_lightningdit_forward(s, x, t, y, patch=1):
    """LightningDiT: + fixed sin-cos pos_embed, global attention with EVA RoPE, adaLN-Zero (6·D)."""
    B, _, H, W = x.shape
    h, w = H // patch, W // patch
    x, c = embed(s, x, t, y, patch)
    x = x + s["pos_embed"]
    rope = (s["feat_rope.freqs_cos"], s["feat_rope.freqs_sin"])
    for i in range(DEPTH):
        b = f"blocks.{i}."
        mod = (F.silu(c) @ s[b + "adaLN_modulation.1.weight"].T + s[b + "adaLN_modulation.1.bias"]).chunk(6, -1)
        sh1, sc1, g1, sh2, sc2, g2 = (m[:, None] for m in mod)
        xc = rms(x, s[b + "norm1.weight"]) * (1 + sc1) + sh1
        x = x + g1 * mha(
            xc,
            s[b + "attn.qkv.weight"],
            s[b + "attn.qkv.bias"],
            s[b + "attn.proj.weight"],
            s[b + "attn.proj.bias"],
            rope,
        )
        x = x + g2 * swiglu(s, b, rms(x, s[b + "norm2.weight"]) * (1 + sc2) + sh2)
    return final(s, x, c, patch, h, w)


def inputs(B=2, H=16, W=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, C, H, W, generator=g), torch.rand(B, generator=g), torch.tensor([3, CLASSES])


# ------------------------------------------------------------------ tests


def test_official_flashdit_matches_the_reference_block_equations():
    s = official_state("flashdit")
    model = convert_transformer(s, "flashdit", sample_size=16, num_heads=HEADS, window_size=8)
    cfg = model.config
    assert (cfg.modulation, cfg.window_size, cfg.kernel_size, cfg.pos_embed) == ("flashdit-official", 8, 3, "none")
    x, t, y = inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y).sample, official_flashdit_forward(s, x, t, y), rtol=1e-4, atol=1e-4)


def test_official_flashdit_patch2_and_window_argument():
    s = official_state("flashdit", patch=2, seed=3)
    model = convert_transformer(s, "flashdit", sample_size=32, num_heads=HEADS, window_size=4)
    x, t, y = inputs(H=32, W=32)
    with torch.no_grad():
        ref = official_flashdit_forward(s, x, t, y, window=4, patch=2)
        torch.testing.assert_close(model(x, t, y).sample, ref, rtol=1e-4, atol=1e-4)


def test_lightningdit_matches_the_reference_forward():
    s = official_state("lightningdit")
    model = convert_transformer(s, "lightningdit", sample_size=16, num_heads=HEADS)
    assert (model.config.mixer, model.config.pos_embed, model.config.kernel_size) == ("attention", "sincos+rope", None)
    x, t, y = inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            model(x, t, y).sample, official_lightningdit_forward(s, x, t, y), rtol=1e-4, atol=1e-4
        )


def test_every_key_must_be_used_and_filled():
    s = official_state("flashdit")
    extra = {**s, "blocks.0.attn.rel_bias": torch.zeros(3)}
    with pytest.raises(ConversionError, match=r"source keys left over \(1\): \['blocks.0.mixer.attn.rel_bias'\]"):
        convert_transformer(extra, "flashdit", num_heads=HEADS)
    missing = {k: v for k, v in s.items() if k != "blocks.1.attn.proj.bias"}
    with pytest.raises(ConversionError, match=r"target keys not filled \(1\): \['blocks.1.mixer.attn.proj.bias'\]"):
        convert_transformer(missing, "flashdit", num_heads=HEADS)
    wrong = {**s, "blocks.0.dwconv.depthwise.bias": torch.zeros(D + 1)}
    with pytest.raises(ConversionError, match="shape mismatches"):
        convert_transformer(wrong, "flashdit", num_heads=HEADS)
    with pytest.raises(ConversionError, match="looks like a LightningDiT checkpoint"):
        convert_transformer(official_state("lightningdit"), "flashdit", num_heads=HEADS)
    wo_shift = official_state("lightningdit")  # LightningDiT's wo_shift=True: 4·D, neither kind
    for i in range(DEPTH):
        wo_shift[f"blocks.{i}.adaLN_modulation.1.weight"] = torch.zeros(4 * D, D)
        wo_shift[f"blocks.{i}.adaLN_modulation.1.bias"] = torch.zeros(4 * D)
    with pytest.raises(ConversionError, match=r"6·D modulation, this one has 4·D \(wo_shift\?\)"):
        convert_transformer(wo_shift, "lightningdit", num_heads=HEADS)
    bad_pos = {**official_state("lightningdit"), "pos_embed": torch.randn(1, 256, D)}
    with pytest.raises(ConversionError, match="not the fixed 2-D sin-cos table"):
        convert_transformer(bad_pos, "lightningdit", num_heads=HEADS)
    with pytest.raises(ConversionError, match="not a registry size; pass --num-heads"):
        convert_transformer(s, "flashdit")


def test_checkpoint_files_prefer_ema_and_reject_bad_files(tmp_path):
    a, b = official_state("flashdit", seed=1), official_state("flashdit", seed=2)
    torch.save({"model": a, "ema": b, "opt": {"step": 3}}, tmp_path / "ckpt.pt")
    loaded = load_state_dict(tmp_path / "ckpt.pt")
    assert torch.equal(loaded["blocks.0.attn.qkv.weight"], b["blocks.0.attn.qkv.weight"])
    torch.save({"model": {f"module.{k}": v for k, v in a.items()}}, tmp_path / "ddp.pt")
    assert torch.equal(load_state_dict(tmp_path / "ddp.pt")["x_embedder.proj.weight"], a["x_embedder.proj.weight"])
    raw = (tmp_path / "ckpt.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ConversionError, match="could not read .*cut.pt"):
        load_state_dict(tmp_path / "cut.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ConversionError, match="not a state dict"):
        load_state_dict(tmp_path / "list.pt")
    with pytest.raises(FileNotFoundError):
        load_state_dict(tmp_path / "none.pt")


# ------------------------------------------------------------------ VA-VAE


def ldm_vae_state(ch=8, ch_mult=(1, 1, 2), z=4, num_res_blocks=1, attn_levels=(2,), seed=0):
    """Key names and shapes of LDM's Encoder/Decoder (taming/ldm ``AutoencoderKL``)."""
    g = torch.Generator().manual_seed(seed)
    s = {}

    def conv(name, cin, cout, k):
        s[name + ".weight"] = torch.randn(cout, cin, k, k, generator=g) * 0.1
        s[name + ".bias"] = torch.randn(cout, generator=g) * 0.1

    def norm(name, c):
        s[name + ".weight"] = 1 + torch.randn(c, generator=g) * 0.1
        s[name + ".bias"] = torch.randn(c, generator=g) * 0.1

    def resnet(name, cin, cout):
        norm(name + ".norm1", cin)
        conv(name + ".conv1", cin, cout, 3)
        norm(name + ".norm2", cout)
        conv(name + ".conv2", cout, cout, 3)
        if cin != cout:
            conv(name + ".nin_shortcut", cin, cout, 1)

    def attn(name, c):
        norm(name + ".norm", c)
        for p in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{p}", c, c, 1)

    levels = len(ch_mult)
    conv("encoder.conv_in", 3, ch, 3)
    cin = ch
    for i, m in enumerate(ch_mult):
        for j in range(num_res_blocks):
            resnet(f"encoder.down.{i}.block.{j}", cin, ch * m)
            cin = ch * m
            if i in attn_levels:
                attn(f"encoder.down.{i}.attn.{j}", cin)
        if i != levels - 1:
            conv(f"encoder.down.{i}.downsample.conv", cin, cin, 3)
    for part in ("encoder", "decoder"):
        c_mid = ch * ch_mult[-1]
        resnet(f"{part}.mid.block_1", c_mid, c_mid)
        attn(f"{part}.mid.attn_1", c_mid)
        resnet(f"{part}.mid.block_2", c_mid, c_mid)
    norm("encoder.norm_out", cin)
    conv("encoder.conv_out", cin, 2 * z, 3)
    conv("quant_conv", 2 * z, 2 * z, 1)
    conv("post_quant_conv", z, z, 1)
    conv("decoder.conv_in", z, ch * ch_mult[-1], 3)
    cin = ch * ch_mult[-1]
    for i in reversed(range(levels)):
        for j in range(num_res_blocks + 1):
            resnet(f"decoder.up.{i}.block.{j}", cin, ch * ch_mult[i])
            cin = ch * ch_mult[i]
            if i in attn_levels:
                attn(f"decoder.up.{i}.attn.{j}", cin)
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv", cin, cin, 3)
    norm("decoder.norm_out", cin)
    conv("decoder.conv_out", cin, 3, 3)
    return s


TINY_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(8, 8, 16),
    layers_per_block=1,
    norm_num_groups=4,
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
    up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"),
)


def test_vae_conversion_places_every_tensor_and_decodes():
    s = ldm_vae_state()
    s["loss.discriminator.weight"] = torch.zeros(3)  # training-only: dropped and reported
    vae = convert_vae(s, TINY_VAE)
    assert vae.dropped_keys == ["loss.discriminator.weight"]
    sd = vae.state_dict()
    # LDM up level 0 (full resolution) is diffusers' last up block; attention 1x1 convs become linears
    assert torch.equal(sd["decoder.up_blocks.2.resnets.1.conv1.weight"], s["decoder.up.0.block.1.conv1.weight"])
    assert torch.equal(
        sd["decoder.up_blocks.0.attentions.0.to_q.weight"], s["decoder.up.2.attn.0.q.weight"][:, :, 0, 0]
    )
    assert torch.equal(sd["encoder.down_blocks.2.attentions.0.group_norm.bias"], s["encoder.down.2.attn.0.norm.bias"])
    assert torch.equal(sd["encoder.mid_block.resnets.1.conv2.weight"], s["encoder.mid.block_2.conv2.weight"])
    with torch.no_grad():
        img = vae.decode(torch.randn(1, 4, 6, 5)).sample
        lat = vae.encode(torch.randn(1, 3, 24, 20)).latent_dist.mode()
    assert img.shape == (1, 3, 24, 20) and lat.shape == (1, 4, 6, 5)
    with pytest.raises(ConversionError, match="left over"):
        convert_vae({**ldm_vae_state(), "linear_head.weight": torch.zeros(2)}, TINY_VAE)
    with pytest.raises(ConversionError, match="not filled"):
        convert_vae({k: v for k, v in ldm_vae_state().items() if "quant_conv" not in k}, TINY_VAE)


def test_cli_writes_a_complete_pipeline_with_authors_settings(tmp_path):
    torch.save({"ema": official_state("flashdit", num_classes=1000)}, tmp_path / "flashdit.pt")
    torch.save({"state_dict": ldm_vae_state()}, tmp_path / "vae.pt")
    mean, std = torch.linspace(-0.5, 0.5, 4).view(1, 4, 1, 1), torch.linspace(1, 2, 4).view(1, 4, 1, 1)
    torch.save({"mean": mean, "std": std}, tmp_path / "stats.pt")
    assert load_latent_stats(tmp_path / "stats.pt") == (mean.flatten().tolist(), std.flatten().tolist())
    (tmp_path / "vae.json").write_text(json.dumps(TINY_VAE))
    convert_main(
        [
            "flashdit",
            "--ckpt",
            str(tmp_path / "flashdit.pt"),
            "--vae",
            str(tmp_path / "vae.pt"),
            "--vae-config",
            str(tmp_path / "vae.json"),
            "--stats",
            str(tmp_path / "stats.pt"),
            "--num-heads",
            str(HEADS),
            "--out",
            str(tmp_path / "p"),
        ]
    )
    pipe = FlashDiTPipeline.from_pretrained(tmp_path / "p")
    assert pipe.config.sampling == AUTHORS_SAMPLING["flashdit"]
    assert pipe.get_label_ids("golden retriever") == [207] and pipe.config.latents_std == pytest.approx(
        std.flatten().tolist()
    )
    z = torch.randn(1, 4, 4, 4)
    expected = pipe.vae.decode(z * std + mean).sample
    torch.testing.assert_close(pipe.decode_latents(z), expected)
    images = pipe(207, num_inference_steps=1, height=64, width=48, output_type="pt").images
    assert images.shape == (1, 3, 64, 48)


# ------------------------------------------------------------------ command-line errors, one line each


def cli_error(capsys, argv: list[str], match: str) -> str:
    """``python -m flashdit.convert`` with ``argv``: exit status 2 and one stderr line, no traceback, holding
    ``match``."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run(convert_main, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ": error: " in err[0] and "Traceback" not in err[0], err
    assert match in err[0], err[0]
    return err[0]


def save(tmp_path, name, checkpoint) -> str:
    torch.save(checkpoint, tmp_path / name)
    return str(tmp_path / name)


def lightningdit_training_checkpoint(**train):
    """The layout of LightningDiT's train.py checkpoints: model, ema, the AdamW state and the YAML recipe."""
    state = official_state("lightningdit")
    params = [torch.nn.Parameter(v.clone()) for v in list(state.values())[:3]]
    opt = torch.optim.AdamW(params, lr=2e-4, betas=(0.9, 0.95))
    sum(p.sum() for p in params).backward()
    opt.step()
    config = {
        "model": {"model_type": "LightningDiT-XL/1", "use_swiglu": True, "wo_shift": False},
        "train": {"global_batch_size": 1024, "ckpt_every": 20000, **train},
        "sample": {"cfg_scale": 8.0, "cfg_interval_start": 0.11},
    }
    return {"model": state, "ema": state, "opt": opt.state_dict(), "config": config}


def test_cli_refuses_a_plain_mlp_in_one_line(tmp_path, capsys):
    for kind in ("flashdit", "lightningdit"):
        s = official_state(kind)
        for i in range(DEPTH):  # DiT's GELU MLP in place of SwiGLU
            b = f"blocks.{i}.mlp."
            for name in ("w12", "w3"):
                del s[f"{b}{name}.weight"], s[f"{b}{name}.bias"]
            s.update({b + "fc1.weight": torch.zeros(4 * D, D), b + "fc1.bias": torch.zeros(4 * D)})
            s.update({b + "fc2.weight": torch.zeros(D, 4 * D), b + "fc2.bias": torch.zeros(D)})
        ckpt = save(tmp_path, f"{kind}.pt", {"ema": s})
        argv = [kind, "--ckpt", ckpt, "--num-heads", str(HEADS), "--epochs", "64", "--out", str(tmp_path / kind)]
        cli_error(
            capsys, argv, "the blocks' MLP is mlp.fc1, mlp.fc2, not SwiGLU: only the SwiGLU MLP (mlp.w12, mlp.w3)"
        )
        assert not (tmp_path / kind).exists()


def test_cli_names_the_kind_of_a_checkpoint_given_to_the_other_converter(tmp_path, capsys):
    lightning = save(tmp_path, "lightningdit.pt", lightningdit_training_checkpoint(max_steps=80000))
    flash = save(tmp_path, "flashdit.pt", {"ema": official_state("flashdit")})
    line = cli_error(
        capsys,
        ["flashdit", "--ckpt", lightning, "--num-heads", str(HEADS), "--out", str(tmp_path / "a")],
        "this looks like a LightningDiT checkpoint (6·D adaLN modulation, pos_embed, feat_rope.freqs_cos, no "
        "depthwise conv), not a FlashDiT one: use `python -m flashdit.convert lightningdit`",
    )
    assert "wo_shift" not in line
    line = cli_error(  # named so before --epochs is asked for
        capsys,
        ["lightningdit", "--ckpt", flash, "--num-heads", str(HEADS), "--out", str(tmp_path / "b")],
        "this looks like a FlashDiT checkpoint (a depthwise conv in each block, 7·D adaLN modulation), not a "
        "LightningDiT one: use `python -m flashdit.convert flashdit`",
    )
    assert "wo_shift" not in line


def test_cli_refuses_a_window_that_does_not_divide_the_grid(tmp_path, capsys):
    """The official FlashDiT splits its token grid into whole windows; a window of 5 on 16 tokens would be padded
    here and compute something else."""
    ckpt = save(tmp_path, "flashdit.pt", {"ema": official_state("flashdit")})
    base = ["flashdit", "--ckpt", ckpt, "--num-heads", str(HEADS), "--out", str(tmp_path / "p")]
    cli_error(
        capsys,
        [*base, "--window-size", "5"],
        "--window-size 5 does not divide the checkpoint's 16x16 token grid (--sample-size 16, patch 1): the official "
        "FlashDiT needs whole windows; choose one of [1, 2, 4, 8, 16]",
    )
    cli_error(capsys, [*base, "--sample-size", "12"], "--window-size 8 does not divide the checkpoint's 12x12")
    cli_error(capsys, [*base, "--window-size", "0"], "--window-size 0 does not divide")
    patch2 = save(tmp_path, "patch2.pt", {"ema": official_state("flashdit", patch=2)})
    argv = ["flashdit", "--ckpt", patch2, "--num-heads", str(HEADS), "--out", str(tmp_path / "q")]
    cli_error(
        capsys, [*argv, "--sample-size", "33"], "--sample-size 33 is not a positive multiple of the checkpoint's"
    )
    cli_error(
        capsys,  # the grid counts tokens: 8 latent pixels in patches of 2 are 4 tokens, fewer than the window
        [*argv, "--sample-size", "8"],
        "--window-size 8 does not divide the checkpoint's 4x4 token grid (--sample-size 8, patch 2)",
    )
    assert not (tmp_path / "p").exists() and not (tmp_path / "q").exists()


@pytest.mark.parametrize(
    "train,epochs",
    [
        (dict(max_steps=80_000), 64),  # the 64-epoch recipe: 80,000 steps of 1,024 images
        (dict(max_steps=1_000_000), 800),  # 799.3 passes over ImageNet's 1,281,167 training images
        (dict(max_steps=40_000, global_batch_size=2048), 64),
        (dict(epochs=800), 800),
    ],
)
def test_lightningdit_release_is_read_from_the_checkpoint_config(tmp_path, capsys, train, epochs):
    ckpt = save(tmp_path, "lightningdit.pt", lightningdit_training_checkpoint(**train))
    argv = ["lightningdit", "--ckpt", ckpt, "--num-heads", str(HEADS), "--out", str(tmp_path / "p")]
    convert_main(argv)
    assert (
        FlashDiTPipeline.from_pretrained(tmp_path / "p").config.sampling == AUTHORS_SAMPLING[f"lightningdit-{epochs}"]
    )
    assert f"lightningdit-{epochs}" in capsys.readouterr().out
    convert_main([*argv, "--epochs", str(epochs)])  # the flag may repeat what the checkpoint says


def test_lightningdit_release_needs_the_flag_when_the_checkpoint_does_not_say(tmp_path, capsys):
    bare = save(tmp_path, "bare.pt", {"ema": official_state("lightningdit")})
    out = tmp_path / "p"
    argv = ["lightningdit", "--num-heads", str(HEADS), "--out", str(out), "--ckpt"]
    cli_error(
        capsys,
        [*argv, bare],
        f"{bare} does not record its training length: pass --epochs 64 or --epochs 800, the LightningDiT release",
    )
    odd = save(tmp_path, "odd.pt", lightningdit_training_checkpoint(max_steps=375_000))  # 300 epochs: no release
    cli_error(capsys, [*argv, odd], f"{odd} records 300 epochs: pass --epochs 64 or --epochs 800")
    assert not out.exists()
    long = save(tmp_path, "long.pt", lightningdit_training_checkpoint(max_steps=1_000_000))
    cli_error(
        capsys,
        [*argv, long, "--epochs", "64"],
        f"--epochs 64 contradicts {long}, whose training config records 800 epochs (799.3); pass --epochs 800 or "
        "leave it out",
    )
    assert not out.exists()
    for path, epochs in ((bare, 64), (odd, 800)):  # the flag decides what the checkpoint does not
        convert_main([*argv, path, "--epochs", str(epochs)])
        assert FlashDiTPipeline.from_pretrained(out).config.sampling == AUTHORS_SAMPLING[f"lightningdit-{epochs}"]


# ------------------------------------------------------------------ FlashDiTPipeline.from_single_file


def test_from_single_file_is_the_converter_in_python(tmp_path, monkeypatch):
    """The same pipeline as ``python -m flashdit.convert``, the kind told from the keys, the VAE given as a module
    or a file, and a Hub file path resolved through ``hf_hub_download``."""
    torch.save({"ema": official_state("flashdit", num_classes=1000)}, tmp_path / "flashdit.pt")
    torch.save({"state_dict": ldm_vae_state()}, tmp_path / "vae.pt")
    convert_main(
        ["flashdit", "--ckpt", str(tmp_path / "flashdit.pt"), "--num-heads", str(HEADS), "--out", str(tmp_path / "p")]
    )
    by_cli = FlashDiTPipeline.from_pretrained(tmp_path / "p")
    pipe = FlashDiTPipeline.from_single_file(tmp_path / "flashdit.pt", num_heads=HEADS)  # kind from the keys
    assert pipe.config.sampling == AUTHORS_SAMPLING["flashdit"] == by_cli.config.sampling
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(pipe.transformer.config) == public(by_cli.transformer.config)
    for k, v in by_cli.transformer.state_dict().items():
        torch.testing.assert_close(pipe.transformer.state_dict()[k], v, rtol=0, atol=0)

    vae = convert_vae(load_state_dict(tmp_path / "vae.pt"), TINY_VAE)
    with_vae = FlashDiTPipeline.from_single_file(
        tmp_path / "flashdit.pt", num_heads=HEADS, vae=vae, latents_stats=([0.0] * 4, [2.0] * 4)
    )
    assert with_vae.vae is vae and with_vae.config.latents_std == [2.0] * 4
    from_file = FlashDiTPipeline.from_single_file(
        tmp_path / "flashdit.pt", num_heads=HEADS, vae=tmp_path / "vae.pt", vae_config=TINY_VAE
    )
    for k, v in vae.state_dict().items():
        torch.testing.assert_close(from_file.vae.state_dict()[k], v, rtol=0, atol=0)

    asked = []

    def fake_download(repo, filename, revision=None, **kwargs):
        asked.append((repo, filename, revision))
        return str(tmp_path / "flashdit.pt")

    monkeypatch.setattr("flashdit.pipeline.hf_hub_download", fake_download)
    FlashDiTPipeline.from_single_file(
        "https://huggingface.co/owner/flashdit-xl/blob/v1/ckpt/flashdit-xl.pt", num_heads=HEADS
    )
    FlashDiTPipeline.from_single_file("owner/flashdit-xl/flashdit-xl.pt", num_heads=HEADS)
    assert asked == [("owner/flashdit-xl", "ckpt/flashdit-xl.pt", "v1"), ("owner/flashdit-xl", "flashdit-xl.pt", None)]


def test_from_single_file_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at /nowhere/x.pt"):
        FlashDiTPipeline.from_single_file("/nowhere/x.pt")
    state = official_state("flashdit")
    state["blocks.0.adaLN_modulation.1.weight"] = state["blocks.0.adaLN_modulation.1.weight"][: 5 * D]
    torch.save(state, tmp_path / "odd.pt")
    with pytest.raises(ConversionError, match="neither an official FlashDiT nor a LightningDiT checkpoint"):
        FlashDiTPipeline.from_single_file(tmp_path / "odd.pt")
    torch.save(official_state("lightningdit"), tmp_path / "ldit.pt")
    with pytest.raises(ConversionError, match="looks like a LightningDiT checkpoint"):
        FlashDiTPipeline.from_single_file(tmp_path / "ldit.pt", kind="flashdit")
    with pytest.raises(ConversionError, match="does not record its training length"):
        FlashDiTPipeline.from_single_file(tmp_path / "ldit.pt", num_heads=HEADS)
    pipe = FlashDiTPipeline.from_single_file(tmp_path / "ldit.pt", num_heads=HEADS, epochs=64)
    assert pipe.config.sampling == AUTHORS_SAMPLING["lightningdit-64"]
