//! Eviction methods (METHOD.md): pure functions from a Trace and settings to a KeepSet.
