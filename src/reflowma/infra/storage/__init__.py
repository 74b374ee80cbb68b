"""Storage: atomic files, checkpoints and HDF5 couplings."""
