"""UI pieces shared by the pages: each ``*_ui()`` draws widgets and returns what the user chose (a dataclass).

Every image drawn from disk goes through ``catalog_image_ui`` (catalog check, then the safe loader) or
``dataset_image_ui`` (a path a dataset reader listed under a folder given on the command line).
"""

from __future__ import annotations

import html
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import streamlit as st
from PIL import Image

from lookalike.app import resources
from lookalike.app.views import (
    CARD_ASPECT,
    FULL_SIZE_MAX_SIDE,
    THUMB_SIZE,
    UPLOAD_TYPES,
    AppSettings,
    NotInCatalog,
    build_command,
    catalog_row,
    decode_upload,
    encode_thumbnail,
    format_bytes,
    full_size_image,
    index_stamp,
    index_state,
    is_under,
    split_folder,
)
from lookalike.common.errors import LookalikeError
from lookalike.data.image_folder import scan_images
from lookalike.data.images import ImageDecodeError, open_image
from lookalike.indexer import GROUP_MODES, KEEP_RULES, Hit, ImageIndex, build_index
from lookalike.metric import WeightsNotFound, get_metric_cfg, list_metrics

_logger = logging.getLogger(__name__)

SOURCE_UPLOAD = "Upload an image"
SOURCE_INDEXED = "Pick an indexed image"


def error_ui(e: BaseException, what: str = "") -> None:
    """Show an exception as a message (never a traceback): missing weights with their download command, etc."""
    prefix = f"{what}: " if what else ""
    if isinstance(e, WeightsNotFound):
        st.error(f"{prefix}the weights of metric **{e.metric}** are not on this machine.")
        st.code(str(e), language=None)
    elif isinstance(e, ImageDecodeError):
        st.error(f"{prefix}cannot read the image: {e.reason}")
    elif isinstance(e, LookalikeError):  # NotInCatalog included: the message, then the fix
        st.error(f"{prefix}{e.message}")
        if e.hint:
            st.info(e.hint)
    else:
        st.error(f"{prefix}{e}")
    _logger.info("shown to the user: %s%s", prefix, e)


def require_index_ui(settings: AppSettings, metric: str | None = None) -> ImageIndex:
    """The index to work on; otherwise an explanation of how to get one, and the page stops."""
    state = index_state(settings.index_dir, settings.db_url)
    if state == "none":
        st.info("No index folder was given. Start the app with `lookalike app --index DIR`.")
        st.stop()
    if state == "missing":
        st.info(f"There is no index at `{settings.index_dir}` yet. Build one on the **Overview** page, or run:")
        st.code(build_command(settings.index_dir), language="bash")
        st.stop()
    try:
        index = resources.get_fresh_index(settings.index_dir, metric, settings.db_url)
    except (ValueError, FileNotFoundError) as e:
        st.info(f"The index at `{settings.index_dir}` cannot be searched yet: {e}")
        st.code(build_command(settings.index_dir), language="bash")
        st.stop()
    if index.vectors.ntotal == 0:
        st.info(f"The index at `{settings.index_dir}` is empty (no image has been indexed yet). Add images with:")
        st.code(build_command(settings.index_dir, metric=index.info.metric), language="bash")
        st.stop()
    return index


def indexed_metrics(settings: AppSettings) -> list[str]:
    """Names of the metrics whose vectors the index holds (empty when there is no index)."""
    if index_state(settings.index_dir, settings.db_url) != "ok":
        return []
    try:
        info = resources.get_index_info(str(settings.index_dir), index_stamp(settings.index_dir), settings.db_url)
    except (ValueError, FileNotFoundError):
        return []
    return sorted({m["metric"] for m in info["metrics"] if m["vectors"]})


def metric_choice_ui(metrics: list[str], *, key: str, label: str = "Metric") -> str | None:
    """A select box over ``metrics`` (none when there is only one: it is returned)."""
    if not metrics:
        return None
    if len(metrics) == 1:
        return metrics[0]
    return st.selectbox(label, metrics, key=key)


def catalog_image_ui(index: ImageIndex, path: str, caption: str = "", *, size: int = THUMB_SIZE,
                     aspect: tuple[int, int] | None = CARD_ASPECT, width: int | str = "stretch") -> bool:
    """Draw an indexed image (after checking ``path`` against the catalog), letterboxed to ``aspect`` so that the
    thumbnails of a grid line up (None: the image's own shape), as wide as its column (or ``width`` pixels); an
    error message otherwise."""
    try:
        row = catalog_row(index, path)
        data = resources.get_thumbnail(row.path, size, row.mtime_ns, aspect)
    except (NotInCatalog, ImageDecodeError) as e:
        error_ui(e)
        return False
    st.image(data, caption=caption or None, width=width)
    return True


