//! Why a destination gets its verdict: the verdict word the tables give (searched with the
//! common crate's decision functions, as the programs search them), the recorded rule it names
//! with its source, and every other rule whose prefix holds the destination with why it did
//! not decide. The tables and the record are checked against each other: the record's rules,
//! ranked by hand, must name the same verdict, else [`ExplainError::Disagree`].
use std::{cmp::Reverse, net::IpAddr};

use cgroup_connect_common::{Proto, Rank, word};
use ipnet::IpNet;

use crate::{
    policy::nat64_ipv4_of,
    record::{Recorded, RecordedRule},
    rules::{Action, Destination, Host, Nat64Prefix, Ports},
    table::{TableView, reached},
};

/// What to explain: a call from an unbound socket to `addr`, on `port` (None: a port no rule
/// for the address names) with `proto` (TCP or UDP).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Query {
    pub addr: IpAddr,
    pub port: Option<u16>,
    pub proto: Proto,
}

/// Why a rule whose prefix holds the destination did not decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Its ports do not hold the port.
    OtherPort,
    /// It names the other protocol.
    OtherProtocol,
    /// It matched; the deciding rule's prefix is longer.
    LongerPrefix,
    /// It matched; same prefix length, and the deciding rule names a port, this one none.
    Port,
    /// It matched; same prefix length and port-ness, the deciding rule names a protocol.
    Protocol,
    /// It matched and allows; the deciding rule blocks with the same prefix, port-ness and
    /// protocol-ness.
    BlockOverAllow,
    /// It matched with the same rank and action: the table keeps one of them.
    Tie,
}

/// A recorded rule whose prefix holds the destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub rule: RecordedRule,
    /// The prefix the tables hold for it (a hostname's address; a NAT64 prefix as IPv4).
    pub net: IpNet,
    /// For a hostname: which of its addresses holds the destination.
    pub address: Option<IpAddr>,
    pub ports: Option<Ports>,
    pub proto: Proto,
    pub rank: Rank,
}

impl Candidate {
    fn applies(&self, port: u16, proto: Proto) -> Option<Reason> {
        if self.ports.is_some_and(|p| !(p.lo..=p.hi).contains(&port)) {
            Some(Reason::OtherPort)
        } else if self.proto != Proto::Any && self.proto != proto {
            Some(Reason::OtherProtocol)
        } else {
            None
        }
    }

    /// Why it lost to `winner`, which matched too and decided.
    fn lost_to(&self, winner: &Self) -> Reason {
        let (w, r) = (winner.rank, self.rank);
        if w.prefix_len != r.prefix_len {
            Reason::LongerPrefix
        } else if w.has_port != r.has_port {
            Reason::Port
        } else if w.has_proto != r.has_proto {
            Reason::Protocol
        } else if w.block != r.block {
            Reason::BlockOverAllow
        } else {
            Reason::Tie
        }
    }

    fn blocks(&self) -> bool {
        self.rule.action == Action::Block
    }
}

/// A rule that did not decide, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Other {
    pub candidate: Candidate,
    pub reason: Reason,
}

/// Why a destination gets its verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    pub query: Query,
    /// The address the tables judged: where the call goes (`0.0.0.0` to 127.0.0.1), an
    /// IPv4-mapped or NAT64 address as IPv4.
    pub judged: IpAddr,
    /// The port judged: the one asked, or one no rule for the address names.
    pub port: u16,
    pub block: bool,
    pub default: Action,
    /// The rule that decided; None: the default did.
    pub decided_by: Option<Candidate>,
    /// Every other rule whose prefix holds the judged address, in id order.
    pub others: Vec<Other>,
}

/// Why a destination could not be explained.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error(
        "the tables in force and the record of the rules in force DISAGREE on {judged} port \
         {port} {proto}: the tables say {} by {}, the record says {} by {}; `blocker reload \
         {name}` writes both again",
        verdict(*table_block), rule_name(*table_rule), verdict(*record_block), rule_name(*record_rule)
    )]
    Disagree {
        name: String,
        judged: IpAddr,
        port: u16,
        proto: &'static str,
        table_block: bool,
        table_rule: u32,
        record_block: bool,
        record_rule: u32,
    },
    #[error(
        "no valid table for {judged}: the programs fail closed (block); `blocker reload {name}` \
         writes the tables again"
    )]
    NoTable { name: String, judged: IpAddr },
    #[error("rule {id} of the record ({rule:?}) does not read: `blocker reload {name}`")]
    Record { name: String, id: usize, rule: String },
}

