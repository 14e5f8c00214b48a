"""Reproduction protocols for the glo recipe (registered with recipes.reproduce.register)."""
