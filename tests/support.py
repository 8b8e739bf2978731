"""Helpers shared by the test modules (tests never import each other; they import this module and conftest's
fixtures): fixture paths, the real-photo collections the shared indexes are built from, starting ``lookalike app`` /
``lookalike serve`` on a free port, Chromium's flags, small image helpers, and random weights in the official
DreamSim on-disk formats (design/dreamsim-spec.md §8, §10.3). ``bench/screenshots.py`` uses the same helpers.

The weights' layout is a dreamsim cache folder: what the release zips extract to, plus torch.hub's ``checkpoints/`` and
hubconf folders for DINO / DINOv2 whose ``hubconf.py`` builds the upstream architectures (DreamSim's own copy of
DINO's ViT; the ``dinov2`` package for DINOv2) and loads the files written here. Both the reference package and
lookalike read the same files.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch
from PIL import Image, ImageEnhance
from safetensors.torch import save_file

FIXTURES = Path(__file__).parent / "fixtures"
DEMO = FIXTURES / "dreamsim-demo"
PHOTOS = FIXTURES / "photos"
SHARED = Path(__file__).resolve().parents[2] / "shared"

#: Debian's chromium (``.ci/install-system.sh``), never a browser downloaded by Playwright, with the flags this
#: machine needs (no sandbox as root, no background network: the machine has none).
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: Where browser tests leave their screenshots, and how long they wait for the app (first runs load a model).
SCREENSHOTS = Path(__file__).resolve().parents[1] / "test-output" / "screenshots"
BROWSER_TIMEOUT_MS = 60_000


def playwright_or_skip() -> ModuleType:
    """Playwright's sync API for a browser test module, or skip the module when Debian's chromium is missing
    (an error under CI, which installs it with ``.ci/install-system.sh``)."""
    if not CHROMIUM.is_file():
        if os.environ.get("CI"):
            raise RuntimeError(f"{CHROMIUM} is missing; CI must run .ci/install-system.sh first")
        pytest.skip(f"{CHROMIUM} not installed (run .ci/install-system.sh)", allow_module_level=True)
    return pytest.importorskip("playwright.sync_api")


@contextlib.contextmanager
def browser_page(browser: object, width: int, height: int, **context: object) -> Iterator[object]:
    """A page in a fresh browser context of the given viewport (``context``: more ``new_context`` options), with the
    browser tests' timeout; the context is closed afterwards."""
    ctx = browser.new_context(viewport={"width": width, "height": height}, **context)  # type: ignore[attr-defined]
    try:
        page = ctx.new_page()
        page.set_default_timeout(BROWSER_TIMEOUT_MS)
        yield page
    finally:
        ctx.close()