fn verdict(block: bool) -> &'static str {
    if block { "block" } else { "allow" }
}

fn rule_name(id: u32) -> String {
    if id == word::DEFAULT_RULE { "the default".to_owned() } else { format!("rule #{id}") }
}

/// The protocol's name as `--proto` and the rule language spell it.
#[must_use]
pub fn proto_name(proto: Proto) -> &'static str {
    match proto {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
        Proto::Any => "any",
    }
}

/// Explains `query` by `tables` (the tables in force, or compiled from a policy) and
/// `recorded`, the rules they were compiled from; `nat64` are the prefixes besides the
/// well-known one, and `name` names the instance (or policy) in messages.
///
/// # Errors
/// [`ExplainError::Disagree`] when the tables and the record name different verdicts or
/// deciding ranks; [`ExplainError::NoTable`] for a malformed table; [`ExplainError::Record`]
/// for a recorded rule that does not parse.
pub fn explain(
    name: &str,
    tables: &TableView<'_>,
    recorded: &Recorded,
    nat64: &[Nat64Prefix],
    query: Query,
) -> Result<Explanation, ExplainError> {
    let judged = tables.judged(reached(query.addr));
    let candidates = candidates(name, recorded, nat64, judged)?;
    let port = query.port.unwrap_or_else(|| unnamed_port(&candidates));
    let word = tables
        .lookup(reached(query.addr), port, query.proto)
        .ok_or_else(|| ExplainError::NoTable { name: name.to_owned(), judged })?;
    let (table_block, table_rule) = (word::blocks(word), word::rule(word));
    let matching = || candidates.iter().filter(|c| c.applies(port, query.proto).is_none());
    let best = matching().max_by_key(|c| (c.rank, Reverse(c.rule.id)));
    // The table's rule decides when the record agrees that it ranks first (rules of equal
    // rank and action tie: the table keeps one of them).
    let decided_by = if table_rule == word::DEFAULT_RULE {
        None
    } else {
        matching().find(|c| u32::try_from(c.rule.id) == Ok(table_rule))
    };
    let agree = match (decided_by, best) {
        (None, None) => {
            table_rule == word::DEFAULT_RULE && table_block == (recorded.default == Action::Block)
        }
        (Some(d), Some(b)) => d.rank == b.rank && d.blocks() == table_block,
        _ => false,
    };
    if !agree {
        return Err(ExplainError::Disagree {
            name: name.to_owned(),
            judged,
            port,
            proto: proto_name(query.proto),
            table_block,
            table_rule,
            record_block: best.map_or(recorded.default == Action::Block, Candidate::blocks),
            record_rule: best.map_or(0, |b| u32::try_from(b.rule.id).unwrap_or(u32::MAX)),
        });
    }
    let others = candidates
        .iter()
        .filter(|c| decided_by.is_none_or(|d| d.rule.id != c.rule.id))
        .map(|c| Other {
            candidate: c.clone(),
            reason: c.applies(port, query.proto).unwrap_or_else(|| {
                // Only reached when a rule decided: a matching rule means the default did not.
                decided_by.map_or(Reason::Tie, |d| c.lost_to(d))
            }),
        })
        .collect();
    Ok(Explanation {
        query,
        judged,
        port,
        block: table_block,
        default: recorded.default,
        decided_by: decided_by.cloned(),
        others,
    })
}

