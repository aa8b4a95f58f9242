//! TODO(helper): accel
