//! Guest agent.
