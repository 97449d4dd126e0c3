//! The ssh section of `cargo xtask bench` (`--only ssh`): Debian's OpenSSH server on loopback
//! reached by the real `ssh` client three ways, contenders alternating run by run:
//! - direct, logging in with a plain key the server lists in its `authorized_keys`;
//! - through HAProxy in TCP mode (what any L4 proxy in the path costs);
//! - through agentgate: the client in a managed cgroup, unmodified, trusting the gateway's host
//!   CA, identified by its token file; the gateway terminates SSH and logs in to the server with
//!   a per-session user certificate.
//!
//! Measured: the round trip of `ssh host true` (a new connection each: key exchange, login, one
//! exec, close), p50 and p90 of `ROUND_TRIPS` sequential runs per contender and repetition; the
//! throughput of `head -c BYTES /dev/zero | ssh host 'cat > /dev/null'` (the client's default
//! cipher, no compression); the gateway's memory during its transfers (VmRSS sampled every 20 ms,
//! and VmHWM), and during one more transfer to a reader that starts reading only after
//! `STALL_SECS` (the target's `cat` starts late, so the gateway must stop reading from the agent
//! instead of buffering).

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use agentgate_tests::{
    fixtures, mint, now, place, ssh,
    ssh::{Sshd, SshdOptions, TempDir, DEPLOY_USER},
    Cgroup, Gateway, TokenFile, AUDIENCE, ISSUER,
};
use anyhow::{bail, Context};

use crate::{
    baselines::Baseline,
    bench::{median, min_max},
    report::{first_line, md},
    util,
};

/// Ports of this section (bench only).
const SSHD_PORT: u16 = 20530;
const LISTEN_PORT: u16 = 20531;
const HAPROXY_PORT: u16 = 20532;
/// `ssh host true` runs per contender and repetition.
const ROUND_TRIPS: usize = 50;
/// How long the stalled reader waits before it reads.
const STALL_SECS: u64 = 5;
/// Memory growth during a transfer that still counts as flat (the transfer itself is `BYTES`).
const FLAT_MIB: f64 = 32.0;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Contender {
    Direct,
    /// Direct with the key exchange agentgate negotiates (russh has no sntrup761x25519, which
    /// OpenSSH 9 prefers): the round trip without the post-quantum key exchange's cost.
    DirectX25519,
    HaProxy,
    Agentgate,
}

/// The round trip's contenders.
const ROUND_TRIP: [Contender; 4] = [
    Contender::Direct,
    Contender::DirectX25519,
    Contender::HaProxy,
    Contender::Agentgate,
];
/// The transfer's contenders (the key exchange is no part of a transfer's cost).
const TRANSFER: [Contender; 3] = [Contender::Direct, Contender::HaProxy, Contender::Agentgate];
/// The key exchange `DirectX25519` asks for.
const X25519: &str = "curve25519-sha256";

impl Contender {
    fn label(self) -> &'static str {
        match self {
            Contender::Direct => "direct",
            Contender::DirectX25519 => "direct, `KexAlgorithms=curve25519-sha256`",
            Contender::HaProxy => "HAProxy TCP",
            Contender::Agentgate => "agentgate (SSH terminated, cert login)",
        }
    }
}

/// Everything one run needs: the server, the proxy, the gateway and the clients' files.
struct Rig {
    sshd: Sshd,
    _haproxy: Baseline,
    gw: Gateway,
    agent: Cgroup,
    token: TokenFile,
    dir: TempDir,
    _anchor: Cgroup,
}

