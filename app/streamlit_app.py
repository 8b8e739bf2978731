"""The lookalike web app: ``lookalike app --index DIR`` runs this file with ``streamlit run``.

``main()`` sets the page up and hands over to one of the views in ``app_pages/`` (each draws widgets, calls one
``lookalike`` function and renders the result).
"""

from __future__ import annotations

import logging
from pathlib import Path

import streamlit as st

_logger = logging.getLogger(__name__)

PAGES_DIR = Path(__file__).parent / "app_pages"

#: (file in app_pages/, title, url path, icon), in menu order. Every page keeps its own URL (``/search``,
#: ``/overview``...); the root URL lands on Search when the index has vectors, else on Overview (``landing_page``).
PAGES = (
    ("search.py", "Search", "search", ":material/search:"),
    ("overview.py", "Overview", "overview", ":material/home:"),
    ("map.py", "Map", "map", ":material/scatter_plot:"),
    ("compare.py", "Compare metrics", "compare", ":material/compare:"),
    ("duplicates.py", "Duplicates", "duplicates", ":material/content_copy:"),
    ("datasets.py", "Datasets", "datasets", ":material/dataset:"),
)


def landing_page() -> str:
    """"search.py" when the app's index has vectors to search, else "overview.py" (how to build one)."""
    from lookalike.app import resources
    from lookalike.app.views import has_vectors, index_stamp, index_state, load_settings

    settings = load_settings()
    if index_state(settings.index_dir, settings.db_url) != "ok":
        return "overview.py"
    try:
        info = resources.get_index_info(str(settings.index_dir), index_stamp(settings.index_dir), settings.db_url)
    except (ValueError, FileNotFoundError, OSError):
        return "overview.py"
    return "search.py" if has_vectors(info) else "overview.py"


def main() -> None:
    st.set_page_config(page_title="lookalike", page_icon=":material/image_search:", layout="wide")
    from lookalike.app.widgets import style_ui

    style_ui()
    pages = {f: st.Page(PAGES_DIR / f, title=t, url_path=u, icon=i) for f, t, u, i in PAGES}

    def home() -> None:
        st.switch_page(pages[landing_page()])

    router = st.Page(home, title="lookalike", url_path="home", default=True, visibility="hidden")
    page = st.navigation([router, *pages.values()])
    try:
        page.run()
    except Exception as e:  # noqa: BLE001 - the last line of defence: a message, never a traceback
        _logger.exception("page %s failed", page.title)
        st.error(f"Something went wrong on this page: {type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
