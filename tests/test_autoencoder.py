"""The autoencoder command (flashdit.autoencoder) and the latent path end to end: autoencoder -> extract -> train.py ->
sample.py / eval_fid.py, through the real command lines on tiny sizes."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from test_bad_inputs import refused, snapshot

import eval_fid
import sample
import train as train_script
from flashdit import autoencoder
from flashdit.extract import main as extract_main
from flashdit.extract import parse_args as extract_args
from flashdit.pipeline import FlashDiTPipeline

ROOT = Path(__file__).resolve().parent.parent

TINY_AE = [
    "model.block_out_channels=[8, 16]",
    "model.norm_num_groups=4",
    "model.latent_channels=2",
    "train.global_batch_size=8",
    "train.log_every=1",
    "train.checkpoint_every=2",
    "train.sample_every=0",
    "train.trackers=[]",
    "train.ema_decay=0.5",
]


def ae_args(out, data, *extra):
    return ["--output-dir", str(out), "--set", f"data.path={data}", *TINY_AE, *extra]


def run_ae(*argv):
    return autoencoder.main(autoencoder.parse_args(list(argv)))


def test_the_loss_is_l1_plus_the_weighted_kl_of_the_posterior_per_pixel():
    torch.manual_seed(0)
    x, rec = torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8)
    mean, logvar = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    cfg = autoencoder.AutoencoderLossConfig(kl_weight=0.3)
    loss, terms = autoencoder.autoencoder_loss(x, rec, mean, logvar, cfg)
    posterior = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    kl = torch.distributions.kl_divergence(posterior, torch.distributions.Normal(0.0, 1.0)).sum(dim=(1, 2, 3))
    torch.testing.assert_close(terms["kl"], kl / 64)  # summed over the latent, divided by the image's pixels
    torch.testing.assert_close(terms["rec"], (rec - x).abs().mean(dim=(1, 2, 3)))
    torch.testing.assert_close(loss, terms["rec"] + 0.3 * kl / 64)
    mse = autoencoder.autoencoder_loss(x, rec, mean, logvar, autoencoder.AutoencoderLossConfig(reconstruction="mse"))
    torch.testing.assert_close(mse[1]["rec"], (rec - x).square().mean(dim=(1, 2, 3)))


def test_psnr_matches_its_definition():
    a = torch.zeros(2, 1, 4, 4)
    b = torch.full((2, 1, 4, 4), 0.2)  # 0.1 apart on [0, 1]: MSE 0.01, 20 dB
    assert autoencoder.psnr(a, b) == pytest.approx(20.0, abs=1e-4)


def test_a_resumed_run_continues_bit_identically_and_exports_an_autoencoderkl(tmp_path, idx_dir):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    run_ae(*ae_args(whole, idx_dir, "train.max_steps=4"))
    run_ae(*ae_args(parts, idx_dir, "train.max_steps=4", "train.stop_after=2"))
    assert not (parts / "vae").exists()
    run_ae(*ae_args(parts, idx_dir, "train.max_steps=4"), "--resume")
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = (load_file(d / "checkpoints" / "step_0000004" / name) for d in (whole, parts))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in (parts / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(whole / "vae")
    ema = load_file(whole / "checkpoints" / "step_0000004" / "ema.safetensors")
    assert all(torch.equal(vae.state_dict()[k[len("vae.") :]], v) for k, v in ema.items())
    z = vae.encode(torch.zeros(1, 1, 32, 32)).latent_dist.mode()
    assert z.shape == (1, 2, 16, 16)  # 32 px to the 16x16 grid
    assert json.loads((whole / "reconstruction.json").read_text())["test_psnr_2000"] > 0


def test_bad_autoencoder_settings_are_one_line_before_any_data(tmp_path, idx_dir, capsys, monkeypatch):
    monkeypatch.setattr(autoencoder, "fashion_mnist", lambda *a, **k: pytest.fail("data loaded"))
    cases = {
        "model.norm_num_groups=5": "model.norm_num_groups=5 must divide every model.block_out_channels",
        "data.kind=latents": "data.kind='latents': the autoencoder trains on images",
        "loss.kl_weight=-1": "loss.kl_weight=-1 must be greater than or equal to 0",
        "model.latent_channels=0": "model.latent_channels=0 must be greater than or equal to 1",
        "model.block_out_channels=[]": "model.block_out_channels=[] must have at least 1 item, not 0",
        "data.pad_to=30": "data.pad_to=30 must be a multiple of 4",
    }
    for override, match in cases.items():
        extra = ["model.block_out_channels=[8, 16, 16]"] if "pad_to" in override else []
        argv = ae_args(tmp_path / "r", idx_dir, *extra, override)
        refused(capsys, autoencoder.main, autoencoder.parse_args, argv, match)
    refused(capsys, autoencoder.main, autoencoder.parse_args, ["--evaluate", str(tmp_path)], "is not a diffusers")


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory, idx_dir):
    """The README's three commands on tiny sizes: autoencoder, extract, train."""
    root = tmp_path_factory.mktemp("latent")
    run_ae(*ae_args(root / "ae", idx_dir, "train.max_steps=2"))
    vae = str(root / "ae" / "vae")
    extract_main(
        extract_args(["--source", str(idx_dir), "--vae", vae, "--resolution", "32", "--out", str(root / "lat")])
    )
    tiny_dit = ["model.hidden_size=32", "model.depth=2", "model.num_heads=2", "train.global_batch_size=8"]
    train_script.main(
        train_script.parse_args(
            [
                "--config",
                str(ROOT / "configs" / "fashion_mnist_latent.yaml"),
                "--output-dir",
                str(root / "dit"),
                "--set",
            ]
            + [f"data.path={root / 'lat'}", "train.max_steps=2", "train.sample_every=0", "train.trackers=[]"]
            + ["sample.num_inference_steps=2", *tiny_dit]
        )
    )
    return root


