"""The archive and its output as a whole: listing sources, the ledger of what is done, moved files,
compaction."""