/// The recorded rules whose prefix (as the tables hold it) holds `judged`, in id order.
fn candidates(
    name: &str,
    recorded: &Recorded,
    nat64: &[Nat64Prefix],
    judged: IpAddr,
) -> Result<Vec<Candidate>, ExplainError> {
    let mut out = Vec::new();
    for rule in &recorded.rules {
        let bad =
            || ExplainError::Record { name: name.to_owned(), id: rule.id, rule: rule.rule.clone() };
        let dest: Destination = rule.rule.parse().map_err(|_| bad())?;
        let nets: Vec<(IpNet, Option<IpAddr>)> = match &dest.host {
            Host::Net(net) => vec![(*net, None)],
            Host::Name(_) => rule
                .addrs
                .iter()
                .map(|a| a.parse::<IpAddr>().map(|ip| (IpNet::from(ip), Some(ip))))
                .collect::<Result<_, _>>()
                .map_err(|_| bad())?,
        };
        let found = nets
            .into_iter()
            .map(|(net, address)| (nat64_ipv4_of(nat64, net), address))
            .find(|(net, _)| net.contains(&judged));
        if let Some((net, address)) = found {
            let rank = Rank {
                prefix_len: net.prefix_len(),
                has_port: dest.ports.is_some(),
                has_proto: dest.proto != Proto::Any,
                block: rule.action == Action::Block,
            };
            out.push(Candidate {
                rule: rule.clone(),
                net,
                address,
                ports: dest.ports,
                proto: dest.proto,
                rank,
            });
        }
    }
    Ok(out)
}

