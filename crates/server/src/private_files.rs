//! Files and directories only the server's user may read: the data directory (0700) and the
//! secrets written into it (0600).

use std::io;
use std::path::Path;

/// Creates `dir` and its missing parents with mode 0700. An existing directory keeps its mode
/// (an operator may have set it on purpose), but one that others can enter is logged.
pub fn create_dir(dir: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir)?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                dir = %dir.display(),
                mode = format!("{:o}", mode & 0o777),
                "the data directory is open to other users; 0700 is expected"
            );
        }
    }
    Ok(())
}

/// Options that open a file for writing, creating it readable by its owner only (0600).
pub fn options() -> std::fs::OpenOptions {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts
}

/// Writes a file readable by its owner only (created 0600, replaced if present) and syncs it.
pub fn write(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut f = options().truncate(true).open(path)?;
    f.write_all(contents)?;
    f.sync_all()
}
