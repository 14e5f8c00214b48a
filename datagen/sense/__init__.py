"""Sensing simulators over any store: what a camera would record of each stored scene (CUP: `cup`)."""
