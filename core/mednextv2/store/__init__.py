"""The model store: the catalog, downloads, the installed-model cache, and the importers that
turn other tools' results (nnU-Net v1/v2, MONAI, AMAES) into bundles."""
