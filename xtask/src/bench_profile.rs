//! The profile table of the PostgreSQL section: where the gateway's CPU goes, from `perf
//! report`'s self time per function sorted into parts.
//!
//! Self time, not inclusive time: every sample lands in exactly one function, so the parts add
//! up to 100 % of the gateway's samples and none can hide in another. (The table before read
//! inclusive time off symbol names; with async closures and DWARF unwinding the callers were
//! mostly not found, and its "session task, all" row read 0.36 % while its parts summed to
//! 52 %.) A function is put in the first part whose rule matches it; the rules are ordered
//! from the most specific.

/// One line of `perf report --no-children --sort dso,sym`: share of samples, object, symbol.
#[derive(Debug, Clone, PartialEq)]
pub struct SelfTime {
    pub percent: f64,
    pub dso: String,
    pub kernel: bool,
    pub symbol: String,
}

/// Parses `   4.12%  agentgate  [.] agentgate::classify::classify` lines; others are skipped.
pub fn parse_report(lines: &[String]) -> Vec<SelfTime> {
    lines
        .iter()
        .filter_map(|l| {
            let mut cols = l.split_whitespace();
            let percent = cols.next()?.strip_suffix('%')?.parse::<f64>().ok()?;
            let dso = cols.next()?.to_string();
            let kind = cols.next()?;
            let kernel = match kind {
                "[k]" => true,
                "[.]" => false,
                _ => return None,
            };
            let symbol = cols.collect::<Vec<_>>().join(" ");
            Some(SelfTime {
                percent,
                dso,
                kernel,
                symbol,
            })
        })
        .collect()
}

/// The parts, in the order the table shows them. `matches` sees the whole line's symbol and
/// object; the first part that claims a function gets it.
pub const PARTS: [&str; 13] = [
    "scheduler: threads switching, waking, waiting (kernel)",
    "fsync and the file system (kernel)",
    "TCP over loopback: send, receive, wakeups of the peer (kernel)",
    "other kernel time (syscalls, memory, interrupts)",
    "classification: libpg_query parse, protobuf encode/decode",
    "the record: SQLite, SHA-256 chain, JSON",
    "TLS and signatures (rustls, ring, RSA)",
    "memory allocation (malloc/free)",
    "async runtime (tokio: tasks, timers, I/O readiness)",
    "agentgate's own code (relay, protocol, rules, masking)",
    "C library and other user-space code",
    "unresolved addresses",
    "interrupts re-enabled (kernel: mostly the end of a wake-up; a VM's samples pile up here)",
];

/// Which part a function belongs to (an index into [`PARTS`]).
pub fn part_of(s: &SelfTime) -> usize {
    let sym = s.symbol.as_str();
    let has = |needles: &[&str]| needles.iter().any(|n| sym.contains(n));
    if s.kernel {
        // The sample is taken when interrupts come back on, so time spent with them off (waking
        // a thread, a timer) is charged to the function that turns them on.
        if has(&[
            "_raw_spin_unlock_irq",
            "irqentry_exit",
            "_raw_spin_rq_unlock_irq",
        ]) {
            return 12;
        }
        if has(&[
            "schedule",
            "finish_task_switch",
            "switch_to",
            "pick_next",
            "enqueue_task",
            "dequeue_task",
            "try_to_wake_up",
            "futex",
            "ep_poll",
            "do_epoll",
            "update_curr",
            "update_load",
            "idle",
            "select_task_rq",
            "ttwu",
            "psi_",
        ]) {
            return 0;
        }
        if has(&[
            "fsync",
            "ext4",
            "jbd2",
            "xfs_",
            "blk_",
            "bio_",
            "iomap",
            "filemap",
            "pwrite",
            "vfs_write",
            "file_write",
        ]) {
            return 1;
        }
        if has(&[
            "tcp_",
            "ip_",
            "ipv6_",
            "skb",
            "sock_",
            "sendto",
            "recvfrom",
            "sendmsg",
            "recvmsg",
            "loopback",
            "net_rx",
            "netif_",
            "dev_queue",
            "__dev_",
            "inet_",
            "sk_",
            "copy_to_iter",
            "copy_from_iter",
            "copy_user",
            "__local_bh",
            "do_softirq",
            "napi",
            "splice",
            "pipe_",
        ]) {
            return 2;
        }
        return 3;
    }
    if sym.starts_with("0x") || sym.is_empty() {
        return 11;
    }
    // libpg_query is C linked into the binary: its parser, memory contexts and node
    // (de)serialisation, and our protobuf handling of its tree.
    if has(&[
        "pg_query",
        "yyparse",
        "yylex",
        "core_yy",
        "base_yy",
        "AllocSet",
        "MemoryContext",
        "palloc",
        "pfree",
        "_outNode",
        "_readNode",
        "_fingerprint",
        "protobuf",
        "prost",
        "classify",
        "scanner_",
        "makeNode",
        "raw_parser",
    ]) {
        return 4;
    }
    if has(&[
        "sqlite3",
        "sha2",
        "Sha256",
        "serde_json",
        "record::",
        "journal",
        "rusqlite",
    ]) {
        return 5;
    }
    if has(&[
        "rustls",
        "ring::",
        "ring_core",
        "aws_lc",
        "rsa::",
        "num_bigint",
        "jsonwebtoken",
    ]) {
        return 6;
    }
    if has(&[
        "malloc",
        "free",
        "realloc",
        "calloc",
        "tcache",
        "arena_",
        "mi_",
        "je_",
        "__rust_alloc",
        "__rust_dealloc",
        "alloc::alloc",
    ]) {
        return 7;
    }
    if has(&["tokio::", "mio::", "parking_lot", "futures_"]) {
        return 8;
    }
    if has(&["agentgate", "gateway_user"]) || (s.dso.contains("agentgate") && sym.contains("::")) {
        return 9;
    }
    10
}

