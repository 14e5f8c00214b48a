"""Reproduction protocols for the framegan recipe (registered with recipes.reproduce.register)."""