def screenshot(page: object, name: str) -> None:
    """A full-page screenshot in ``SCREENSHOTS`` after the page has settled for half a second."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(500)  # type: ignore[attr-defined]
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)  # type: ignore[attr-defined]

#: The photo indexed with an edited copy in ``photo_collection``: the known duplicate group.
DUP_OF = "bsd68_101085.jpg"
DUP_EDITED = "edits/bsd68_101085_edited.jpg"
#: The six photos that ``pairs_collection`` indexes with an edited copy of each (six duplicate groups).
PAIR_NAMES = ["bsd68_101085.jpg", "bsd68_102061.jpg", "bsd68_108070.jpg", "sunhays_beach_sun_bgtlposotyokcsdg.jpg",
              "sunhays_barn_sun_btulbiaoilnxcseh.jpg", "sunhays_butte_sun_aidickeaxixvkuxv.jpg"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def edited_copy(img: Image.Image) -> Image.Image:
    """A 5 % border crop and +15 % brightness: the near-duplicate the app, service and dedup tests look for."""
    w, h = img.size
    return ImageEnhance.Brightness(img.crop((w // 20, h // 20, w - w // 20, h - h // 20))).enhance(1.15)


def photo_collection(base: Path) -> dict[str, Path]:
    """The 24 fixture photos in ``base/photos`` plus an edited copy of ``DUP_OF`` in ``photos/edits`` (25 images),
    and ``base/outside.jpg``: a real photo that is never indexed. Nothing is indexed here."""
    from lookalike.data.images import open_image

    photos = base / "photos"
    shutil.copytree(PHOTOS, photos, ignore=shutil.ignore_patterns("*.md"))
    (photos / "edits").mkdir()
    edited_copy(open_image(PHOTOS / DUP_OF)).save(photos / DUP_EDITED, quality=90)
    shutil.copy(PHOTOS / "bsd68_103070.jpg", base / "outside.jpg")
    return {"base": base, "photos": photos, "outside": base / "outside.jpg"}


def pairs_collection(base: Path) -> dict[str, Path]:
    """``PAIR_NAMES`` in ``base/photos`` and an edited copy of each under the same name in ``photos/edits``."""
    from lookalike.data.images import open_image

    photos = base / "photos"
    (photos / "edits").mkdir(parents=True)
    for n in PAIR_NAMES:
        shutil.copy(PHOTOS / n, photos / n)
        edited_copy(open_image(PHOTOS / n)).save(photos / "edits" / n, quality=90)
    return {"base": base, "photos": photos}


def card_text(markdown: str) -> str:
    """A Search result card's Markdown as a test reads it: the rank line, a newline, then the folder and the file
    name as shown ("photos/edits/x.jpg": the root's name, the folders under it, the name), HTML taken out."""
    import html
    import re

    head, _, rest = markdown.partition("<span")
    shown = "".join(re.findall(r'class="ll-(?:folder|name)">([^<]*)</span>', "<span" + rest))
    return f"{head}\n{html.unescape(shown)}"


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 - 127.0.0.1 only
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


class ServerFailed(RuntimeError):
    """A ``lookalike`` server did not come up; the message holds its log."""


@contextlib.contextmanager
def run_lookalike_server(command: str, index_dir: Path, log_path: Path, *extra: str, health: str,
                         env: dict[str, str] | None = None, timeout: float = 120,
                         allow_traceback: bool = True, drop_env: tuple[str, ...] = ()) -> Iterator[str]:
    """``lookalike COMMAND --index DIR --port FREE EXTRA...`` in its own process group on 127.0.0.1.

    Waits until ``GET URL+health`` answers 200 and the server has printed ``lookalike COMMAND: URL``, yields the URL,
    and stops the whole process group at the end (SIGTERM, SIGKILL after 15 s). With ``allow_traceback=False`` a
    traceback in the server's log fails the caller when the server stops.

    Raises:
        ServerFailed: the server exited or did not answer within ``timeout`` seconds (its log is in the message).
    """
    port = free_port()
    log = open(log_path, "w+b")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "lookalike.app.cli", command, "--index", str(index_dir),
                             "--port", str(port), *extra], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True,
                            env={**{k: v for k, v in os.environ.items() if k not in drop_env}, **(env or {})})
    url = f"http://127.0.0.1:{port}"

    def text() -> str:
        log.flush()
        log.seek(0)
        return log.read().decode(errors="replace")

    try:
        deadline = time.monotonic() + timeout
        while not (_http_ok(url + health) and f"lookalike {command}: {url}" in text()):
            if proc.poll() is not None:
                raise ServerFailed(f"lookalike {command} exited with {proc.returncode}:\n{text()}")
            if time.monotonic() > deadline:
                raise ServerFailed(f"lookalike {command} did not answer {health} within {timeout:.0f} s:\n{text()}")
            time.sleep(0.3)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        logged = text()
        log.close()
    if not allow_traceback and "Traceback" in logged:
        raise AssertionError(f"lookalike {command} logged a traceback:\n{logged[-3000:]}")


def run_app(index_dir: Path, log_path: Path, *extra: str, env: dict[str, str] | None = None
            ) -> contextlib.AbstractContextManager[str]:
    """``lookalike app --index DIR`` on a free port (``run_lookalike_server``): yields its URL."""
    return run_lookalike_server("app", index_dir, log_path, *extra, health="/_stcore/health", env=env, timeout=90)


#: Environment of a served process: fp32 on every CPU, so the numbers it returns (upload embeddings) match the fp32
#: indexes the tests build whatever the CPU's bf16 support.
PINNED = {"LOOKALIKE_CPU_BF16": "0"}


