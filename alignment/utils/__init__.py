"""Small shared utilities: argument parsing (``cli``), atomic file writes (``io``), logging."""