/// The first port from 1 that none of `candidates` names (1 if they name every port).
fn unnamed_port(candidates: &[Candidate]) -> u16 {
    (1..=u16::MAX)
        .find(|&p| !candidates.iter().any(|c| c.ports.is_some_and(|r| (r.lo..=r.hi).contains(&p))))
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use std::{path::Path, sync::Arc};

    use super::*;
    use crate::{
        policy::{Origin, Policy, SourcedRule},
        record::Record,
        table,
    };

    /// A policy of `rules` (`block 10.0.0.0/8`), each from line N of /p.toml.
    fn policy(default: Action, rules: &[&str]) -> Policy {
        let path: Arc<Path> = Arc::from(Path::new("/p.toml"));
        let rules = rules
            .iter()
            .zip(1..)
            .map(|(text, line)| {
                let (action, dest) = text.split_once(' ').unwrap();
                SourcedRule {
                    rule: crate::rules::Rule {
                        action: action.parse().unwrap(),
                        dest: dest.parse().unwrap(),
                    },
                    origin: Origin::Line { path: Arc::clone(&path), line },
                }
            })
            .collect();
        Policy { default, rules, nat64: vec![], allow_sockets: vec![] }
    }

    fn run(p: &Policy, addr: &str, port: Option<u16>, proto: Proto) -> Explanation {
        let addrs = |_: &str| vec!["192.0.2.1".parse::<IpAddr>().unwrap()];
        let mut tables = table::compile(p.default, p.table_rules(addrs)).unwrap();
        tables.nat64.clone_from(&p.nat64);
        let recorded = Record::of(p, addrs).recorded();
        let query = Query { addr: addr.parse().unwrap(), port, proto };
        explain("test", &tables.view(), &recorded, &p.nat64, query).unwrap()
    }

    /// (id, reason) of the others.
    fn reasons(e: &Explanation) -> Vec<(usize, Reason)> {
        e.others.iter().map(|o| (o.candidate.rule.id, o.reason)).collect()
    }

    #[test]
    fn the_longest_prefix_decides_and_the_others_say_why_not() {
        let p = policy(
            Action::Allow,
            &[
                "allow 10.0.0.0/8",
                "block 10.1.0.0/16",
                "allow tcp://10.1.0.0/16:443",
                "allow udp://10.1.0.0/16",
                "block 10.2.0.0/16",
            ],
        );
        let e = run(&p, "10.1.2.3", Some(443), Proto::Tcp);
        assert!(!e.block);
        assert_eq!(e.decided_by.as_ref().unwrap().rule.id, 3);
        assert_eq!(e.decided_by.as_ref().unwrap().rule.origin, "/p.toml:3");
        assert_eq!(
            reasons(&e),
            [(1, Reason::LongerPrefix), (2, Reason::Port), (4, Reason::OtherProtocol)]
        );
        let e = run(&p, "10.1.2.3", Some(80), Proto::Tcp);
        assert!(e.block);
        assert_eq!(e.decided_by.as_ref().unwrap().rule.id, 2);
        assert_eq!(
            reasons(&e),
            [(1, Reason::LongerPrefix), (3, Reason::OtherPort), (4, Reason::OtherProtocol)]
        );
        let e = run(&p, "10.1.2.3", Some(80), Proto::Udp);
        assert_eq!((e.block, e.decided_by.as_ref().unwrap().rule.id), (false, 4));
        assert_eq!(
            reasons(&e),
            [(1, Reason::LongerPrefix), (2, Reason::Protocol), (3, Reason::OtherPort)]
        );
    }

    #[test]
    fn block_beats_allow_at_equal_rank_and_equal_rules_tie() {
        let p = policy(
            Action::Allow,
            &["allow 192.0.2.0/24", "block 192.0.2.0/24", "block 192.0.2.0/24:1-65535"],
        );
        let e = run(&p, "192.0.2.9", Some(80), Proto::Tcp);
        assert_eq!((e.block, e.decided_by.as_ref().unwrap().rule.id), (true, 3));
        assert_eq!(reasons(&e), [(1, Reason::Port), (2, Reason::Port)]);
        let p = policy(Action::Allow, &["allow 192.0.2.0/24", "block 192.0.2.0/24"]);
        let e = run(&p, "192.0.2.9", Some(80), Proto::Tcp);
        assert_eq!((e.block, e.decided_by.as_ref().unwrap().rule.id), (true, 2));
        assert_eq!(reasons(&e), [(1, Reason::BlockOverAllow)]);
        let p = policy(Action::Allow, &["block 192.0.2.0/24", "block tcp://192.0.2.0/24"]);
        let e = run(&p, "192.0.2.9", Some(80), Proto::Tcp);
        assert_eq!(e.decided_by.as_ref().unwrap().rule.id, 2);
        assert_eq!(reasons(&e), [(1, Reason::Protocol)]);
    }

    #[test]
    fn the_default_decides_when_no_rule_matches() {
        let p = policy(Action::Block, &["allow tcp://10.0.0.0/8:22", "allow [2001:db8::/32]"]);
        let e = run(&p, "10.9.9.9", Some(80), Proto::Tcp);
        assert!(e.block && e.decided_by.is_none());
        assert_eq!(reasons(&e), [(1, Reason::OtherPort)]);
        let e = run(&p, "192.0.2.1", None, Proto::Udp);
        assert!(e.block && e.others.is_empty());
        // No port given: one that no rule for the address names.
        let e = run(&p, "10.9.9.9", None, Proto::Tcp);
        assert_eq!((e.port, e.block), (1, true));
        let p = policy(Action::Block, &["allow 10.0.0.0/8:1-21"]);
        assert_eq!(run(&p, "10.9.9.9", None, Proto::Tcp).port, 22);
    }

    #[test]
    fn where_the_call_goes_is_judged() {
        let p = policy(
            Action::Allow,
            &["block 127.0.0.1", "block 10.1.2.0/24", "allow ::1", "block tcp://example.test"],
        );
        let e = run(&p, "0.0.0.0", Some(80), Proto::Tcp);
        assert_eq!((e.judged, e.decided_by.unwrap().rule.id), ("127.0.0.1".parse().unwrap(), 1));
        let e = run(&p, "::", Some(80), Proto::Tcp);
        assert_eq!((e.block, e.decided_by.unwrap().rule.id), (false, 3));
        for addr in ["::ffff:10.1.2.3", "64:ff9b::10.1.2.3"] {
            let e = run(&p, addr, Some(80), Proto::Tcp);
            assert_eq!((e.judged, e.block), ("10.1.2.3".parse().unwrap(), true), "{addr}");
        }
        let e = run(&p, "192.0.2.1", Some(80), Proto::Tcp);
        let by = e.decided_by.unwrap();
        assert_eq!((by.rule.id, by.address), (4, Some("192.0.2.1".parse().unwrap())));
        assert_eq!(by.rule.origin, "/p.toml:4");
    }

    #[test]
    fn tables_that_differ_from_the_record_are_refused() {
        let p = policy(Action::Allow, &["block 10.0.0.0/8"]);
        let other = policy(Action::Allow, &["allow 10.0.0.0/8"]);
        let tables = table::compile(other.default, other.table_rules(|_| vec![])).unwrap();
        let recorded = Record::of(&p, |_| Vec::<IpAddr>::new()).recorded();
        let query = Query { addr: "10.0.0.1".parse().unwrap(), port: Some(1), proto: Proto::Tcp };
        let err = explain("web", &tables.view(), &recorded, &[], query).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ExplainError::Disagree { .. }), "{text}");
        assert!(
            text.contains("DISAGREE")
                && text.contains("tables say allow by rule #1, the record says block by rule #1")
                && text.contains("blocker reload web"),
            "{text}"
        );
    }
}
