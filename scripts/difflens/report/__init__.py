"""Stage: figures, tables, the summary page and the feature browser, rendered from the other stages' outputs."""
