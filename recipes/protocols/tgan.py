"""Reproduction protocols for the tgan recipe (registered with recipes.reproduce.register)."""