def dataset_image_ui(path: str, root: Path, caption: str = "", *, size: int = THUMB_SIZE) -> bool:
    """Draw an image a dataset reader listed, if it lies under ``root`` (a folder given on the command line)."""
    if not is_under(path, root if root.is_dir() else root.parent):
        st.error(f"refused to open {path!r}: it is outside the dataset folder {root}")
        return False
    try:
        data = resources.get_thumbnail(path, size, os.stat(path).st_mtime_ns)
    except (ImageDecodeError, OSError) as e:
        st.error(f"cannot read {path}: {getattr(e, 'reason', e)}")
        return False
    st.image(data, caption=caption or None, width="stretch")
    return True


@dataclass
class PickedImage:
    """An image chosen by the user: uploaded (``path`` None) or indexed (``path`` is its catalog path)."""

    label: str = ""
    image: Image.Image | None = None
    path: str | None = None

    @property
    def ready(self) -> bool:
        return self.image is not None or self.path is not None


def upload_ui(settings: AppSettings, *, key: str, label: str = "Image") -> PickedImage:
    """A file uploader; the upload is size-checked and decoded with the safe loader (errors shown)."""
    up = st.file_uploader(label, type=UPLOAD_TYPES, key=key,
                          help=f"at most {settings.max_upload_bytes // (1024 * 1024)} MB")
    if up is None:
        return PickedImage()
    try:
        img = decode_upload(up.getvalue(), up.name, max_bytes=settings.max_upload_bytes)
    except ValueError as e:
        st.error(str(e))
        return PickedImage()
    return PickedImage(label=f"upload: {up.name}", image=img)


def indexed_path_ui(index: ImageIndex | None, *, key: str, label: str = "Indexed image") -> PickedImage:
    """Choose an indexed image by its path (select box over the catalog); checked against the catalog."""
    if index is None:
        st.info("No index yet: upload an image instead.")
        return PickedImage()
    options = index.list_paths(limit=5000)
    current = st.session_state.get(key)
    if current and current not in options:
        options = [current, *options]
    path = st.selectbox(label, options, key=key, index=None, accept_new_options=True,
                        placeholder="type or choose a path relative to its indexed folder")
    if not path:
        return PickedImage()
    try:
        row = catalog_row(index, path)
    except NotInCatalog as e:
        error_ui(e)
        return PickedImage()
    return PickedImage(label=row.relpath, path=row.path)


def image_source_ui(settings: AppSettings, index: ImageIndex | None, *, key: str, label: str = "Image"
                    ) -> PickedImage:
    """Upload or pick an indexed image; returns the choice."""
    source = st.radio(f"{label} from", [SOURCE_UPLOAD, SOURCE_INDEXED], key=f"{key}_source", horizontal=True)
    if source == SOURCE_UPLOAD:
        return upload_ui(settings, key=f"{key}_upload", label=label)
    return indexed_path_ui(index, key=f"{key}_path", label=label)


def load_picked(index: ImageIndex | None, picked: PickedImage) -> Image.Image:
    """The PIL image of a choice (an indexed one is decoded with the safe loader after the catalog check)."""
    if picked.image is not None:
        return picked.image
    assert index is not None and picked.path is not None
    return open_image(catalog_row(index, picked.path).path)


def picked_preview_ui(index: ImageIndex | None, picked: PickedImage, *, size: int = 320,
                      width: int | str = "stretch") -> None:
    """The chosen image letterboxed to the cards' shape (as wide as its column, or ``width`` pixels), with its
    label under it on one line."""
    if picked.image is not None:
        st.image(encode_thumbnail(picked.image, size, aspect=CARD_ASPECT), width=width)
    elif picked.path is not None and index is not None:
        if not catalog_image_ui(index, picked.path, size=size, width=width):
            return
    else:
        return
    folder, _, name = picked.label.rpartition("/")
    label = file_label_html(folder + "/" if folder else "", name, picked.label)
    st.markdown(f'<div style="max-width: {width}px">{label}</div>' if isinstance(width, int) else label,
                unsafe_allow_html=True)


#: The app's few style rules (``style_ui``): file names on one line, cut with an ellipsis, never broken mid-word.
APP_CSS = """
<style>
[data-testid="stMainBlockContainer"] {padding-top: 2.5rem;}
.ll-file, .ll-file span {display: block; white-space: nowrap; overflow: hidden; text-overflow: ellipsis;}
.ll-file {line-height: 1.35; margin-top: 0.25rem;}
.st-key-stale-downloads {display: none;}
.ll-file .ll-folder {color: rgba(49, 51, 63, 0.6); font-size: 0.85rem;}
.ll-file .ll-name {font-weight: 600;}
</style>
"""


