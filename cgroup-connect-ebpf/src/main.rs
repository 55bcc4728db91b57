//! The cgroup `sock_addr` programs: connect4/6 and sendmsg4/6. Each entry point is thin: it
//! calls `try_<hook>` and turns the result into a verdict. The decision itself is
//! `cgroup_connect_common::decide`, shared with userspace and pinned down by host unit tests.
//!
//! Failure policy: a missing or malformed table fails closed (BLOCK). Userspace sets the
//! tables before it attaches, so this only happens on a bug, and a firewall that silently
//! lets traffic through on a bug looks safe while it is not.
#![no_std]
#![no_main]

use aya_ebpf::{
    btf_maps::{Array, ArrayOfMaps},
    macros::{btf_map, cgroup_sock_addr},
    programs::SockAddrContext,
};
use cgroup_connect_common::{
    ALLOW, BLOCK, Chunk, Proto, TABLE_FLAGS, V4Record, V6Record, decide, ip4_from_user,
    ip6_from_user, mapped_ip4, port_from_user, word,
};

/// Template of the tables; userspace creates tables of any size with the same flags.
type V4Table = Array<Chunk<V4Record>, 1, { TABLE_FLAGS as usize }>;
type V6Table = Array<Chunk<V6Record>, 1, { TABLE_FLAGS as usize }>;

#[btf_map(name = "rules_v4")]
static RULES_V4: ArrayOfMaps<V4Table, 1> = ArrayOfMaps::new();

#[btf_map(name = "rules_v6")]
static RULES_V6: ArrayOfMaps<V6Table, 1> = ArrayOfMaps::new();

#[cgroup_sock_addr(connect4)]
pub fn check_connect4(ctx: SockAddrContext) -> i32 {
    try_v4(&ctx).unwrap_or_else(|fail_closed| fail_closed)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn check_sendmsg4(ctx: SockAddrContext) -> i32 {
    try_v4(&ctx).unwrap_or_else(|fail_closed| fail_closed)
}

#[cgroup_sock_addr(connect6)]
pub fn check_connect6(ctx: SockAddrContext) -> i32 {
    try_v6(&ctx).unwrap_or_else(|fail_closed| fail_closed)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn check_sendmsg6(ctx: SockAddrContext) -> i32 {
    try_v6(&ctx).unwrap_or_else(|fail_closed| fail_closed)
}

/// The verdict for an IPv4 destination. `Err(BLOCK)`: the table is missing or malformed.
#[inline(always)]
fn try_v4(ctx: &SockAddrContext) -> Result<i32, i32> {
    // SAFETY: the kernel hands every sock_addr program a valid bpf_sock_addr.
    let sa = unsafe { &*ctx.sock_addr };
    let (port, proto) = (port_from_user(sa.user_port), Proto::from_ip_proto(sa.protocol));
    judge_v4(ip4_from_user(sa.user_ip4), port, proto)
}

/// The verdict for an IPv6 destination; IPv4-mapped ones are judged by the IPv4 table.
#[inline(always)]
fn try_v6(ctx: &SockAddrContext) -> Result<i32, i32> {
    // SAFETY: as in try_v4. Each word is read at its own constant offset: copying the whole
    // user_ip6 array can trip the verifier.
    let sa = unsafe { &*ctx.sock_addr };
    let words = [sa.user_ip6[0], sa.user_ip6[1], sa.user_ip6[2], sa.user_ip6[3]];
    let (port, proto) = (port_from_user(sa.user_port), Proto::from_ip_proto(sa.protocol));
    let addr = ip6_from_user(words);
    if let Some(v4) = mapped_ip4(addr) {
        return judge_v4(v4, port, proto);
    }
    let table = RULES_V6.get(0).ok_or(BLOCK)?;
    to_verdict(decide(|i| table.get(i), addr, port, proto))
}

#[inline(always)]
fn judge_v4(addr: u32, port: u16, proto: Proto) -> Result<i32, i32> {
    let table = RULES_V4.get(0).ok_or(BLOCK)?;
    to_verdict(decide(|i| table.get(i), addr, port, proto))
}

#[inline(always)]
fn to_verdict(word: Option<u32>) -> Result<i32, i32> {
    match word {
        Some(w) if word::blocks(w) => Ok(BLOCK),
        Some(_) => Ok(ALLOW),
        None => Err(BLOCK),
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
