"""barlab."""
