"""Reports computed from a chart of accounts after posting."""
