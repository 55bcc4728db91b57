//! `blocker list`: the rules an instance enforces, in order, with where each came from, as
//! recorded when they were put in force ([`crate::record`]), and its default and NAT64
//! prefixes. The JSON form is described by docs/schemas/list.schema.json.
use serde::Serialize;

use crate::{pins::InstancePaths, record, rules::Action};

/// Arguments of `blocker list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// The instance
    pub name: String,
    /// JSON instead of text (described by docs/schemas/list.schema.json)
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Listed {
    name: String,
    /// `allow` or `deny`, as `--default` spells it.
    default: &'static str,
    /// NAT64 prefixes besides the well-known `64:ff9b::/96`.
    nat64: Vec<String>,
    rules: Vec<ListedRule>,
}

#[derive(Serialize)]
struct ListedRule {
    id: usize,
    action: Action,
    /// The destination, as the policy file's `dst` spells it.
    dst: String,
    /// The whole rule (`block 192.0.2.0/24`), as events, `stats` and metrics name it.
    rule: String,
    origin: String,
}

/// Prints the rules.
///
/// # Errors
/// No such instance, or its record of the rules in force does not read.
pub fn list(args: &ListArgs) -> anyhow::Result<()> {
    let paths = InstancePaths::new(&args.name)?;
    let state = crate::instance::load(&paths)?;
    let recorded = record::read(&paths)?;
    let rules = recorded
        .rules
        .into_iter()
        .map(|r| ListedRule {
            id: r.id,
            action: r.action,
            rule: format!("{} {}", r.action, r.rule),
            dst: r.rule,
            origin: r.origin,
        })
        .collect();
    let nat64 = state.nat64.iter().map(ToString::to_string).collect();
    let default = recorded.default.default_word();
    let listed = Listed { name: paths.name, default, nat64, rules };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.json {
        serde_json::to_writer_pretty(&mut out, &listed)?;
        writeln(&mut out, "")?;
    } else {
        let nat64 = if listed.nat64.is_empty() {
            String::new()
        } else {
            format!(", NAT64 {}", listed.nat64.join(" "))
        };
        writeln(
            &mut out,
            &format!("# instance {}: default {}{nat64}", listed.name, listed.default),
        )?;
        for r in &listed.rules {
            writeln(&mut out, &format!("{:>6}  {}  # {}", r.id, r.rule, r.origin))?;
        }
    }
    Ok(())
}

fn writeln(out: &mut impl std::io::Write, line: &str) -> std::io::Result<()> {
    out.write_all(line.as_bytes())?;
    out.write_all(b"\n")
}
