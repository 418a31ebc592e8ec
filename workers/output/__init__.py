"""Where results go: filesystems and URIs, atomic Parquet writes, one video's rows, the state area."""
