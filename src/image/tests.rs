//! Tests of the image cache's public surface: what `locate` accepts (where
//! the cache lives is `crate::cache`'s, tested there) (a finished image) and refuses (missing or half images).

use super::*;
/// Writes a finished-looking image under `root` and returns its directory.
fn fake_image(root: &Path, key: &str, kernel_len: usize) -> PathBuf {
    let dir = root.join("images").join(key);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(KERNEL_FILE), vec![0u8; kernel_len]).unwrap();
    fs::write(dir.join(INITRD_FILE), b"initrd").unwrap();
    let m = Manifest {
        format: manifest::MANIFEST_FORMAT,
        key: key.into(),
        id: "fast-0123456789abcdef".into(),
        kernel: "fast".into(),
        kernel_version: "6.1.0-56-amd64".into(),
        cmdline: DEFAULT_CMDLINE.into(),
        kernel_size: 10,
        initrd_size: 6,
        kernel_sha256: "k".into(),
        initrd_sha256: "i".into(),
        compression: "none".into(),
        modules: vec![],
        sources: vec![],
    };
    fs::write(dir.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    dir
}

fn message(root: &Path) -> String {
    let text = locate_in(root).unwrap_err().to_string();
    text.replace(&root.display().to_string(), "[CACHE]")
}

#[test]
fn locate_finds_the_current_image() {
    let root = tempfile::tempdir().unwrap();
    let dir = fake_image(root.path(), "abc123", 10);
    fs::write(root.path().join("images/current"), "abc123\n").unwrap();
    let image = locate_in(root.path()).unwrap();
    assert_eq!(
        image,
        DefaultImage {
            kernel: dir.join("vmlinux"),
            initrd: dir.join("initrd.img"),
            cmdline: DEFAULT_CMDLINE.into(),
            id: "fast-0123456789abcdef".into(),
        }
    );
}

#[test]
fn missing_image_says_how_to_build_it() {
    let root = tempfile::tempdir().unwrap();
    // A scratch directory of an interrupted build is not an image.
    fs::create_dir_all(root.path().join("images/.tmp-build-1-00")).unwrap();
    insta::assert_snapshot!(message(root.path()), @"the default guest image is not built yet (no [CACHE]/images/current); build it with `castra image build`");
}

#[test]
fn half_images_are_refused() {
    let root = tempfile::tempdir().unwrap();
    fake_image(root.path(), "abc123", 7); // truncated kernel
    fs::write(root.path().join("images/current"), "abc123\n").unwrap();
    insta::assert_snapshot!(message(root.path()), @"the default guest image in [CACHE]/images/abc123 is unusable ([CACHE]/images/abc123/vmlinux is 7 bytes, the manifest says 10); rebuild it with `castra image build --force`");

    fs::write(root.path().join("images/current"), "def456\n").unwrap();
    insta::assert_snapshot!(message(root.path()), @"the default guest image in [CACHE]/images/def456 is unusable ([CACHE]/images/def456/manifest.json: No such file or directory (os error 2)); rebuild it with `castra image build --force`");

    fs::write(root.path().join("images/current"), "../../etc\n").unwrap();
    insta::assert_snapshot!(message(root.path()), @"the default guest image in [CACHE]/images is unusable ([CACHE]/images/current does not hold an image key); rebuild it with `castra image build --force`");
}
