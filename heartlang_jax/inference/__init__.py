"""Trained run folders as objects: load one, embed and predict raw ECGs; what model.json holds."""
