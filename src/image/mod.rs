//! The default guest image (helper B).
