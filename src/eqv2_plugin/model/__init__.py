"""Backbone, heads and their assembly into EquiformerV2."""
