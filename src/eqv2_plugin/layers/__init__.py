"""Equivariant building blocks that act on node features ``[N, (lmax+1)**2, C]``."""
