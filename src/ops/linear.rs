//! (filled in by the linear work)
