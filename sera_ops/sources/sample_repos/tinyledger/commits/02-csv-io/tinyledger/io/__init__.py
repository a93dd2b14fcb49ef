"""Ledgers in file formats other programs read: spreadsheets, accounting exports."""
