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

#: (file in app_pages/, title, url path, icon); the first is the home page.
PAGES = (
    ("overview.py", "Overview", "overview", ":material/home:"),
    ("search.py", "Search", "search", ":material/search:"),
    ("compare.py", "Compare metrics", "compare", ":material/compare:"),
    ("duplicates.py", "Duplicates", "duplicates", ":material/content_copy:"),
    ("datasets.py", "Datasets", "datasets", ":material/dataset:"),
)


def main() -> None:
    st.set_page_config(page_title="lookalike", page_icon=":material/image_search:", layout="wide")
    pages = [st.Page(PAGES_DIR / f, title=t, url_path=u, icon=i, default=(n == 0))
             for n, (f, t, u, i) in enumerate(PAGES)]
    page = st.navigation(pages)
    try:
        page.run()
    except Exception as e:  # noqa: BLE001 - the last line of defence: a message, never a traceback
        _logger.exception("page %s failed", page.title)
        st.error(f"Something went wrong on this page: {type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
