//! The local store's file (`limits.json` beside the token store): JSON with a version,
//! written atomically — a private temporary file in the same directory, fsynced, renamed
//! over the old one, and the directory fsynced — so a crash leaves the old file or the
//! new one, never half of either.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::store::{AssetState, LimitStoreError};

const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    #[serde(default)]
    assets: HashMap<String, AssetState>,
}

/// The assets' state in the file at `path`; empty when there is no file yet.
pub(super) fn load(path: &Path) -> Result<HashMap<String, AssetState>, LimitStoreError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(source) => {
            return Err(LimitStoreError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let file: StateFile = serde_json::from_str(&text).map_err(|err| LimitStoreError::Format {
        path: path.to_path_buf(),
        reason: err.to_string(),
    })?;
    if file.version != VERSION {
        return Err(LimitStoreError::Format {
            path: path.to_path_buf(),
            reason: format!("version {} is not {VERSION}", file.version),
        });
    }
    Ok(file.assets)
}

pub(super) fn save(
    path: &Path,
    assets: &HashMap<String, AssetState>,
) -> Result<(), LimitStoreError> {
    let io_error = |source| LimitStoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bytes = serde_json::to_vec(&StateFile {
        version: VERSION,
        assets: assets.clone(),
    })
    .map_err(|err| LimitStoreError::Format {
        path: path.to_path_buf(),
        reason: err.to_string(),
    })?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => Path::new(".").to_path_buf(),
    };
    fs::create_dir_all(&dir).map_err(io_error)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "limits.json".to_string());
    // Unique per write: two stores on one file (a reload, a test's restart) never share
    // a temporary file.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let temp = dir.join(format!(".{name}.tmp.{}.{n}", std::process::id()));
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = options
        .open(&temp)
        .and_then(|file| write_and_sync(file, &bytes))
        .and_then(|()| fs::rename(&temp, path));
    if let Err(err) = written {
        let _ = fs::remove_file(&temp);
        return Err(io_error(err));
    }
    // Makes the rename itself durable.
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error)
}

fn write_and_sync(mut file: File, bytes: &[u8]) -> io::Result<()> {
    file.write_all(bytes)?;
    file.sync_all()
}
