//! TODO(helper): qmp
