"""Sessions and vitality metrics with NumPy (issue 5)."""