def run_service(index_dir: Path, log_path: Path, *extra: str, env: dict[str, str] | None = None
                ) -> contextlib.AbstractContextManager[str]:
    """``lookalike serve --index DIR`` on a free port (``run_lookalike_server``), pinned to fp32 (``PINNED``) and
    without the caller's ``LOOKALIKE_SERVE_TOKEN``: yields its URL; a traceback in its log fails the test."""
    return run_lookalike_server("serve", index_dir, log_path, *extra, health="/health", env={**PINNED, **(env or {})},
                                allow_traceback=False, timeout=180, drop_env=("LOOKALIKE_SERVE_TOKEN",))


def jpeg_bytes(img: Image.Image, *, quality: int = 90, **kw: object) -> bytes:
    """``img`` encoded as a JPEG file in memory."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, **kw)
    return buf.getvalue()

VARIANT_ADAPTERS = {
    "ensemble": ("ensemble_lora", 3),
    "dino_vitb16": ("dino_vitb16_single_lora", 1),
    "clip_vitb32": ("clip_vitb32_single_lora", 1),
    "open_clip_vitb32": ("open_clip_vitb32_single_lora", 1),
    "dinov2_vitb14": ("dinov2_vitb14_single_lora", 1),
    "synclr_vitb16": ("synclr_vitb16_single_lora", 1),
    "dino_vitb16_patch": ("dino_vitb16_patch_lora", 1),
    "dinov2_vitb14_patch": ("dinov2_vitb14_patch_lora", 1),
}
# lookalike name -> reference (dreamsim_type, use_patch_model)
LOOKALIKE_TO_REFERENCE = {
    "dreamsim": ("ensemble", False),
    "dreamsim_dino_vitb16": ("dino_vitb16", False),
    "dreamsim_clip_vitb32": ("clip_vitb32", False),
    "dreamsim_open_clip_vitb32": ("open_clip_vitb32", False),
    "dreamsim_dinov2_vitb14": ("dinov2_vitb14", False),
    "dreamsim_synclr_vitb16": ("synclr_vitb16", False),
    "dreamsim_dino_vitb16_patch": ("dino_vitb16", True),
    "dreamsim_dinov2_vitb14_patch": ("dinov2_vitb14", True),
}

DINO_HUBCONF = '''
import os
import pytest
import torch
from dreamsim.feature_extraction.vision_transformer import vit_base

dependencies = ["torch"]


def dino_vitb16(pretrained=True, **kwargs):
    model = vit_base(patch_size=16, num_classes=0, **kwargs)
    if pretrained:
        path = os.path.join(torch.hub.get_dir(), "checkpoints", "dino_vitbase16_pretrain.pth")
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return model
'''

DINOV2_HUBCONF = '''
import os
import pytest
import torch
from dinov2.models.vision_transformer import vit_base

dependencies = ["torch"]


def dinov2_vitb14(pretrained=True, **kwargs):
    model = vit_base(patch_size=14, img_size=518, init_values=1.0, block_chunks=0, **kwargs)
    if pretrained:
        path = os.path.join(torch.hub.get_dir(), "checkpoints", "dinov2_vitb14_pretrain.pth")
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return model
'''


def _randomize(sd: dict[str, torch.Tensor], g: torch.Generator) -> dict[str, torch.Tensor]:
    """Random values with the right shapes: non-trivial LayerNorm affine, small biases, std-0.02 weights."""
    out = {}
    for k, v in sd.items():
        if k.endswith(".weight") and v.dim() == 1:  # LayerNorm scale
            t = 1.0 + 0.1 * torch.randn(v.shape, generator=g)
        elif k.endswith("gamma"):  # LayerScale
            t = 0.5 + 0.1 * torch.randn(v.shape, generator=g)
        elif k.endswith("bias"):
            t = 0.02 * torch.randn(v.shape, generator=g)
        elif k in ("cls_token", "pos_embed", "mask_token"):
            t = 0.2 * torch.randn(v.shape, generator=g)
        else:
            t = 0.02 * torch.randn(v.shape, generator=g)
        out[k] = t.to(v.dtype).contiguous()
    return out


def _dino_like_sd(patch_size: int, g: torch.Generator, *, ln_pre: bool) -> dict[str, torch.Tensor]:
    from dreamsim.feature_extraction.vision_transformer import vit_base

    vit = vit_base(patch_size=patch_size)
    if ln_pre:
        vit.pos_drop = torch.nn.LayerNorm(768)
    return _randomize(vit.state_dict(), g)


def _dinov2_sd(g: torch.Generator) -> dict[str, torch.Tensor]:
    from dinov2.models.vision_transformer import vit_base

    return _randomize(vit_base(patch_size=14, img_size=518, init_values=1.0, block_chunks=0).state_dict(), g)


def write_adapter(folder: Path, branches: int, g: torch.Generator, *, alpha: float, dropout: float) -> None:
    """A peft LoRA adapter (r 16) with non-zero A and B on every qkv of ``branches`` ViT-B towers."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for k in range(branches):
        for i in range(12):
            base = f"base_model.model.extractor_list.{k}.model.blocks.{i}.attn.qkv"
            tensors[f"{base}.lora_A.weight"] = 0.05 * torch.randn(16, 768, generator=g)
            tensors[f"{base}.lora_B.weight"] = 0.05 * torch.randn(2304, 16, generator=g)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    cfg = {
        "alpha_pattern": {},
        "auto_mapping": {"base_model_class": "PerceptualModel", "parent_library": "dreamsim.model"},
        "base_model_name_or_path": None, "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
        "init_lora_weights": True, "layer_replication": None, "layers_pattern": None, "layers_to_transform": None,
        "loftq_config": {}, "lora_alpha": alpha, "lora_dropout": dropout, "megatron_config": None,
        "megatron_core": "megatron.core", "modules_to_save": None, "peft_type": "LORA", "r": 16, "rank_pattern": {},
        "revision": None, "target_modules": ["qkv"], "task_type": None, "use_dora": False, "use_rslora": False,
    }
    (folder / "adapter_config.json").write_text(json.dumps(cfg, indent=2))


