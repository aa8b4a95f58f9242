//! TODO(helper): argv
