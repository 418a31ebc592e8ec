"""The `emoframe` command line."""
