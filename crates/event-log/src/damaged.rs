//! Where a damaged database that can be built again goes: beside itself, for a look, while a
//! new one takes its place (the projection, rebuilt from the log; a JetStream replica, folded
//! again from the stream).

use std::path::{Path, PathBuf};

/// Moves the directory `dir` to `<dir>.damaged`, replacing what an earlier damage left there;
/// returns where it went.
pub fn set_aside_damaged(dir: &Path) -> std::io::Result<PathBuf> {
    let mut aside = dir.as_os_str().to_owned();
    aside.push(".damaged");
    let aside = PathBuf::from(aside);
    match std::fs::remove_dir_all(&aside) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    std::fs::rename(dir, &aside)?;
    Ok(aside)
}
