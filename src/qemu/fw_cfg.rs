//! The fw_cfg entries castra hands every guest, by name: QEMU passes each from a file
//! (`-fw_cfg name=...,file=...`, never a value on the command line), the guest reads it
//! under [`FW_CFG_DIR`]. The host's launch code and the guest agent both use these names;
//! the share table's entry and format are in `config/share_table.rs`.

/// Where QEMU's fw_cfg entries appear in the guest (`<dir>/<name>/raw`).
pub const FW_CFG_DIR: &str = "/sys/firmware/qemu_fw_cfg/by_name";
/// The VM's name (every VM castra launches has it).
pub const FW_CFG_VM: &str = "opt/castra/vm";
/// The broker's port.
pub const FW_CFG_BROKER_PORT: &str = "opt/castra/broker_port";
/// The per-launch token (`/sys/firmware/qemu_fw_cfg/by_name/opt/castra/token/raw`).
pub const TOKEN_FW_CFG: &str = "opt/castra/token";