def test_the_latent_path_end_to_end_through_the_commands(latent_run, tmp_path):
    meta = json.loads((latent_run / "lat" / "metadata.json").read_text())
    assert (meta["latent_channels"], meta["latent_size"], meta["normalization"]) == (2, 16, "mean_std")
    pipe = FlashDiTPipeline.from_pretrained(latent_run / "dit" / "pipeline")
    assert pipe.vae is not None and pipe.vae_scale_factor == 2 and pipe.transformer.config.patch_size == 1
    assert pipe.transformer.config.window_size == 4 and pipe.transformer.config.kernel_size == 3
    assert len(pipe.config.latents_mean) == 2  # the per-channel statistics, applied on decode
    model = str(latent_run / "dit" / "pipeline")
    written = sample.main(sample.parse_args(["--model", model, "--class-labels", "Bag", "--out", str(tmp_path / "s")]))
    assert np.asarray(Image.open(written[0])).shape == (32, 32)  # grey, through the VAE's decoder
    report = eval_fid.main(
        eval_fid.parse_args(
            ["--model", model, "--num-samples", "4", "--metrics", "--quiet"] + ["--out", str(tmp_path / "e")]
        )
    )
    with np.load(tmp_path / "e" / "samples.npz") as data:
        assert data["arr_0"].shape == (4, 32, 32, 3)
    assert report["settings"]["height"] == 32


def test_the_autoencoder_output_follows_the_out_rule(latent_run, tmp_path, idx_dir, capsys):
    out = tmp_path / "run"
    (out / "vae").mkdir(parents=True)
    (out / "vae" / "notes.txt").write_text("mine")
    argv = ae_args(out, idx_dir)
    refused(capsys, autoencoder.main, autoencoder.parse_args, argv, "not a diffusers AutoencoderKL", out)
    assert snapshot(out) == {"vae/notes.txt": b"mine"}


def test_the_readmes_latent_commands_chain_as_written():
    """The README's three latent commands, as a fresh clone runs them: the autoencoder recipe's output is what extract
    reads, extract writes what the latent recipe trains on, at the autoencoder's resolution."""
    import shlex

    from flashdit.autoencoder import AutoencoderConfig
    from flashdit.config import load_config

    text = (ROOT / "README.md").read_text()
    block = text[text.index("**VAE latents") :]
    block = block[block.index("```bash") + 7 : block.index("```", block.index("```bash") + 7)]
    commands = [shlex.split(c) for c in block.replace("\\\n", " ").strip().splitlines()]
    assert [c[:2] for c in commands] == [["accelerate", "launch"], ["python", "-m"], ["accelerate", "launch"]]
    ae, extract, train = commands
    assert ae[ae.index("-m") + 1] == "flashdit.autoencoder" and "train.py" in train
    ae_cfg = load_config(ROOT / ae[ae.index("--config") + 1], cls=AutoencoderConfig)
    dit_cfg = load_config(ROOT / train[train.index("--config") + 1])

    def flag(name):
        return extract[extract.index(name) + 1]

    assert flag("--vae") == f"{ae_cfg.train.output_dir}/vae"
    assert flag("--out") == dit_cfg.data.path
    assert int(flag("--resolution")) == ae_cfg.data.pad_to == 32
    assert (dit_cfg.model.patch_size, dit_cfg.model.window_size, dit_cfg.model.kernel_size) == (1, 4, 3)
