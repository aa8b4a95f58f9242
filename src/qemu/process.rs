//! TODO(helper): process
