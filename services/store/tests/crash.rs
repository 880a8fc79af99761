//! Durability: writes acknowledged before a `kill -9` are there after reopening.
//!
//! The test re-runs its own binary as a child that writes as fast as it can and prints each
//! acknowledged write, kills it with SIGKILL mid-stream, and reopens the store from disk.
//! (A kill keeps the OS page cache; surviving a power cut is what `synchronous=FULL` adds.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use keel_store::Response;
use support::{addr, config, put, start, wait_leader, Router};

const DIR_ENV: &str = "KEEL_STORE_CRASH_DIR";
const ACKS_BEFORE_KILL: usize = 40;

/// The child half; does nothing unless the parent test started it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of acknowledged_writes_survive_kill_9"]
async fn crash_child_writes_until_killed() {
    let Ok(dir) = std::env::var(DIR_ENV) else {
        return;
    };
    let router = Router::default();
    let store = start(&router, config(Path::new(&dir), 1)).await;
    store.initialize(addr(1)).await.unwrap();
    wait_leader(std::slice::from_ref(&store)).await;
    for i in 0.. {
        let Response::Written(rec) = store.write(put(&format!("vm{i}"), i)).await.unwrap() else {
            panic!("put must write");
        };
        println!("ACK {} {}", rec.name, rec.revision);
        std::io::stdout().flush().unwrap();
    }
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "crash_child_writes_until_killed",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acked = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("ACK ") {
            let (name, rev) = rest.split_once(' ').unwrap();
            acked.push((name.to_owned(), rev.parse::<u64>().unwrap()));
            if acked.len() == ACKS_BEFORE_KILL {
                break;
            }
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(acked.len(), ACKS_BEFORE_KILL, "the child stopped early");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = start(&Router::default(), config(dir.path(), 1)).await;
        assert!(store.is_initialized().await.unwrap());
        for (name, revision) in &acked {
            let rec = store.get("Vm", name).unwrap();
            assert_eq!(
                rec.map(|r| r.revision),
                Some(*revision),
                "acknowledged {name} lost"
            );
        }
        assert!(store.revision() >= acked.last().unwrap().1);
        wait_leader(std::slice::from_ref(&store)).await;
        store.write(put("after-crash", 1)).await.unwrap();
        store.shutdown().await.unwrap();
    });
}