/// Each part's share of the gateway's samples, in [`PARTS`] order, and their sum (the report's
/// coverage: what `--percent-limit 0` listed; 100 % but for rounding).
pub fn breakdown(lines: &[SelfTime]) -> ([f64; PARTS.len()], f64) {
    let mut parts = [0.0; PARTS.len()];
    for l in lines {
        parts[part_of(l)] += l.percent;
    }
    let total = parts.iter().sum();
    (parts, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<SelfTime> {
        parse_report(&text.lines().map(str::to_string).collect::<Vec<_>>())
    }

    #[test]
    fn report_lines_are_parsed_and_others_skipped() {
        let l = lines(
            "# header\n     4.12%  agentgate          [.] agentgate::protocol::postgres::classify::classify\n\
             \x20    3.00%  [kernel.kallsyms]  [k] finish_task_switch.isra.0\n\
             \x20    0.50%  libc.so.6          [.] __memmove_avx_unaligned_erms\n\
             garbage line\n",
        );
        assert_eq!(l.len(), 3);
        assert_eq!(l[0].percent, 4.12);
        assert!(!l[0].kernel);
        assert!(l[1].kernel);
        assert_eq!(l[2].symbol, "__memmove_avx_unaligned_erms");
    }

    #[test]
    fn functions_go_to_the_right_part_and_the_parts_sum_to_the_whole() {
        let l = lines(
            "10.00%  [kernel.kallsyms]  [k] finish_task_switch.isra.0\n\
             5.00%  [kernel.kallsyms]  [k] tcp_sendmsg_locked\n\
             2.00%  [kernel.kallsyms]  [k] ext4_sync_file\n\
             1.00%  [kernel.kallsyms]  [k] clear_page_erms\n\
             8.00%  agentgate  [.] base_yyparse\n\
             2.00%  agentgate  [.] pg_query__node__pack\n\
             6.00%  agentgate  [.] sqlite3VdbeExec\n\
             3.00%  agentgate  [.] sha2::sha256::x86::digest_blocks\n\
             1.00%  agentgate  [.] ring_core_0_17_14__bn_mul_mont\n\
             4.00%  libc.so.6  [.] _int_malloc\n\
             7.00%  agentgate  [.] tokio::runtime::scheduler::multi_thread::worker::Context::run\n\
             20.00%  agentgate  [.] agentgate::protocol::postgres::relay::Upward::inspect\n\
             29.50%  libc.so.6  [.] __memmove_avx_unaligned_erms\n\
             1.00%  agentgate  [.] 0x00005633a1b2c3d4\n\
             0.50%  [kernel.kallsyms]  [k] _raw_spin_unlock_irqrestore\n",
        );
        let (parts, total) = breakdown(&l);
        assert_eq!(parts[0], 10.0);
        assert_eq!(parts[1], 2.0);
        assert_eq!(parts[2], 5.0);
        assert_eq!(parts[3], 1.0);
        assert_eq!(parts[4], 10.0);
        assert_eq!(parts[5], 9.0);
        assert_eq!(parts[6], 1.0);
        assert_eq!(parts[7], 4.0);
        assert_eq!(parts[8], 7.0);
        assert_eq!(parts[9], 20.0);
        assert_eq!(parts[10], 29.5);
        assert_eq!(parts[11], 1.0);
        assert_eq!(parts[12], 0.5);
        assert!((total - 100.0).abs() < 1e-9, "{total}");
    }
}
