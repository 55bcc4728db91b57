//! `blocker completions SHELL` and `blocker manpages DIR`: shell completions (`clap_complete`)
//! and man pages (`clap_mangen`) made from the same clap definitions as `--help`, so they cannot
//! drift from the flags. scripts/install-extras.sh installs them. Both verbs are hidden from
//! the verb list; they need no privileges.
use std::{io, path::PathBuf};

use anyhow::Context as _;
use clap::CommandFactory as _;

use crate::cli::Cli;

/// Arguments of `blocker completions`.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Arguments of `blocker manpages`.
#[derive(Debug, clap::Args)]
pub struct ManpagesArgs {
    /// The folder to write blocker.1 and blocker-VERB.1 to (made if missing)
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

/// Prints the completion script.
///
/// # Errors
/// When standard output fails.
pub fn completions(args: &CompletionsArgs) -> anyhow::Result<()> {
    let mut cmd = Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "blocker", &mut io::stdout());
    Ok(())
}

/// Writes `blocker.1` and a page per visible verb (`blocker-run.1`, ...), and prints their
/// paths.
///
/// # Errors
/// When the folder or a page cannot be written.
pub fn manpages(args: &ManpagesArgs) -> anyhow::Result<()> {
    let cmd = Cli::command();
    std::fs::create_dir_all(&args.dir).with_context(|| format!("making {}", args.dir.display()))?;
    let mut pages = vec![("blocker".to_owned(), cmd.clone())];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("blocker-{}", sub.get_name());
        pages.push((name.clone(), sub.clone().name(name)));
    }
    for (name, page) in pages {
        let path = args.dir.join(format!("{name}.1"));
        let mut text = Vec::new();
        clap_mangen::Man::new(page).render(&mut text)?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(())
}
