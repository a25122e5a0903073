"""Backbones behind one small interface (towers, pooled embeddings) and the name resolver."""
