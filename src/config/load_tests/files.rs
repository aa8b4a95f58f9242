//! `load` on real files: paths made absolute from the file's directory,
//! unreadable files, and errors naming the path as given.

use super::*;

#[test]
fn load_reads_a_real_file_and_makes_paths_absolute() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("Web Shop");
    std::fs::create_dir(&dir).unwrap();
    let path = dir.join(CONFIG_FILE_NAME);
    std::fs::write(
        &path,
        "[[vms]]\nname = \"web\"\nimage = { kernel = \"vmlinux\" }\n",
    )
    .unwrap();

    let p = load(&path).unwrap();
    assert_eq!(p.name, "web-shop");
    assert_eq!(p.config_path, path);
    assert_eq!(p.state_root, dir.join(".castra"));
    assert_eq!(
        p.vms[0].image,
        ImageSpec::Kernel {
            kernel: dir.join("vmlinux"),
            initrd: None,
            cmdline: None,
            disk: None,
        }
    );
}

#[test]
fn load_reports_unreadable_files() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join(CONFIG_FILE_NAME);
    let err = load(&missing).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert_eq!(
        err.to_string(),
        format!(
            "error: could not read {}: No such file or directory (os error 2)",
            missing.display()
        )
    );

    std::fs::write(&missing, b"name = \"\xff\"\n").unwrap();
    let err = load(&missing).unwrap_err();
    assert!(err.to_string().contains("valid UTF-8"), "{err}");
}

#[test]
fn load_errors_name_the_path_as_given() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(CONFIG_FILE_NAME);
    std::fs::write(&path, "[[vms]]\nname = \"web\"\ncpus = 0\n").unwrap();
    let err = load(&path).unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("--> {}:3:8", path.display())),
        "{err}"
    );
}
