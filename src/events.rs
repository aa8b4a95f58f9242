//! Structured events.