impl Rig {
    fn start() -> anyhow::Result<Self> {
        ssh::ensure_user(DEPLOY_USER);
        let sshd = Sshd::start(SSHD_PORT, SshdOptions::default());
        let dir = TempDir::new("bench-ssh-keys");
        let host_ca = ssh::keygen(&dir.join("host_ca"), "agentgate host CA (bench)");
        let secret = dir.join("host_secret");
        fs::write(&secret, agentgate_tests::payload(now(), 32))?;
        set_mode(&secret, 0o600)?;
        let target_known_hosts = dir.join("target_known_hosts");
        ssh::write_known_hosts(&target_known_hosts, &[sshd.known_hosts_line()]);
        // The direct and HAProxy clients pin the server's own key, under both ports.
        ssh::write_known_hosts(
            &dir.join("direct_known_hosts"),
            &[
                sshd.known_hosts_line(),
                ssh::known_hosts_plain("127.0.0.1", HAPROXY_PORT, &sshd.host_public_line()),
            ],
        );
        ssh::write_known_hosts(
            &dir.join("agent_known_hosts"),
            &[ssh::known_hosts_ca("*", &host_ca.public_line())],
        );
        let haproxy = Baseline::haproxy(HAPROXY_PORT, SSHD_PORT)?;
        let name = format!("agbench-ssh-{}", std::process::id());
        let anchor = Cgroup::create(&format!("/{name}"));
        let agent = Cgroup::create(&format!("/{name}/job-1"));
        let token = TokenFile::valid("bench-ssh");
        let policy = format!(
            "version: 2
gateway:
  listen_port: {LISTEN_PORT}
  ssh_host_key_secret: {secret}
identity_providers:
  - name: bench-idp
    issuer: {ISSUER}
    audiences: [{AUDIENCE}]
    jwks: {{from: file, path: {jwks}}}
    algorithms: [RS256]
workloads:
  - name: agents
    cgroup: \"/{name}/job-*\"
    mode: host
    token: {{from: file, path: {token}}}
targets:
  - name: build-host
    protocol: ssh
    addresses: [127.0.0.1/32]
    ports: [{SSHD_PORT}]
    ssh:
      host_ca_key: {host_ca}
      user_ca_key: {user_ca}
      known_hosts: {known}
rules:
  - name: agents-deploy
    when: {{workloads: [agents], groups: [agents], logins: [{DEPLOY_USER}]}}
    targets: [build-host]
",
            secret = secret.display(),
            jwks = fixtures().join("test-jwks.json").display(),
            token = token.path.display(),
            host_ca = host_ca.private.display(),
            user_ca = sshd.user_ca_key().display(),
            known = target_known_hosts.display(),
        );
        let gw = Gateway::start("bench-ssh", &policy);
        gw.wait_classified(&agent.rel);
        Ok(Self {
            sshd,
            _haproxy: haproxy,
            gw,
            agent,
            token,
            dir,
            _anchor: anchor,
        })
    }

    /// `ssh … 127.0.0.1 command` as `who` runs it.
    fn ssh(&self, who: Contender, command: &str) -> Command {
        self.ssh_with(who, &[], command)
    }

    /// Like [`Rig::ssh`], with `options` before the destination.
    fn ssh_with(&self, who: Contender, options: &[&str], command: &str) -> Command {
        let key = self.sshd.static_key().to_string_lossy().to_string();
        let kex = format!("KexAlgorithms={X25519}");
        let mut extra: Vec<&str> = Vec::new();
        if who != Contender::Agentgate {
            extra.extend(["-i", &key]);
        }
        if who == Contender::DirectX25519 {
            extra.extend(["-o", &kex]);
        }
        extra.extend(options);
        let (known_hosts, port) = match who {
            Contender::Direct | Contender::DirectX25519 => ("direct_known_hosts", SSHD_PORT),
            Contender::HaProxy => ("direct_known_hosts", HAPROXY_PORT),
            Contender::Agentgate => ("agent_known_hosts", SSHD_PORT),
        };
        let mut cmd = ssh::ssh_command(&self.dir.join(known_hosts), port, DEPLOY_USER, &extra);
        if who == Contender::Agentgate {
            place(&mut cmd, Some(&self.agent), None);
        }
        cmd.arg(command);
        cmd
    }

