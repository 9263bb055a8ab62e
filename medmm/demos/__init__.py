"""Demo data builders (offline, synthetic or from installed data packages), kept out of :mod:`medmm.data`."""