def style_ui() -> None:
    """Add the app's style rules (``APP_CSS``) to the page; called once per run by the entry script."""
    st.markdown(APP_CSS, unsafe_allow_html=True)


def file_label_html(folder: str, name: str, title: str) -> str:
    """Folder and file name on two lines that never wrap (cut with an ellipsis; the full path shows on hover).
    Inline elements styled as blocks, so the label can follow other text in one Markdown paragraph."""
    esc = html.escape
    return (f'<span class="ll-file" title="{esc(title, quote=True)}"><span class="ll-folder">{esc(folder)}</span>'
            f'<span class="ll-name">{esc(name)}</span></span>')


def hit_caption(rank: int, hit: Hit) -> str:
    """A result card's text: rank and distance (a re-ranker's score first), then folder and file name."""
    value = (f"`{hit.distance:.4f}`" if hit.score == hit.distance else  # re-ranked: its score first
             f"`{hit.score:.4f}` {hit.scored_by} &nbsp; `{hit.distance:.4f}`")
    folder, name = split_folder(hit.root, hit.relpath) if hit.root and hit.relpath else ("", hit.path)
    return f"**#{rank}** &nbsp; {value}" + file_label_html(folder, name, hit.path)


#: Result grids up to this many columns label their buttons; wider ones show the icons only (with a tooltip).
LABELLED_COLUMNS = 5


def hit_grid_ui(index: ImageIndex, hits: list[Hit], *, columns: int = 4, key: str = "hit",
                on_pick: Callable[[str], None] | None = None) -> None:
    """Results as a grid of cards of one shape: a letterboxed thumbnail, rank and distance, folder and file name,
    and two buttons: open it full size, or make it the next query (icons only past ``LABELLED_COLUMNS``)."""
    labels = ("Open", "Similar") if columns <= LABELLED_COLUMNS else ("", "")
    for start in range(0, len(hits), columns):
        cols = st.columns(columns)
        for col, (rank, hit) in zip(cols, enumerate(hits[start:start + columns], start=start + 1), strict=False):
            with col, st.container(border=True, key=f"{key}-{rank}"):
                catalog_image_ui(index, hit.path)
                st.markdown(hit_caption(rank, hit), unsafe_allow_html=True)
                with st.container(horizontal=True, gap="small"):  # link-style buttons: their labels fit a card
                    if st.button(labels[0], key=f"{key}-open-{rank}", icon=":material/open_in_full:",
                                 type="tertiary", help="this image full size, with its path and size"):
                        full_size_dialog(index, hit, rank)
                    if on_pick is not None:
                        st.button(labels[1], key=f"{key}-pick-{rank}", on_click=on_pick, icon=":material/search:",
                                  args=(hit.relpath or hit.path,), type="tertiary",
                                  help="search with this image: its nearest images")


@st.dialog("Result", width="large")
def full_size_dialog(index: ImageIndex, hit: Hit, rank: int) -> None:
    """A result at full size (catalog check, safe loader) with its path, size and distance."""
    try:
        row = catalog_row(index, hit.path)
        img, reduced = full_size_image(row.path)
    except (NotInCatalog, ImageDecodeError) as e:
        error_ui(e)
        return
    with st.container(key="full-size"):
        st.markdown(f"**#{rank}** &nbsp; distance `{hit.distance:.4f}` (lower = more similar)  \n"
                    f"`{row.path}`  \n{row.width} x {row.height} pixels, {format_bytes(row.size)}"
                    + (f", {row.format}" if row.format else ""))
        if reduced:
            st.caption(f"shown at {img.width} x {img.height} (reduced to {FULL_SIZE_MAX_SIDE} px on the long side)")
        st.image(img, width="content")


def embedding_metric_options() -> list[str]:
    """Embedding metrics a user may index with (random-weight test models left out)."""
    return list_metrics(kind="embedding")


@dataclass
class BuildRequest:
    folder: str = ""
    metric: str = "efficientnet_lite0"
    submitted: bool = False


def build_form_ui(settings: AppSettings) -> BuildRequest:
    """A form: a folder path and a metric, to index from the app."""
    metrics = embedding_metric_options()
    default = metrics.index("efficientnet_lite0") if "efficientnet_lite0" in metrics else 0
    with st.form("build_index"):
        folder = st.text_input("Folder of images to index", key="build_folder", placeholder="/path/to/photos")
        metric = st.selectbox("Metric", metrics, index=default, key="build_metric",
                              help="efficientnet_lite0 works offline; DreamSim needs 'lookalike weights download'")
        submitted = st.form_submit_button("Build the index")
    return BuildRequest(folder=folder.strip(), metric=metric, submitted=submitted)


