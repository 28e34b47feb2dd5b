"""Generation with the constant-size cache."""
