//! `$PHOTON_HOME`: where `photon start` publishes its head (`cluster.json`:
//! address and session directory, whose `token` file is the cluster's
//! secret) for other commands and drivers on this machine.
//!
//! Because it leads to the token, it is private to one user: by default
//! `~/.photon`, created 0700, and refused when another user owns it or
//! others may write to it (someone who can write it could point this user's
//! commands at their own head). Not `$XDG_RUNTIME_DIR`: heads keep their
//! session (database, token, packages) under it, and that tmpfs is small and
//! wiped at logout while the head runs on.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Environment variable that overrides the home directory.
pub const HOME_ENV: &str = "PHOTON_HOME";

/// `$PHOTON_HOME`, else `$HOME/.photon`, else `/tmp/photon-<uid>`; not
/// created or checked (see [`private_home`]).
pub fn home_path() -> PathBuf {
    let set = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(home) = set(HOME_ENV) {
        return PathBuf::from(home);
    }
    if let Some(home) = set("HOME") {
        return PathBuf::from(home).join(".photon");
    }
    PathBuf::from(format!("/tmp/photon-{}", effective_uid()))
}

/// The home directory, created 0700 if missing, and checked to be this
/// user's own: the error names the directory and what to do.
pub fn private_home() -> Result<PathBuf, String> {
    let home = home_path();
    create_private_dir(&home)?;
    check_private(&home)?;
    Ok(home)
}

pub use photon_proto::files::{create_private_dir, write_private};

/// Refuses `dir` unless this user owns it and neither group nor others may
/// write to it.
pub fn check_private(dir: &Path) -> Result<(), String> {
    let metadata =
        fs::metadata(dir).map_err(|err| format!("cannot read {}: {err}", dir.display()))?;
    let me = effective_uid();
    if metadata.uid() != me {
        return Err(format!(
            "{} is owned by uid {}, not by you (uid {me}): Photon keeps the cluster token's location there, so it must be yours; set {HOME_ENV} to a directory of your own",
            dir.display(),
            metadata.uid()
        ));
    }
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o022 != 0 {
        return Err(format!(
            "{} is writable by other users (mode {mode:o}): run `chmod 700 {}` or set {HOME_ENV} to a private directory",
            dir.display(),
            dir.display()
        ));
    }
    Ok(())
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    #[allow(unsafe_code)]
    unsafe {
        libc::geteuid()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_dir_passes_and_a_world_writable_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        create_private_dir(&home).unwrap();
        assert_eq!(
            fs::metadata(&home).unwrap().permissions().mode() & 0o777,
            0o700
        );
        check_private(&home).unwrap();
        fs::set_permissions(&home, fs::Permissions::from_mode(0o777)).unwrap();
        let err = check_private(&home).unwrap_err();
        assert!(
            err.contains("writable by other users") && err.contains("chmod 700"),
            "{err}"
        );
        fs::set_permissions(&home, fs::Permissions::from_mode(0o750)).unwrap();
        check_private(&home).unwrap();
    }
}
