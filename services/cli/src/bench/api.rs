//! `keel bench api`.

use std::time::{Duration, Instant};

use anyhow::Context;
use keel_model::{Setting, SettingValue};
use reqwest::Method;
use serde::Serialize;

use super::stats::{summarize, Summary};
use crate::client::ApiClient;
use crate::output::Table;

/// Keys the benchmark writes and reads (and deletes afterwards).
pub const KEYS: u32 = 50;

/// Concurrent clients of the parallel passes.
pub const CLIENTS: u32 = 8;

/// One pass.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pass {
    /// `write` or `read`.
    pub op: &'static str,
    /// Concurrent clients.
    pub clients: u32,
    /// The latencies.
    #[serde(flatten)]
    pub summary: Summary,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApiReport {
    /// Endpoint measured.
    pub endpoint: String,
    /// The passes: writes, reads, then both with concurrent clients.
    pub passes: Vec<Pass>,
}

fn key(i: u32) -> String {
    format!("bench.api.k{}", i % KEYS)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Write,
    Read,
}

async fn one(client: &ApiClient, op: Op, i: u32) -> anyhow::Result<Duration> {
    let path = format!("/api/v1/settings/{}", key(i));
    let started = Instant::now();
    match op {
        Op::Write => {
            let body = SettingValue {
                value: serde_json::json!({ "i": i }),
                version: None,
            };
            let _: Setting = client.request(Method::PUT, &path, Some(&body)).await?;
        }
        Op::Read => {
            let _: Setting = client.get(&path).await?;
        }
    }
    Ok(started.elapsed())
}

/// `count` operations from `clients` concurrent clients (one connection each).
async fn pass(client: &ApiClient, op: Op, count: u32, clients: u32) -> anyhow::Result<Pass> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = client.clone();
        // Client c does operations c, c+clients, c+2*clients, …
        let mine: Vec<u32> = (c..count).step_by(clients as usize).collect();
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::with_capacity(mine.len());
            for i in mine {
                samples.push(
                    one(&client, op, i)
                        .await
                        .with_context(|| format!("operation {i} ({})", key(i)))?,
                );
            }
            anyhow::Ok(samples)
        }));
    }
    let mut samples = Vec::with_capacity(count as usize);
    for t in tasks {
        samples.extend(t.await??);
    }
    let name = match op {
        Op::Write => "write",
        Op::Read => "read",
    };
    Ok(Pass {
        op: name,
        clients,
        summary: summarize(samples, started.elapsed()),
    })
}

/// Runs the four passes and deletes the keys it wrote.
pub async fn run(client: &ApiClient, writes: u32, reads: u32) -> anyhow::Result<ApiReport> {
    let mut passes = Vec::new();
    passes.push(
        pass(client, Op::Write, writes, 1)
            .await
            .context("sequential writes")?,
    );
    passes.push(
        pass(client, Op::Read, reads, 1)
            .await
            .context("sequential reads")?,
    );
    passes.push(
        pass(client, Op::Write, writes, CLIENTS)
            .await
            .context("concurrent writes")?,
    );
    passes.push(
        pass(client, Op::Read, reads, CLIENTS)
            .await
            .context("concurrent reads")?,
    );
    for i in 0..KEYS.min(writes) {
        let path = format!("/api/v1/settings/{}", key(i));
        if let Err(e) = client
            .request_empty::<()>(Method::DELETE, &path, None)
            .await
        {
            tracing::warn!(key = %key(i), error = %e, "could not delete a benchmark key");
        }
    }
    Ok(ApiReport {
        endpoint: client.endpoint().to_string(),
        passes,
    })
}

/// The human view.
pub fn render(r: &ApiReport) -> String {
    let mut t = Table::new(["OP", "CLIENTS", "COUNT", "P50", "P99", "MAX", "OPS/S"]);
    for p in &r.passes {
        let s = &p.summary;
        t.row([
            p.op.to_string(),
            p.clients.to_string(),
            s.count.to_string(),
            format!("{:.2} ms", s.p50_ms),
            format!("{:.2} ms", s.p99_ms),
            format!("{:.2} ms", s.max_ms),
            format!("{:.0}", s.ops_per_s),
        ]);
    }
    format!("setting latency against {}\n{}", r.endpoint, t.render())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cycle() {
        assert_eq!(key(0), "bench.api.k0");
        assert_eq!(key(KEYS + 3), "bench.api.k3");
        assert!(keel_model::SettingKey::new(key(49)).is_ok());
    }

    #[test]
    fn report_renders_and_serialises_flat() {
        let r = ApiReport {
            endpoint: "https://127.0.0.1:8443".into(),
            passes: vec![Pass {
                op: "write",
                clients: 8,
                summary: Summary {
                    count: 500,
                    p50_ms: 3.2,
                    p99_ms: 12.25,
                    max_ms: 20.0,
                    ops_per_s: 812.4,
                },
            }],
        };
        let text = render(&r);
        assert!(
            text.contains("write  8        500    3.20 ms  12.25 ms  20.00 ms  812"),
            "{text}"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["passes"][0]["p99_ms"], 12.25);
        assert_eq!(json["passes"][0]["op"], "write");
    }
}
