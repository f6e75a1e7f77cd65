"""The thin layer between the core model and fairchem-core 1.10.

Everything that imports fairchem lives here; the rest of the package imports
without it.
"""
