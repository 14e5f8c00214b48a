"""Reproduction protocols, one module per recipe; each registers itself with `recipes.reproduce.register`."""
