//! Status collection and rendering.
