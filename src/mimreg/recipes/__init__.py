"""Recipes (methods/*.yaml), presets (presets/*.yaml), and the papers' table rows they reproduce (papers.py)."""