def run_build_ui(settings: AppSettings, req: BuildRequest) -> bool:
    """Index ``req.folder`` into the app's index folder with a progress bar; True when it worked."""
    folder = Path(req.folder).expanduser()
    if not req.folder or not folder.is_dir():
        st.error(f"`{req.folder}` is not a folder on this machine; type the full path of a folder of images.")
        return False
    total = len(scan_images(folder).files)
    if total == 0:
        st.error(f"No image files under `{folder}`.")
        return False
    bar = st.progress(0.0, text=f"Indexing {total} images with {req.metric}...")
    outcome: dict[str, object] = {}
    labels = {"scan": "Scanning", "diff": "Comparing with the index", "embed": "Indexing", "derive": "Search structure"}

    def progress(stage: str, done: int, total_: int) -> None:  # build_index's callback, in this script thread
        frac = done / total_ if total_ else 0.0
        bar.progress(min(frac, 1.0), text=f"{labels.get(stage, stage)} with {req.metric}: {done} / {total_}")

    try:
        # workers=0: decode in this process (no forking inside the web server)
        outcome["summary"] = build_index(folder, settings.index_dir, metric=req.metric, workers=0, progress=progress)
    except Exception as e:  # noqa: BLE001 - shown to the user below
        outcome["error"] = e
    resources.clear_index_caches()
    if "error" in outcome:
        bar.empty()
        error_ui(outcome["error"], "indexing failed")  # type: ignore[arg-type]
        return False
    bar.progress(1.0, text="Done")
    summary = outcome["summary"]
    st.success(f"Indexed {summary.total_vectors} images ({summary.failed} unreadable) "  # type: ignore[attr-defined]
               f"in {summary.seconds['total']:.1f} s.")  # type: ignore[attr-defined]
    return True


@dataclass
class SearchOptions:
    metric: str | None = None
    k: int = 12
    columns: int = 4
    folder: str | None = None
    rerank: str | None = None


ALL_FOLDERS = "All indexed folders"
NO_RERANK = "none (embedding distance)"


def search_options_ui(metrics: list[str], folders: list[str] | None = None,
                      rerankers: list[str] | None = None) -> SearchOptions:
    """Sidebar: the metric (among those indexed), one indexed folder or all, a re-ranker (only when the library
    offers pairwise re-ranking), how many results, grid width."""
    with st.sidebar:
        metric = metric_choice_ui(metrics, key="search_metric")
        if metric:
            st.caption(f"{metric}: {get_metric_cfg(metric).unit}, lower = more similar")
        folder = None
        if folders and len(folders) > 1:
            pick = st.selectbox("Search in", [ALL_FOLDERS, *folders], key="search_folder",
                                help="keep the results inside one indexed folder")
            folder = None if pick == ALL_FOLDERS else pick
        rerank = None
        if rerankers:
            pick = st.selectbox("Re-rank with", [NO_RERANK, *rerankers], key="search_rerank",
                                help="re-order the nearest candidates with a pairwise metric (slower, finer)")
            rerank = None if pick == NO_RERANK else pick
        k = st.slider("Results (k)", 1, 50, 12, key="search_k")
        columns = st.slider("Columns", 2, 8, 4, key="search_columns")
    return SearchOptions(metric=metric, k=k, columns=columns, folder=folder, rerank=rerank)


@dataclass
class DedupOptions:
    metric: str | None = None
    threshold: float = 0.1
    group: str = GROUP_MODES[0]
    keep: str = KEEP_RULES[0]
    page_size: int = 20


def dedup_options_ui(metrics: list[str], default_threshold: float | None) -> DedupOptions:
    """Sidebar: metric, distance threshold, grouping and keep rule."""
    with st.sidebar:
        metric = metric_choice_ui(metrics, key="dup_metric")
        threshold = st.slider("Distance threshold (1 - cosine)", 0.0, 1.0, float(default_threshold or 0.1), 0.005,
                              key="dup_threshold", format="%.3f",
                              help="pairs at most this far apart are duplicates (lower = more similar)")
        group = st.radio("Groups", list(GROUP_MODES), key="dup_group", horizontal=True,
                         help="components: everything linked, even through chains; star: files near one keeper")
        keep = st.selectbox("Keep", list(KEEP_RULES), key="dup_keep")
        page_size = st.select_slider("Groups per page", [5, 10, 20, 50, 100], value=20, key="dup_page_size")
    return DedupOptions(metric, threshold, group, keep, page_size)
