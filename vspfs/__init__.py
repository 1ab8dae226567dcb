"""vspfs: a Volume Snapshot Provider.

Point-in-time, copy-on-write snapshots of live volumes, each kept consistent by
one cache file and exposed as a read-only virtual drive. See README.md and
docs/ for the model; this package is the core and never imports a binding.
"""

from __future__ import annotations

__version__ = "0.1.0"
