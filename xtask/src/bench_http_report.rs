//! The http section's write-up: the tables and the notes under them, from one run's
//! measurements (bench_http.rs measures).

use super::*;

pub(super) struct Report {
    pub(super) reps: usize,
    pub(super) wrk_secs: u64,
    pub(super) wrk_conns: usize,
    pub(super) rtt: Vec<Vec<(f64, f64)>>,
    pub(super) rtt_cpu: f64,
    pub(super) lists: Vec<Vec<f64>>,
    /// Bytes of the list as each `KUBE` contender received it.
    pub(super) list_bytes: Vec<u64>,
    /// The HTTP version curl spoke, per `KUBE` contender.
    pub(super) list_versions: Vec<String>,
    pub(super) list_start: u64,
    pub(super) list_peak: u64,
    pub(super) list_cpu: Vec<f64>,
    pub(super) runs: Vec<Vec<WrkRun>>,
    pub(super) cpu_per_req: Vec<Vec<f64>>,
    pub(super) watch: WatchRun,
    pub(super) idle: u64,
    pub(super) end_rss: u64,
    pub(super) end_hwm: u64,
}

pub(super) fn report(r: &Report) {
    let reps = r.reps;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    md!(
        "\n### http: kubectl, a {BULK_PODS}-pod list, keep-alive requests/s, a long watch ({reps} repetition{})\n",
        if reps == 1 { "" } else { "s" }
    );
    md!(
        "clients: {}, {}, {}; servers: the tests' Kubernetes API-server stand-in (tests/src/kube, release build of `kube-standin`, TLS, JSON), {} (one worker, TLS, keep-alive unlimited, a {FILE_BYTES}-byte static file), all on 127.0.0.1 of a machine of {cores} cores shared by clients, servers and proxies. Through agentgate the client runs unchanged in a captured cgroup and dials the server's own address; the gateway terminates its TLS with a leaf from an agentgate CA the client trusts, verifies its JWT (RS256) once per connection, judges and records every request (SQLite, log level info) and forwards it over verify-full TLS with its own credential (plus impersonation headers for the `kubernetes` profile). Direct clients trust the server's CA and send a token the server accepts. No real API server can be installed here: the stand-in's speed is not an API server's, so the ratios say what the gateway adds to a fast server.\n",
        first_line("kubectl", &["version", "--client"]).replace("Client Version: ", "kubectl "),
        first_line("curl", &["--version"])
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" "),
        first_line("wrk", &["-v"])
            .split(" [")
            .next()
            .unwrap_or("wrk")
            .to_string(),
        first_line("nginx", &["-v"]).replace("nginx version: ", ""),
    );
    md!(
        "Measured in this order: the kubectl round trips, the lists, the watch, then the wrk runs (for which the gateway is restarted with and without `--record-off`, so the memory figures are all of the first gateway process).\n"
    );

    md!("| `kubectl get pods -n default`, new process and connection each ({ROUND_TRIPS} runs per repetition) | p50 ms (median) | p50 min–max | p90 ms (median) | p50 ratio to direct |");
    md!("|---|---|---|---|---|");
    let base = median(r.rtt[0].iter().map(|x| x.0).collect());
    let mut p50s = Vec::new();
    for (i, who) in KUBE.iter().enumerate() {
        let p50: Vec<f64> = r.rtt[i].iter().map(|x| x.0).collect();
        let (lo, hi) = min_max(&p50);
        let m = median(p50);
        p50s.push(m);
        md!(
            "| {} | {m:.1} | {lo:.1}–{hi:.1} | {:.1} | {:.2} |",
            who.label(),
            median(r.rtt[i].iter().map(|x| x.1).collect()),
            m / base
        );
    }
    md!(
        "\nthe gateway's CPU per `kubectl get pods` (user + system: TLS handshake, JWT, request judged and recorded, upstream TLS handshake): {:.1} ms.",
        r.rtt_cpu * 1000.0 / (reps * ROUND_TRIPS) as f64
    );

    let size = if r.list_bytes.iter().all(|b| *b == r.list_bytes[0]) {
        format!("{:.1} MB of JSON", r.list_bytes[0] as f64 / 1e6)
    } else {
        format!(
            "bytes of JSON: {}",
            KUBE.iter()
                .zip(&r.list_bytes)
                .map(|(who, b)| format!("{b} {}", who.label()))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    md!(
        "\n| `curl` of `/api/v1/namespaces/default/pods`, {BULK_PODS} pods ({size}) | HTTP version | s (median) | min–max | ratio to direct |"
    );
    md!("|---|---|---|---|---|");
    let base_list = median(r.lists[0].clone());
    let mut list_secs = Vec::new();
    for (i, who) in KUBE.iter().enumerate() {
        let (lo, hi) = min_max(&r.lists[i]);
        let m = median(r.lists[i].clone());
        list_secs.push(m);
        md!(
            "| {} | {} | {m:.3} | {lo:.3}–{hi:.3} | {:.2} |",
            who.label(),
            r.list_versions[i],
            m / base_list
        );
    }
    md!(
        "\nthe gateway during its lists: VmRSS {:.1} MiB before, {:.1} MiB at the peak (sampled every 20 ms); CPU {:.0} ms per list (median).",
        mib(r.list_start),
        mib(r.list_peak),
        median(r.list_cpu.clone()) * 1000.0
    );

    let threads = r.wrk_conns.clamp(1, 2);
    md!(
        "\n| `wrk -t {threads} -c {} -d {}s --latency`, HTTPS keep-alive, GET of {FILE_BYTES} bytes | req/s (median) | min–max | ratio to direct | p50 ms | p99 ms | proxy CPU µs/request (median) |",
        r.wrk_conns, r.wrk_secs
    );
    md!("|---|---|---|---|---|---|---|");
    let rps = |i: usize| -> Vec<f64> { r.runs[i].iter().map(|x| x.rps).collect() };
    let base_rps = median(rps(0));
    let mut rates = Vec::new();
    for (i, who) in WEB.iter().enumerate() {
        let v = rps(i);
        let (lo, hi) = min_max(&v);
        let m = median(v);
        rates.push(m);
        let cpu = if r.cpu_per_req[i].is_empty() {
            "—".to_string()
        } else {
            format!("{:.1}", median(r.cpu_per_req[i].clone()) * 1e6)
        };
        md!(
            "| {} | {m:.0} | {lo:.0}–{hi:.0} | {:.2} | {:.2} | {:.2} | {cpu} |",
            who.label(),
            m / base_rps,
            median(r.runs[i].iter().map(|x| x.p50_ms).collect()),
            median(r.runs[i].iter().map(|x| x.p99_ms).collect()),
        );
    }
    let errors: Vec<String> = WEB
        .iter()
        .enumerate()
        .flat_map(|(i, who)| {
            r.runs[i].iter().filter_map(move |x| {
                x.socket_errors
                    .as_ref()
                    .map(|e| format!("{}: {e}", who.label()))
            })
        })
        .collect();
    if !errors.is_empty() {
        md!("\nwrk's socket errors: {}", errors.join("; "));
    }
    md!(
        "\na read (a GET here) is forwarded at once and goes on record with its outcome; a write waits until its intent is committed (`Described::privileged` in protocol/action_gate.rs, as PostgreSQL's privileged statements do); with `--record-off` the recorder discards, so the last row shows what recording still costs. Unlike HAProxy in TCP mode, agentgate ends the client's TLS and opens its own to nginx: two TLS sessions per byte where HAProxy has none. Proxy CPU = the proxy process's user + system time during the run ÷ requests answered."
    );

    let w = &r.watch;
    md!(
        "\n| `kubectl get pods --watch -o name` through the gateway for {:.0} s while pods are created and deleted through the stand-in's API | |",
        w.secs
    );
    md!("|---|---|");
    md!(
        "| watch events caused (a create and a delete each, {CHURN_PADDING}-byte annotation) | {} ({:.0}/s) |",
        w.emitted,
        w.emitted as f64 / w.secs
    );
    md!("| events kubectl printed | {} |", w.received);
    md!(
        "| the gateway's VmRSS at the watch's start / peak (sampled every 20 ms) / 2 s after it ended | {:.1} / {:.1} / {:.1} MiB |",
        mib(w.rss_start),
        mib(w.rss_peak),
        mib(w.rss_end)
    );

    md!("\n| the gateway's memory | MiB |");
    md!("|---|---|");
    md!(
        "| VmRSS after the warm-up (kubectl, lists, wrk: one of each) | {:.1} |",
        mib(r.idle)
    );
    md!(
        "| VmRSS after the kubectl runs, the lists and the watch / VmHWM (the highest since start) | {:.1} / {:.1} |",
        mib(r.end_rss),
        mib(r.end_hwm)
    );

    md!("\n#### ratios\n");
    md!("issue 19 sets no figure to reach; these are the ratios to read.\n");
    md!("| measure | agentgate | against |");
    md!("|---|---|---|");
    md!(
        "| `kubectl get pods` p50 | {:.2} × direct ({:.1} ms vs {:.1} ms) | — |",
        p50s[1] / p50s[0],
        p50s[1],
        p50s[0]
    );
    md!(
        "| {BULK_PODS}-pod list | {:.2} × direct's time ({:.3} s vs {:.3} s) | — |",
        list_secs[1] / list_secs[0],
        list_secs[1],
        list_secs[0]
    );
    md!(
        "| keep-alive req/s, {} connections | {:.2} × direct ({:.0} vs {:.0}) | HAProxy TCP {:.2} × direct; agentgate {:.2} × HAProxy; with `--record-off` {:.2} × direct |",
        r.wrk_conns,
        rates[2] / rates[0],
        rates[2],
        rates[0],
        rates[1] / rates[0],
        rates[2] / rates[1],
        rates[3] / rates[0]
    );
    md!(
        "| watch, memory | {:+.1} MiB from start to peak over {} events | — |",
        mib(w.rss_peak) - mib(w.rss_start),
        w.emitted
    );
}
