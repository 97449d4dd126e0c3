//! What operators watch the gateway with: Prometheus metrics ([`Metrics`], fed from the event
//! sink, the recorder, the approval service and a few scrape-time collectors), health and
//! readiness endpoints ([`server`], [`Readiness`]), and the log format ([`logging`]).

pub mod cause;
pub mod logging;
pub mod metrics;
pub mod ready;
pub mod server;
mod wiring;

use std::{net::SocketAddr, str::FromStr};

pub use logging::LogFormat;
pub use metrics::Metrics;
pub use ready::Readiness;
pub use wiring::Telemetry;

/// Where `--metrics` serves: an address, or `off`.
pub const DEFAULT_METRICS: &str = "127.0.0.1:9464";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsListen {
    Off,
    At(SocketAddr),
}

impl FromStr for MetricsListen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(MetricsListen::Off);
        }
        s.parse()
            .map(MetricsListen::At)
            .map_err(|e| format!("`{s}`: {e} (an address such as 127.0.0.1:9464, or `off`)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_flag_takes_an_address_or_off() {
        assert_eq!("off".parse(), Ok(MetricsListen::Off));
        assert_eq!(
            DEFAULT_METRICS.parse(),
            Ok(MetricsListen::At("127.0.0.1:9464".parse().unwrap()))
        );
        assert_eq!(
            "[::1]:9".parse(),
            Ok(MetricsListen::At("[::1]:9".parse().unwrap()))
        );
        assert!("localhost:9464".parse::<MetricsListen>().is_err());
        assert!("9464".parse::<MetricsListen>().is_err());
    }
}
