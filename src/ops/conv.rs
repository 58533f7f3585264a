//! (filled in by the conv work)
