"""The faces of lookalike: the command line and the Streamlit app."""
