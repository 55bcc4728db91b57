//! `blocker run`: load, attach, block, stay attached until SIGINT or SIGTERM, detach.
use std::{io::Write as _, net::Ipv4Addr, path::PathBuf};

use anyhow::Context as _;

use crate::{
    cgroup::{self, CgroupDir},
    loader::Instance,
    privileges,
};

/// What the seed blocked when given no address: example.com's old address.
pub const DEFAULT_BLOCK_IP: Ipv4Addr = Ipv4Addr::new(93, 184, 216, 34);

/// Arguments of `blocker run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// cgroup v2 directory to attach to [default: the root of the cgroup v2 mount, found in
    /// /proc/self/mountinfo]
    #[arg(long, value_name = "DIR")]
    pub cgroup: Option<PathBuf>,
    /// Destination IPv4 address to block; repeat for more [default: 93.184.216.34]
    #[arg(long = "block-ip", value_name = "IP")]
    pub block_ip: Vec<Ipv4Addr>,
}

/// Runs until SIGINT or SIGTERM; returns after detaching.
///
/// # Errors
/// A bad cgroup directory, missing privileges, or a load or attach failure; nothing stays
/// attached after an error.
pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let cgroup = match &args.cgroup {
        Some(dir) => CgroupDir::open(dir)?,
        None => CgroupDir::open(cgroup::cgroup2_root()?)?,
    };
    privileges::check()?;
    let blocked =
        if args.block_ip.is_empty() { vec![DEFAULT_BLOCK_IP] } else { args.block_ip.clone() };
    let instance = Instance::start(&cgroup, &blocked)?;
    let list: Vec<String> = blocked.iter().map(ToString::to_string).collect();
    println!("attached to cgroup {}: blocking {}", cgroup.path().display(), list.join(", "));
    std::io::stdout().flush().context("writing to stdout")?;
    wait_for_shutdown()?;
    drop(instance);
    println!("detached from cgroup {}", cgroup.path().display());
    Ok(())
}

/// Blocks until SIGINT or SIGTERM arrives.
fn wait_for_shutdown() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal runtime")?;
    rt.block_on(async {
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("blocker").chain(args.iter().copied()))
    }

    #[test]
    fn block_ip_repeats() {
        let cli = parse(&["run", "--block-ip", "10.0.0.1", "--block-ip", "127.0.0.2"]).unwrap();
        let Command::Run(args) = cli.command else { panic!("not run") };
        assert_eq!(
            args.block_ip,
            ["10.0.0.1".parse::<std::net::Ipv4Addr>().unwrap(), [127, 0, 0, 2].into()]
        );
        assert_eq!(args.cgroup, None);
    }

    #[test]
    fn cgroup_is_taken() {
        let cli = parse(&["run", "--cgroup", "/sys/fs/cgroup/x"]).unwrap();
        let Command::Run(args) = cli.command else { panic!("not run") };
        assert_eq!(args.cgroup.as_deref(), Some(std::path::Path::new("/sys/fs/cgroup/x")));
        assert!(args.block_ip.is_empty());
    }

    #[test]
    fn invalid_ip_names_the_value() {
        let err = parse(&["run", "--block-ip", "300.1.2.3"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("300.1.2.3"), "{err}");
    }
}