def write_official_cache(root: Path, variants: list[str], seed: int = 0) -> Path:
    """Write every file the given reference variants need into ``root`` (a dreamsim cache folder)."""
    g = torch.Generator().manual_seed(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "checkpoints").mkdir(exist_ok=True)
    need = set()
    for v in variants:
        need.update({
            "ensemble": {"dino", "clip16", "open_clip16"}, "dino_vitb16": {"dino"}, "dino_vitb16_patch": {"dino"},
            "clip_vitb32": {"clip32"}, "open_clip_vitb32": {"open_clip32"}, "dinov2_vitb14": {"dinov2"},
            "dinov2_vitb14_patch": {"dinov2"}, "synclr_vitb16": {"synclr"},
        }[v])
    if "dino" in need and not (root / "checkpoints" / "dino_vitbase16_pretrain.pth").exists():
        torch.save(_dino_like_sd(16, g, ln_pre=False), root / "checkpoints" / "dino_vitbase16_pretrain.pth")
        head = {"module.head.mlp.0.weight": (2048, 768), "module.head.mlp.0.bias": (2048,),
                "module.head.mlp.2.weight": (2048, 2048), "module.head.mlp.2.bias": (2048,),
                "module.head.mlp.4.weight": (256, 2048), "module.head.mlp.4.bias": (256,),
                "module.head.last_layer.weight": (2048, 256)}
        torch.save({"student": {k: 0.02 * torch.randn(s, generator=g) for k, s in head.items()}},
                   root / "dino_vitb16_pretrain.pth")
        hub = root / "facebookresearch_dino_main"
        hub.mkdir(exist_ok=True)
        (hub / "hubconf.py").write_text(DINO_HUBCONF)
    if "dinov2" in need and not (root / "checkpoints" / "dinov2_vitb14_pretrain.pth").exists():
        torch.save(_dinov2_sd(g), root / "checkpoints" / "dinov2_vitb14_pretrain.pth")
        (root / "dinov2_vitb14_pretrain.pth").write_bytes(b"placeholder: the reference only checks it exists")
        hub = root / "facebookresearch_dinov2_main"
        hub.mkdir(exist_ok=True)
        (hub / "hubconf.py").write_text(DINOV2_HUBCONF)
    for key, fname, patch in (("clip16", "clip_vitb16", 16), ("clip32", "clip_vitb32", 32),
                              ("open_clip16", "open_clip_vitb16", 16), ("open_clip32", "open_clip_vitb32", 32)):
        if key in need and not (root / f"{fname}_pretrain.pth.tar").exists():
            sd = _dino_like_sd(patch, g, ln_pre=True)
            sd["proj"] = 0.05 * torch.randn(768, 512, generator=g)
            torch.save({"state_dict": sd}, root / f"{fname}_pretrain.pth.tar")
    if "synclr" in need and not (root / "synclr_vit_b_16.pth").exists():
        sd = _dino_like_sd(16, g, ln_pre=False)
        torch.save({"model": {"module.visual." + k: v for k, v in sd.items()}}, root / "synclr_vit_b_16.pth")
    for v in variants:
        folder, branches = VARIANT_ADAPTERS[v]
        if not (root / folder).exists():
            alpha, dropout = (1.0, 0.3) if v == "ensemble" else (32.0, 0.2)
            write_adapter(root / folder, branches, g, alpha=alpha, dropout=dropout)
    return root


