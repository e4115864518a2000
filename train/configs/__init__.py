"""ml_collections configs of the training programs, one `get_config()` per file."""
