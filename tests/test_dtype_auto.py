"""Speed by default: ``dtype="auto"`` (detection, defaults, the dtype recorded per build and mixing warnings), the
core plan of an indexing run, channels_last CNNs and the fused attention kernel. CUDA-only checks are marked gpu."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
import torch
from PIL import Image

from lookalike.app.cli import main
from lookalike.indexer import build_index, index_info, open_index
from lookalike.indexer._cores import CorePlan, plan_cores, torch_threads
from lookalike.metric import has_native_bf16, load_metric, resolve_dtype
from lookalike.metric._precision import ENV_CPU_BF16, cpu_has_native_bf16, parse_cpu_flags

PHOTOS = Path(__file__).parent / "fixtures" / "photos"

SAPPHIRE_RAPIDS = ("processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 "
                   "amx_bf16 amx_tile amx_int8\n\nprocessor\t: 1\nflags\t\t: fpu\n")
EPYC_MILAN = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx avx2 fma f16c\n"
GRAVITON = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 bf16 i8mm\n"


def copy_photos(dst: Path, n: int, start: int = 0) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for p in sorted(PHOTOS.glob("*.jpg"))[start:start + n]:
        shutil.copy2(p, dst / p.name)


def test_cpu_flags_are_read_not_assumed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_CPU_BF16, raising=False)
    assert {"avx512_bf16", "amx_bf16"} <= parse_cpu_flags(SAPPHIRE_RAPIDS)
    assert cpu_has_native_bf16(parse_cpu_flags(SAPPHIRE_RAPIDS))
    assert not cpu_has_native_bf16(parse_cpu_flags(EPYC_MILAN))
    assert not cpu_has_native_bf16(parse_cpu_flags(GRAVITON))  # ARM bf16 is not one of the flags we trust
    assert not cpu_has_native_bf16(parse_cpu_flags(""))
    monkeypatch.setenv(ENV_CPU_BF16, "1")
    assert cpu_has_native_bf16(parse_cpu_flags(EPYC_MILAN))
    monkeypatch.setenv(ENV_CPU_BF16, "0")
    assert not cpu_has_native_bf16(parse_cpu_flags(SAPPHIRE_RAPIDS))


def test_this_machine_auto_follows_its_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_CPU_BF16, raising=False)
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    native = any(f in text.split() for f in ("amx_bf16", "avx512_bf16"))
    assert has_native_bf16("cpu") is native
    assert resolve_dtype("auto", "cpu") == (torch.bfloat16 if native else torch.float32)
    assert resolve_dtype("AUTO", torch.device("cpu")) == resolve_dtype("auto", "cpu")


def test_resolve_dtype_names_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_CPU_BF16, "1")
    assert resolve_dtype("auto", "cpu") == torch.bfloat16
    assert resolve_dtype("auto", "mps") == torch.float32  # MPS: fp32 (not judged native here)
    for name, dt in (("fp32", torch.float32), (None, torch.float32), ("bf16", torch.bfloat16),
                     ("fp16", torch.float16), (torch.bfloat16, torch.bfloat16)):
        assert resolve_dtype(name, "cpu") == dt
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        resolve_dtype("int8", "cpu")


def test_load_metric_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_CPU_BF16, "1")
    m = load_metric("test_vit_tiny", device="cpu", dtype="auto")
    assert m.dtype == torch.bfloat16 and m.autocast
    monkeypatch.setenv(ENV_CPU_BF16, "0")
    m = load_metric("test_vit_tiny", device="cpu", dtype="auto")
    assert m.dtype == torch.float32 and not m.autocast
    assert load_metric("test_vit_tiny", device="cpu").dtype == torch.float32  # the library default stays exact
    monkeypatch.setenv(ENV_CPU_BF16, "1")
    cnn = load_metric("efficientnet_lite0", device="cpu", dtype="auto")  # auto_bf16=False: bf16 moved neighbours
    assert cnn.dtype == torch.float32
    assert load_metric("efficientnet_lite0", device="cpu", dtype="bf16").dtype == torch.bfloat16


def test_index_records_dtype_and_warns_when_mixing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, idx = tmp_path / "photos", tmp_path / "idx"
    copy_photos(root, 3)
    s1 = build_index(root, idx, metric="test_vit_tiny", device="cpu", dtype="fp32", workers=0, progress=False)
    assert s1.dtype == "fp32" and s1.warnings == [] and s1.embedded == 3
    m = index_info(idx)["metrics"][0]
    assert m["dtypes"] == {"fp32": 3}
    copy_photos(root, 2, start=3)
    s2 = build_index(root, idx, metric="test_vit_tiny", device="cpu", dtype="bf16", workers=0, progress=False)
    assert s2.dtype == "bf16" and s2.embedded == 2
    assert len(s2.warnings) == 1 and "holds 3 fp32 vectors" in s2.warnings[0] and "with dtype fp32" in s2.warnings[0]
    assert "warning: the index holds 3 fp32" in s2.format()
    info = index_info(idx)
    assert info["metrics"][0]["dtypes"] == {"fp32": 3, "bf16": 2}
    s3 = build_index(root, idx, metric="test_vit_tiny", device="cpu", dtype="bf16", workers=0, progress=False)
    assert s3.embedded == 0 and s3.warnings == []  # nothing added: nothing to say
    from lookalike.indexer import format_info

    assert "dtype fp32 (3) + bf16 (2), mixed" in format_info(info)
    # the mixed vectors still search as one index: an indexed photo finds itself first
    first = sorted(root.iterdir())[0]
    with open_index(idx, dtype="fp32") as ix:
        from lookalike.indexer import search

        assert search(ix, first, k=1)[0].path == str(first)


def test_auto_keeps_the_precision_the_build_recorded(tmp_path: Path, cpu_bf16: bool,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """dtype="auto" on an existing build: updates and image queries use the build's precision; where the machine
    does not run it natively, fp32, and the run says why."""
    import numpy as np

    from lookalike.indexer import search

    root, idx = tmp_path / "photos", tmp_path / "idx"
    copy_photos(root, 3)
    made = "bf16" if cpu_bf16 else "fp32"
    s1 = build_index(root, idx, metric="test_vit_tiny", device="cpu", workers=0, progress=False)
    assert s1.dtype == made and s1.warnings == []
    # a later run keeps it (index build equality: a file embedded again gets the very same vector)
    first = sorted(root.iterdir())[0]
    with open_index(idx) as ix:
        v_before = ix.vector_of(ix.find_row(first))
    shutil.move(first, tmp_path / first.name)
    build_index(root, idx, metric="test_vit_tiny", device="cpu", workers=0, progress=False)
    shutil.move(tmp_path / first.name, first)
    first.touch()  # seen as changed: embedded again
    copy_photos(root, 1, start=3)
    s2 = build_index(root, idx, metric="test_vit_tiny", device="cpu", workers=0, progress=False)
    assert s2.dtype == made and s2.warnings == [] and s2.embedded == 2
    with open_index(idx) as ix:
        assert np.array_equal(ix.vector_of(ix.find_row(first)), v_before)
    assert index_info(idx)["metrics"][0]["dtypes"] == {made: 5}
    # an image query (a copy of an indexed photo, embedded on the fly) is embedded like the index: distance ~0
    outside = tmp_path / "copy.jpg"
    shutil.copy2(first, outside)
    assert search(idx, outside, k=1, device="cpu")[0].distance < 1e-6
    # the other kind of machine
    monkeypatch.setenv(ENV_CPU_BF16, "0" if cpu_bf16 else "1")
    copy_photos(root, 1, start=4)
    s3 = build_index(root, idx, metric="test_vit_tiny", device="cpu", workers=0, progress=False)
    if cpu_bf16:  # bf16 recorded, no native bf16 here: fp32, and said so (then mixed, and said so too)
        assert s3.dtype == "fp32" and "does not run natively" in s3.warnings[0] and "holds 5 bf16" in s3.warnings[1]
        assert "does not run natively" in s3.format()
    else:  # fp32 runs everywhere: kept, although auto would pick bf16 for a new index here
        assert s3.dtype == "fp32" and s3.warnings == []
    assert search(idx, outside, k=1, device="cpu")[0].distance < (2e-2 if cpu_bf16 else 1e-6)


def test_index_made_before_dtypes_were_recorded(tmp_path: Path) -> None:
    root, idx = tmp_path / "photos", tmp_path / "idx"
    copy_photos(root, 2)
    build_index(root, idx, metric="test_vit_tiny", device="cpu", dtype="fp32", workers=0, progress=False)
    with sqlite3.connect(idx / "catalog.sqlite") as con:  # a milestone-1 catalog: no build_dtypes table
        con.execute("DROP TABLE build_dtypes")
    assert index_info(idx)["metrics"][0]["dtypes"] == {}
    copy_photos(root, 1, start=2)
    s = build_index(root, idx, metric="test_vit_tiny", device="cpu", dtype="bf16", workers=0, progress=False)
    assert s.warnings and "2 unrecorded vectors" in s.warnings[0] and "with dtype fp32" in s.warnings[0]
    assert index_info(idx)["metrics"][0]["dtypes"] == {"unrecorded": 2, "bf16": 1}


def test_cli_defaults_to_auto(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_CPU_BF16, "1")
    root, idx = tmp_path / "photos", tmp_path / "idx"
    copy_photos(root, 2)
    assert main(["index", str(root), "--index", str(idx), "--metric", "test_vit_tiny", "--device", "cpu",
                 "--workers", "0", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["dtype"] == "bf16" and s["workers"] == 0 and s["threads"] >= 1
    assert main(["info", "--index", str(idx)]) == 0
    assert "dtype bf16," in capsys.readouterr().out
    assert main(["info"]) == 0
    assert "--dtype auto (index, search, app): cpu: bf16 ($LOOKALIKE_CPU_BF16=1)" in capsys.readouterr().out
    query = sorted(root.iterdir())[0]
    assert main(["search", str(query), "--index", str(idx), "-k", "1", "--json", "--dtype", "fp32"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["path"] == str(query)
    with pytest.raises(SystemExit):
        main(["index", "--help"])
    assert "default auto" in capsys.readouterr().out


def test_core_plan() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert plan_cores(cpu, cpus=1) == CorePlan(workers=0, threads=1, prefetch=2)
    assert plan_cores(cpu, cpus=2) == CorePlan(workers=1, threads=2, prefetch=2)
    assert plan_cores(cpu, cpus=4) == CorePlan(workers=1, threads=3, prefetch=2)
    assert plan_cores(cpu, cpus=16) == CorePlan(workers=4, threads=12, prefetch=2)
    assert plan_cores(cpu, cpus=64).workers == 8
    assert plan_cores(cuda, cpus=16).workers == 8 and plan_cores(cuda, cpus=16).prefetch == 4
    assert plan_cores(cpu, workers=3, threads=5, cpus=2) == CorePlan(workers=3, threads=5, prefetch=2)
    with pytest.raises(ValueError, match="threads must be >= 1"):
        plan_cores(cpu, threads=0)
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_index_restores_torch_threads(tmp_path: Path) -> None:
    copy_photos(tmp_path / "p", 2)
    before = torch.get_num_threads()
    s = build_index(tmp_path / "p", tmp_path / "i", metric="test_vit_tiny", device="cpu", dtype="fp32", workers=0,
                    threads=1, batch_size=1, progress=False)
    assert s.threads == 1 and torch.get_num_threads() == before


def test_cnn_runs_channels_last_and_matches_nchw(demo_dir: Path) -> None:
    m = load_metric("efficientnet_lite0", device="cpu")
    conv = m.model.conv_stem.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    x = torch.stack([m.preprocess(Image.open(demo_dir / n)) for n in ("ref_1.png", "img_a_1.png", "teaser.jpg")])
    e_cl = m.embed(x)
    ref = load_metric("efficientnet_lite0", device="cpu")
    ref.model.to(memory_format=torch.contiguous_format)
    with torch.inference_mode():
        feats = ref.model.forward_head(ref.model.forward_features((x - ref.mean) / ref.std), pre_logits=True)
    from lookalike.metric._base import center_l2

    assert (e_cl - center_l2(feats)).abs().max() < 1e-5


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_vit_attention_runs_on_the_flash_kernel(dtype: str, demo_dir: Path) -> None:
    """The ViT's attention is one ``scaled_dot_product_attention`` call that the fused flash kernel accepts (the
    CPU has one too): forcing that kernel alone gives the same embedding as torch's own choice."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    m = load_metric("test_vit_tiny", device="cpu", dtype=dtype)
    x = torch.stack([m.preprocess(Image.open(demo_dir / n)) for n in ("ref_1.png", "img_a_1.png")])
    e = m.embed(x)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        e_flash = m.embed(x)
    assert (e - e_flash).abs().max() < (1e-6 if dtype == "fp32" else 1e-2)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@needs_cuda
