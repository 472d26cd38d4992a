"""Segmenting an image with a bundle: read, preprocess, predict tile by tile, finish, export."""
