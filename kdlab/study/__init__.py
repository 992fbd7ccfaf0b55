"""Statistical studies over published or produced results."""
