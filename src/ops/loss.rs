//! (filled in by the loss work)
