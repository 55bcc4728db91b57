//! The embedded BPF object holds exactly the programs and maps the common crate names. The BPF
//! crate spells these names again as literals (the aya-ebpf macros take nothing else), so
//! without this test a drift would show only when a program or map fails to load.
use std::collections::BTreeSet;

use aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_ARRAY;
use aya_obj::{
    EbpfSectionKind, Object, ProgramSection,
    programs::{
        CgroupSkbAttachType,
        CgroupSockAddrAttachType::{
            Connect4, Connect6, GetPeerName4, UDPRecvMsg4, UDPSendMsg4, UDPSendMsg6,
        },
        CgroupSockAttachType, CgroupSockoptAttachType,
    },
};
use cgroup_connect::loader::bpf_object;
use cgroup_connect_common::{
    Chunk, HIT_CLASSES, HitCount, TABLE_CLASSES, TABLE_FLAGS, V4Record, V6Record, maps, programs,
};

fn object() -> Object {
    Object::parse(bpf_object()).unwrap_or_else(|e| {
        panic!("parsing the embedded BPF object (was it built with CGROUP_CONNECT_SKIP_EBPF?): {e}")
    })
}

#[test]
fn programs_are_the_named_ones_at_their_hooks() {
    let object = object();
    let found: BTreeSet<&str> = object.programs.keys().map(String::as_str).collect();
    let named: BTreeSet<&str> = programs::LINKED.into_iter().chain(programs::REFERENCES).collect();
    assert_eq!(found, named, "programs in the object, and named in cgroup-connect-common");
    let linked: BTreeSet<&str> = programs::LINKED.into_iter().collect();
    let sock_addr: BTreeSet<&str> = programs::ALL.into_iter().collect();
    assert_eq!(
        linked,
        sock_addr.iter().copied().chain(programs::PACKET_CHECKS).collect(),
        "programs whose links an instance pins: the sock_addr ones and the packet checks"
    );
    let at = |name: &str| &object.programs[name].section;
    assert!(
        matches!(
            at(programs::SOCKET),
            ProgramSection::CgroupSock { attach_type: CgroupSockAttachType::SockCreate }
        ),
        "{:?}",
        at(programs::SOCKET)
    );
    assert!(
        matches!(
            at(programs::SETSOCKOPT),
            ProgramSection::CgroupSockopt { attach_type: CgroupSockoptAttachType::Set }
        ),
        "{:?}",
        at(programs::SETSOCKOPT)
    );
    assert!(
        matches!(at(programs::SENDMSG_OPTIONS), ProgramSection::LsmCgroup),
        "{:?}",
        at(programs::SENDMSG_OPTIONS)
    );
    for name in [programs::EGRESS, programs::REFERENCE_EGRESS] {
        let section = &object.programs[name].section;
        assert!(
            matches!(
                section,
                ProgramSection::CgroupSkb { attach_type: Some(CgroupSkbAttachType::Egress) }
            ),
            "{name} attaches at {section:?}"
        );
    }
    let sock_addr_programs = named
        .into_iter()
        .filter(|&n| !programs::PACKET_CHECKS.contains(&n) && n != programs::REFERENCE_EGRESS);
    for name in sock_addr_programs {
        let ProgramSection::CgroupSockAddr { attach_type } = object.programs[name].section else {
            panic!("{name} is not a cgroup sock_addr program");
        };
        let right = match name {
            programs::CONNECT4
            | programs::REFERENCE_ALLOW
            | programs::REFERENCE_HASH
            | programs::REFERENCE_LPM => matches!(attach_type, Connect4),
            programs::CONNECT6 | programs::REFERENCE_ALLOW6 => matches!(attach_type, Connect6),
            programs::SENDMSG4 => matches!(attach_type, UDPSendMsg4),
            programs::SENDMSG6 => matches!(attach_type, UDPSendMsg6),
            programs::RECVMSG4 => matches!(attach_type, UDPRecvMsg4),
            programs::GETPEERNAME4 => matches!(attach_type, GetPeerName4),
            _ => unreachable!("{name} is in the set above"),
        };
        assert!(right, "{name} attaches at {attach_type:?}");
    }
}

#[test]
fn maps_are_the_named_ones_and_all_pinned() {
    let object = object();
    // Data sections (.rodata and the like) are maps too, but the compiler's: only declared maps.
    let found: BTreeSet<&str> = object
        .maps
        .iter()
        .filter(|(_, map)| {
            matches!(map.section_kind(), EbpfSectionKind::Maps | EbpfSectionKind::BtfMaps)
        })
        .map(|(name, _)| name.as_str())
        .collect();
    let named: BTreeSet<&str> = maps::RULES_V4
        .into_iter()
        .chain(maps::RULES_V6)
        .chain(maps::RULE_HITS)
        .chain([maps::STATS, maps::EVENTS, maps::CONFIG, maps::DNS_ORIGINS, maps::DNS_LEARNED])
        .chain([maps::OBSERVED, maps::OBSERVE_STATS, maps::OBSERVE_CACHE])
        .chain(maps::REFERENCES)
        .collect();
    assert_eq!(found, named, "maps in the object, and named in cgroup-connect-common");
    let pinned: BTreeSet<&str> = maps::PINNED.into_iter().collect();
    let blockers: BTreeSet<&str> =
        named.iter().copied().filter(|m| !maps::REFERENCES.contains(m)).collect();
    assert_eq!(pinned, blockers, "maps an instance pins, and the blocker's maps in the object");
}

/// The benchmarks' reference maps are created at every load of the object, the blocker's too:
/// they must be declared with one entry (the benchmark sizes them), never at full size.
#[test]
fn reference_maps_are_declared_small() {
    let object = object();
    for name in maps::REFERENCES {
        assert_eq!(object.maps[name].max_entries(), 1, "{name}");
    }
}

/// The loader creates each table from its outer map's inner-map template: the template must
/// be an array of the class's size, of chunks of the family's records, mmapable.
#[test]
fn table_templates_follow_the_size_classes() {
    let object = object();
    let families = [
        (maps::RULES_V4, size_of::<Chunk<V4Record>>()),
        (maps::RULES_V6, size_of::<Chunk<V6Record>>()),
    ];
    for (outers, chunk) in families {
        for (outer, class) in outers.into_iter().zip(TABLE_CLASSES) {
            let inner = object.maps[outer]
                .inner()
                .unwrap_or_else(|| panic!("{outer} declares no inner-map template"));
            assert_eq!(inner.map_type(), BPF_MAP_TYPE_ARRAY as u32, "{outer}");
            assert_eq!(inner.key_size(), 4, "{outer}");
            assert_eq!(inner.value_size() as usize, chunk, "{outer}");
            assert_eq!(inner.max_entries(), class, "{outer}");
            assert_eq!(inner.map_flags(), TABLE_FLAGS, "{outer}");
        }
    }
}

/// The loader creates each hit-counter array from its outer map's template the same way.
#[test]
fn hit_templates_follow_the_hit_classes() {
    let object = object();
    for (outer, class) in maps::RULE_HITS.into_iter().zip(HIT_CLASSES) {
        let inner = object.maps[outer]
            .inner()
            .unwrap_or_else(|| panic!("{outer} declares no inner-map template"));
        assert_eq!(inner.map_type(), BPF_MAP_TYPE_ARRAY as u32, "{outer}");
        assert_eq!(inner.key_size(), 4, "{outer}");
        assert_eq!(inner.value_size() as usize, size_of::<HitCount>(), "{outer}");
        assert_eq!(inner.max_entries(), class, "{outer}");
        assert_eq!(inner.map_flags(), TABLE_FLAGS, "{outer}");
    }
}
