"""Data preparation and I/O: reading, normalisation, degradation, registration, patches."""
