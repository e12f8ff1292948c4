//! Finding the CUDA libraries the GPU engine loads at run time: NVRTC (kernel
//! compiler) and cuBLAS (with cuBLASLt, which it needs).
//!
//! cudarc opens them by soname (`libnvrtc.so.13`, `.so.12`, …) through the
//! dynamic linker, which only searches `LD_LIBRARY_PATH` and the system's
//! directories. CUDA is often elsewhere: a toolkit under `/usr/local/cuda`, or
//! the `nvidia-*` Python wheels PyTorch installs. So each library is first
//! opened here by full path from the first directory that has it; the dynamic
//! linker then hands cudarc the already loaded copy (it matches loaded
//! libraries by soname). CUDA 13 names are tried before CUDA 12's.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Directories listed here (colon-separated) are searched first.
pub const LIBRARY_PATH_ENV: &str = "PHOTON_CUDA_LIBRARY_PATH";

/// A CUDA library and the file names its supported versions have.
struct Library {
    name: &'static str,
    files: &'static [&'static str],
}

const NVRTC: Library = Library {
    name: "NVRTC",
    files: &["libnvrtc.so.13", "libnvrtc.so.12"],
};
const CUBLAS_LT: Library = Library {
    name: "cuBLASLt",
    files: &["libcublasLt.so.13", "libcublasLt.so.12"],
};
const CUBLAS: Library = Library {
    name: "cuBLAS",
    files: &["libcublas.so.13", "libcublas.so.12"],
};

/// Loads NVRTC, once per process. The error says where it looked.
pub fn load_nvrtc() -> Result<(), String> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED.get_or_init(|| load(&[NVRTC])).clone()
}

/// Loads cuBLAS and cuBLASLt, once per process. The error says where it looked.
pub fn load_cublas() -> Result<(), String> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    // cuBLASLt first: cuBLAS needs it, and it may not be on the linker's path.
    LOADED.get_or_init(|| load(&[CUBLAS_LT, CUBLAS])).clone()
}

fn load(libraries: &[Library]) -> Result<(), String> {
    let directories = search_directories();
    for library in libraries {
        let found = directories
            .iter()
            .flat_map(|dir| library.files.iter().map(move |file| dir.join(file)))
            .find(|path| path.is_file());
        // Without a file in a known directory, the linker's own search
        // (LD_LIBRARY_PATH, ld.so.cache) gets the sonames.
        let candidates: Vec<PathBuf> = match found {
            Some(path) => vec![path],
            None => library.files.iter().map(PathBuf::from).collect(),
        };
        let mut errors = Vec::new();
        let opened = candidates.iter().find_map(|candidate| {
            // SAFETY: loading a CUDA library runs only its initialisers; the
            // handle is leaked so the library stays loaded for the process.
            #[allow(unsafe_code)]
            match unsafe { libloading::Library::new(candidate) } {
                Ok(handle) => {
                    std::mem::forget(handle);
                    Some(())
                }
                Err(e) => {
                    errors.push(format!("{}: {e}", candidate.display()));
                    None
                }
            }
        });
        if opened.is_none() {
            return Err(format!(
                "cannot load {} ({}): looked in {} and the dynamic linker's path ({}). \
                 Install the CUDA toolkit or the `nvidia-*` Python wheels, or list the \
                 directory holding it in {LIBRARY_PATH_ENV}",
                library.name,
                library.files.join(" or "),
                directories
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                errors.join("; "),
            ));
        }
    }
    Ok(())
}

/// Where CUDA libraries are looked for, in order: `PHOTON_CUDA_LIBRARY_PATH`,
/// `LD_LIBRARY_PATH`, the toolkit (`CUDA_HOME`, `CUDA_PATH`,
/// `/usr/local/cuda*`), the distribution's directories, and the `nvidia`
/// Python wheels of the active Python (`python3`'s `sys.path`).
pub fn search_directories() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for var in [LIBRARY_PATH_ENV, "LD_LIBRARY_PATH"] {
        if let Some(list) = std::env::var_os(var) {
            dirs.extend(std::env::split_paths(&list).filter(|p| !p.as_os_str().is_empty()));
        }
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(root) = std::env::var_os(var) {
            dirs.push(Path::new(&root).join("lib64"));
            dirs.push(Path::new(&root).join("lib"));
        }
    }
    dirs.push("/usr/local/cuda/lib64".into());
    dirs.extend(sorted_matches("/usr/local", "cuda-", "lib64"));
    dirs.push("/usr/lib/x86_64-linux-gnu".into());
    dirs.push("/usr/lib64".into());
    for site in python_paths() {
        // CUDA 13 wheels share `nvidia/cu13/lib`; CUDA 12's have one per library.
        for sub in ["cu13/lib", "cu12/lib", "cuda_nvrtc/lib", "cublas/lib"] {
            dirs.push(site.join("nvidia").join(sub));
        }
    }
    let mut seen = std::collections::HashSet::new();
    dirs.retain(|d| seen.insert(d.clone()));
    dirs
}

/// `root/prefix*/sub`, newest version first.
fn sorted_matches(root: &str, prefix: &str, sub: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path().join(sub))
        .collect();
    found.sort();
    found.reverse();
    found
}

/// The active `python3`'s import path: where pip put the `nvidia` wheels
/// (a virtualenv, pyenv, the user's site). Empty without a `python3`.
fn python_paths() -> Vec<PathBuf> {
    static PATHS: OnceLock<Vec<PathBuf>> = OnceLock::new();
    PATHS
        .get_or_init(|| {
            let output = std::process::Command::new("python3")
                .args([
                    "-c",
                    "import sys; print('\\n'.join(p for p in sys.path if p))",
                ])
                .stderr(std::process::Stdio::null())
                .output();
            match output {
                Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(PathBuf::from)
                    .filter(|p| p.is_dir())
                    .collect(),
                _ => Vec::new(),
            }
        })
        .clone()
}
