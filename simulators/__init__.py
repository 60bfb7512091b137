"""Simulated gym members and equipment that stand in for every device."""
