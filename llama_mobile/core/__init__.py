"""Core: the types and tables every other layer reads. Imports nothing else of the project."""