def test_gpu_auto_is_bf16_on_ampere_and_later() -> None:
    cc = torch.cuda.get_device_capability(0)
    assert resolve_dtype("auto", "cuda") == (torch.bfloat16 if cc[0] >= 8 else torch.float32)


@pytest.mark.gpu
@needs_cuda
def test_gpu_bf16_vit_uses_flash_attention_and_cnn_channels_last(demo_dir: Path) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if torch.cuda.get_device_capability(0)[0] < 8:
        pytest.skip("flash attention needs compute capability >= 8")
    imgs = [Image.open(demo_dir / n) for n in ("ref_1.png", "img_a_1.png")]
    m32 = load_metric("test_vit_tiny", device="cpu")
    m = load_metric("test_vit_tiny", device="cuda", dtype="auto")
    assert m.dtype == torch.bfloat16 and not m.autocast
    x = torch.stack([m.preprocess(im) for im in imgs])
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):  # raises if the fused kernel cannot take these inputs
        e = m.embed(x.cuda()).cpu()
    assert (e * m32.embed(x)).sum(-1).min() > 0.99
    cnn = load_metric("efficientnet_lite0", device="cuda", dtype="auto")
    assert cnn.model.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    ref = load_metric("efficientnet_lite0", device="cpu")
    y = torch.stack([cnn.preprocess(im) for im in imgs])
    assert (cnn.embed(y.cuda()).cpu() * ref.embed(y)).sum(-1).min() > 0.99
