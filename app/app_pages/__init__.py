"""The views of the Streamlit app, one file each; streamlit_app.main() lists them with st.navigation.

Not named ``pages/``: Streamlit treats a ``pages/`` folder beside the entry script as a v1 multipage app and then
runs a page file directly, without ``main()`` and its navigation.
"""
