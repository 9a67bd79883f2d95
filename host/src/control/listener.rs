//! Binding the control socket safely: an owner-only directory and socket, and a stale socket from
//! a dead daemon replaced only after checking that nobody answers on it.

use std::fs::{DirBuilder, Permissions};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener as StdListener, UnixStream as StdStream};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("{path}: another modelhost is already serving on this socket")]
    AlreadyRunning { path: PathBuf },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Makes `path` ready to bind: creates its directory with mode 0700 if needed, refuses a path
/// another daemon serves or that is not a socket, and removes a stale socket. `bind` does this
/// itself; calling it first lets a caller find out before it binds anything else.
pub fn prepare(path: &Path) -> Result<(), BindError> {
    let io = |source| BindError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match StdStream::connect(path) {
            Ok(_) => {
                return Err(BindError::AlreadyRunning {
                    path: path.to_owned(),
                })
            }
            // Nobody listens: a socket left behind by a daemon that died. Replace it.
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                tracing::info!(path = %path.display(), "removing a stale control socket");
                std::fs::remove_file(path).map_err(io)?;
            }
            Err(e) => return Err(io(e)),
        },
        Ok(_) => {
            return Err(BindError::NotASocket {
                path: path.to_owned(),
            })
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    Ok(())
}

/// Binds `path` with mode 0600 (0660 and group `group` when a group is allowed), after
/// [`prepare`].
pub fn bind(path: &Path, group: Option<u32>) -> Result<UnixListener, BindError> {
    let io = |source| BindError::Io {
        path: path.to_owned(),
        source,
    };
    prepare(path)?;
    let listener = StdListener::bind(path).map_err(io)?;
    // The directory is 0700 (or the operator's), so nobody else can reach the socket between
    // bind and chmod.
    match group {
        None => std::fs::set_permissions(path, Permissions::from_mode(0o600)).map_err(io)?,
        Some(gid) => {
            nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid)))
                .map_err(|e| io(e.into()))?;
            std::fs::set_permissions(path, Permissions::from_mode(0o660)).map_err(io)?;
        }
    }
    listener.set_nonblocking(true).map_err(io)?;
    UnixListener::from_std(listener).map_err(io)
}
