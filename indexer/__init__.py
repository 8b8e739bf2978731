"""A crash-safe, incremental FAISS + SQLite index of image collections; search and dedup."""
