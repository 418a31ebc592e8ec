"""Reading the output: SQL views with DuckDB and the HTML report."""
