//! The cgroup sock_addr programs. Each entry point is thin: it calls `try_<hook>` and turns the
//! result into a verdict; the logic lives in small functions below.
#![no_std]
#![no_main]

use aya_ebpf::{
    macros::{cgroup_sock_addr, map},
    maps::HashMap,
    programs::SockAddrContext,
};
use cgroup_connect_common::{ALLOW, BLOCK, BLOCKED_ADDRS_CAPACITY, BlockValue, Ipv4Key};

#[map(name = "blocked_addrs")]
static BLOCKED_ADDRS: HashMap<Ipv4Key, BlockValue> =
    HashMap::with_max_entries(BLOCKED_ADDRS_CAPACITY, 0);

#[cgroup_sock_addr(connect4)]
pub fn check_connect4(ctx: SockAddrContext) -> i32 {
    // Nothing on this path can fail: the context read is a plain load the verifier checks.
    try_connect4(&ctx).unwrap_or(ALLOW)
}

fn try_connect4(ctx: &SockAddrContext) -> Result<i32, i32> {
    // SAFETY: the kernel hands every cgroup/connect4 program a valid bpf_sock_addr.
    let user_ip4 = unsafe { (*ctx.sock_addr).user_ip4 };
    let key = Ipv4Key::from_user_ip4(user_ip4);
    // SAFETY: the value is only tested for presence, never held across a map update.
    let blocked = unsafe { BLOCKED_ADDRS.get(&key) }.is_some();
    Ok(if blocked { BLOCK } else { ALLOW })
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