def load_reference(root: Path, name: str):
    """The reference model and preprocess for a lookalike name, loaded from ``root`` on the CPU."""
    import torch.hub
    from dreamsim import dreamsim

    dtype, patch = LOOKALIKE_TO_REFERENCE[name]
    old = torch.hub.get_dir()
    try:
        model, preprocess = dreamsim(pretrained=True, device="cpu", cache_dir=str(root), dreamsim_type=dtype,
                                     use_patch_model=patch)
    finally:
        torch.hub.set_dir(old)
    return model, preprocess


def error_lines(err: str) -> list[str]:
    """The lines of a command's stderr without its status lines (``loading X...``, ``checking X...``: the CLI says
    what it loads before it works), so that a test can count what an error printed."""
    return [ln for ln in err.strip().splitlines()
            if not (ln.startswith(("loading ", "checking ")) and ln.endswith("..."))]


def copy_photos(dst: Path, n: int, start: int = 0) -> list[Path]:
    """Copy ``n`` fixture photos (sorted, from ``start``) into ``dst``; returns the copies."""
    dst.mkdir(parents=True, exist_ok=True)
    out = []
    for p in sorted(PHOTOS.glob("*.jpg"))[start:start + n]:
        shutil.copy2(p, dst / p.name)
        out.append(dst / p.name)
    return out


#: The held-out split of ``split_collection``: photos under ``train/`` and ``test/``.
SPLIT_TRAIN = ["bsd68_101085", "bsd68_101087", "bsd68_102061", "bsd68_103070", "bsd68_105025"]
SPLIT_TEST = ["sunhays_abbey_sun_asztnlqhlrvirneh", "sunhays_barn_sun_btulbiaoilnxcseh"]


def split_collection(base: Path, *, exact_copy: bool = False) -> dict[str, Path]:
    """A training / held-out split of real photos with copies, indexed with efficientnet_lite0 in fp32:
    ``train/`` holds SPLIT_TRAIN and a brightened copy of the first; ``test/`` holds SPLIT_TEST, a half-size copy of
    bsd68_102061 (a leak) and, with ``exact_copy``, the bytes of bsd68_105025. Returns base, photos and index."""
    from lookalike.indexer import build_index

    photos = base / "photos"
    (photos / "train").mkdir(parents=True)
    (photos / "test").mkdir()
    for name in SPLIT_TRAIN:
        shutil.copyfile(PHOTOS / f"{name}.jpg", photos / "train" / f"{name}.jpg")
    for name in SPLIT_TEST:
        shutil.copyfile(PHOTOS / f"{name}.jpg", photos / "test" / f"{name}.jpg")
    if exact_copy:
        shutil.copyfile(PHOTOS / "bsd68_105025.jpg", photos / "test" / "bsd68_105025.jpg")
    ImageEnhance.Brightness(Image.open(PHOTOS / "bsd68_101085.jpg").convert("RGB")).enhance(1.2).save(
        photos / "train" / "bsd68_101085_bright.jpg", quality=90)
    im = Image.open(PHOTOS / "bsd68_102061.jpg").convert("RGB")
    im.resize((im.width // 2, im.height // 2)).save(photos / "test" / "bsd68_102061_small.jpg", quality=90)
    index = base / "index"
    build_index(photos, index, metric="efficientnet_lite0", dtype="fp32", workers=0, progress=False)
    return {"base": base, "photos": photos, "index": index}
