//! From a requested filename to a file inside the TFTP root, or a refusal.

use std::io;
use std::path::{Path, PathBuf};

use super::Refusal;

const ESCAPES: &str = "path escapes the TFTP root";

/// The filename as a relative path with only normal components. Leading slashes are
/// dropped (clients send "/undionly.kpxe"); backslashes count as separators (some PXE
/// clients use them), so `..\x` is caught like `../x`; any `..` is refused, even one
/// that would stay inside, as no boot file needs it.
pub(crate) fn relative_path(filename: &str) -> Result<PathBuf, Refusal> {
    if filename.contains('\0') {
        return Err(Refusal::access(format!("{ESCAPES}: the name contains a NUL byte")));
    }
    let mut relative = PathBuf::new();
    for component in filename.split(['/', '\\']) {
        match component {
            "" | "." => {}
            ".." => return Err(Refusal::access(format!("{ESCAPES}: '..' is not allowed in {filename:?}"))),
            normal => relative.push(normal),
        }
    }
    if relative.as_os_str().is_empty() {
        return Err(Refusal::not_found(format!("{filename:?} names the TFTP root directory, not a file")));
    }
    Ok(relative)
}

/// The canonical path of the requested file. `root` must be canonical already. Symlinks
/// are followed, and the target must still be inside the root, or inside one of
/// `symlink_targets` (canonical too).
pub(crate) async fn resolve(root: &Path, symlink_targets: &[PathBuf], filename: &str) -> Result<PathBuf, Refusal> {
    let candidate = root.join(relative_path(filename)?);
    // Local path resolution, synchronously: cheaper than a hop to the blocking pool.
    let canonical = match std::fs::canonicalize(&candidate) {
        Ok(canonical) => canonical,
        Err(error) => return Err(open_error(filename, &error)),
    };
    if !canonical.starts_with(root) && !symlink_targets.iter().any(|allowed| canonical.starts_with(allowed)) {
        return Err(Refusal::access(format!("{ESCAPES}: {filename:?} resolves to a target outside it")));
    }
    Ok(canonical)
}

/// The refusal for an I/O error on a requested file.
pub(crate) fn open_error(filename: &str, error: &io::Error) -> Refusal {
    match error.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => {
            Refusal::not_found(format!("file not found: {filename}"))
        }
        io::ErrorKind::PermissionDenied => Refusal::access(format!("permission denied: {filename}")),
        _ => Refusal::failed(format!("cannot read {filename}: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::super::packet::ErrorCode;
    use super::super::tests::TestDir;
    use super::*;

    #[test]
    fn relative_paths() {
        assert_eq!(relative_path("/undionly.kpxe"), Ok(PathBuf::from("undionly.kpxe")));
        assert_eq!(relative_path("///a//./b/"), Ok(PathBuf::from("a/b")));
        assert_eq!(relative_path("boot\\x64\\wdsnbp.com"), Ok(PathBuf::from("boot/x64/wdsnbp.com")));
        assert_eq!(relative_path("sub/file"), Ok(PathBuf::from("sub/file")));
    }

    #[test]
    fn escaping_names_are_refused_with_a_reason() {
        for name in ["../etc/passwd", "/../x", "a/../../x", "a/..", "..\\..\\etc\\passwd", "ok\\..\\..\\x", "x\0y"] {
            let refusal = relative_path(name).expect_err(name);
            assert_eq!(refusal.code, ErrorCode::AccessViolation, "{name:?}");
            assert!(refusal.message.starts_with("path escapes the TFTP root"), "{name:?}: {}", refusal.message);
            assert_eq!(refusal.result, "refused");
        }
    }

    #[test]
    fn the_root_itself_is_not_a_file() {
        for name in ["", "/", ".", "/./"] {
            assert_eq!(relative_path(name).expect_err(name).code, ErrorCode::FileNotFound);
        }
    }

    #[tokio::test]
    async fn resolution_against_a_real_tree() {
        let dir = TestDir::new("tftp-path");
        let outside = TestDir::new("tftp-outside");
        let secret = outside.write("secret", b"no");
        dir.write("undionly.kpxe", b"x");
        dir.write("sub/file", b"y");
        std::os::unix::fs::symlink(&secret, dir.path().join("escape")).expect("symlink");
        std::os::unix::fs::symlink(outside.path(), dir.path().join("outdir")).expect("symlink");
        std::os::unix::fs::symlink("sub/file", dir.path().join("inside")).expect("symlink");
        let root = std::fs::canonicalize(dir.path()).expect("canonical root");

        assert_eq!(resolve(&root, &[], "/undionly.kpxe").await, Ok(root.join("undionly.kpxe")));
        assert_eq!(resolve(&root, &[], "sub/file").await, Ok(root.join("sub/file")));
        assert_eq!(resolve(&root, &[], "inside").await, Ok(root.join("sub/file")));

        for name in ["escape", "outdir/secret", "../etc/passwd", "/../x", "a/../../x"] {
            let refusal = resolve(&root, &[], name).await.expect_err(name);
            assert_eq!(refusal.code, ErrorCode::AccessViolation, "{name}");
            assert!(refusal.message.contains("escapes the TFTP root"), "{name}: {}", refusal.message);
        }

        let missing = resolve(&root, &[], "missing.efi").await.expect_err("missing");
        assert_eq!((missing.code, missing.result), (ErrorCode::FileNotFound, "not_found"));
        assert!(missing.message.contains("missing.efi"));
        let through_file = resolve(&root, &[], "undionly.kpxe/x").await.expect_err("through a file");
        assert_eq!(through_file.code, ErrorCode::FileNotFound);

        // Unless the target is in a directory allowed for symlinks.
        let allowed = [std::fs::canonicalize(outside.path()).expect("canonical outside")];
        assert_eq!(resolve(&root, &allowed, "escape").await, Ok(allowed[0].join("secret")));
        assert!(resolve(&root, &allowed, "../x").await.is_err(), "'..' stays refused");
    }
}
