//! Run the Kubernetes API server stand-in (tests/src/kube) on its own, for demos and
//! benchmarks: prints the address, the CA file and a kubeconfig path, then serves until killed.
//!
//! `kube-standin [--listen ADDR] [--token TOKEN] [--bulk-pods N] [--log FILE] [--forward POD_PORT=LOOPBACK_ADDR]...`

use agentgate_tests::kube::{KubeStandin, StandinOptions};

fn main() {
    let mut opts = StandinOptions::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--listen" => {
                opts.listen = value()
                    .parse()
                    .unwrap_or_else(|_| usage("--listen: not an address"))
            }
            "--token" => opts.gateway_token = value(),
            "--bulk-pods" => {
                opts.bulk_pods = value()
                    .parse()
                    .unwrap_or_else(|_| usage("--bulk-pods: not a number"))
            }
            "--log" => opts.log_file = Some(value().into()),
            "--forward" => {
                let v = value();
                let parsed = v
                    .split_once('=')
                    .and_then(|(p, a)| Some((p.parse().ok()?, a.parse().ok()?)));
                let pair = parsed.unwrap_or_else(|| usage("--forward: POD_PORT=LOOPBACK_ADDR"));
                opts.forward_ports.push(pair);
            }
            _ => usage(&format!("unknown argument {a}")),
        }
    }
    let standin = KubeStandin::start(opts).unwrap_or_else(|e| {
        eprintln!("kube-standin: {e}");
        std::process::exit(1)
    });
    let kubeconfig = standin.kubeconfig("kubeconfig", &standin.gateway_token.clone());
    println!(
        "{}",
        serde_json::json!({
            "url": standin.url,
            "ca": standin.ca_path,
            "token": standin.gateway_token,
            "kubeconfig": kubeconfig,
        })
    );
    // Serve until SIGINT or SIGTERM, then drop the stand-in (its directory is removed).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| {
            eprintln!("kube-standin: runtime: {e}");
            std::process::exit(1)
        });
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    });
    drop(standin);
}

fn usage(msg: &str) -> ! {
    eprintln!("kube-standin: {msg}\nusage: kube-standin [--listen ADDR] [--token TOKEN] [--bulk-pods N] [--log FILE] [--forward POD_PORT=LOOPBACK_ADDR]...");
    std::process::exit(2)
}
