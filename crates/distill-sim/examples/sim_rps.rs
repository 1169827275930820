//! Measures the sim-teacher's own throughput at zero latency: 10,000 Banking77 chat requests
//! at concurrency 64 from a lean reqwest loop on loopback, so the teach benchmark can check
//! the server is not its bottleneck. Run: `cargo run --release -p distill-sim --example sim_rps`
//! (or `... sim_rps serve` to serve for 60 s and point `wrk` at it).

use distill_core::TaskSpec;
use distill_sim::{SimConfig, SimServer};
use futures::StreamExt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let task = TaskSpec::load(repo.join("datasets/banking77/task.toml")).expect("task spec");
    let texts: Vec<String> = distill_core::input::read_inputs(
        task.input.path.as_ref().expect("input path"),
        task.input.format,
        &(&task.input).into(),
    )
    .expect("train.csv")
    .map(|r| r.expect("row").text)
    .take(10_000)
    .collect();
    let sim = SimServer::start(
        SimConfig::new(task.clone()),
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await
    .expect("start");
    if std::env::args().nth(1).as_deref() == Some("serve") {
        // For external load generators (wrk): serve for a bounded time, then stop.
        println!("{}", sim.base_url());
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        sim.shutdown().await;
        return;
    }
    let url = format!("{}/chat/completions", sim.base_url());
    let client = reqwest::Client::new();
    let bodies: Vec<bytes::Bytes> = texts
        .iter()
        .map(|t| {
            serde_json::json!({
                "model": task.teacher.model,
                "messages": [{"role": "system", "content": task.teacher.system_prompt},
                             {"role": "user", "content": task.render_user(t)}],
                "max_tokens": 24,
                "response_format": {"type": "json_schema", "json_schema": {"name": "label", "strict": true, "schema": task.output_schema()}}
            })
            .to_string()
            .into()
        })
        .collect();
    let n = bodies.len();
    let started = Instant::now();
    let ok = futures::stream::iter(bodies)
        .map(|b| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let r = client
                    .post(&url)
                    .bearer_auth("sk-sim")
                    .header("content-type", "application/json")
                    .body(b)
                    .send()
                    .await
                    .ok()?;
                let ok = r.status().is_success();
                r.bytes().await.ok()?;
                Some(ok)
            }
        })
        .buffer_unordered(64)
        .filter(|r| std::future::ready(*r == Some(true)))
        .count()
        .await;
    let secs = started.elapsed().as_secs_f64();
    let stats = sim.stats();
    println!(
        "requests: {n}, ok: {ok}, billable: {}, seconds: {secs:.2}",
        stats.billable
    );
    println!(
        "sim-teacher throughput (client included, concurrency 64): {:.0} req/s",
        ok as f64 / secs
    );
    sim.shutdown().await;
}
