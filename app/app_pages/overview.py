"""Overview: what the index holds; with no index yet, how to build one (or build it here from a folder path)."""

from __future__ import annotations

import streamlit as st

from lookalike.app import resources, widgets
from lookalike.app.views import build_command, format_bytes, index_stamp, index_state, load_settings
from lookalike.indexer import format_dtypes


def main() -> None:
    settings = load_settings()
    st.title("lookalike")
    st.caption("Perceptual image similarity: search, compare metrics, find duplicates. Lower distance = more similar.")
    state = index_state(settings.index_dir, settings.db_url)
    if state == "none":
        st.info("No index folder was given. Start the app with `lookalike app --index DIR`.")
        return
    if state == "missing":
        st.info(f"There is no index at `{settings.index_dir}` yet. Build one from the command line:")
        st.code(build_command(settings.index_dir), language="bash")
        st.markdown("Or type the path of a folder of images below and build it here (small folders; the command "
                    "line is faster for large ones).")
        req = widgets.build_form_ui(settings)
        if req.submitted and widgets.run_build_ui(settings, req):
            st.button("Open the index")
        return
    try:
        info = resources.get_index_info(str(settings.index_dir), index_stamp(settings.index_dir), settings.db_url)
    except (ValueError, FileNotFoundError) as e:
        widgets.error_ui(e, "cannot read the index")
        return
    images = info["images"]
    cols = st.columns(4)
    cols[0].metric("Images", images["total"])
    cols[1].metric("Indexed", images["ok"])
    cols[2].metric("Unreadable", images["failed"])
    cols[3].metric("On disk", format_bytes(info["bytes_on_disk"]))
    if not info["metrics"] or not any(m["vectors"] for m in info["metrics"]):
        st.info("The index holds no vectors yet. Add images with:")
        st.code(build_command(settings.index_dir), language="bash")
    st.subheader("Metrics in this index")
    st.table([{"metric": m["metric"], "vectors": m["vectors"], "dim": m["dim"], "faiss": m["faiss"],
               "dtype": format_dtypes(m.get("dtypes", {})), "size": format_bytes(m["bytes"])}
              for m in info["metrics"]])
    st.subheader("Indexed folders")
    st.table([{"folder": root, "files": n} for root, n in info["roots"].items()])
    if info["failed"]:
        with st.expander(f"{len(info['failed'])} unreadable files"):
            st.table(info["failed"])


if __name__ == "__main__":
    main()