    /// A fresh token for the agent (the bench may outlast one).
    fn renew_token(&self) {
        self.token
            .write(&mint("agent-bench-ssh", &["agents"], now(), now() + 600));
    }
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// Seconds one `ssh host true` takes, start to exit.
fn round_trip(rig: &Rig, who: Contender) -> anyhow::Result<f64> {
    let mut cmd = rig.ssh(who, "true");
    let started = Instant::now();
    let out = cmd.output().context("run ssh")?;
    let secs = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "{}: ssh host true failed ({}): {}",
            who.label(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(secs)
}

/// `head -c bytes /dev/zero | ssh host remote`: MB/s (10^6 bytes).
fn transfer(rig: &Rig, who: Contender, bytes: u64, remote: &str) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut head = Command::new("head")
        .args(["-c", &bytes.to_string(), "/dev/zero"])
        .stdout(Stdio::piped())
        .spawn()
        .context("run head")?;
    let input = head.stdout.take().context("head's stdout")?;
    let out = rig
        .ssh(who, remote)
        .stdin(Stdio::from(input))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .context("run ssh")?;
    let secs = started.elapsed().as_secs_f64();
    let _ = head.kill();
    let _ = head.wait();
    if !out.status.success() {
        bail!(
            "{}: ssh host {remote:?} failed ({}): {}",
            who.label(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(bytes as f64 / secs / 1e6)
}

/// Samples a process's VmRSS (KiB) every 20 ms until stopped; the highest seen (also used by
/// bench_http.rs).
pub(crate) struct RssSampler {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<u64>,
}

impl RssSampler {
    pub(crate) fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(Ordering::Relaxed) {
                if let Ok(s) = util::proc_stats(pid) {
                    peak = peak.max(s.rss_kib);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        });
        Self { stop, handle }
    }

    pub(crate) fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or(0)
    }
}

pub(crate) fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// p50 and p90 (ms) of `secs`.
pub(crate) fn percentiles(mut secs: Vec<f64>) -> (f64, f64) {
    secs.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let i = ((secs.len() as f64 * q).ceil() as usize).clamp(1, secs.len()) - 1;
        secs[i] * 1000.0
    };
    (at(0.5), at(0.9))
}

pub fn ssh(reps: usize, bytes: u64) -> anyhow::Result<()> {
    let rig = Rig::start()?;
    let pid = rig.gw.pid();
    // Warm-up: one of each, so no contender pays for a cold page cache or first key load.
    for who in ROUND_TRIP {
        round_trip(&rig, who)?;
    }
    let negotiated: Vec<(Contender, String)> = [Contender::Direct, Contender::Agentgate]
        .into_iter()
        .map(|who| Ok((who, negotiated(&rig, who)?)))
        .collect::<anyhow::Result<_>>()?;
    let idle = util::proc_stats(pid)?.rss_kib;

    let mut rtt: Vec<Vec<(f64, f64)>> = vec![Vec::new(); ROUND_TRIP.len()];
    let mut thr: Vec<Vec<f64>> = vec![Vec::new(); TRANSFER.len()];
    let mut peaks: Vec<u64> = Vec::new();
    // The gateway's CPU seconds (user + system) during each of its transfers.
    let mut cpu: Vec<f64> = Vec::new();
    let mut stalled: Vec<(u64, f64)> = Vec::new();
    for rep in 0..reps {
        rig.renew_token();
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); ROUND_TRIP.len()];
        for n in 0..ROUND_TRIPS {
            // Rotate the order each run so no contender always goes first.
            for k in 0..ROUND_TRIP.len() {
                let i = (k + n + rep) % ROUND_TRIP.len();
                times[i].push(round_trip(&rig, ROUND_TRIP[i])?);
            }
        }
        for (i, t) in times.into_iter().enumerate() {
            rtt[i].push(percentiles(t));
        }
        for k in 0..TRANSFER.len() {
            let i = (k + rep) % TRANSFER.len();
            let who = TRANSFER[i];
            let sampler = (who == Contender::Agentgate).then(|| RssSampler::start(pid));
            let cpu_before = util::proc_stats(pid)?.cpu_secs();
            thr[i].push(transfer(&rig, who, bytes, "cat > /dev/null")?);
            if let Some(s) = sampler {
                peaks.push(s.finish());
                cpu.push(util::proc_stats(pid)?.cpu_secs() - cpu_before);
            }
        }
        let sampler = RssSampler::start(pid);
        let rate = transfer(
            &rig,
            Contender::Agentgate,
            bytes,
            &format!("sleep {STALL_SECS}; cat > /dev/null"),
        )?;
        stalled.push((sampler.finish(), rate));
        eprintln!(
            "bench: ssh: repetition {}/{reps} done (agentgate {:.0} MB/s, peak RSS {:.1} MiB)",
            rep + 1,
            thr[TRANSFER.len() - 1].last().copied().unwrap_or(0.0),
            mib(peaks.last().copied().unwrap_or(0))
        );
    }
    let end = util::proc_stats(pid)?;
    let records = rig
        .gw
        .events()
        .iter()
        .filter(|e| e["event"] == "upstream_failed" || e["event"] == "refused")
        .count();
    if records > 0 {
        bail!("the gateway refused or failed {records} sessions during the bench");
    }

    md!(
        "\n### ssh: `ssh host true` and a {} MiB transfer, direct vs HAProxy vs agentgate ({reps} repetition{})\n",
        bytes >> 20,
        if reps == 1 { "" } else { "s" }
    );
    md!(
        "clients and server: {}, Debian's sshd on 127.0.0.1, the client's default cipher and key exchange, no compression; direct and HAProxy log in with a plain key in `authorized_keys`, agentgate's client with its token file (the gateway logs in upstream with a per-session user certificate).\n",
        first_line("ssh", &["-V"])
    );
    for (who, algorithms) in &negotiated {
        md!("negotiated by the client, {}: {algorithms}  ", who.label());
    }
    md!(
        "(russh, agentgate's SSH library, implements `mlkem768x25519-sha256`, which OpenSSH offers from 9.9 on, but not `sntrup761x25519-sha512`, OpenSSH 9.2's default: through the gateway this client loses its post-quantum key exchange. The second direct row asks for `{X25519}`, the key exchange the gateway's client leg gets, to separate that cost from the gateway's.)\n"
    );
    md!("| `ssh host true`, new connection each ({ROUND_TRIPS} runs per repetition) | p50 ms (median) | p50 min–max | p90 ms (median) | p50 ratio to direct |");
    md!("|---|---|---|---|---|");
    let base_rtt = median(rtt[0].iter().map(|x| x.0).collect());
    let mut p50s = Vec::new();
    for (i, who) in ROUND_TRIP.iter().enumerate() {
        let p50: Vec<f64> = rtt[i].iter().map(|x| x.0).collect();
        let (lo, hi) = min_max(&p50);
        let m = median(p50);
        p50s.push(m);
        md!(
            "| {} | {m:.1} | {lo:.1}–{hi:.1} | {:.1} | {:.2} |",
            who.label(),
            median(rtt[i].iter().map(|x| x.1).collect()),
            m / base_rtt
        );
    }
    md!(
        "\n| `head -c {bytes} /dev/zero \\| ssh host 'cat > /dev/null'` | MB/s (median) | min–max | ratio to direct |"
    );
    md!("|---|---|---|---|");
    let base_thr = median(thr[0].clone());
    let mut rates = Vec::new();
    for (i, who) in TRANSFER.iter().enumerate() {
        let (lo, hi) = min_max(&thr[i]);
        let m = median(thr[i].clone());
        rates.push(m);
        md!(
            "| {} | {m:.0} | {lo:.0}–{hi:.0} | {:.2} |",
            who.label(),
            m / base_thr
        );
    }
    let peak = peaks.iter().copied().max().unwrap_or(0);
    let stalled_peak = stalled.iter().map(|x| x.0).max().unwrap_or(0);
    let stalled_rate = median(stalled.iter().map(|x| x.1).collect());
    let gib = bytes as f64 / f64::from(1u32 << 30);
    let (cpu_lo, cpu_hi) = min_max(&cpu);
    md!(
        "\nthe gateway's CPU during its transfers (user + system, both legs' decryption and encryption): {:.1} s per GiB (median; {:.1}–{:.1}), on a machine of {} cores shared with the client and sshd.",
        median(cpu.clone()) / gib,
        cpu_lo / gib,
        cpu_hi / gib,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    md!("\n| the gateway's memory | MiB |");
    md!("|---|---|");
    md!(
        "| VmRSS idle, after the warm-up, before the first transfer | {:.1} |",
        mib(idle)
    );
    md!(
        "| VmRSS peak during its {reps} transfers (sampled every 20 ms) | {:.1} |",
        mib(peak)
    );
    md!(
        "| VmRSS peak during {reps} transfers whose reader starts after {STALL_SECS} s (`sleep {STALL_SECS}; cat > /dev/null`; {stalled_rate:.0} MB/s overall) | {:.1} |",
        mib(stalled_peak)
    );
    md!(
        "| VmRSS at the end / VmHWM (the highest since start) | {:.1} / {:.1} |",
        mib(end.rss_kib),
        mib(end.hwm_kib)
    );

    md!("\n#### against the goals\n");
    md!("| goal | figure | goal met | gap |");
    md!("|---|---|---|---|");
    for (base, against) in [
        (0, "direct as the client negotiates it"),
        (1, "direct with the same key exchange"),
    ] {
        let rtt_ratio = p50s[3] / p50s[base];
        md!(
            "| ≤ 1.2 × direct round trip (`ssh host true` p50), against {against} | {rtt_ratio:.2} × ({:.1} ms vs {:.1} ms) | {} | {} |",
            p50s[3],
            p50s[base],
            yes_no(rtt_ratio <= 1.2),
            if rtt_ratio <= 1.2 {
                "—".to_string()
            } else {
                format!("{:.0} % over", (rtt_ratio / 1.2 - 1.0) * 100.0)
            }
        );
    }
    let thr_ratio = rates[2] / rates[0];
    md!(
        "| ≥ 0.8 × direct throughput ({} MiB through `ssh`) | {thr_ratio:.2} × ({:.0} vs {:.0} MB/s) | {} | {} |",
        bytes >> 20,
        rates[2],
        rates[0],
        yes_no(thr_ratio >= 0.8),
        if thr_ratio >= 0.8 {
            "—".to_string()
        } else {
            format!("{:.0} % short", (1.0 - thr_ratio / 0.8) * 100.0)
        }
    );
    let growth = mib(peak.max(stalled_peak).saturating_sub(idle));
    md!(
        "| flat memory (peak within {FLAT_MIB:.0} MiB of idle while {} MiB pass, also to a stalled reader) | +{growth:.1} MiB ({:.1} → {:.1} MiB) | {} | {} |",
        bytes >> 20,
        mib(idle),
        mib(peak.max(stalled_peak)),
        yes_no(growth <= FLAT_MIB),
        if growth <= FLAT_MIB {
            "—".to_string()
        } else {
            format!("{:.0} MiB over", growth - FLAT_MIB)
        }
    );
    Ok(())
}

/// The key exchange and ciphers the client negotiated (`ssh -v`'s `kex:` lines).
fn negotiated(rig: &Rig, who: Contender) -> anyhow::Result<String> {
    let out = rig
        .ssh_with(who, &["-v"], "true")
        .output()
        .context("run ssh -v")?;
    let log = String::from_utf8_lossy(&out.stderr);
    if !log.contains("kex: algorithm:") {
        eprintln!(
            "bench: ssh: no `kex:` lines from ssh -v ({}):\n{log}",
            who.label()
        );
    }
    let pick = |prefix: &str| {
        log.lines()
            .find_map(|l| l.split_once(prefix).map(|(_, r)| r.trim().to_string()))
            .unwrap_or_else(|| "?".into())
    };
    Ok(format!(
        "key exchange `{}`, host key `{}`, cipher `{}`",
        pick("kex: algorithm:"),
        pick("kex: host key algorithm:"),
        pick("kex: client->server cipher:")
    ))
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}
