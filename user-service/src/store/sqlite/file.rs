//! The database file: created private to its owner.

use std::path::Path;

use crate::domain::error::{Error, Result};

/// Creates the database file's directory (0700) and the file (0600) when
/// they do not exist yet, so personal data is not readable by other local
/// users. SQLite gives its `-wal` and `-shm` files the database file's
/// permissions. Existing files keep theirs, with a warning when others may
/// read them.
pub(super) fn create_private(file: &Path) -> Result<()> {
    let unavailable =
        |path: &Path, e: std::io::Error| Error::Unavailable(format!("cannot create {}: {e}", path.display()));
    if let Some(dir) = file.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir).map_err(|e| unavailable(dir, e))?;
    }
    let mut open = std::fs::OpenOptions::new();
    open.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
    match open.open(file) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            warn_if_shared(file);
            Ok(())
        }
        Err(e) => Err(unavailable(file, e)),
    }
}

/// Warns when a database file that was already there is readable by others.
pub(super) fn warn_if_shared(file: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(file)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                file = %file.display(),
                mode = format_args!("{:o}", meta.permissions().mode() & 0o777),
                "the SQLite file is readable by other users; chmod 600 it"
            );
        }
    }
    #[cfg(not(unix))]
    let _ = file;
}
