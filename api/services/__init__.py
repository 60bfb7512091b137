"""Rules that combine several queries (in one transaction), or compute over their rows; called by routes."""
