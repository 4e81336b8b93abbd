//! A whole node in-process: restart recovers from the state-machine snapshot plus the log.

use std::time::Duration;

use baton_proto::v1 as pb;
use baton_proto::v1::run_service_client::RunServiceClient;
use baton_scheduler::server::{ServerConfig, start};

const RB: &str = r#"
name: demo
params:
  n: { type: int, required: true }
steps:
  - id: one
    action: exec
    with: { command: ["echo", "{{ params.n }}"] }
"#;

fn config(dir: &std::path::Path) -> ServerConfig {
    let mut c = ServerConfig::new(dir.to_path_buf());
    c.grpc_addr = "127.0.0.1:0".parse().unwrap();
    c.http_addr = "127.0.0.1:0".parse().unwrap();
    c.snapshot_every = 5;
    c.worker_grace = Duration::from_secs(3600);
    c
}

/// sled releases its directory lock from a background thread shortly after the last handle
/// drops; a restart in the same process waits for it.
async fn start_again(dir: &std::path::Path) -> baton_scheduler::server::RunningServer {
    for _ in 0..100 {
        match start(config(dir)).await {
            Ok(s) => return s,
            Err(e) if format!("{e:#}").contains("lock") => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("restart failed: {e:#}"),
        }
    }
    panic!("the store stayed locked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_recovers_state_from_the_snapshot_and_the_log_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(config(dir.path())).await.unwrap();
    server.api.apply_document("demo.yaml", RB).await.unwrap();
    let mut client = RunServiceClient::connect(format!("http://{}", server.grpc_addr)).await.unwrap();
    // No worker: the runs stay pending, so nothing changes while the node is down.
    for n in 0..12 {
        let req = pb::StartRunRequest {
            runbook: "demo".into(),
            params: [("n".to_string(), n.to_string())].into(),
            idempotency_key: format!("k{n}"),
            principal: String::new(),
        };
        client.start(req).await.unwrap();
    }
    let before = server.node().read(|s| s.clone());
    let status = server.node().status();
    assert!(status.snapshot_index >= 10, "a snapshot every 5 entries: {status:?}");
    assert!(status.snapshot_index < status.applied, "some entries are only in the log: {status:?}");
    server.stop().await;

    let server = start_again(dir.path()).await;
    let status = server.node().status();
    let mut after = server.node().read(|s| s.clone());
    assert!(status.snapshot_index >= 10, "started from the snapshot: {status:?}");
    // The new term's empty entry moved the applied index; everything else is identical.
    assert!(after.applied_index > before.applied_index);
    after.applied_index = before.applied_index;
    assert_eq!(after, before);
    assert_eq!(after.runs.len(), 12);
    // Idempotency keys survived: a retried request returns the same run.
    let mut client = RunServiceClient::connect(format!("http://{}", server.grpc_addr)).await.unwrap();
    let req = pb::StartRunRequest {
        runbook: "demo".into(),
        params: [("n".to_string(), "3".to_string())].into(),
        idempotency_key: "k3".into(),
        principal: String::new(),
    };
    let resp = client.start(req).await.unwrap().into_inner();
    assert!(resp.deduplicated);
    assert_eq!(server.node().read(|s| s.runs.len()), 12);
    server.stop().await;
}
