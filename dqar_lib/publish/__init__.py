"""The book's helpers: notebook parameters and glue, plots, the explorer widget."""
